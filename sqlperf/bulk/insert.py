"""bulk_insert: rows into a table by the driver's fastest path.

The paths (``method=``):

* ``"copy"``: PostgreSQL with psycopg2, ``COPY ... FROM STDIN`` in text format
  (values escaped by :mod:`sqlperf.bulk.copy`, never pasted into SQL);
* ``"executemany"``: the statement compiled once and the DB-API ``executemany``
  called with plain tuples, each column's bind processor applied by sqlperf:
  SQLite's fastest path, and PyMySQL's (which sends multi-row ``VALUES`` itself,
  sized to the packet limit);
* ``"values"``: SQLAlchemy Core ``insert()`` with a list of rows (insertmanyvalues
  where the dialect has it); the path for ``returning=``.

``"auto"`` picks ``copy`` on PostgreSQL/psycopg2 and ``executemany`` elsewhere, and
``values`` when ``returning=`` is given.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any, Literal

from sqlalchemy import Connection, Engine, Table, insert
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from sqlperf.bulk.batches import BulkResult, Target, run_batches
from sqlperf.bulk.copy import copy_sql, encode_copy
from sqlperf.bulk.rows import prepare_rows, resolve_table
from sqlperf.cache.query_cache import attached_cache
from sqlperf.exceptions import ConfigurationError

__all__ = ["InsertMethod", "bulk_insert"]

InsertMethod = Literal["auto", "copy", "executemany", "values"]

_DEFAULT_BATCH = {"copy": 50_000, "executemany": 10_000, "values": 5_000}


def bulk_insert(
    target: Target,
    table_or_model: Any,
    rows: Iterable[Any],
    *,
    batch_size: int | None = None,
    method: InsertMethod = "auto",
    returning: Sequence[str] | None = None,
    commit_every: int | None = None,
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
        method: ``"auto"``, ``"copy"``, ``"executemany"`` or ``"values"`` (see the module).
        returning: column keys to return for each inserted row (``BulkResult.returned``).
        commit_every: commit every this many batches instead of once (see
            :mod:`sqlperf.bulk.batches`); a failed batch is reported, not raised.

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
    dialect = _bind(target).dialect
    chosen = _choose(method, dialect.name, dialect.driver, returning)
    size = batch_size if batch_size is not None else _DEFAULT_BATCH[chosen]
    if size < 1:
        raise ConfigurationError(f"batch_size must be at least 1, not {size!r}")
    if returning is not None:
        unknown = [c for c in returning if c not in table.c]
        if unknown:
            raise ConfigurationError(f"returning names no column of {table.name}: {unknown}")
    values = prepared.values
    batches = [values[i : i + size] for i in range(0, len(values), size)]
    if not batches:
        return BulkResult(rows=0, batches=0, elapsed=0.0, committed_batches=0, method=chosen)
    returned: list[Any] = []
    write = _writer(chosen, table, prepared.columns, dialect, returning, returned)
    result = run_batches(
        target, batches, write, commit_every=commit_every, method=chosen, started=started
    )
    return replace(result, returned=returned) if returned else result


def _bind(target: Target) -> Engine | Connection:
    if isinstance(target, Session):
        # A write: a RoutingSession rightly routes it to the primary.
        return target.get_bind()
    if isinstance(target, Engine | Connection):
        return target
    raise ConfigurationError(
        f"bulk operations need an Engine, Connection or Session, not {type(target).__name__}"
    )


def _choose(method: str, dialect: str, driver: str, returning: Sequence[str] | None) -> str:
    if method not in ("auto", "copy", "executemany", "values"):
        raise ConfigurationError(
            f"method must be 'auto', 'copy', 'executemany' or 'values', not {method!r}"
        )
    copy_ok = dialect == "postgresql" and driver == "psycopg2"
    if method == "copy" and not copy_ok:
        raise ConfigurationError(
            f"method='copy' needs PostgreSQL with psycopg2, not {dialect}+{driver}"
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
) -> Callable[[Connection, Sequence[Any]], int]:
    if method == "copy":
        sql = copy_sql(table, columns)
        types = [table.c[c].type for c in columns]

        def copy(conn: Connection, batch: Sequence[Any]) -> int:
            data = encode_copy(batch, types, names=columns)
            cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            base = conn.dialect.loaded_dbapi.Error
            try:
                cursor.copy_expert(sql, data)
            except base as err:  # raised as SQLAlchemy raises any driver error
                raise DBAPIError.instance(sql, None, err, base, dialect=conn.dialect) from err
            finally:
                cursor.close()
            cache = attached_cache(conn.engine)
            if cache is not None:  # COPY passes no SQLAlchemy event: say it
                cache.note_written(conn, [table.name])
            return len(batch)

        return copy
    if method == "values":
        stmt = insert(table)
        if returning is not None:
            stmt = stmt.returning(*(table.c[c] for c in returning), sort_by_parameter_order=True)

        def values(conn: Connection, batch: Sequence[Any]) -> int:
            params = [dict(zip(columns, row, strict=True)) for row in batch]
            result = conn.execute(stmt, params)
            if returning is not None:
                returned.extend(result.all())
            return len(batch)

        return values
    compiled = insert(table).compile(dialect=dialect, column_keys=list(columns))
    processors = [table.c[c].type._cached_bind_processor(dialect) for c in columns]
    convert = _converter(processors)
    key_of = {name: bind.key for bind, name in compiled.bind_names.items()}
    if dialect.positional:
        order = [columns.index(key_of[name]) for name in compiled.positiontup or ()]

        def params_of(rows: Sequence[Any]) -> list[Any]:
            return [tuple(row[i] for i in order) for row in map(convert, rows)]
    else:
        name_of = {key: name for name, key in key_of.items()}
        keys = [name_of[c] for c in columns]

        def params_of(rows: Sequence[Any]) -> list[Any]:
            return [dict(zip(keys, row, strict=True)) for row in map(convert, rows)]

    sql = compiled.string

    def executemany(conn: Connection, batch: Sequence[Any]) -> int:
        conn.exec_driver_sql(sql, params_of(batch))
        return len(batch)

    return executemany


def _converter(
    processors: Sequence[Callable[[Any], Any] | None],
) -> Callable[[Sequence[Any]], Sequence[Any]]:
    """Apply each column's bind processor (None: the driver takes the value as it is)."""
    active = [(i, p) for i, p in enumerate(processors) if p is not None]
    if not active:
        return lambda row: row

    def convert(row: Sequence[Any]) -> Sequence[Any]:
        out = list(row)
        for i, processor in active:
            if out[i] is not None:
                out[i] = processor(out[i])
        return out

    return convert
