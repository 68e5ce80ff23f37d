"""Turn the rows a caller hands to the bulk operations into checked columns and tuples.

The bulk operations accept rows in three shapes; :func:`prepare_rows` reduces each
of them to one :class:`Rows`: the column keys, in the table's order, and one
tuple of plain Python values per row.

* **mappings** (``dict`` or any ``Mapping``): keys are column keys of the table
  (``table.c``); every row has the same keys.
* **sequences** (``tuple``, ``list``, any non-string ``Sequence``): positional,
  filling the table's first columns in order; every row has the same length.
* **a pandas DataFrame**: its column names are column keys; missing values
  (``NaN``, ``NaT``, ``pd.NA``, ``None``) become ``None`` and numpy and pandas
  scalars become plain Python values. pandas is only imported by the caller: this
  module never imports it.

Values of mapping and sequence rows are passed on as they are; only DataFrame
values are converted.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from sqlalchemy import Integer, Table, inspect
from sqlalchemy.orm import Mapper

from sqlperf.exceptions import ConfigurationError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Rows", "columns_of", "prepare_rows", "resolve_table"]

#: How many column keys an error message lists before it abbreviates.
_LISTED_COLUMNS = 20

#: Types a DataFrame value already has when it needs no conversion.
_PLAIN: frozenset[type] = frozenset({str, int, float, bool, bytes, dict, list, tuple})


@dataclass(frozen=True, slots=True)
class Rows:
    """Rows ready for a bulk statement: column keys and one value tuple per row.

    Attributes:
        columns: column keys (``Table.c`` keys) in the table's column order.
        values: one tuple per row, aligned with ``columns``.

    An empty ``columns`` means there is nothing to do.
    """

    columns: tuple[str, ...]
    values: list[tuple[Any, ...]]


def resolve_table(table_or_model: Table | type | Any) -> Table:
    """Return the :class:`~sqlalchemy.Table` behind a table or an ORM mapped class.

    Args:
        table_or_model: a ``Table``, an ORM mapped class (its mapper's
            ``local_table``) or a ``Mapper``.

    Returns:
        The table.

    Raises:
        ConfigurationError: for anything else, including an instance of a mapped
            class or a class mapped to something that is not a table.

    Example::

        >>> from sqlalchemy import Column, Integer, MetaData, Table
        >>> t = Table("t", MetaData(), Column("id", Integer, primary_key=True))
        >>> resolve_table(t) is t
        True
    """
    if isinstance(table_or_model, Table):
        return table_or_model
    info = inspect(table_or_model, raiseerr=False)
    if isinstance(info, Mapper):
        local = info.local_table
        if isinstance(local, Table):
            return local
        raise ConfigurationError(
            f"{info.class_.__name__} is mapped to {type(local).__name__}, not to a Table; "
            "bulk operations need a table"
        )
    hint = ""
    if info is not None and not isinstance(table_or_model, type):
        hint = f"; pass the class {type(table_or_model).__name__}, not an instance of it"
    raise ConfigurationError(
        f"expected a sqlalchemy Table or an ORM mapped class, got {table_or_model!r}{hint}"
    )


def prepare_rows(
    table: Table,
    rows: Iterable[Mapping[str, Any]] | Iterable[Sequence[Any]] | pd.DataFrame,
    *,
    required: Sequence[str] = (),
    required_for: str = "",
) -> Rows:
    """Check ``rows`` against ``table`` and return their columns and value tuples.

    Args:
        table: the table the rows are for.
        rows: mappings of column key to value, sequences of values in the table's
            column order (a row of N values fills the first N columns), or a pandas
            DataFrame (its index is ignored). Iterated once, so a generator works.
        required: column keys the rows must have, e.g. the conflict columns of an
            upsert or the key of an update.
        required_for: what needs the ``required`` columns, for the error message
            (``"the key"`` gives "... which the key needs").

    Returns:
        A :class:`Rows`; ``Rows(columns=(), values=[])`` when there are no rows.

    Raises:
        ConfigurationError: a key or DataFrame column the table does not have, rows of
            different shapes, a sequence row longer than the table, a mix of mapping
            and sequence rows, or a ``required`` column the rows lack.

    DataFrame values are converted column by column: ``NaN``, ``NaT``, ``pd.NA`` and
    ``None`` become ``None``; numpy integers, floats and booleans become ``int``,
    ``float`` and ``bool``; datetimes become ``datetime.datetime`` (tz-aware
    columns keep their time zone; nanoseconds are truncated to microseconds) and
    timedeltas ``datetime.timedelta``; objects such as dicts, lists, ``Decimal``
    and strings are kept. A float column bound for an ``Integer`` column (pandas
    turns integers with missing values into floats) comes back as ``int`` when all
    of its values are whole numbers.

    Example::

        >>> from sqlalchemy import Column, Integer, MetaData, String, Table
        >>> t = Table("t", MetaData(), Column("id", Integer), Column("name", String))
        >>> prepare_rows(t, [{"name": "a", "id": 1}, {"name": "b", "id": 2}])
        Rows(columns=('id', 'name'), values=[(1, 'a'), (2, 'b')])
        >>> prepare_rows(t, [(1,), (2,)]).columns
        ('id',)
    """
    pandas = sys.modules.get("pandas")
    if pandas is not None and isinstance(rows, pandas.DataFrame):
        result = _from_frame(table, rows)
    else:
        if isinstance(rows, (str, bytes, Mapping)):
            raise ConfigurationError(
                f"rows must be an iterable of rows (mappings or sequences), "
                f"got a single {type(rows).__name__}; wrap one row in a list"
            )
        items = rows if isinstance(rows, list) else list(rows)
        if not items:
            return Rows(columns=(), values=[])
        first = items[0]
        if isinstance(first, Mapping):
            result = _from_mappings(table, items)
        elif _is_sequence_row(first):
            result = _from_sequences(table, items)
        else:
            raise ConfigurationError(
                f"row 0 is a {type(first).__name__}; rows must be mappings "
                "(column key to value) or sequences of values"
            )
    if result.values:
        _check_required(table, result.columns, required, required_for)
    return result


def columns_of(rows: Sequence[Sequence[Any]], width: int, *, offset: int = 0) -> list[list[Any]]:
    """The ``width`` columns of ``rows``, each a list: rows turned into columns.

    ``list(zip(*rows))`` makes an iterator per row that lives until the end, and
    100,000 of those wake the garbage collector for passes over every object the
    caller holds: six times slower than one ``itemgetter`` pass per column.

    Args:
        rows: sequences of ``width`` values.
        width: the number of values each row must have.
        offset: the index of ``rows[0]`` among all rows, for the error message.

    Raises:
        ConfigurationError: naming the first row with another number of values.

    Example::

        >>> columns_of([(1, "a"), (2, "b")], 2)
        [[1, 2], ['a', 'b']]
    """
    if rows and set(map(len, rows)) != {width}:
        index = next(i for i, row in enumerate(rows) if len(row) != width)
        raise ConfigurationError(
            f"row {offset + index} has {len(rows[index])} values but there are {width} columns"
        )
    return [list(map(itemgetter(i), rows)) for i in range(width)]


# -- mappings and sequences ------------------------------------------------------------


def _is_sequence_row(row: object) -> bool:
    return isinstance(row, Sequence) and not isinstance(row, (str, bytes, bytearray))


def _from_mappings(table: Table, items: list[Any]) -> Rows:
    first: Mapping[str, Any] = items[0]
    keys = set(first.keys())
    if not keys:
        raise ConfigurationError("row 0 has no columns; give each row at least one column")
    for key in keys:
        _check_column(table, key, where="row 0 has")
    table_keys = table.c.keys()  # a list: iterating table.c gives Column objects
    columns = tuple(key for key in table_keys if key in keys)
    getter = _getter(columns)
    # Plain dicts of the same keys, the usual case, are checked in C: a dict with as
    # many keys as row 0 from which the getter finds all of row 0's has row 0's keys.
    # Anything else goes row by row below, which names the first row that differs.
    if set(map(type, items)) == {dict} and set(map(len, items)) == {len(keys)}:
        with suppress(KeyError):
            return Rows(columns=columns, values=list(map(getter, items)))
    values: list[tuple[Any, ...]] = []
    append = values.append
    for index, row in enumerate(items):
        if not (type(row) is dict or isinstance(row, Mapping)):
            raise ConfigurationError(
                f"row {index} is a {type(row).__name__} but row 0 is a mapping; "
                "give all rows the same form"
            )
        if row.keys() != keys:
            _shape_error(table, index, set(row.keys()), keys)
        append(getter(row))
    return Rows(columns=columns, values=values)


def _getter(columns: tuple[str, ...]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    if len(columns) == 1:
        (only,) = columns
        return lambda row: (row[only],)
    return itemgetter(*columns)


def _shape_error(table: Table, index: int, found: set[str], expected: set[str]) -> None:
    for key in sorted(found - expected, key=str):
        _check_column(table, key, where=f"row {index} has")
    missing = ", ".join(sorted(expected - found))
    extra = ", ".join(sorted(found - expected))
    parts = []
    if missing:
        parts.append(f"lacks {missing}")
    if extra:
        parts.append(f"has {extra} too")
    raise ConfigurationError(
        f"rows of different shapes: compared with row 0, row {index} {' and '.join(parts)}; "
        "give every row the same columns"
    )


def _from_sequences(table: Table, items: list[Any]) -> Rows:
    width = len(items[0])
    keys = table.c.keys()
    if width == 0:
        raise ConfigurationError("row 0 is empty; give each row at least one value")
    if width > len(keys):
        raise ConfigurationError(
            f"row 0 has {width} values but {table.fullname} has only {len(keys)} columns "
            f"({_list_columns(table)})"
        )
    values: list[tuple[Any, ...]] = []
    append = values.append
    for index, row in enumerate(items):
        values_of_row = row if type(row) is tuple else None
        if values_of_row is None:
            if not _is_sequence_row(row):
                raise ConfigurationError(
                    f"row {index} is a {type(row).__name__} but row 0 is a sequence; "
                    "give all rows the same form"
                )
            values_of_row = tuple(row)
        if len(values_of_row) != width:
            raise ConfigurationError(
                f"row {index} has {len(values_of_row)} values but row 0 has {width}; "
                "give every row the same number of values"
            )
        append(values_of_row)
    return Rows(columns=tuple(keys[:width]), values=values)


# -- checks and messages ---------------------------------------------------------------


def _list_columns(table: Table) -> str:
    keys = table.c.keys()
    listed = ", ".join(keys[:_LISTED_COLUMNS])
    if len(keys) > _LISTED_COLUMNS:
        listed += f", ... ({len(keys)} in all)"
    return listed


def _check_column(table: Table, key: object, *, where: str) -> None:
    if not isinstance(key, str):
        raise ConfigurationError(
            f"{where} column {key!r} of type {type(key).__name__}; column keys are strings "
            f"({table.fullname} has: {_list_columns(table)})"
        )
    if key not in table.c:
        raise ConfigurationError(
            f"{where} column {key!r}, which {table.fullname} has not "
            f"(its columns: {_list_columns(table)})"
        )


def _check_required(
    table: Table, columns: tuple[str, ...], required: Sequence[str], required_for: str
) -> None:
    if isinstance(required, str):
        required = (required,)
    for key in required:
        if key not in table.c:
            raise ConfigurationError(
                f"required column {key!r} is not a column of {table.fullname} "
                f"(its columns: {_list_columns(table)})"
            )
        if key not in columns:
            why = f"which {required_for} needs" if required_for else "which is required"
            raise ConfigurationError(f"the rows have no column {key!r}, {why}")


# -- pandas ----------------------------------------------------------------------------


def _from_frame(table: Table, frame: pd.DataFrame) -> Rows:
    names = list(frame.columns)
    if len(set(names)) != len(names):
        twice = next(name for name in names if names.count(name) > 1)
        raise ConfigurationError(f"the DataFrame has column {twice!r} more than once")
    for name in names:
        _check_column(table, name, where="the DataFrame has")
    if len(frame) == 0:
        return Rows(columns=(), values=[])
    if not names:
        raise ConfigurationError("the DataFrame has rows but no columns")
    present = set(names)
    table_keys = table.c.keys()
    columns = tuple(key for key in table_keys if key in present)
    lists = [
        _frame_column(frame[key], integral=isinstance(table.c[key].type, Integer))
        for key in columns
    ]
    return Rows(columns=columns, values=list(zip(*lists, strict=True)))


def _frame_column(series: pd.Series[Any], *, integral: bool) -> list[Any]:
    """The values of one DataFrame column as a list of plain Python values."""
    import numpy as np

    dtype = series.dtype
    kind = getattr(dtype, "kind", "O")
    is_numpy = isinstance(dtype, np.dtype)
    values: list[Any]
    if is_numpy and kind in "iub":
        return series.to_numpy().tolist()  # type: ignore[no-any-return]
    if kind == "M" and getattr(dtype, "tz", None) is None and is_numpy:
        # Naive datetimes: numpy makes datetime objects (None for NaT) at microseconds.
        return series.to_numpy(dtype="datetime64[us]").astype(object).tolist()  # type: ignore[no-any-return]
    if kind == "m" and is_numpy:
        return series.to_numpy(dtype="timedelta64[us]").astype(object).tolist()  # type: ignore[no-any-return]
    if (
        kind == "M"
        and getattr(dtype, "tz", None) is not None
        and hasattr(series.array, "to_pydatetime")
    ):
        # Time-zone aware: pandas builds datetimes carrying the column's tzinfo.
        values = series.array.to_pydatetime().tolist()
    elif is_numpy and kind == "f":
        values = series.to_numpy().tolist()
    else:
        values = series.astype(object).tolist()
    missing = series.isna().to_numpy(dtype=bool)
    if missing.any():
        for index in np.flatnonzero(missing).tolist():
            values[index] = None
    if not (is_numpy and kind == "f"):
        plain = _PLAIN
        values = [v if v is None or type(v) in plain else _plain_value(v) for v in values]
    if integral:
        values = _whole_floats_to_int(values)
    return values


def _whole_floats_to_int(values: list[Any]) -> list[Any]:
    """Turn the floats of an Integer column back into ints if all of them are whole."""
    floats = [v for v in values if type(v) is float]
    if not floats or not all(math.isfinite(v) and v.is_integer() for v in floats):
        return values
    return [int(v) if type(v) is float else v for v in values]


def _plain_value(value: Any) -> Any:
    """A numpy or pandas scalar as the plain Python value; other objects unchanged."""
    import numpy as np
    import pandas as pd

    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime(warn=False)
    if isinstance(value, pd.Timedelta):
        return value.to_pytimedelta()
    if isinstance(value, np.datetime64):
        return value.astype("datetime64[us]").item()
    if isinstance(value, np.timedelta64):
        return value.astype("timedelta64[us]").item()
    if isinstance(value, np.generic):
        return value.item()
    return value
