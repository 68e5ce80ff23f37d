"""The executemany converter: sqlperf's bind processing gives what SQLAlchemy's gives."""

from __future__ import annotations

import datetime as dt
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import JSON, DateTime
from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite

from sqlperf.bulk.driver import _converter

DIALECT = SQLiteDialect_pysqlite()
ZONES = st.sampled_from([None, dt.timezone.utc, dt.timezone(dt.timedelta(hours=-5))])
DATETIMES = st.datetimes(timezones=ZONES)
VALUES = st.one_of(st.none(), DATETIMES, st.dates())


def _sqlalchemy(type_: Any, values: list[Any]) -> list[Any]:
    processor = type_._cached_bind_processor(DIALECT)
    return [processor(v) if v is not None else None for v in values]


@given(st.lists(DATETIMES, min_size=1, max_size=20))
def test_sqlite_datetimes_are_written_as_sqlalchemy_writes_them(values: list[dt.datetime]):
    """Naive datetimes take the isoformat path, aware ones and years before 1000 not."""
    (column,) = _converter([DateTime()], DIALECT)([(v,) for v in values])
    assert list(column) == _sqlalchemy(DateTime(), values)


@given(st.lists(VALUES, min_size=1, max_size=20))
def test_mixed_values_fall_back_to_sqlalchemys_processor(values: list[Any]):
    (column,) = _converter([DateTime()], DIALECT)([(v,) for v in values])
    assert list(column) == _sqlalchemy(DateTime(), values)


def test_a_custom_storage_format_is_left_to_sqlalchemy():
    custom = sqlite.DATETIME(storage_format="%(year)04d/%(month)02d/%(day)02d")  # type: ignore[no-untyped-call]
    (column,) = _converter([custom], DIALECT)([(dt.datetime(2024, 5, 6, 7, 8, 9),)])
    assert list(column) == ["2024/05/06"]


def test_json_none_becomes_json_null():
    (column,) = _converter([JSON()], DIALECT)([(None,), ({"a": 1},)])
    assert list(column) == ["null", '{"a": 1}']
