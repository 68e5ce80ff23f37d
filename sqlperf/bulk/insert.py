"""bulk_insert: rows into a table by the driver's fastest path.

The paths (``method=``):

* ``"copy"``: PostgreSQL with psycopg2, ``COPY ... FROM STDIN`` in text format
  (values escaped by :mod:`sqlperf.bulk.copy`, never pasted into SQL);
* ``"load_data"``: MySQL/MariaDB with PyMySQL, ``LOAD DATA LOCAL INFILE`` from a
  temporary file (:mod:`sqlperf.bulk.load_data`), where the connection was opened
  with ``connect_args={"local_infile": True}`` and the server allows it;
* ``"executemany"``: the statement compiled once and the DB-API ``executemany``
  called with plain tuples, each column's bind processor applied by sqlperf:
  SQLite's fastest path, and PyMySQL's (which sends multi-row ``VALUES`` itself,
  sized to the packet limit);
* ``"values"``: SQLAlchemy Core ``insert()`` with a list of rows (insertmanyvalues
  where the dialect has it); the path for ``returning=``.

``"auto"`` picks ``copy`` on PostgreSQL/psycopg2, ``load_data`` on MySQL where
client and server allow it, ``executemany`` elsewhere, and ``values`` when
``returning=`` is given.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any, Literal

from sqlalchemy import Connection, Table, insert
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session

from sqlperf.bulk.batches import (
    BulkResult,
    Counts,
    Target,
    WriteBatch,
    no_rows,
    run_batches,
    split_batches,
)
from sqlperf.bulk.checks import bind_of
from sqlperf.bulk.driver import copy_rows, executemany_writer, note_written
from sqlperf.bulk.load_data import load_data, local_infile_enabled
from sqlperf.bulk.rows import prepare_rows, resolve_table
from sqlperf.exceptions import ConfigurationError

__all__ = ["InsertMethod", "bulk_insert"]

InsertMethod = Literal["auto", "copy", "load_data", "executemany", "values"]

_DEFAULT_BATCH = {"copy": 50_000, "load_data": 50_000, "executemany": 10_000, "values": 5_000}


def bulk_insert(
    target: Target,
    table_or_model: Any,
    rows: Iterable[Any],
    *,
    batch_size: int | None = None,
    method: InsertMethod = "auto",
    returning: Sequence[str] | None = None,
    commit_every: int | None = None,
    progress: bool | None = None,
) -> BulkResult:
    """Insert ``rows`` into a table, by the fastest path the database and driver have.

    Args:
        target: an ``Engine`` (sqlperf begins and commits), a ``Connection`` or a
            ``Session`` (inside the caller's transaction when one is open: the rows
            go in a SAVEPOINT and the caller commits).
        table_or_model: a ``Table`` or an ORM mapped class.
        rows: dicts, tuples (in table column order) or a pandas DataFrame (NaN and
            NaT become NULL, numpy values become Python ones).
        batch_size: rows per batch (default 50,000 for COPY, 10,000 otherwise).
        method: ``"auto"``, ``"copy"``, ``"load_data"``, ``"executemany"`` or ``"values"``
            (see the module).
        returning: column keys to return for each inserted row (``BulkResult.returned``).
        commit_every: commit every this many batches instead of once (see
            :mod:`sqlperf.bulk.batches`); a failed batch is reported, not raised.
        progress: show a progress bar (tqdm): ``True``, ``False``, or ``None`` for a
            long run in a terminal (see :mod:`sqlperf.bulk.progress`).

    Returns:
        A :class:`BulkResult`.

    Raises:
        ConfigurationError: bad rows (unknown column, rows of different shapes) or
            options, before anything is written.
        sqlalchemy.exc.DBAPIError: in atomic mode, the database's error, after the
            rollback of every row of this call.

    Example::

        result = bulk_insert(engine, Order, frame)  # a DataFrame of 100,000 orders
        print(f"{result.rows:,} rows in {result.elapsed:.2f} s by {result.method}")
    """
    started = time.perf_counter()
    table = resolve_table(table_or_model)
    prepared = prepare_rows(table, rows)
    dialect = bind_of(target).dialect
    chosen = _choose(method, dialect.name, dialect.driver, returning)
    if method == "auto" and chosen == "executemany" and dialect.name in ("mysql", "mariadb"):
        chosen = "load_data" if _local_infile(target) else chosen
    if returning is not None:
        unknown = [c for c in returning if c not in table.c]
        if unknown:
            raise ConfigurationError(f"returning names no column of {table.name}: {unknown}")
    values = prepared.values
    batches = split_batches(values, batch_size, _DEFAULT_BATCH[chosen])
    if not batches:
        return no_rows(chosen)
    returned: list[Any] = []
    write = _writer(chosen, table, prepared.columns, dialect, returning, returned)
    result = run_batches(
        target,
        batches,
        write,
        commit_every=commit_every,
        method=chosen,
        started=started,
        progress=progress,
        desc=f"insert {table.name}",
    )
    return replace(result, returned=returned) if returned else result


def _local_infile(target: Target) -> bool:
    """Whether LOAD DATA LOCAL works on ``target``'s connections (asked once per connection)."""
    if isinstance(target, Session):
        return local_infile_enabled(target.connection())
    if isinstance(target, Connection):
        return local_infile_enabled(target)
    with target.connect() as conn:
        return local_infile_enabled(conn)


