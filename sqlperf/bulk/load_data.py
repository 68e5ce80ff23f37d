"""MySQL/MariaDB ``LOAD DATA LOCAL INFILE``: the statement, the data file, and the load.

``LOAD DATA LOCAL`` is to PyMySQL what ``COPY`` is to psycopg2: the client sends a
file of tab-separated rows and the server parses it, without one SQL literal per
value. :func:`load_data` does all of it on a SQLAlchemy connection::

    engine = create_optimized_engine(url, connect_args={"local_infile": True})
    with engine.begin() as conn:
        if local_infile_enabled(conn):
            load_data(conn, table, ["id", "name"], [(1, "a"), (2, "b")])

:func:`load_data_sql` writes the statement and :func:`encode_load_data` the data,
for callers that manage the file themselves.

Values go through the bind processor of their column type for the connection's
dialect first (PyMySQL's ``mysql`` dialect when :func:`encode_load_data` is given
none), exactly as in an ``INSERT`` through SQLAlchemy: a ``JSON`` value
becomes its JSON text (``None`` becomes JSON ``null`` unless the type says
``none_as_null=True``), an ``Enum`` member the string SQLAlchemy stores for it, a
``Uuid`` what the dialect stores (32 hex digits in ``CHAR(32)`` on the ``mysql``
dialect), ``PickleType`` bytes, and a ``TypeDecorator`` runs its
``process_bind_param``. The results are written as the fields the statement
declares (``FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' LINES TERMINATED BY
'\\n'``, UTF-8), each stored as PyMySQL's literal for the same value would be:

=========================== =====================================================
Python value                field
=========================== =====================================================
``None``                    ``\\N`` (NULL)
``str``                     the text, with ``\\``, tab, newline, carriage return
                            and NUL escaped as ``\\\\``, ``\\t``, ``\\n``, ``\\r``,
                            ``\\0``; the word ``NULL`` and ``''`` stay strings
``bool``                    ``1`` / ``0``
``int``                     decimal digits
``float``                   ``repr``; in an ``Integer`` column rounded to an int,
                            half to even, as the server rounds the float of an
                            ``INSERT``. NaN and infinities, which MySQL cannot
                            store, are refused
``Decimal``                 positional digits (``format(value, "f")``, as
                            PyMySQL writes them); NaN and infinities are refused
``bytes``, ``bytearray``,   hex digits, turned back into bytes by the statement's
``memoryview``              ``SET column = UNHEX(@variable)``; binary columns
                            (``LargeBinary``, ``BLOB``, ``VARBINARY``...) only
``datetime``                ``YYYY-MM-DD HH:MM:SS[.ffffff]``; an aware value is
                            written in its own wall-clock time without the offset,
                            which is what PyMySQL sends in an ``INSERT``
``date``                    ``YYYY-MM-DD``
``time``                    ``HH:MM:SS[.ffffff]`` (any offset dropped, as above)
``timedelta``               ``[-]HH:MM:SS[.ffffff]``, hours past 24 for ``TIME``
``uuid.UUID``               its canonical string
=========================== =====================================================

``mysql.BIT`` columns are filled by ``SET column = CAST(@variable AS UNSIGNED)``:
a plain field would store the digits' characters. Subclasses are written as their
base (``IntEnum`` as ``int``, ``StrEnum`` as ``str``, ``pandas.Timestamp`` as
``datetime``). Any other type raises :class:`~sqlperf.exceptions.ConfigurationError`
naming the column and the type. A float in a text column is stored as Python's
``repr`` (``1e+100``), not as the server's own float formatting (``1e100``).

``LOAD DATA LOCAL`` never fails on a bad value: even in strict mode the server
truncates, coerces or skips it and records a warning, because it cannot stop the
client mid-file. :func:`load_data` therefore turns every warning into a
:class:`~sqlperf.exceptions.ConfigurationError`; the rows already loaded stay in
the caller's transaction until it rolls back. Notes (a ``Decimal`` rounded to the
column's scale), which an ``INSERT`` records as well without failing, are not
recorded during the load.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from decimal import Decimal
from functools import cache
from itertools import islice
from pathlib import Path
from typing import Any, NoReturn

from sqlalchemy import Connection, CursorResult, Integer, Table
from sqlalchemy.dialects.mysql import BIT
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.sqltypes import _Binary
from sqlalchemy.types import TypeDecorator, TypeEngine, to_instance

from sqlperf.bulk.copy import (
    _BATCH,
    _NULL,
    _Column,
    _Converter,
    _NoneType,
    _raw_for,
    _raw_int,
    _raw_str,
    _type_name,
)
from sqlperf.bulk.rows import columns_of
from sqlperf.exceptions import ConfigurationError

__all__ = ["encode_load_data", "load_data", "load_data_sql", "local_infile_enabled"]

#: Key of the server's ``@@local_infile`` in the pooled DBAPI connection's ``info``.
_INFO_KEY = "sqlperf_local_infile"

#: Warnings quoted in the error raised for a load that had some.
_QUOTED_WARNINGS = 3

#: Characters refused in the data file's path, which is pasted into a SQL string.
_PATH_FORBIDDEN = frozenset("'\"\\") | frozenset(map(chr, range(32))) | {"\x7f"}

_BYTES_TYPES = (bytes, bytearray, memoryview)


@cache
def _dialect() -> Dialect:
    """The MySQL dialect whose quoting and bind processors LOAD DATA follows by default.

    PyMySQL's, the driver whose ``local_infile`` :func:`load_data` uses. Creating it
    does not import PyMySQL.
    """
    from sqlalchemy.dialects.mysql.pymysql import MySQLDialect_pymysql

    return MySQLDialect_pymysql()


# -- the statement ---------------------------------------------------------------------


def load_data_sql(table: Table, columns: Sequence[str], path: str) -> str:
    """Return the ``LOAD DATA LOCAL INFILE`` statement for ``columns`` of ``table``.

    Names are quoted by the MySQL dialect's identifier preparer exactly as
    SQLAlchemy quotes them in its own statements. The file is declared utf8mb4,
    tab-separated, backslash-escaped and newline-terminated, as
    :func:`encode_load_data` writes it. Binary columns are read into user variables
    ``@sqlperf_<n>`` (``n`` the column's position) and stored by ``SET column =
    UNHEX(@sqlperf_<n>)``; ``mysql.BIT`` columns by ``CAST(... AS UNSIGNED)``.

    The statement is meant for ``conn.exec_driver_sql(sql)``, which passes it through
    PyMySQL's ``%`` formatting: like the names SQLAlchemy's MySQL preparer quotes, the
    path has its ``%`` doubled.

    Args:
        table: the table the columns belong to.
        columns: column keys (``Table.c`` keys), in the order of the data.
        path: the data file on the client. It is pasted into the statement, so it
            may not contain quotes, backslashes or control characters (use forward
            slashes on Windows).

    Returns:
        The statement.

    Raises:
        ConfigurationError: no columns, a key that is not a column of ``table``, or
            a path with a character listed above.

    Example::

        >>> from sqlalchemy import Column, Integer, LargeBinary, MetaData, Table
        >>> t = Table("t", MetaData(), Column("id", Integer), Column("order", Integer),
        ...           Column("data", LargeBinary))
        >>> print(load_data_sql(t, ["id", "order", "data"], "/tmp/rows.tsv"))
        LOAD DATA LOCAL INFILE '/tmp/rows.tsv' INTO TABLE t CHARACTER SET utf8mb4 \
FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' LINES TERMINATED BY '\\n' \
(id, `order`, @sqlperf_2) SET data = UNHEX(@sqlperf_2)
    """
    keys = _column_keys(table, columns)
    _check_path(path)
    preparer = _dialect().identifier_preparer
    targets = []
    assignments = []
    for position, key in enumerate(keys):
        column = table.c[key]
        name = preparer.format_column(column)
        expression = _set_expression(to_instance(column.type))
        if expression is None:
            targets.append(name)
        else:
            variable = f"@sqlperf_{position}"
            targets.append(variable)
            assignments.append(f"{name} = {expression.format(variable)}")
    literal = path.replace("%", "%%")
    sql = (
        f"LOAD DATA LOCAL INFILE '{literal}' INTO TABLE {preparer.format_table(table)} "
        "CHARACTER SET utf8mb4 FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' "
        f"LINES TERMINATED BY '\\n' ({', '.join(targets)})"
    )
    if assignments:
        sql += f" SET {', '.join(assignments)}"
    return sql


def _column_keys(table: Table, columns: Sequence[str]) -> Sequence[str]:
    if isinstance(columns, str):
        columns = (columns,)
    if not columns:
        raise ConfigurationError("LOAD DATA needs at least one column")
    for key in columns:
        if key not in table.c:
            raise ConfigurationError(
                f"{key!r} is not a column of {table.fullname} "
                f"(its columns: {', '.join(table.c.keys())})"
            )
    return columns


def _check_path(path: str) -> None:
    if not isinstance(path, str) or not path:
        raise ConfigurationError(f"the LOAD DATA file path must be a non-empty str, not {path!r}")
    bad = sorted(_PATH_FORBIDDEN.intersection(path))
    if bad:
        raise ConfigurationError(
            f"the LOAD DATA file path {path!r} contains {', '.join(map(repr, bad))}: it is "
            "pasted into the statement, so quotes, backslashes and control characters are "
            "refused (set TMPDIR to a plain directory; use forward slashes on Windows)"
        )


def _base_type(type_: TypeEngine[Any]) -> TypeEngine[Any]:
    """The type under any ``TypeDecorator``\\ s."""
    while isinstance(type_, TypeDecorator):
        type_ = type_.impl_instance
    return type_


def _set_expression(type_: TypeEngine[Any]) -> str | None:
    """``SET`` expression (``{}`` for the variable) for a column that a field cannot fill."""
    base = _base_type(type_)
    if isinstance(base, BIT):
        return "CAST({} AS UNSIGNED)"
    if isinstance(base, _Binary):
        return "UNHEX({})"
    return None


# -- the data ----------------------------------------------------------------------------


def encode_load_data(
    values: Iterable[Sequence[Any]],
    types: Sequence[TypeEngine[Any] | type[TypeEngine[Any]]],
    *,
    names: Sequence[str] | None = None,
    dialect: Dialect | None = None,
) -> bytes:
    """Encode rows as the data file of :func:`load_data_sql`'s statement.

    Args:
        values: the rows, each a sequence aligned with ``types``; iterated once.
        types: the SQLAlchemy type of each column (``table.c[key].type``).
        names: the column names, for error messages only (default: ``column 0``...).
        dialect: whose bind processors to apply: the connection's (``conn.dialect``),
            so that an engine's ``json_serializer`` or the ``mariadb`` dialect's
            native ``UUID`` apply as in its ``INSERT``\\ s. Default: PyMySQL's
            ``mysql`` dialect.

    Returns:
        The UTF-8 data, one line per row.

    Raises:
        ConfigurationError: a row whose length differs from ``types``, a value of a
            type LOAD DATA cannot write here (see the module documentation), or one
            the column type's bind processor refuses.

    Example::

        >>> from sqlalchemy import Integer, LargeBinary, String
        >>> encode_load_data([(1, "a\\tb", b"\\x00"), (2, None, None)],
        ...                  [Integer(), String(), LargeBinary()])
        b'1\\ta\\\\tb\\t00\\n2\\t\\\\N\\t\\\\N\\n'
    """
    return b"".join(data for data, _ in _encode_batches(values, types, names, dialect))


def _encode_batches(
    values: Iterable[Sequence[Any]],
    types: Sequence[TypeEngine[Any] | type[TypeEngine[Any]]],
    names: Sequence[str] | None,
    dialect: Dialect | None,
) -> Iterator[tuple[bytes, int]]:
    """The data a batch of rows at a time, with the number of rows in each batch."""
    if not types:
        raise ConfigurationError("LOAD DATA needs at least one column")
    if names is not None:
        labels = [f"column {i} ({name!r})" for i, name in enumerate(names)]
    else:
        labels = [f"column {i}" for i in range(len(types))]
    dialect = dialect or _dialect()
    columns = [
        _LoadColumn(to_instance(t), label, dialect) for t, label in zip(types, labels, strict=True)
    ]
    width = len(columns)
    iterator = iter(values)
    offset = 0
    while batch := list(islice(iterator, _BATCH)):
        if isinstance(batch[0], (Mapping, str, bytes)):
            raise ConfigurationError(
                f"row {offset} is a {type(batch[0]).__name__}; encode_load_data takes "
                "sequences of values in column order (prepare_rows makes them from mappings)"
            )
        cells_of = columns_of(batch, width, offset=offset)
        fields = [
            column.encode(cells, offset) for column, cells in zip(columns, cells_of, strict=True)
        ]
        lines = list(map("\t".join, zip(*fields, strict=True)))
        lines.append("")  # every line ends with a newline
        text = "\n".join(lines)
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as exc:
            _encoding_error(fields, columns, offset, exc)
        yield data, len(batch)
        offset += len(batch)


def _encoding_error(
    fields: list[list[str]], columns: list[_LoadColumn], offset: int, exc: UnicodeEncodeError
) -> NoReturn:
    """Raise for the first field that is not valid UTF-8 (a lone surrogate)."""
    for column, cells in zip(columns, fields, strict=True):
        for index, field in enumerate(cells):
            try:
                field.encode("utf-8")
            except UnicodeEncodeError as found:
                raise ConfigurationError(
                    f"{column.label}, {column.type!r}, row {offset + index}: the text cannot "
                    f"be written as UTF-8: {found}"
                ) from exc
    raise AssertionError("unreachable: no field fails to encode") from exc  # pragma: no cover


# -- one column ------------------------------------------------------------------------


class _Unstorable(ValueError):
    """A value MySQL has no representation for (a float or Decimal NaN or infinity)."""


def _escape(text: str) -> str:
    """``text`` escaped for a LOAD DATA field (``ESCAPED BY '\\\\'``)."""
    return (
        text.replace("\\", "\\\\")
        .replace("\t", "\\t")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\0", "\\0")
    )


def _escape_strings(cells: Sequence[str | None]) -> list[str]:
    """The fields of a column of strings and Nones."""
    null = _NULL
    joined = "".join([v for v in cells if v is not None])
    if "\\" in joined or "\t" in joined or "\n" in joined or "\r" in joined or "\0" in joined:
        return [null if v is None else _escape(v) for v in cells]
    return [null if v is None else v for v in cells]


def _raw_bool(value: bool) -> str:
    return "1" if value else "0"


def _raw_float(value: float) -> str:
    text = float.__repr__(value)
    if text in ("nan", "inf", "-inf"):
        raise _Unstorable(f"{text} cannot be stored in MySQL")
    return text


def _raw_rounded_float(value: float) -> str:
    # An Integer column: 3.0 (pandas' integers with missing values) is written 3, and
    # 2.5 is 2: rounded half to even, as the server rounds the double of an INSERT
    # (it would round the text "2.5" half away from zero).
    if not math.isfinite(value):
        raise _Unstorable(f"{float.__repr__(value)} cannot be stored in MySQL")
    return int.__repr__(round(value))


def _raw_decimal(value: Decimal) -> str:
    if not value.is_finite():
        raise _Unstorable(f"Decimal {Decimal.__str__(value)} cannot be stored in MySQL")
    return Decimal.__format__(value, "f")


def _raw_hex(value: bytes | bytearray | memoryview) -> str:
    return value.hex()


def _raw_datetime(value: datetime.datetime) -> str:
    # The base isoformat: no offset past [:26], no pandas nanoseconds.
    text = datetime.datetime.isoformat(value, " ")
    return text[:26] if value.microsecond else text[:19]


def _raw_time(value: datetime.time) -> str:
    text = datetime.time.isoformat(value)
    return text[:15] if value.microsecond else text[:8]


def _raw_timedelta(value: datetime.timedelta) -> str:
    # PyMySQL's escape_timedelta: the sign in front, hours past 24.
    sign = ""
    if value.days < 0:
        sign = "-"
        value = -value
    minutes, seconds = divmod(value.seconds, 60)
    hours, minutes = divmod(minutes, 60)
    hours += value.days * 24
    text = f"{sign}{hours:02d}:{minutes:02d}:{seconds:02d}"
    return f"{text}.{value.microseconds:06d}" if value.microseconds else text


#: Raw (unescaped) text of a value by its exact type, and whether it may need escaping.
_RAW: dict[type, tuple[_Converter, bool]] = {
    str: (_raw_str, True),
    int: (_raw_int, False),
    bool: (_raw_bool, False),
    float: (_raw_float, False),
    Decimal: (_raw_decimal, False),
    bytes: (_raw_hex, False),
    bytearray: (_raw_hex, False),
    memoryview: (_raw_hex, False),
    datetime.datetime: (_raw_datetime, False),
    datetime.date: (datetime.date.isoformat, False),
    datetime.time: (_raw_time, False),
    datetime.timedelta: (_raw_timedelta, False),
    uuid.UUID: (uuid.UUID.__str__, False),
}


def _is_unstorable(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    return isinstance(value, Decimal) and not value.is_finite()


class _LoadColumn(_Column):
    """Encodes the values of one column for LOAD DATA.

    It shares COPY's bind-processor step (``_processed``, which names the row a
    type refuses) and replaces the conversion of the processed values.
    """

    __slots__ = ("binary",)

    def __init__(self, type_: TypeEngine[Any], label: str, dialect: Dialect) -> None:
        # Not _Column.__init__: that one binds for PostgreSQL.
        self.type = type_
        self.label = label
        self.process = type_._cached_bind_processor(dialect)
        base = _base_type(type_)
        self.array = False
        self.integral = isinstance(base, Integer)
        self.binary = isinstance(base, _Binary)

    def encode(self, cells: Sequence[Any], offset: int) -> list[str]:
        """The fields of ``cells``, the values of this column in rows from ``offset``."""
        if self.process is not None:
            cells = self._processed(cells, offset)
        kinds = set(map(type, cells))
        kinds.discard(_NoneType)
        if not kinds:
            return [_NULL] * len(cells)
        null = _NULL
        try:
            if len(kinds) == 1:
                (kind,) = kinds
                # The commonest types inline, without a Python call per value.
                if kind is str and not self.binary:
                    return _escape_strings(cells)
                if kind is int and not self.binary:
                    return [null if v is None else repr(v) for v in cells]
                convert = self._converter(kind, cells, offset)
                return [null if v is None else convert(v) for v in cells]
            by_kind = {kind: self._converter(kind, cells, offset) for kind in kinds}
            by_kind[_NoneType] = lambda _: null
            return [by_kind[type(v)](v) for v in cells]
        except _Unstorable as exc:
            row = offset + next((i for i, v in enumerate(cells) if _is_unstorable(v)), 0)
            raise ConfigurationError(f"{self.label}, {self.type!r}, row {row}: {exc}") from None

    def _converter(self, kind: type, cells: Sequence[Any], offset: int) -> _Converter:
        """An escaped converter for non-None values of ``kind`` in this column."""
        found = _raw_for(kind, _RAW)
        if found is None or self.binary != issubclass(kind, _BYTES_TYPES):
            self._refuse(kind, cells, offset)
        convert, needs_escape = found
        if convert is _raw_float and self.integral:
            convert = _raw_rounded_float
        if needs_escape:
            raw = convert
            return lambda v: _escape(raw(v))
        return convert

    def _refuse(self, kind: type, cells: Sequence[Any], offset: int) -> NoReturn:
        row = next((i for i, v in enumerate(cells) if type(v) is kind), 0)
        if self.binary:
            hint = "; a binary column takes bytes, bytearray or memoryview"
        elif issubclass(kind, _BYTES_TYPES):
            hint = (
                "; bytes go into binary columns only (LargeBinary, BLOB, VARBINARY...), "
                "which LOAD DATA fills with UNHEX()"
            )
        elif kind.__name__ == "NaTType" or kind.__module__.startswith("numpy"):
            hint = "; convert numpy and pandas values first, e.g. with sqlperf's prepare_rows"
        elif issubclass(kind, (list, tuple, dict)):
            hint = "; only JSON columns take lists and dicts"
        else:
            hint = "; convert it to a str, int, float, Decimal, date/time or UUID first"
        raise ConfigurationError(
            f"{self.label}, {self.type!r}, row {offset + row}: a value of type "
            f"{_type_name(kind)}, which LOAD DATA cannot write{hint}"
        )


# -- the connection ----------------------------------------------------------------------


def local_infile_enabled(conn: Connection) -> bool:
    """Whether ``LOAD DATA LOCAL INFILE`` can be used on ``conn``.

    True when the dialect is ``mysql`` or ``mariadb`` with PyMySQL, the PyMySQL
    connection was opened with ``local_infile=True`` (``connect_args={"local_infile":
    True}``), and the server's ``@@local_infile`` is on. The server is asked once per
    pooled DBAPI connection; the answer is kept in its ``info`` dict under
    ``"sqlperf_local_infile"`` (a later ``SET GLOBAL local_infile`` is not seen by
    connections that already asked).

    Note that a PyMySQL connection opened with ``local_infile=True`` sends the server
    any client file the server names in its reply to a ``LOAD DATA LOCAL``: enable it
    for servers you trust.
    """
    return _local_infile_problem(conn) is None


def _local_infile_problem(conn: Connection) -> str | None:
    """Why LOAD DATA LOCAL cannot be used on ``conn``, or None when it can."""
    dialect = conn.dialect
    if dialect.name not in ("mysql", "mariadb") or dialect.driver != "pymysql":
        return f"it needs MySQL or MariaDB with PyMySQL, not {dialect.name}+{dialect.driver}"
    proxied = conn.connection
    if getattr(proxied.dbapi_connection, "_local_infile", False) is not True:
        return (
            "the PyMySQL connection was opened without local_infile: create the engine "
            'with connect_args={"local_infile": True}'
        )
    info = proxied.info
    enabled = info.get(_INFO_KEY)
    if enabled is None:
        value = conn.exec_driver_sql("SELECT @@local_infile").scalar()
        enabled = info[_INFO_KEY] = str(value).upper() in ("1", "ON")
    if not enabled:
        return "the server has local_infile off (SET GLOBAL local_infile = 1)"
    return None


def load_data(
    conn: Connection, table: Table, columns: Sequence[str], values: Sequence[Sequence[Any]]
) -> int:
    """Insert ``values`` into ``columns`` of ``table`` with ``LOAD DATA LOCAL INFILE``.

    The rows are encoded (see the module documentation) into a temporary file,
    readable by its owner only and deleted afterwards, which PyMySQL sends to the
    server. Notes are not recorded during the load (``sql_notes`` is restored
    after), and the ``@sqlperf_<n>`` variables of binary columns are cleared.

    Args:
        conn: a connection of a ``mysql``/``mariadb`` engine with PyMySQL and
            ``connect_args={"local_infile": True}``; the rows join its transaction.
        table: the table the columns belong to.
        columns: column keys (``Table.c`` keys), in the order of the values.
        values: the rows, each a sequence aligned with ``columns``.

    Returns:
        The number of rows inserted.

    Raises:
        ConfigurationError: LOAD DATA LOCAL cannot be used on ``conn`` (see
            :func:`local_infile_enabled`), a column or value :func:`load_data_sql` or
            :func:`encode_load_data` refuses.
        sqlalchemy.exc.DBAPIError: the server or driver failed, as SQLAlchemy raises it;
            or the server reported warnings, where an INSERT would have failed: a
            duplicate key (``IntegrityError``: LOAD DATA skips the row), a value
            truncated or coerced (``DataError``). The message quotes the first
            warnings. The rows loaded stay in the transaction: roll it back (on an
            ``AUTOCOMMIT`` connection they are committed).
    """
    keys = _column_keys(table, columns)
    problem = _local_infile_problem(conn)
    if problem is not None:
        raise ConfigurationError(f"LOAD DATA LOCAL cannot be used on this connection: {problem}")
    types = [table.c[key].type for key in keys]
    with tempfile.NamedTemporaryFile(
        "wb", prefix="sqlperf_load_", suffix=".tsv", delete=False
    ) as file:
        try:
            rows = 0
            for data, count in _encode_batches(values, types, keys, conn.dialect):
                file.write(data)
                rows += count
            file.close()  # flushed, and readable by name on Windows too
            if not rows:
                return 0
            sql = load_data_sql(table, keys, Path(file.name).as_posix())
            variables = [f"@sqlperf_{i}" for i, t in enumerate(types) if _set_expression(t)]
            return _execute(conn, table, sql, rows, variables)
        finally:
            os.unlink(file.name)


def _execute(conn: Connection, table: Table, sql: str, rows: int, variables: list[str]) -> int:
    """Run the statement with notes off; raise on warnings; restore the session."""
    conn.exec_driver_sql("SET @sqlperf_sql_notes = @@session.sql_notes, SESSION sql_notes = 0")
    restore = ", ".join(
        ["SESSION sql_notes = @sqlperf_sql_notes", "@sqlperf_sql_notes = NULL"]
        + [f"{v} = NULL" for v in variables]
    )
    try:
        result = conn.exec_driver_sql(sql)
        warnings = _warnings(conn, result)
    except BaseException:
        if not conn.invalidated:
            with contextlib.suppress(Exception):  # the first error is the one to report
                conn.exec_driver_sql(f"SET {restore}")
        raise
    conn.exec_driver_sql(f"SET {restore}")
    if warnings:
        raise _warning_error(conn, table, sql, *warnings)
    loaded = result.rowcount
    if loaded != rows:
        raise ConfigurationError(
            f"LOAD DATA into {table.fullname} sent {rows} rows but the server stored {loaded} "
            "(roll back)"
        )
    return loaded


def _warning_error(
    conn: Connection, table: Table, sql: str, count: int, shown: list[tuple[str, int, str]]
) -> DBAPIError:
    """The error an INSERT of the same rows would have raised: a duplicate key an
    ``IntegrityError``, a truncated value a ``DataError`` (the first warning's code, as
    PyMySQL maps it), with every warning quoted."""
    import pymysql.err

    quoted = "; ".join(f"{level} {code}: {message}" for level, code, message in shown)
    code = shown[0][1] if shown else 0
    kind = pymysql.err.error_map.get(code, pymysql.err.DataError)
    orig = kind(
        code,
        f"LOAD DATA into {table.fullname}: the server reported {count} warning(s), so "
        f"values were truncated or coerced or rows skipped: {quoted}",
    )
    base = conn.dialect.loaded_dbapi.Error
    error = DBAPIError.instance(sql, None, orig, base, dialect=conn.dialect)
    assert isinstance(error, DBAPIError)  # orig is a driver error: always one
    return error


def _warnings(
    conn: Connection, result: CursorResult[Any]
) -> tuple[int, list[tuple[str, int, str]]] | None:
    """The server's warning count and the first warnings of the last statement, if any."""
    count = getattr(result.context.cursor, "warning_count", None)
    if count is None:  # not PyMySQL's cursor: ask
        count = conn.exec_driver_sql("SELECT @@warning_count").scalar()
    if not count:
        return None
    shown = conn.exec_driver_sql(f"SHOW WARNINGS LIMIT {_QUOTED_WARNINGS}").all()
    return int(count), [(str(r[0]), int(r[1]), str(r[2])) for r in shown]
