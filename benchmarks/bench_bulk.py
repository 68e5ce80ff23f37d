"""Bulk benchmark: insert, upsert and update of many rows, by sqlperf.bulk and by its peers.

A five-column table (``id`` integer primary key without autoincrement,
``name`` varchar(40), ``created_at`` datetime, ``amount`` numeric(12,2), ``qty``
integer) and ``--rows`` rows (100,000 by default) on SQLite (a file), PostgreSQL
(psycopg2) and MariaDB/MySQL (PyMySQL). Every variant gets the same list of
dicts and does what a user holding that list would do, conversions included
(tuples for the raw paths, the COPY text, the temporary file); only pandas gets
a DataFrame, built from those dicts before the clock starts, with ``amount`` as
float64 (what ``read_csv`` gives; sqlite3 cannot bind ``Decimal``).

**insert** into an empty table:

* ``orm_add_all``: the objects built from the dicts, ``session.add_all(objs)``,
  ``session.commit()``. With ``--orm-rows`` below ``--rows`` it runs on the first
  ``--orm-rows`` rows; its time is reported as run and, clearly labelled,
  scaled linearly to ``--rows`` (the ratio target uses the scaled time).
  By default it runs at full size once per round.
* ``orm_bulk``: ``session.execute(insert(Model), rows)``, the 2.x bulk ORM insert;
* ``pandas_multi``: ``frame.to_sql(..., if_exists="append", index=False,
  method="multi", chunksize=1000)``; 1,000 rows x 5 columns = 5,000 bind
  parameters a statement, under SQLite's 32,766 (3.32+; 999 before) and
  PostgreSQL's 65,535;
* ``core_executemany``: ``conn.execute(insert(table), rows)``;
* ``raw``: the driver's fastest path: psycopg2 ``copy_expert`` of a text-format
  ``COPY`` from an ``io.StringIO`` (plain ``str()`` of each value: the data holds
  no tab, newline, backslash or NULL, so it needs no escaping, which sqlperf's
  encoder does and this one skips), PyMySQL ``executemany`` (multi-row
  ``INSERT``, sized by PyMySQL), sqlite3 ``executemany``; on MariaDB/MySQL also
  ``raw_load_data``, ``LOAD DATA LOCAL INFILE`` of a file the variant writes;
* ``sqlperf``: ``bulk_insert(engine, table, rows)``; its ``result.method`` is shown.

**upsert** into a table holding every other id (the odd ones); the input is
every row, with changed values for the ids already there:

* ``core_on_conflict``: ``insert().on_conflict_do_update(index_elements=["id"],
  set_=excluded)`` (PostgreSQL, SQLite) or ``on_duplicate_key_update`` (MySQL)
  executed with the list of dicts. SQLAlchemy hands the list to the driver's
  ``executemany`` (the cursor calls are counted by a ``before_cursor_execute``
  listener and reported), and psycopg2's ``executemany`` sends one ``INSERT``
  per row. On PostgreSQL it runs at full size (``--no-full``: only at
  ``--upsert-rows``, 2,000, which is quicker); when ``--rows`` is larger than
  ``--upsert-rows`` every upsert variant is also measured at ``--upsert-rows``
  rows, in a separate row of the table (``upsert <n>``), which is the issue's
  "2,000 rows" comparison;
* ``raw_staged``: PostgreSQL: ``COPY`` into a ``CREATE TEMP TABLE ... (LIKE t)``
  and one ``INSERT INTO t SELECT * FROM stage ON CONFLICT (id) DO UPDATE``;
  MariaDB/MySQL: PyMySQL ``executemany`` of ``INSERT ... ON DUPLICATE KEY UPDATE
  c = VALUES(c)``; SQLite: sqlite3 ``executemany`` of ``INSERT ... ON CONFLICT(id)
  DO UPDATE SET c = excluded.c``;
* ``sqlperf``: ``bulk_upsert(engine, table, rows, conflict=["id"])``.

**update** of every row's non-key columns by id, table full:

* ``orm_bulk_update``: ``session.execute(update(Model), rows)``, the 2.x ORM bulk
  UPDATE by primary key;
* ``core_executemany``: ``update(t).where(t.c.id == bindparam("b_id")).values(...)``
  with one parameter dict per row;
* ``raw``: PostgreSQL: ``COPY`` into a temporary table and ``UPDATE t ... FROM
  stage``; MariaDB/MySQL: a temporary table filled by PyMySQL ``executemany``
  and ``UPDATE t JOIN stage USING (id)``; SQLite: sqlite3 ``executemany`` of the
  ``UPDATE``;
* ``sqlperf``: ``bulk_update(engine, table, rows, key=["id"])``.

Method: one engine per database (``create_optimized_engine``; on MariaDB/MySQL
with ``local_infile`` on, for ``LOAD DATA``) shared by all variants. Each round
runs every (operation, variant) once, in an order that rotates from round to
round; before each run, untimed, the table is dropped and created again (and
pre-filled for upsert and update, then analysed), SQLite's file is vacuumed and
its WAL checkpointed, PostgreSQL checkpointed, and the garbage collector run.
After each run, untimed, the table is checked to hold exactly the expected rows
(count, sums of ``qty``, ``id * qty``, ``amount`` and name lengths, first and
last ``created_at``); a difference raises. Each number is the median of
``--rounds`` runs; ratios compare numbers of the same run.

Targets (the bulk issue), each ``sqlperf time / peer time``, at most: insert, PostgreSQL
``raw`` COPY 1.3, MariaDB ``raw`` executemany 1.0, SQLite ``raw`` executemany 1.2,
``orm_add_all`` 0.1 on each database (10x faster); upsert, PostgreSQL
``raw_staged`` 1.3. The other ratios and rows/s are printed, not judged.

Run: ``python -m benchmarks.bench_bulk`` (``make bench`` runs all).
"""

