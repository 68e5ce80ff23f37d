"""PostgreSQL ``COPY ... FROM STDIN`` in text format: the statement and the data.

:func:`copy_sql` writes the statement, :func:`encode_copy` the data, ready for
psycopg2's ``cursor.copy_expert(sql, file)``::

    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.copy_expert(copy_sql(table, columns), encode_copy(values, types))
        raw.commit()
    finally:
        raw.close()

Values go through the bind processor of their column type first, as SQLAlchemy
would apply it for psycopg2: a ``JSON``/``JSONB`` value becomes its JSON text
(``None`` becomes JSON ``null`` unless the type says ``none_as_null=True``, as in
an ``INSERT``), an ``Enum`` member the string SQLAlchemy stores for it (the member
*name* unless ``values_callable`` says otherwise), ``PickleType`` bytes, and a
``TypeDecorator`` runs its ``process_bind_param``. The results are written in
PostgreSQL's text format (see "COPY, File Formats" in the PostgreSQL manual):

=========================== =====================================================
Python value                field
=========================== =====================================================
``None``                    ``\\N`` (NULL)
``str``                     the text, with ``\\``, tab, newline and carriage
                            return escaped as ``\\\\``, ``\\t``, ``\\n``, ``\\r``
``bool``                    ``t`` / ``f``
``int``                     decimal digits
``float``                   ``repr``; ``NaN``, ``Infinity``, ``-Infinity``. In an
                            ``Integer`` column a whole float is written as an int
``Decimal``                 ``str``; any NaN as ``NaN``
``bytes``, ``bytearray``,   bytea hex format, ``\\\\x0a1b...``
``memoryview``
``datetime``, ``date``,     ``isoformat()`` (aware values keep their offset)
``time``
``timedelta``               ``'D days S.UUUUUU seconds'`` (as psycopg2 sends it)
``uuid.UUID``               its canonical string
``list``/``tuple``          an array literal ``{...}``, for ``ARRAY`` columns only;
                            elements quoted, ``NULL`` for ``None``, nested lists
                            for more dimensions
=========================== =====================================================

Subclasses are written as their base (``IntEnum`` as ``int``, ``StrEnum`` as
``str``, ``pandas.Timestamp`` as ``datetime``). Any other type raises
:class:`~sqlperf.exceptions.ConfigurationError` naming the column and the type:
writing ``str(value)`` for an unknown object would store whatever its ``__str__``
happens to say. Strings containing NUL characters, which PostgreSQL text cannot
hold, are rejected by the server.
"""

from __future__ import annotations

import datetime
import io
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from functools import cache
from itertools import islice
from typing import Any, NoReturn

from sqlalchemy import ARRAY, Integer, Table
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine, to_instance

from sqlperf.bulk.rows import columns_of
from sqlperf.exceptions import ConfigurationError

__all__ = ["copy_sql", "encode_copy"]

#: Rows encoded per batch: bounds the intermediate lists, not the output.
_BATCH = 10_000

_NULL = "\\N"

_FLOAT_WORDS = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}

_NoneType = type(None)

#: A converter: one non-None value to the text of its field.
_Converter = Callable[[Any], str]


@cache
def _dialect() -> Dialect:
    """The PostgreSQL dialect whose quoting and bind processors COPY follows.

    psycopg2's: ``copy_expert`` is psycopg2's, and unlike psycopg 3's, its bind
    processors return plain values (JSON as text, not a driver wrapper). Creating it
    does not import psycopg2.
    """
    from sqlalchemy.dialects.postgresql.psycopg2 import PGDialect_psycopg2

    return PGDialect_psycopg2()  # type: ignore[no-untyped-call]  # untyped in SQLAlchemy


