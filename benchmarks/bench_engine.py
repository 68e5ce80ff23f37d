"""Engine factory benchmark: sqlperf's tuned engine against SQLAlchemy's defaults.

Measured in one process, interleaved round by round, and reported as ratios
(absolute timings on shared machines drift by up to 40%):

* throughput of many threads each running short queries (checkout, a one-row
  primary-key select, checkin) through ``create_optimized_engine`` versus
  ``create_engine`` with SQLAlchemy's defaults and with ``pool_pre_ping=True``;
* the cost of one checkout+checkin under sqlperf's liveness scheme, under
  ``pool_pre_ping=True`` and with no check at all;
* a kill check: every server session of the sqlperf engine is terminated and
  the next query must succeed.

Run: ``python -m benchmarks.bench_engine [--url URL ...]`` (``make bench`` runs all).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import NullPool

from benchmarks._common import create_rows_table, drop_table, run_threads
from sqlperf import create_optimized_engine, safe_url

RESULTS = Path(__file__).parent / "results"
DEFAULT_URLS = [
    "postgresql+psycopg2://postgres@127.0.0.1:5432/test",
    "mysql+pymysql://root@127.0.0.1:3306/test",
]
TABLE = "sqlperf_bench_engine"


@dataclass
class Variant:
    name: str
    make: Callable[[str], Engine]


VARIANTS = [
    Variant("sqlperf", lambda url: create_optimized_engine(url, workload="web")),
    Variant("sqlalchemy defaults", create_engine),
    Variant("sqlalchemy pre_ping", lambda url: create_engine(url, pool_pre_ping=True)),
]


def throughput(engine: Engine, threads: int, seconds: float) -> float:
    """Queries per second from ``threads`` threads, each doing checkout + PK select."""
    query = text(f"SELECT name FROM {TABLE} WHERE id = :id")

    def op(n: int) -> None:
        with engine.connect() as conn:
            conn.execute(query, {"id": n % 1000 + 1}).scalar_one()

    return run_threads(op, threads, seconds)[0]


def checkout_us(engine: Engine, n: int) -> float:
    """Microseconds per ``raw_connection()`` + ``close()`` (pool checkout and checkin)."""
    engine.raw_connection().close()
    start = time.perf_counter()
    for _ in range(n):
        engine.raw_connection().close()
    return (time.perf_counter() - start) / n * 1e6


def kill_and_query(url: str) -> bool:
    """Terminate every server session of a sqlperf engine; does the next query succeed?"""
    engine = create_optimized_engine(url, pool_size=3, max_overflow=0)
    admin = create_engine(url, poolclass=NullPool)
    pg = engine.dialect.name == "postgresql"
    ident = "SELECT pg_backend_pid()" if pg else "SELECT CONNECTION_ID()"
    try:
        conns = [engine.connect() for _ in range(3)]
        ids = [int(c.exec_driver_sql(ident).scalar_one()) for c in conns]
        for c in conns:
            c.close()
        with admin.connect() as conn:
            for i in ids:
                conn.exec_driver_sql(f"SELECT pg_terminate_backend({i})" if pg else f"KILL {i}")
            alive = (
                "SELECT count(*) FROM pg_stat_activity WHERE pid IN ({})"
                if pg
                else "SELECT count(*) FROM information_schema.processlist WHERE id IN ({})"
            ).format(",".join(map(str, ids)))
            deadline = time.monotonic() + 10
            while conn.exec_driver_sql(alive).scalar_one() and time.monotonic() < deadline:
                time.sleep(0.02)
                conn.rollback()
        with engine.connect() as conn:
            return bool(conn.execute(text("SELECT 1")).scalar() == 1)
    finally:
        engine.dispose()
        admin.dispose()


def run(
    url: str, *, threads: int, seconds: float, checkouts: int, rounds: int
) -> dict[str, object]:
    """Benchmark one database URL; return the results as a JSON-able dict."""
    create_rows_table(url, TABLE)
    engines = {v.name: v.make(url) for v in VARIANTS}
    tput: dict[str, list[float]] = {name: [] for name in engines}
    cost: dict[str, list[float]] = {name: [] for name in engines}
    try:
        for engine in engines.values():  # warm every pool up to its size
            throughput(engine, threads, min(seconds, 0.2))
        for _ in range(rounds):  # interleaved: each round runs every variant once
            for name, engine in engines.items():
                tput[name].append(throughput(engine, threads, seconds))
                cost[name].append(checkout_us(engine, checkouts))
    finally:
        for engine in engines.values():
            engine.dispose()
        drop_table(url, TABLE)
    med_t = {k: statistics.median(v) for k, v in tput.items()}
    med_c = {k: statistics.median(v) for k, v in cost.items()}
    base_t, base_c = med_t["sqlalchemy defaults"], med_c["sqlalchemy defaults"]
    result: dict[str, object] = {
        "url": safe_url(url),
        "threads": threads,
        "seconds_per_run": seconds,
        "rounds": rounds,
        "throughput_qps": med_t,
        "throughput_vs_defaults": {k: v / base_t for k, v in med_t.items()},
        "checkout_us": med_c,
        "checkout_vs_no_check": {k: v / base_c for k, v in med_c.items()},
        "pre_ping_over_sqlperf_checkout": med_c["sqlalchemy pre_ping"] / med_c["sqlperf"],
        "kill_recovered": kill_and_query(url),
    }
    # The targets are stated for PostgreSQL (foundation issue): checkout at most 2x
    # the no-check cost, at least 5x cheaper than pool_pre_ping, kill recovered.
    result["targets_met"] = (
        None
        if not url.startswith("postgresql")
        else bool(
            result["checkout_vs_no_check"]["sqlperf"] <= 2.0  # type: ignore[index]
            and result["pre_ping_over_sqlperf_checkout"] >= 5.0  # type: ignore[operator]
            and result["kill_recovered"]
        )
    )
    return result


def print_table(result: dict[str, object]) -> None:
    """Print one URL's results as a table."""
    print(f"\n{result['url']}  ({result['threads']} threads, median of {result['rounds']} rounds)")
    print(
        f"{'variant':<22}{'queries/s':>11}{'vs defaults':>13}{'checkout us':>13}{'vs no check':>13}"
    )
    tq, tr = result["throughput_qps"], result["throughput_vs_defaults"]
    cu, cr = result["checkout_us"], result["checkout_vs_no_check"]
    for name in tq:  # type: ignore[attr-defined]
        print(
            f"{name:<22}{tq[name]:>11.0f}{tr[name]:>12.2f}x"  # type: ignore[index]
            f"{cu[name]:>13.1f}{cr[name]:>12.2f}x"  # type: ignore[index]
        )
    ratio = result["pre_ping_over_sqlperf_checkout"]
    print(
        f"pool_pre_ping checkout / sqlperf checkout: {ratio:.1f}x"
        f"; kill recovered: {result['kill_recovered']}; targets met: {result['targets_met']}"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write ``benchmarks/results/bench_engine.json``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", action="append", help="database URL (repeatable)")
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--checkouts", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_engine.json")
    args = parser.parse_args(argv)
    results = [
        run(
            u,
            threads=args.threads,
            seconds=args.seconds,
            checkouts=args.checkouts,
            rounds=args.rounds,
        )
        for u in (args.url or DEFAULT_URLS)
    ]
    for r in results:
        print_table(r)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "engine", "results": results}, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
