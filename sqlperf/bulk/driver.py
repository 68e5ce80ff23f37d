"""The bulk operations' ways to the driver: compiled-once ``executemany``, raw cursors, COPY.

Each helper here sends rows to the database one way and knows nothing about
upserts or updates; the operations (``insert.py``, ``upsert.py``, ...) choose
which to call. Values always travel as driver parameters or through COPY's
escaping, never pasted into SQL.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from operator import methodcaller
from typing import Any, cast

from sqlalchemy import Connection, CursorResult, Table
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement
from sqlalchemy.types import TypeEngine

from sqlperf.bulk.copy import copy_sql, encode_copy
from sqlperf.bulk.rows import columns_of
from sqlperf.cache.query_cache import attached_cache

__all__ = [
    "ManyWriter",
    "copy_rows",
    "executemany_writer",
    "mysql_info",
    "note_written",
    "param_limit",
    "raw_execute",
]

#: Sends one batch of value tuples with ``executemany``.
ManyWriter = Callable[[Connection, Sequence[Sequence[Any]]], CursorResult[Any]]

# PostgreSQL's wire protocol counts parameters in 16 bits.
_PG_PARAMS = 65_535
# SQLite's SQLITE_MAX_VARIABLE_NUMBER before 3.32, where Python cannot ask (3.10).
_SQLITE_OLD_PARAMS = 999
_SQLITE_PARAMS = 32_766
# sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, which Python 3.10 does not define.
_SQLITE_LIMIT_VARIABLE_NUMBER = 9
# PyMySQL sends no parameters (it escapes them into the text): the packet is the limit,
# and the statements here stay far below max_allowed_packet at this many.
_MYSQL_PARAMS = 65_535

_INFO = re.compile(rb"([A-Za-z ]+):\s*(\d+)")


def executemany_writer(
    stmt: ClauseElement,
    table: Table,
    columns: Sequence[str],
    dialect: Dialect,
    rename: Mapping[str, str] | None = None,
    *,
    insert_columns: bool = True,
) -> ManyWriter:
    """Compile ``stmt`` once; return a writer sending rows of ``columns`` with ``executemany``.

    Each column's bind processor is applied here (as SQLAlchemy would), then the
    DB-API ``executemany`` gets plain tuples or dicts, without SQLAlchemy's per-row
    work. The statement goes through ``exec_driver_sql``, so event listeners (the
    query recorder, the query cache) see it.

    Args:
        stmt: an INSERT (its values from ``columns``) or any statement whose bind
            parameters are named after columns.
        table: the table ``columns`` belong to.
        columns: the column keys of each value tuple, in order.
        dialect: the dialect to compile for.
        rename: bind parameter name to column key, for binds not named after their
            column (an UPDATE's key, say).
        insert_columns: ``columns`` are the columns of an INSERT without values
            (``False`` for a statement that names its binds itself).
    """
    rename = rename or {}
    keys = list(columns) if insert_columns else None
    compiled = cast(SQLCompiler, stmt.compile(dialect=dialect, column_keys=keys))
    convert = _converter([table.c[c].type for c in columns], dialect)
    index = {c: i for i, c in enumerate(columns)}
    column_of = {name: rename.get(bind.key, bind.key) for bind, name in compiled.bind_names.items()}
    if dialect.positional:
        order = [index[column_of[name]] for name in compiled.positiontup or ()]

        def params_of(rows: Sequence[Sequence[Any]]) -> list[Any]:
            values = convert(rows)
            return list(zip(*(values[i] for i in order), strict=True))
    else:
        names = list(column_of)
        at = [index[column_of[name]] for name in names]

        def params_of(rows: Sequence[Sequence[Any]]) -> list[Any]:
            values = convert(rows)
            rows_out = zip(*(values[i] for i in at), strict=True)
            return [dict(zip(names, row, strict=True)) for row in rows_out]

    sql = compiled.string

    def write(conn: Connection, rows: Sequence[Sequence[Any]]) -> CursorResult[Any]:
        return conn.exec_driver_sql(sql, params_of(rows))

    return write


def _converter(
    types: Sequence[TypeEngine[Any]], dialect: Dialect
) -> Callable[[Sequence[Sequence[Any]]], list[Sequence[Any]]]:
    """Rows to columns, each through its column's bind processor as SQLAlchemy applies
    it to an executemany: to every value, None included (``JSON`` turns None into JSON
    ``null`` unless ``none_as_null=True``; a ``TypeDecorator`` sees it). Column by
    column: one ``map`` per processed column, and the transposition is ``zip``'s."""
    width = len(types)
    active = [
        (i, processor, _sqlite_naive_datetime(t, dialect))
        for i, t in enumerate(types)
        if (processor := t._cached_bind_processor(dialect)) is not None
    ]

    def convert(rows: Sequence[Sequence[Any]]) -> list[Sequence[Any]]:
        columns: list[Sequence[Any]] = list(columns_of(rows, width))
        for i, processor, isoformat in active:
            done = _isoformat(columns[i]) if isoformat else None
            columns[i] = done if done is not None else list(map(processor, columns[i]))
        return columns

    return convert


#: ``datetime.isoformat(" ", "microseconds")``, called from C.
_ISOFORMAT = methodcaller("isoformat", " ", "microseconds")
#: The length of that text for a naive datetime of years 1000 to 9999.
_NAIVE_LENGTH = len("2024-01-01 00:00:00.000000")


def _sqlite_naive_datetime(type_: TypeEngine[Any], dialect: Dialect) -> bool:
    """Whether the type is SQLite's ``DATETIME`` in its default storage format.

    Its processor formats with ``%`` and a dict per value; ``isoformat`` writes the
    same text for a naive ``datetime`` three times faster (a test holds the two to
    the same output).
    """
    impl = type_.dialect_impl(dialect)
    return (
        dialect.name == "sqlite"
        and type(impl) is sqlite.DATETIME
        and impl._storage_format == sqlite.DATETIME._storage_format
    )


def _isoformat(values: Sequence[Any]) -> list[str] | None:
    """Every value as SQLite's DATETIME text, or None unless all are naive datetimes."""
    if set(map(type, values)) != {datetime}:  # None, a date, a string, a subclass...
        return None
    texts = list(map(_ISOFORMAT, values))
    # An aware datetime's text has its offset too; a year before 1000 is shorter.
    return texts if set(map(len, texts)) == {_NAIVE_LENGTH} else None


def raw_execute(conn: Connection, sql: str) -> int:
    """Run ``sql`` on ``conn``'s DB-API cursor, unseen by event listeners; return its rowcount.

    For sqlperf's own housekeeping (a staging table's CREATE and DROP), which the
    query cache would otherwise take for DDL on unknown tables. Driver errors are
    raised as SQLAlchemy raises them (``IntegrityError``, ...).
    """
    with _raw_cursor(conn, sql) as cursor:
        cursor.execute(sql)
        rowcount: int = cursor.rowcount
    return rowcount


def copy_rows(
    conn: Connection,
    table: Table,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    into: str | None = None,
) -> None:
    """COPY ``rows`` into ``table`` (or the table named ``into``, e.g. a staging table).

    PostgreSQL with psycopg2 only. COPY passes no SQLAlchemy event: a caller
    writing ``table`` itself calls :func:`note_written`.
    """
    sql = copy_sql(table, columns, target=into)
    data = encode_copy(rows, [table.c[c].type for c in columns], names=columns)
    with _raw_cursor(conn, sql) as cursor:
        cursor.copy_expert(sql, data)


@contextmanager
def _raw_cursor(conn: Connection, sql: str) -> Iterator[Any]:
    """A DB-API cursor of ``conn``, closed after; driver errors raised as SQLAlchemy's."""
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    base = conn.dialect.loaded_dbapi.Error
    try:
        yield cursor
    except base as err:
        raise DBAPIError.instance(sql, None, err, base, dialect=conn.dialect) from err
    finally:
        cursor.close()


def note_written(conn: Connection, table: Table) -> None:
    """Tell the query cache attached to ``conn``'s engine, if any, that ``table`` was written.

    The cache invalidates it when the transaction commits, as for the statements
    it watches; needed for COPY and for statements it cannot attribute (a
    ``WITH ... INSERT`` whose result sqlperf counts).
    """
    cache = attached_cache(conn.engine)
    if cache is not None:
        cache.note_written(conn, [table.name])


def param_limit(conn: Connection) -> int:
    """How many bound parameters one statement may carry on ``conn``."""
    name = conn.dialect.name
    if name == "postgresql":
        return _PG_PARAMS
    if name == "sqlite":
        raw: Any = conn.connection.dbapi_connection
        getlimit = getattr(raw, "getlimit", None)  # Python 3.11+
        if getlimit is not None:
            limit: int = getlimit(_SQLITE_LIMIT_VARIABLE_NUMBER)
            return limit
        return _SQLITE_PARAMS if sqlite3.sqlite_version_info >= (3, 32) else _SQLITE_OLD_PARAMS
    return _MYSQL_PARAMS


def mysql_info(conn: Connection) -> dict[str, int]:
    """The counts of MySQL's info string for the last statement on ``conn`` (PyMySQL).

    ``{"Records": 4, "Duplicates": 2, "Warnings": 0}`` after a multi-row INSERT,
    ``{"Rows matched": 3, "Changed": 2, "Warnings": 0}`` after an UPDATE; ``{}``
    when the server sent none (a one-row INSERT) or the driver does not keep it.
    """
    raw: Any = conn.connection.dbapi_connection
    result = getattr(raw, "_result", None)  # PyMySQL keeps the last OK packet's message
    message = getattr(result, "message", None)
    if not isinstance(message, bytes):
        return {}
    return {k.decode().strip(): int(v) for k, v in _INFO.findall(message)}