def copy_sql(table: Table, columns: Sequence[str], *, target: str | None = None) -> str:
    """Return the ``COPY ... FROM STDIN`` statement for ``columns`` of ``table``.

    Names are quoted by the PostgreSQL dialect's identifier preparer exactly as
    SQLAlchemy quotes them in its own statements (only where needed), so the
    statement names the same table and columns an ``INSERT`` would. The data is
    declared UTF-8, as :func:`encode_copy` writes it, whatever the connection's
    ``client_encoding``.

    Args:
        table: the table the columns belong to.
        columns: column keys (``Table.c`` keys), in the order of the data.
        target: the name of another table to copy into instead, unqualified, e.g.
            a temporary staging table with the same columns.

    Returns:
        The statement.

    Raises:
        ConfigurationError: no columns, or a key that is not a column of ``table``.

    Example::

        >>> from sqlalchemy import Column, Integer, MetaData, String, Table
        >>> t = Table("t", MetaData(), Column("id", Integer), Column("Name", String))
        >>> copy_sql(t, ["id", "Name"])
        'COPY t (id, "Name") FROM STDIN WITH (FORMAT text, ENCODING \\'UTF8\\')'
    """
    if isinstance(columns, str):
        columns = (columns,)
    if not columns:
        raise ConfigurationError("COPY needs at least one column")
    preparer = _dialect().identifier_preparer
    names = []
    for key in columns:
        if key not in table.c:
            raise ConfigurationError(
                f"{key!r} is not a column of {table.fullname} "
                f"(its columns: {', '.join(table.c.keys())})"
            )
        names.append(preparer.format_column(table.c[key]))
    into = preparer.quote(target) if target is not None else preparer.format_table(table)
    return f"COPY {into} ({', '.join(names)}) FROM STDIN WITH (FORMAT text, ENCODING 'UTF8')"


def encode_copy(
    values: Iterable[Sequence[Any]],
    types: Sequence[TypeEngine[Any] | type[TypeEngine[Any]]],
    *,
    names: Sequence[str] | None = None,
) -> io.BytesIO:
    """Encode rows as PostgreSQL ``COPY`` text-format data.

    Args:
        values: the rows, each a sequence aligned with ``types``; iterated once.
        types: the SQLAlchemy type of each column (``table.c[key].type``).
        names: the column names, for error messages only (default: ``column 0``...).

    Returns:
        A ``BytesIO`` positioned at 0 holding the UTF-8 data, one line per row.

    Raises:
        ConfigurationError: a row whose length differs from ``types``, a value of a
            type COPY cannot write here (see the module documentation), or one the
            column type's bind processor refuses.

    Example::

        >>> from sqlalchemy import Integer, String
        >>> encode_copy([(1, "a\\tb"), (2, None)], [Integer(), String()]).getvalue()
        b'1\\ta\\\\tb\\n2\\t\\\\N\\n'
    """
    if not types:
        raise ConfigurationError("COPY needs at least one column")
    if names is not None:
        labels = [f"column {i} ({name!r})" for i, name in enumerate(names)]
    else:
        labels = [f"column {i}" for i in range(len(types))]
    columns = [_Column(to_instance(t), label) for t, label in zip(types, labels, strict=True)]
    width = len(columns)
    out = io.BytesIO()
    iterator = iter(values)
    offset = 0
    while batch := list(islice(iterator, _BATCH)):
        if isinstance(batch[0], (Mapping, str, bytes)):
            raise ConfigurationError(
                f"row {offset} is a {type(batch[0]).__name__}; encode_copy takes sequences "
                "of values in column order (prepare_rows makes them from mappings)"
            )
        cells_of = columns_of(batch, width, offset=offset)
        fields = [
            column.encode(cells, offset) for column, cells in zip(columns, cells_of, strict=True)
        ]
        text = "\n".join(map("\t".join, zip(*fields, strict=True)))
        out.write(text.encode("utf-8"))
        out.write(b"\n")
        offset += len(batch)
    out.seek(0)
    return out


# -- one column ------------------------------------------------------------------------