def _choose(method: str, dialect: str, driver: str, returning: Sequence[str] | None) -> str:
    if method not in ("auto", "copy", "load_data", "executemany", "values"):
        raise ConfigurationError(
            f"method must be 'auto', 'copy', 'load_data', 'executemany' or 'values', not {method!r}"
        )
    copy_ok = dialect == "postgresql" and driver == "psycopg2"
    if method == "copy" and not copy_ok:
        raise ConfigurationError(
            f"method='copy' needs PostgreSQL with psycopg2, not {dialect}+{driver}"
        )
    if method == "load_data" and (dialect not in ("mysql", "mariadb") or driver != "pymysql"):
        raise ConfigurationError(
            f"method='load_data' needs MySQL or MariaDB with PyMySQL, not {dialect}+{driver}"
        )
    if returning is not None:
        if method not in ("auto", "values"):
            raise ConfigurationError(f"returning= needs method='values', not {method!r}")
        return "values"
    if method != "auto":
        return method
    return "copy" if copy_ok else "executemany"


def _writer(  # noqa: PLR0917 - the one place the paths are told apart
    method: str,
    table: Table,
    columns: Sequence[str],
    dialect: Dialect,
    returning: Sequence[str] | None,
    returned: list[Any],
) -> WriteBatch:
    if method == "copy":

        def copy(conn: Connection, batch: Sequence[Any]) -> Counts:
            copy_rows(conn, table, columns, batch)
            note_written(conn, table)  # COPY passes no SQLAlchemy event: say it
            return Counts(len(batch), inserted=len(batch))

        return copy
    if method == "load_data":

        def load(conn: Connection, batch: Sequence[Any]) -> Counts:
            load_data(conn, table, columns, batch)  # the cache sees LOAD DATA INTO TABLE
            return Counts(len(batch), inserted=len(batch))

        return load
    if method == "values":
        stmt = insert(table)
        if returning is not None:
            stmt = stmt.returning(*(table.c[c] for c in returning), sort_by_parameter_order=True)

        def values(conn: Connection, batch: Sequence[Any]) -> Counts:
            params = [dict(zip(columns, row, strict=True)) for row in batch]
            result = conn.execute(stmt, params)
            if returning is not None:
                returned.extend(result.all())
            return Counts(len(batch), inserted=len(batch))

        return values
    send = executemany_writer(insert(table), table, columns, dialect)

    def executemany(conn: Connection, batch: Sequence[Any]) -> Counts:
        send(conn, batch)
        return Counts(len(batch), inserted=len(batch))

    return executemany
