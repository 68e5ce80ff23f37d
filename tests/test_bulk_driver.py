"""The executemany converter: sqlperf's bind processing gives what SQLAlchemy's gives."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    TypeDecorator,
    create_engine,
    event,
    insert,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite

from sqlperf.bulk.driver import _converter, executemany_writer

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


class _NoneMarker(TypeDecorator[str]):
    """Stores None as "none": SQLAlchemy calls a bind processor for None too."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Any) -> str:
        return "none" if value is None else value.upper()


def test_executemany_sends_the_cursor_what_core_sends(tmp_path: Path):
    """Same statement, same parameters as ``conn.execute(insert(t), rows)``, None included."""
    table = Table(
        "t",
        MetaData(),
        Column("id", Integer),
        Column("tag", _NoneMarker),
        Column("at", DateTime),
        Column("doc", JSON),
        Column("amount", Numeric(10, 2)),
    )
    engine = create_engine(f"sqlite:///{tmp_path / 'sent.db'}")
    table.create(engine)
    sent: list[tuple[str, list[Any]]] = []

    @event.listens_for(engine, "before_cursor_execute")
    def keep(  # noqa: PLR0917 - SQLAlchemy's signature
        conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool
    ) -> None:
        sent.append((statement, list(params)))

    rows = [
        (1, None, None, None, None),
        (2, "a", dt.datetime(2024, 1, 2, 3, 4, 5), {"k": [1]}, Decimal("1.50")),
    ]
    keys = table.c.keys()
    with engine.begin() as conn:
        conn.execute(insert(table), [dict(zip(keys, row, strict=True)) for row in rows])
        executemany_writer(insert(table), table, keys, engine.dialect)(conn, rows)
    engine.dispose()
    assert sent[1] == sent[0]
    assert sent[0][1][0][1] == "none"