def _escape(text: str) -> str:
    """``text`` escaped for a COPY text-format field."""
    # Four replaces beat str.translate with a mapping by about five times.
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _escape_strings(cells: Sequence[str | None]) -> list[str]:
    """The fields of a column of strings and Nones."""
    null = _NULL
    joined = "".join([v for v in cells if v is not None])
    if "\\" in joined or "\t" in joined or "\n" in joined or "\r" in joined:
        return [null if v is None else _escape(v) for v in cells]
    return [null if v is None else v for v in cells]


def _raw_int(value: int) -> str:
    return int.__repr__(value)  # digits, even for an IntEnum


def _raw_bool(value: bool) -> str:
    return "t" if value else "f"


def _raw_float(value: float) -> str:
    text = float.__repr__(value)
    return _FLOAT_WORDS.get(text, text)


def _raw_whole_float(value: float) -> str:
    # An Integer column: 3.0 (pandas' integers with missing values) is written 3.
    if value.is_integer():
        return int.__repr__(int(value))
    return _raw_float(value)


def _raw_decimal(value: Decimal) -> str:
    return "NaN" if value.is_nan() else Decimal.__str__(value)


def _raw_bytes(value: bytes | bytearray | memoryview) -> str:
    return "\\x" + value.hex()


def _raw_timedelta(value: datetime.timedelta) -> str:
    return f"{value.days} days {value.seconds}.{value.microseconds:06d} seconds"


def _raw_str(value: str) -> str:
    return str.__str__(value)


#: Raw (unescaped) text of a value by its exact type, and whether it may need escaping.
_RAW: dict[type, tuple[_Converter, bool]] = {
    str: (_raw_str, True),
    int: (_raw_int, False),
    bool: (_raw_bool, False),
    float: (_raw_float, False),
    Decimal: (_raw_decimal, False),
    bytes: (_raw_bytes, True),
    bytearray: (_raw_bytes, True),
    memoryview: (_raw_bytes, True),
    datetime.datetime: (datetime.datetime.isoformat, False),
    datetime.date: (datetime.date.isoformat, False),
    datetime.time: (datetime.time.isoformat, False),
    datetime.timedelta: (_raw_timedelta, False),
    uuid.UUID: (uuid.UUID.__str__, False),
}


def _raw_for(
    kind: type, table: Mapping[type, tuple[_Converter, bool]] = _RAW
) -> tuple[_Converter, bool] | None:
    """The raw converter in ``table`` for values of ``kind``: its own, or its nearest base's."""
    found = table.get(kind)
    if found is not None:
        return found
    if kind.__name__ == "NaTType":  # pandas' NaT is a datetime but has no date
        return None
    for base in kind.__mro__[1:]:
        found = table.get(base)
        if found is not None:
            return found
    return None


def _type_name(kind: type) -> str:
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