from __future__ import annotations

import argparse
import gc
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from operator import itemgetter
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    bindparam,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Session

from benchmarks._common import report_targets
from sqlperf import create_optimized_engine
from sqlperf.bulk import bulk_insert, bulk_update, bulk_upsert

PG = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
MYSQL = "mysql+pymysql://root@127.0.0.1:3306/test"
#: Rows per ``to_sql`` statement (x 5 columns = 5,000 bind parameters).
PANDAS_CHUNK = 1000
T0 = datetime(2024, 1, 1)

metadata = MetaData()
table = Table(
    "sqlperf_bench_bulk",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("name", String(40), nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("amount", Numeric(12, 2), nullable=False),
    Column("qty", Integer, nullable=False),
)
STAGE = "sqlperf_bench_bulk_stage"
COLUMNS = tuple(table.c.keys())
VALUES = COLUMNS[1:]  # every column but the key
COLUMN_LIST = ", ".join(COLUMNS)
as_tuple = itemgetter(*COLUMNS)


class Base(DeclarativeBase):
    pass


class BenchRow(Base):
    __table__ = table


#: The variants of each operation (raw_load_data on MariaDB/MySQL only).
VARIANTS = {
    "insert": [
        "orm_add_all",
        "orm_bulk",
        "pandas_multi",
        "core_executemany",
        "raw",
        "raw_load_data",  # MariaDB/MySQL only
        "sqlperf",
    ],
    "upsert": ["core_on_conflict", "raw_staged", "sqlperf"],
    "update": ["orm_bulk_update", "core_executemany", "raw", "sqlperf"],
}

Row = dict[str, Any]
#: Runs one variant on the engine with its input; returns what it reports (method, counts).
Run = Callable[[Engine, Any], dict[str, Any]]


# -- data ----------------------------------------------------------------------------


def make_row(i: int, *, changed: bool = False) -> Row:
    """Row ``i``; ``changed`` gives every non-key column another value."""
    return {
        "id": i,
        "name": f"{'changed' if changed else 'row'} {i}",
        "created_at": T0 + timedelta(seconds=i, days=1 if changed else 0),
        "amount": Decimal(i % 100_000).scaleb(-2) + (Decimal("1.00") if changed else 0),
        "qty": i % 1000 + (7 if changed else 0),
    }


def checksum_of(rows: Sequence[Row]) -> dict[str, Any]:
    """What :func:`table_checksum` finds when the table holds exactly ``rows``."""
    return {
        "rows": len(rows),
        "sum_qty": sum(r["qty"] for r in rows),
        "sum_id_qty": sum(r["id"] * r["qty"] for r in rows),
        "sum_amount": str(sum((r["amount"] for r in rows), Decimal("0.00"))),
        "sum_name_length": sum(len(r["name"]) for r in rows),
        "first_created_at": str(min(r["created_at"] for r in rows)),
        "last_created_at": str(max(r["created_at"] for r in rows)),
    }


def table_checksum(engine: Engine) -> dict[str, Any]:
    """Count and sums of the table, comparable with :func:`checksum_of`."""
    c = table.c
    stmt = select(
        func.count(),
        func.sum(c.qty),
        func.sum(c.id * c.qty),
        func.sum(c.amount),
        func.sum(func.length(c.name)),
        func.min(c.created_at),
        func.max(c.created_at),
    )
    with engine.connect() as conn:
        count, qty, id_qty, amount, names, first, last = conn.execute(stmt).one()
    return {
        "rows": count,
        "sum_qty": int(qty or 0),
        "sum_id_qty": int(id_qty or 0),
        # SQLite keeps NUMERIC as REAL: its float sum is rounded back to cents
        "sum_amount": str(round(Decimal(str(amount or 0)), 2)),
        "sum_name_length": int(names or 0),
        "first_created_at": str(first),
        "last_created_at": str(last),
    }


# -- table state (never timed) ---------------------------------------------------


def recreate(engine: Engine, rows: Sequence[Row] | None = None) -> None:
    """Drop and create the table, fill it with ``rows`` (by the raw path) and analyse it."""
    table.drop(engine, checkfirst=True)
    dialect = engine.dialect.name
    if dialect == "sqlite":
        with engine.connect() as conn:  # the freed pages go: every run starts from one file
            conn.exec_driver_sql("VACUUM")
    table.create(engine)
    if rows:
        RAW_INSERT[dialect](engine, rows)
        with engine.begin() as conn:
            conn.exec_driver_sql(
                f"ANALYZE TABLE {table.name}" if dialect == "mysql" else f"ANALYZE {table.name}"
            )
    settle(engine)


def settle(engine: Engine) -> None:
    """Write out what earlier runs left in the log, so it does not land in the next one."""
    dialect = engine.dialect.name
    if dialect == "sqlite":
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    elif dialect == "postgresql":
        # PostgreSQL 15 needs a superuser or pg_checkpoint; without either, no checkpoint
        with engine.connect() as conn, suppress(DBAPIError):
            conn.exec_driver_sql("CHECKPOINT")


@contextmanager
def raw_cursor(engine: Engine) -> Iterator[Any]:
    """A DB-API cursor on a pooled connection; commits when the block ends without error."""
    dbapi_connection: Any = engine.raw_connection()
    try:
        cursor = dbapi_connection.cursor()
        try:
            yield cursor
        finally:
            cursor.close()
        dbapi_connection.commit()
    finally:
        dbapi_connection.close()


# -- conversions the raw paths do -----------------------------------------------


def copy_text(rows: Sequence[Row]) -> io.StringIO:
    """COPY text format (tab-separated; this data needs no escaping) of ``rows``."""
    buffer = io.StringIO()
    buffer.writelines(
        f"{r['id']}\t{r['name']}\t{r['created_at']}\t{r['amount']}\t{r['qty']}\n" for r in rows
    )
    buffer.seek(0)
    return buffer


def sqlite_values(r: Row) -> tuple[Any, ...]:
    """sqlite3 parameters as SQLAlchemy stores them: datetimes as text, NUMERIC as float."""
    stamp = r["created_at"].isoformat(" ", "microseconds")
    return (r["id"], r["name"], stamp, float(r["amount"]), r["qty"])


def _placeholders(n: int, style: str) -> str:
    return ", ".join([style] * n)


# -- insert ------------------------------------------------------------------------


def insert_orm_add_all(engine: Engine, rows: list[Row]) -> dict[str, Any]:
    with Session(engine) as session:
        session.add_all([BenchRow(**r) for r in rows])
        session.commit()
    return {}


def insert_orm_bulk(engine: Engine, rows: list[Row]) -> dict[str, Any]:
    with Session(engine) as session:
        session.execute(insert(BenchRow), rows)
        session.commit()
    return {}


def insert_pandas(engine: Engine, frame: Any) -> dict[str, Any]:
    frame.to_sql(
        table.name,
        engine,
        if_exists="append",
        index=False,
        method="multi",
        chunksize=PANDAS_CHUNK,
    )
    return {}


def insert_core(engine: Engine, rows: list[Row]) -> dict[str, Any]:
    with engine.begin() as conn:
        conn.execute(insert(table), rows)
    return {}


def insert_raw_pg(engine: Engine, rows: Sequence[Row]) -> dict[str, Any]:
    with raw_cursor(engine) as cursor:
        cursor.copy_expert(f"COPY {table.name} ({COLUMN_LIST}) FROM STDIN", copy_text(rows))
    return {}


def insert_raw_mysql(engine: Engine, rows: Sequence[Row]) -> dict[str, Any]:
    sql = f"INSERT INTO {table.name} ({COLUMN_LIST}) VALUES ({_placeholders(5, '%s')})"
    with raw_cursor(engine) as cursor:
        cursor.executemany(sql, [as_tuple(r) for r in rows])
    return {}


def insert_raw_sqlite(engine: Engine, rows: Sequence[Row]) -> dict[str, Any]:
    sql = f"INSERT INTO {table.name} ({COLUMN_LIST}) VALUES ({_placeholders(5, '?')})"
    with raw_cursor(engine) as cursor:
        cursor.executemany(sql, [sqlite_values(r) for r in rows])
    return {}


RAW_INSERT: dict[str, Callable[[Engine, Sequence[Row]], dict[str, Any]]] = {
    "postgresql": insert_raw_pg,
    "mysql": insert_raw_mysql,
    "sqlite": insert_raw_sqlite,
}


def insert_load_data(engine: Engine, rows: list[Row]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.tsv"
        path.write_text(copy_text(rows).getvalue(), encoding="utf-8")
        with raw_cursor(engine) as cursor:
            cursor.execute(
                f"LOAD DATA LOCAL INFILE %s INTO TABLE {table.name} CHARACTER SET utf8mb4 "
                "FIELDS TERMINATED BY '\\t' LINES TERMINATED BY '\\n' "
                f"({COLUMN_LIST})",
                (str(path),),
            )
    return {}


def insert_sqlperf(engine: Engine, rows: list[Row]) -> dict[str, Any]:
    result = bulk_insert(engine, table, rows)
    if not result.ok or result.rows != len(rows):
        raise AssertionError(f"bulk_insert: {result}")
    return {"method": result.method}


# -- upsert ------------------------------------------------------------------------


def upsert_core(engine: Engine, rows: list[Row]) -> dict[str, Any]:
    dialect = engine.dialect.name
    stmt: Any
    if dialect == "mysql":
        mysql_insert = mysql.insert(table)
        stmt = mysql_insert.on_duplicate_key_update({c: mysql_insert.inserted[c] for c in VALUES})
    else:
        on = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
        stmt = on.on_conflict_do_update(
            index_elements=["id"], set_={c: on.excluded[c] for c in VALUES}
        )
    calls: list[int] = []

    def count(  # noqa: PLR0917 - SQLAlchemy's signature
        conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool
    ) -> None:
        calls.append(len(params) if many else 1)

    with engine.begin() as conn:
        event.listen(conn, "before_cursor_execute", count)
        conn.execute(stmt, rows)
    info = {"cursor_calls": len(calls), "parameter_sets": sum(calls)}
    if dialect == "postgresql":  # psycopg2's executemany executes each parameter set
        info["statements"] = sum(calls)
    return info


def upsert_raw_pg(engine: Engine, rows: list[Row]) -> dict[str, Any]:
    sets = ", ".join(f"{c} = excluded.{c}" for c in VALUES)
    with raw_cursor(engine) as cursor:
        cursor.execute(f"CREATE TEMP TABLE {STAGE} (LIKE {table.name}) ON COMMIT DROP")
        cursor.copy_expert(f"COPY {STAGE} ({COLUMN_LIST}) FROM STDIN", copy_text(rows))
        cursor.execute(
            f"INSERT INTO {table.name} ({COLUMN_LIST}) SELECT {COLUMN_LIST} FROM {STAGE} "
            f"ON CONFLICT (id) DO UPDATE SET {sets}"
        )
    return {}


def upsert_raw_mysql(engine: Engine, rows: list[Row]) -> dict[str, Any]:
    sets = ", ".join(f"{c} = VALUES({c})" for c in VALUES)
    sql = (
        f"INSERT INTO {table.name} ({COLUMN_LIST}) VALUES ({_placeholders(5, '%s')}) "
        f"ON DUPLICATE KEY UPDATE {sets}"
    )
    with raw_cursor(engine) as cursor:
        cursor.executemany(sql, [as_tuple(r) for r in rows])
    return {}


def upsert_raw_sqlite(engine: Engine, rows: list[Row]) -> dict[str, Any]:
    sets = ", ".join(f"{c} = excluded.{c}" for c in VALUES)
    sql = (
        f"INSERT INTO {table.name} ({COLUMN_LIST}) VALUES ({_placeholders(5, '?')}) "
        f"ON CONFLICT (id) DO UPDATE SET {sets}"
    )
    with raw_cursor(engine) as cursor:
        cursor.executemany(sql, [sqlite_values(r) for r in rows])
    return {}


def upsert_sqlperf(engine: Engine, rows: list[Row]) -> dict[str, Any]:
    result = bulk_upsert(engine, table, rows, conflict=["id"])
    return _sqlperf_info("bulk_upsert", result)


# -- update ------------------------------------------------------------------------


def update_orm_bulk(engine: Engine, rows: list[Row]) -> dict[str, Any]:
    with Session(engine) as session:
        session.execute(update(BenchRow), rows)
        session.commit()
    return {}


def update_core(engine: Engine, rows: list[Row]) -> dict[str, Any]:
    stmt = (
        update(table)
        .where(table.c.id == bindparam("b_id"))
        .values({c: bindparam(c) for c in VALUES})
    )
    params = [{"b_id": r["id"], **{c: r[c] for c in VALUES}} for r in rows]
    with engine.begin() as conn:
        conn.execute(stmt, params)
    return {}


def update_raw_pg(engine: Engine, rows: list[Row]) -> dict[str, Any]:
    sets = ", ".join(f"{c} = s.{c}" for c in VALUES)
    with raw_cursor(engine) as cursor:
        cursor.execute(f"CREATE TEMP TABLE {STAGE} (LIKE {table.name}) ON COMMIT DROP")
        cursor.copy_expert(f"COPY {STAGE} ({COLUMN_LIST}) FROM STDIN", copy_text(rows))
        cursor.execute(f"UPDATE {table.name} AS t SET {sets} FROM {STAGE} AS s WHERE t.id = s.id")
    return {}


def update_raw_mysql(engine: Engine, rows: list[Row]) -> dict[str, Any]:
    sets = ", ".join(f"t.{c} = s.{c}" for c in VALUES)
    with raw_cursor(engine) as cursor:
        cursor.execute(f"CREATE TEMPORARY TABLE {STAGE} LIKE {table.name}")
        try:
            cursor.executemany(
                f"INSERT INTO {STAGE} ({COLUMN_LIST}) VALUES ({_placeholders(5, '%s')})",
                [as_tuple(r) for r in rows],
            )
            cursor.execute(f"UPDATE {table.name} AS t JOIN {STAGE} AS s USING (id) SET {sets}")
        finally:  # the connection goes back to the pool: leave no table behind
            cursor.execute(f"DROP TEMPORARY TABLE {STAGE}")
    return {}


def update_raw_sqlite(engine: Engine, rows: list[Row]) -> dict[str, Any]:
    sets = ", ".join(f"{c} = ?" for c in VALUES)
    with raw_cursor(engine) as cursor:
        cursor.executemany(
            f"UPDATE {table.name} SET {sets} WHERE id = ?",
            [(*v[1:], v[0]) for v in map(sqlite_values, rows)],  # the key goes last
        )
    return {}


def update_sqlperf(engine: Engine, rows: list[Row]) -> dict[str, Any]:
    result = bulk_update(engine, table, rows, key=["id"])
    return _sqlperf_info("bulk_update", result)


def _sqlperf_info(name: str, result: Any) -> dict[str, Any]:
    if not result.ok:
        raise AssertionError(f"{name}: {result}")
    info = {"method": result.method}
    for counter in ("inserted", "updated", "unchanged"):
        if hasattr(result, counter):
            info[counter] = getattr(result, counter)
    return info


# -- the runs ------------------------------------------------------------------------


@dataclass
class Case:
    """One variant of one operation: its input, the table before, the table after."""

    run: Run
    data: Any
    rows: int
    before: list[Row] | None
    expected: dict[str, Any]


@dataclass
class Operation:
    """An operation at one size, with its variants and those that did not run."""

    name: str
    rows: int
    cases: dict[str, Case] = field(default_factory=dict)
    not_run: dict[str, str] = field(default_factory=dict)


def operations(
    dialect: str, *, rows: int, orm_rows: int, upsert_rows: int, full: bool
) -> list[Operation]:
    """Every (operation, variant) to time on ``dialect``, inputs built."""
    base = [make_row(i) for i in range(1, rows + 1)]
    frame = pd.DataFrame(base).astype({"amount": "float64"})
    result: list[Operation] = []

    op = Operation("insert", rows)
    peers: dict[str, tuple[Run, Any]] = {
        "orm_bulk": (insert_orm_bulk, base),
        "pandas_multi": (insert_pandas, frame),
        "core_executemany": (insert_core, base),
        "raw": (RAW_INSERT[dialect], base),
    }
    if dialect == "mysql":
        peers["raw_load_data"] = (insert_load_data, base)
    peers["sqlperf"] = (insert_sqlperf, base)
    orm = base[:orm_rows]
    op.cases["orm_add_all"] = Case(insert_orm_add_all, orm, len(orm), None, checksum_of(orm))
    expected = checksum_of(base)
    for name, (run, data) in peers.items():
        op.cases[name] = Case(run, data, rows, None, expected)
    result.append(op)

    upsert_runs: dict[str, Run] = {
        "core_on_conflict": upsert_core,
        "raw_staged": {
            "postgresql": upsert_raw_pg,
            "mysql": upsert_raw_mysql,
            "sqlite": upsert_raw_sqlite,
        }[dialect],
        "sqlperf": upsert_sqlperf,
    }
    # The full size; and, when larger, --upsert-rows as well (the 2,000-row comparison).
    for n in [rows] if rows <= upsert_rows else [rows, upsert_rows]:
        op = Operation("upsert" if n == rows else f"upsert_{n}", n)
        before = base[:n:2]  # the odd ids
        data = [make_row(r["id"], changed=r["id"] % 2 == 1) for r in base[:n]]
        for name, run in upsert_runs.items():
            if name == "core_on_conflict" and dialect == "postgresql" and n > upsert_rows:
                # one INSERT per row: runs at --upsert-rows unless --full
                if full:
                    op.cases[name] = Case(run, data, n, before, checksum_of(data))
                else:
                    op.not_run[name] = f"skipped: see upsert_{upsert_rows} (--full runs it here)"
            else:
                op.cases[name] = Case(run, data, n, before, checksum_of(data))
        result.append(op)

    op = Operation("update", rows)
    data = [make_row(i, changed=True) for i in range(1, rows + 1)]
    update_runs: dict[str, Run] = {
        "orm_bulk_update": update_orm_bulk,
        "core_executemany": update_core,
        "raw": {
            "postgresql": update_raw_pg,
            "mysql": update_raw_mysql,
            "sqlite": update_raw_sqlite,
        }[dialect],
    }
    for name, run in update_runs.items():
        op.cases[name] = Case(run, data, rows, base, checksum_of(data))
    op.cases["sqlperf"] = Case(update_sqlperf, data, rows, base, checksum_of(data))
    result.append(op)
    return result


def time_case(engine: Engine, case: Case) -> tuple[float, dict[str, Any], dict[str, Any]]:
    """Set the table up, time the variant, check the table; returns (seconds, info, table)."""
    recreate(engine, case.before)
    gc.collect()
    started = time.perf_counter()
    info = case.run(engine, case.data)
    seconds = time.perf_counter() - started
    found = table_checksum(engine)
    if found != case.expected:
        raise AssertionError(f"the table is wrong after the run:\n{found}\n!=\n{case.expected}")
    return seconds, info, found


def run(
    url: str, *, rows: int, orm_rows: int, upsert_rows: int, full: bool, rounds: int
) -> dict[str, Any]:
    """Time every variant of every operation on ``url``; medians, ratios, what sqlperf did."""
    local_infile = url.startswith(("mysql", "mariadb"))  # for LOAD DATA LOCAL INFILE
    engine = create_optimized_engine(
        url, connect_args={"local_infile": True} if local_infile else {}
    )
    try:
        dialect = engine.dialect.name
        version = (
            "SELECT 'SQLite ' || sqlite_version()" if dialect == "sqlite" else "SELECT version()"
        )
        with engine.connect() as conn:
            server = str(conn.exec_driver_sql(version).scalar()).split(" on ")[0]
        ops = operations(dialect, rows=rows, orm_rows=orm_rows, upsert_rows=upsert_rows, full=full)
        cases = [(op.name, v, case) for op in ops for v, case in op.cases.items()]
        samples: dict[tuple[str, str], list[float]] = {(o, v): [] for o, v, _ in cases}
        infos: dict[tuple[str, str], dict[str, Any]] = {}
        tables: dict[tuple[str, str], dict[str, Any]] = {}
        # Each round runs every (operation, variant) once, in an order that rotates.
        for r in range(rounds):
            shift = r % len(cases)
            for name, variant, case in cases[shift:] + cases[:shift]:
                seconds, info, found = time_case(engine, case)
                samples[name, variant].append(seconds)
                infos[name, variant] = info
                tables[name, variant] = found
        table.drop(engine, checkfirst=True)
    finally:
        engine.dispose()
    return {
        "server": server,
        "rows": rows,
        "operations": {op.name: summarize(op, samples, infos, tables) for op in ops},
    }


def summarize(
    op: Operation,
    samples: dict[tuple[str, str], list[float]],
    infos: dict[tuple[str, str], dict[str, Any]],
    tables: dict[tuple[str, str], dict[str, Any]],
) -> dict[str, Any]:
    """Medians, rows/s, sqlperf's ratio to each peer (at the operation's size) for one operation."""
    seconds = {v: statistics.median(samples[op.name, v]) for v in op.cases}
    rows = {v: case.rows for v, case in op.cases.items()}
    # a variant run on fewer rows is scaled linearly to the operation's size
    scaled = {v: s * op.rows / rows[v] for v, s in seconds.items()}
    ratios = {}
    if "sqlperf" in scaled:
        ratios = {v: scaled["sqlperf"] / s for v, s in scaled.items() if v != "sqlperf"}
    return {
        "rows": op.rows,
        "seconds": seconds,
        "samples": {v: samples[op.name, v] for v in op.cases},
        "variant_rows": rows,
        "seconds_scaled_to_rows": {v: s for v, s in scaled.items() if rows[v] != op.rows},
        "rows_per_s": {v: rows[v] / s for v, s in seconds.items()},
        "sqlperf_over": ratios,
        "info": {v: infos[op.name, v] for v in op.cases},
        "expected_table": {v: case.expected for v, case in op.cases.items()},
        "table_after": {v: tables[op.name, v] for v in op.cases},  # of the last round
        "not_run": op.not_run,
    }


def print_operation(db: str, name: str, result: dict[str, Any], rounds: int) -> None:
    print(f"\n{db} {name}: {result['rows']:,} rows, seconds (median of {rounds})")
    print(f"  {'variant':18} {'seconds':>9} {'rows':>8} {'rows/s':>10}  sqlperf/variant  notes")
    for variant in [*result["seconds"], *result["not_run"]]:
        if variant in result["not_run"]:
            print(f"  {variant:18} {'-':>9}  {result['not_run'][variant]}")
            continue
        seconds, n = result["seconds"][variant], result["variant_rows"][variant]
        ratio = result["sqlperf_over"].get(variant)
        shown = f"{ratio:.3f}x" if ratio is not None else ""
        notes = []
        if variant in result["seconds_scaled_to_rows"]:
            scaled = result["seconds_scaled_to_rows"][variant]
            notes.append(f"{scaled:.3f} s per {result['rows']:,} rows, scaled linearly")
        info = result["info"][variant]
        if "method" in info:
            notes.append(f"method={info['method']}")
        if "cursor_calls" in info:
            notes.append(
                f"{info['cursor_calls']} cursor call(s) of {info['parameter_sets']:,} "
                "parameter sets"
                + (f" = {info['statements']:,} INSERTs sent" if "statements" in info else "")
            )
        notes += [f"{k}={info[k]}" for k in ("inserted", "updated", "unchanged") if k in info]
        print(
            f"  {variant:18} {seconds:9.3f} {n:8,} {n / seconds:10,.0f}  {shown:>15}  "
            + "; ".join(notes)
        )


#: (database, operation, peer) -> at most; each value is sqlperf's time / the peer's.
TARGETS = {
    ("postgresql", "insert", "raw"): 1.3,
    ("mysql", "insert", "raw"): 1.0,
    ("sqlite", "insert", "raw"): 1.2,
    ("postgresql", "insert", "orm_add_all"): 0.1,
    ("mysql", "insert", "orm_add_all"): 0.1,
    ("sqlite", "insert", "orm_add_all"): 0.1,
    ("postgresql", "upsert", "raw_staged"): 1.3,
}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print a table and write the results as JSON.

    Returns 0: a missed target is reported (``MISS`` and ``"met": false``), not an error.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3, help="runs per variant")
    parser.add_argument(
        "--orm-rows", type=int, help="rows for orm_add_all (default: --rows), scaled to --rows"
    )
    parser.add_argument(
        "--upsert-rows",
        type=int,
        default=2000,
        help="PostgreSQL core_on_conflict size, and the size of the upsert comparison row",
    )
    parser.add_argument(
        "--full",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run PostgreSQL core_on_conflict (one INSERT a row) at --rows too",
    )
    parser.add_argument("--pg-url", default=PG)
    parser.add_argument("--mysql-url", default=MYSQL)
    parser.add_argument("--no-pg", action="store_true", help="skip PostgreSQL")
    parser.add_argument("--no-mysql", action="store_true", help="skip MariaDB/MySQL")
    parser.add_argument("--sqlite-path", type=Path, help="SQLite file (default: a temporary one)")
    parser.add_argument("--out", type=Path, help="JSON file (default: results/bulk-*.json)")
    args = parser.parse_args(argv)
    orm_rows = min(args.orm_rows or args.rows, args.rows)

    def run_on(url: str) -> dict[str, Any]:
        return run(
            url,
            rows=args.rows,
            orm_rows=orm_rows,
            upsert_rows=args.upsert_rows,
            full=args.full,
            rounds=args.rounds,
        )

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = args.sqlite_path or Path(tmp) / "bulk.db"
        results["sqlite"] = run_on(f"sqlite:///{path}")
    if not args.no_pg:
        results["postgresql"] = run_on(args.pg_url)
    if not args.no_mysql:
        results["mysql"] = run_on(args.mysql_url)

    targets: dict[str, tuple[float, float]] = {}
    for db, result in results.items():
        print(f"\n== {db} ({result['server']})")
        for name, op in result["operations"].items():
            print_operation(db, name, op, args.rounds)
        result["unjudged"] = []
        for (target_db, name, peer), limit in TARGETS.items():
            if target_db != db:
                continue
            label = f"{db} {name} sqlperf / {peer}"
            if peer == "orm_add_all" and orm_rows < args.rows:
                label += f" (orm_add_all scaled from {orm_rows:,} rows)"
            ratio = result["operations"][name]["sqlperf_over"].get(peer)
            if ratio is None:
                result["unjudged"].append(f"{label} (at most {limit}): sqlperf did not run")
            else:
                targets[label] = (ratio, limit)
    print()
    for result in results.values():
        for line in result["unjudged"]:
            print(f"  ---- {line}")
    report_targets("bulk", results, targets, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
