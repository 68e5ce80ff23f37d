"""Pagination benchmark: one 50-row page at depth, by OFFSET, by sqlperf and by sqlakeyset.

A table of ``--rows`` orders (1,000,000 by default) with an index on
``(created_at, id)``; the page is ordered by ``created_at DESC, id DESC`` (the
timestamps repeat, so the id breaks ties). For page 1, 1,000 and 10,000 (scaled
down with ``--rows``), each method fetches the same 50 rows:

* **offset**: ``LIMIT 50 OFFSET (page - 1) * 50``;
* **sqlperf**: ``keyset_page(conn, stmt, 50, after=cursor)`` with the cursor of
  the row before the page (cursor decoding included);
* **sqlakeyset**: ``select_page(conn, stmt, 50, after=keyset)`` with that row's
  values.

Every (page, method) pair runs once per round on one connection, in an order
that rotates from round to round, so drift affects all of them alike (OFFSET in
rounds of its own: its deep pages thrash the CPU caches for whatever runs next);
a sample is the mean of ``--calls`` consecutive calls, each number is the median
of ``--rounds`` samples, and the ratios compare numbers of the same run. The rows
are checked to be the same for all three. The table is kept between runs (it is
rebuilt when its row count differs).

Targets (issue 6): sqlperf's deepest page costs at most 1.5x its first page, and
sqlperf is no slower than sqlakeyset at any depth (a ratio of at most 1.0; the
report also shows it).

Run: ``python -m benchmarks.bench_pagination`` (``make bench`` runs all).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlakeyset import select_page
from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    Engine,
    Integer,
    MetaData,
    Numeric,
    Table,
    func,
    select,
    text,
)

from benchmarks._common import report_targets
from sqlperf import create_optimized_engine
from sqlperf.pagination import encode_cursor, keyset_page
from sqlperf.pagination.keyset import _plan

PG = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
PER_PAGE = 50
DEPTHS = (1, 1000, 10000)

metadata = MetaData()
orders = Table(
    "sqlperf_bench_pages",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("created_at", DateTime, nullable=False),
    Column("customer_id", Integer, nullable=False),
    Column("total", Numeric(10, 2), nullable=False),
)
INDEX = text(f"CREATE INDEX ix_{orders.name}_created ON {orders.name} (created_at, id)")
STMT = select(orders).order_by(orders.c.created_at.desc(), orders.c.id.desc())


def _fill(engine: Engine, rows: int) -> None:
    """Create the table with ``rows`` rows (three per second of created_at), unless it is there."""
    count = select(func.count()).select_from(orders)
    with engine.connect() as conn:
        if engine.dialect.has_table(conn, orders.name) and conn.execute(count).scalar() == rows:
            return
    metadata.drop_all(engine)
    orders.create(engine)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(
                text(
                    f"INSERT INTO {orders.name} SELECT i, "
                    "timestamp '2024-01-01' + (i / 3) * interval '1 second', i % 5000, "
                    "(i % 10000) / 100.0 FROM generate_series(1, :n) AS i"
                ),
                {"n": rows},
            )
        else:
            conn.execute(
                text(
                    f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :n) "
                    f"INSERT INTO {orders.name} SELECT i, "
                    # SQLAlchemy's storage format for DateTime on SQLite, microseconds included
                    "datetime('2024-01-01', '+' || (i / 3) || ' seconds') || '.000000', i % 5000, "
                    "(i % 10000) / 100.0 FROM n"
                ),
                {"n": rows},
            )
    with engine.begin() as conn:  # the index after the rows: much faster to build
        conn.execute(INDEX)
        conn.execute(text(f"ANALYZE {orders.name}"))


def _methods(conn: Connection, depth: int) -> dict[str, Callable[[], list[int]]]:
    offset = (depth - 1) * PER_PAGE
    if depth == 1:
        cursor, keyset = None, None
    else:  # the row just before the page
        before = conn.execute(STMT.limit(1).offset(offset - 1)).one()
        keyset = (before.created_at, before.id)
        cursor = encode_cursor(list(keyset), ordering=_plan(conn, STMT).ordering)

    def by_offset() -> list[int]:
        return [r.id for r in conn.execute(STMT.limit(PER_PAGE).offset(offset))]

    def by_sqlperf() -> list[int]:
        return [r.id for r in keyset_page(conn, STMT, PER_PAGE, after=cursor).items]

    def by_sqlakeyset() -> list[int]:
        return [r.id for r in select_page(conn, STMT, per_page=PER_PAGE, after=keyset)]

    return {"offset": by_offset, "sqlperf": by_sqlperf, "sqlakeyset": by_sqlakeyset}


def run(url: str, *, rows: int, rounds: int, calls: int = 20) -> dict[str, Any]:
    """Time each method at each depth on ``url``; medians in milliseconds and ratios."""
    engine = create_optimized_engine(url)
    try:
        started = time.perf_counter()
        _fill(engine, rows)
        fill_s = time.perf_counter() - started
        depths = [d for d in DEPTHS if (d - 1) * PER_PAGE + PER_PAGE <= rows]
        ms: dict[str, dict[str, float]] = {}
        with engine.connect() as conn:
            fns: dict[tuple[str, str], Callable[[], list[int]]] = {}
            for depth in depths:
                methods = _methods(conn, depth)
                results = {name: fn() for name, fn in methods.items()}  # warm-up and check
                if len({tuple(ids) for ids in results.values()}) != 1 or not results["offset"]:
                    raise AssertionError(f"the methods disagree at page {depth}: {results}")
                fns.update({(str(depth), name): fn for name, fn in methods.items()})
            # Each round runs every (page, method) once, in an order that rotates, so
            # drift affects them alike; OFFSET's deep pages (tens of ms, thrashing the
            # CPU caches) run in rounds of their own so they do not slow their neighbours.
            samples: dict[tuple[str, str], list[float]] = {key: [] for key in fns}
            for group in (("sqlperf", "sqlakeyset"), ("offset",)):
                keys = [key for key in fns if key[1] in group]
                for r in range(rounds):
                    shift = r % len(keys)
                    for key in keys[shift:] + keys[:shift]:
                        fn = fns[key]
                        t0 = time.perf_counter()
                        for _ in range(calls):
                            fn()
                        samples[key].append((time.perf_counter() - t0) * 1e3 / calls)
            for (page, name), values in samples.items():
                ms.setdefault(page, {})[name] = statistics.median(values)
    finally:
        engine.dispose()
    first, deepest = str(depths[0]), str(depths[-1])
    return {
        "rows": rows,
        "fill_s": round(fill_s, 1),
        "ms_per_page": ms,
        "sqlperf_deepest_over_first": ms[deepest]["sqlperf"] / ms[first]["sqlperf"],
        "sqlperf_over_sqlakeyset": {d: v["sqlperf"] / v["sqlakeyset"] for d, v in ms.items()},
        "offset_over_sqlperf": {d: v["offset"] / v["sqlperf"] for d, v in ms.items()},
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print a table and write the results as JSON.

    Returns 0: a missed target is reported (``MISS`` and ``"met": false``), not an error.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=15, help="samples per method and depth")
    parser.add_argument("--calls", type=int, default=20, help="calls per sample")
    parser.add_argument("--pg-url", default=PG)
    parser.add_argument("--no-pg", action="store_true", help="SQLite only")
    parser.add_argument("--sqlite-path", type=Path, help="keep the SQLite table here")
    parser.add_argument("--out", type=Path, help="JSON file (default: results/pagination-*.json)")
    args = parser.parse_args(argv)

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = args.sqlite_path or Path(tmp) / "pages.db"
        results["sqlite"] = run(
            f"sqlite:///{path}", rows=args.rows, rounds=args.rounds, calls=args.calls
        )
    if not args.no_pg:
        results["postgresql"] = run(
            args.pg_url, rows=args.rows, rounds=args.rounds, calls=args.calls
        )

    targets: dict[str, tuple[float, float]] = {}
    for db, result in results.items():
        print(f"\n{db}: {result['rows']:,} rows (filled in {result['fill_s']} s), ms per page")
        print(f"  {'page':>6} {'offset':>9} {'sqlperf':>9} {'sqlakeyset':>11}  sqlperf/sqlakeyset")
        for depth, v in result["ms_per_page"].items():
            ratio = result["sqlperf_over_sqlakeyset"][depth]
            print(
                f"  {depth:>6} {v['offset']:9.2f} {v['sqlperf']:9.2f} {v['sqlakeyset']:11.2f}"
                f"  {ratio:.2f}x"
            )
        deepest = result["sqlperf_deepest_over_first"]
        targets[f"{db} sqlperf deepest / first page"] = (deepest, 1.5)
        worst = max(result["sqlperf_over_sqlakeyset"].values())
        targets[f"{db} sqlperf / sqlakeyset, worst depth"] = (worst, 1.0)
    report_targets("pagination", results, targets, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