class _Column:
    """Encodes the values of one column: bind processor, then per-type converters."""

    __slots__ = ("array", "integral", "label", "process", "type")

    def __init__(self, type_: TypeEngine[Any], label: str) -> None:
        dialect = _dialect()
        self.type = type_
        self.label = label
        self.process = type_.dialect_impl(dialect).bind_processor(dialect)
        base = type_.impl_instance if isinstance(type_, TypeDecorator) else type_
        self.array = isinstance(base, ARRAY)
        self.integral = isinstance(base, Integer)

    def encode(self, cells: Sequence[Any], offset: int) -> list[str]:
        """The fields of ``cells``, the values of this column in rows from ``offset``."""
        if self.process is not None:
            cells = self._processed(cells, offset)
        kinds = set(map(type, cells))
        nulls = _NoneType in kinds
        kinds.discard(_NoneType)
        if not kinds:
            return [_NULL] * len(cells)
        null = _NULL
        if len(kinds) == 1:
            return self._one_kind(next(iter(kinds)), cells, offset, nulls=nulls)
        by_kind = {kind: self._converter(kind, cells, offset) for kind in kinds}
        by_kind[_NoneType] = lambda _: null
        return [by_kind[type(v)](v) for v in cells]

    def _one_kind(self, kind: type, cells: Sequence[Any], offset: int, *, nulls: bool) -> list[str]:
        """The fields of a column whose values are all of ``kind`` or None."""
        # The commonest types without a Python call per value.
        if kind is str:
            return _escape_strings(cells)
        if kind is int and not nulls:
            return list(map(int.__repr__, cells))
        if kind is Decimal and not nulls and not any(map(Decimal.is_nan, cells)):
            return list(map(Decimal.__str__, cells))
        convert = self._converter(kind, cells, offset)
        if not nulls:
            return list(map(convert, cells))
        null = _NULL
        return [null if v is None else convert(v) for v in cells]

    def _processed(self, cells: Sequence[Any], offset: int) -> list[Any]:
        process = self.process
        assert process is not None
        try:  # to None too, as SQLAlchemy does: a TypeDecorator may store something for it
            return list(map(process, cells))
        except (TypeError, ValueError, LookupError) as exc:
            row = offset + self._failing_row(cells, process)
            raise ConfigurationError(
                f"{self.label}, {self.type!r}, row {row}: the type refuses the value: {exc}"
            ) from exc

    def _failing_row(self, cells: Sequence[Any], process: Callable[[Any], Any]) -> int:
        for index, value in enumerate(cells):
            try:
                process(value)
            except (TypeError, ValueError, LookupError):
                return index
        return 0  # pragma: no cover - the batch failed, so some value does

    def _converter(self, kind: type, cells: Sequence[Any], offset: int) -> _Converter:
        """An escaped converter for non-None values of ``kind`` in this column."""
        if issubclass(kind, (list, tuple)) and self.array:
            return lambda v: _escape(self._array(v, cells, offset))
        found = _raw_for(kind)
        if found is None:
            self._unsupported(kind, cells, offset)
        convert, needs_escape = found
        if convert is _raw_float and self.integral:
            convert = _raw_whole_float
        if needs_escape:
            raw = convert
            return lambda v: _escape(raw(v))
        return convert

    def _array(self, value: Sequence[Any], cells: Sequence[Any], offset: int) -> str:
        """A PostgreSQL array literal, unescaped: ``{"1","2",NULL}``, nested for dimensions."""
        parts = []
        for item in value:
            if item is None:
                parts.append("NULL")
            elif isinstance(item, (list, tuple)):
                parts.append(self._array(item, cells, offset))
            else:
                found = _raw_for(type(item))
                if found is None:
                    self._unsupported(type(item), cells, offset, in_array=True)
                text = found[0](item).replace("\\", "\\\\").replace('"', '\\"')
                parts.append(f'"{text}"')
        return "{" + ",".join(parts) + "}"

    def _unsupported(
        self, kind: type, cells: Sequence[Any], offset: int, *, in_array: bool = False
    ) -> NoReturn:
        row = next(
            (i for i, v in enumerate(cells) if type(v) is kind or _holds(v, kind)),
            0,
        )
        what = "an array element" if in_array else "a value"
        if kind.__name__ == "NaTType" or kind.__module__.startswith("numpy"):
            hint = "; convert numpy and pandas values first, e.g. with sqlperf's prepare_rows"
        elif issubclass(kind, (list, tuple, dict)):
            hint = "; only JSON and ARRAY columns take lists and dicts"
        else:
            hint = "; convert it to a str, int, float, Decimal, date/time, bytes or UUID first"
        raise ConfigurationError(
            f"{self.label}, {self.type!r}, row {offset + row}: {what} of type "
            f"{_type_name(kind)}, which COPY cannot write{hint}"
        )


def _holds(value: Any, kind: type) -> bool:
    """Whether the (nested) list ``value`` has an element of type ``kind``."""
    if not isinstance(value, (list, tuple)):
        return False
    return any(type(item) is kind or _holds(item, kind) for item in value)
