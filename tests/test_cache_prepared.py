"""The query cache's misses as server-side prepared statements (PostgreSQL, psycopg2)."""

from __future__ import annotations

import datetime
import decimal
import enum
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import Engine, bindparam, cast, insert, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker
from sqlalchemy.types import Integer

from sqlperf.cache import MemoryBackend, QueryCache, cached
from sqlperf.cache.prepared import PreparedStatements, _shape_of, declared_type
from tests.conftest import require

MakeEngine = Callable[..., Engine]
THRESHOLD = PreparedStatements().threshold


@dataclass
class Items:
    """A table of items on a pool of one PostgreSQL connection, and a cached read of it."""

    engine: Engine
    model: Any

    def cache(self, **options: Any) -> tuple[QueryCache, sessionmaker[Any]]:
        factory = sessionmaker(self.engine)
        return QueryCache(MemoryBackend(), **options).install(factory), factory

    def prepared_here(self) -> list[str]:
        """The cache's prepared statements on the pool's one connection."""
        with self.engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT name FROM pg_prepared_statements WHERE starts_with(name, 'sqlperf_')"
            )
            return [r[0] for r in rows]


@pytest.fixture
def items(make_engine: MakeEngine) -> Iterator[Items]:
    engine = make_engine(require("postgresql"), pool_size=1, max_overflow=0)

    class Base(DeclarativeBase):
        pass

    class Item(Base):
        __tablename__ = f"sqlperf_prep_{uuid.uuid4().hex[:10]}"
        id: Mapped[int] = mapped_column(primary_key=True)
        qty: Mapped[int]
        day: Mapped[datetime.date]
        label: Mapped[str]

    Base.metadata.create_all(engine)
    try:
        with engine.begin() as conn:
            conn.execute(
                insert(Item),
                [
                    {"id": 1, "qty": 1, "day": datetime.date(2026, 1, 1), "label": "one"},
                    {"id": 2, "qty": 2, "day": datetime.date(2026, 1, 2), "label": "two"},
                ],
            )
        yield Items(engine, Item)
    finally:
        Base.metadata.drop_all(engine)


def _misses(cache: QueryCache, factory: sessionmaker[Any], stmt: Any, params: Any) -> list[Any]:
    """``stmt`` read as a miss (the cache emptied first), in a new session."""
    cache.backend.clear()
    with factory() as session:
        rows: list[Any] = list(session.execute(stmt, params))
        assert session.get_transaction() is None  # read in autocommit
    return rows


# -- the pieces, without a database ----------------------------------------------------


def test_a_statement_becomes_one_to_prepare():
    shape = _shape_of("SELECT a FROM t WHERE a = %(x)s AND b LIKE 'q%%' OR c = %(x)s OR d = %(y)s")
    assert shape is not None
    assert shape.names == ("x", "y")
    assert shape.body == "SELECT a FROM t WHERE a = $1 AND b LIKE 'q%' OR c = $1 OR d = $2"
    assert shape.arguments == "(%(x)s, %(y)s)"
    assert _shape_of("SELECT 1").arguments == ""  # type: ignore[union-attr]
    assert _shape_of("SELECT %(a{b})s").arguments == "(%(a{b})s)"  # type: ignore[union-attr]
    assert _shape_of("SELECT 'a%b'") is None  # a lone %: not psycopg2's pyformat
    assert _shape_of("SELECT $$x$$") is None  # a $ of its own


class Colour(enum.IntEnum):
    RED = 1


class Name(str):
    pass


def test_values_of_other_types_are_not_prepared():
    for value in ([1, 2], {"a": 1}, (1,), Colour.RED, Name("x"), uuid.uuid4(), object()):
        assert declared_type(value) is None, value


# -- on PostgreSQL ---------------------------------------------------------------------

SAMPLES: list[Any] = [
    None,
    "text",
    True,
    5,
    -5,
    2**40,
    10**30,
    1.5,
    -1e300,
    float("nan"),
    float("inf"),
    decimal.Decimal("1.25"),
    decimal.Decimal("NaN"),
    datetime.datetime(2026, 1, 1, 10),
    datetime.datetime(2026, 1, 1, 10, tzinfo=datetime.timezone.utc),
    datetime.date(2026, 1, 1),
    datetime.time(10),
    datetime.time(10, tzinfo=datetime.timezone.utc),
    datetime.timedelta(days=1, seconds=3),
    b"\x00ab",
    bytearray(b"ab"),
    memoryview(b"ab"),
]


@pytest.mark.parametrize("value", SAMPLES, ids=lambda v: f"{type(v).__name__}-{v!r:.20}")
def test_declared_types_are_those_of_psycopg2s_literals(value: Any, make_engine: MakeEngine):
    """Each parameter is declared with the type of the literal psycopg2 writes for its
    value, so EXECUTE converts nothing the text would not have."""
    engine = make_engine(require("postgresql"))
    with engine.connect() as conn:
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        cursor.execute(
            "SELECT pg_typeof(%(v)s)::text, %(t)s::regtype::text",
            {"v": value, "t": declared_type(value)},
        )
        [(literal, declared)] = cursor.fetchall()
        assert literal == declared


def test_repeated_misses_run_as_prepared_statements(items: Items):
    cache, factory = items.cache()
    item = items.model
    stmt = select(item.label).where(item.id == bindparam("id")).options(cached())
    for n in range(THRESHOLD + 3):
        label = "one" if n % 2 == 0 else "two"
        assert _misses(cache, factory, stmt, {"id": 1 + n % 2}) == [(label,)]
        assert cache.stats().prepared == max(0, n + 1 - THRESHOLD)
    assert len(items.prepared_here()) == 1
    assert cache.stats().misses == THRESHOLD + 3


@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("qty", 1.5),  # declared integer, EXECUTE would round it to 2
        ("qty", 2.0),
        ("qty", decimal.Decimal("2.5")),
        ("day", datetime.datetime(2026, 1, 2, 10)),  # declared date, it would lose its time
        ("day", datetime.datetime(2026, 1, 2)),
        ("day", "2026-01-02"),
        ("label", None),
        ("qty", 10**30),
    ],
)
def test_prepared_misses_compare_values_as_the_text_does(items: Items, where: str, value: Any):
    """A prepared miss returns the rows the text returns, for values whose literal type
    differs from the column's."""
    item = items.model
    stmt = select(item.id).where(getattr(item, where) == bindparam("v")).options(cached())
    with items.engine.connect() as conn:
        expected = conn.execute(stmt, {"v": value}).all()
    cache, factory = items.cache()
    for _ in range(THRESHOLD + 1):
        assert _misses(cache, factory, stmt, {"v": value}) == expected
    assert cache.stats().prepared == 1


@pytest.mark.parametrize("change", ["DEALLOCATE ALL", "ALTER TABLE {} ALTER label TYPE text"])
def test_a_prepared_statement_that_fails_falls_back_to_text_for_good(items: Items, change: str):
    """When the prepared statement is gone (``DISCARD``, a pooler) or stale (a column's
    type changed), the miss runs as text, and the statement is not prepared again."""
    cache, factory = items.cache()
    item = items.model
    stmt = select(item.label).where(item.id == bindparam("id")).options(cached())
    for _ in range(THRESHOLD + 1):
        _misses(cache, factory, stmt, {"id": 1})
    assert cache.stats().prepared == 1
    with items.engine.begin() as conn:
        conn.exec_driver_sql(change.format(item.__tablename__))
    for _ in range(3):
        assert _misses(cache, factory, stmt, {"id": 2}) == [("two",)]
    assert cache.stats().prepared == 1
    assert items.prepared_here() == []


def test_the_statements_own_error_is_raised_and_it_stays_prepared(items: Items):
    cache, factory = items.cache()
    item = items.model
    stmt = select(item.id).where(item.qty == cast(bindparam("q"), Integer)).options(cached())
    for _ in range(THRESHOLD + 1):
        assert _misses(cache, factory, stmt, {"q": "2"}) == [(2,)]
    with pytest.raises(DBAPIError, match="invalid input syntax"):
        _misses(cache, factory, stmt, {"q": "not a number"})
    assert _misses(cache, factory, stmt, {"q": "1"}) == [(1,)]
    assert cache.stats().prepared == 2
    assert len(items.prepared_here()) == 1


def test_prepare_misses_false_sends_text(items: Items):
    cache, factory = items.cache(prepare_misses=False)
    item = items.model
    stmt = select(item.label).where(item.id == bindparam("id")).options(cached())
    for _ in range(THRESHOLD + 2):
        _misses(cache, factory, stmt, {"id": 1})
    assert cache.stats().prepared == 0
    assert items.prepared_here() == []


def test_statements_are_prepared_after_the_threshold_and_up_to_the_cap(items: Items):
    """:class:`PreparedStatements` on psycopg2's own connection: nothing is prepared
    before a statement's ``threshold``-th run, nor beyond ``max_per_connection``."""
    prepared = PreparedStatements(threshold=1, max_per_connection=2)
    table = items.model.__tablename__
    with items.engine.connect() as conn:
        dbapi_connection: Any = conn.connection.dbapi_connection
        dbapi_connection.autocommit = True
        try:
            info: dict[Any, Any] = {}
            cursor = dbapi_connection.cursor()
            ran = []
            for column_name in ("id", "qty", "label"):
                sql = f"SELECT {column_name} FROM {table} WHERE id = %(id)s"
                for _ in range(2):
                    ran.append(prepared.execute(cursor, sql, {"id": 1}, info))
                    if ran[-1]:
                        assert cursor.fetchall() == [(1 if column_name != "label" else "one",)]
            assert ran == [False, True, False, True, False, False]
            cursor.execute(
                "SELECT count(*) FROM pg_prepared_statements WHERE starts_with(name, 'sqlperf_')"
            )
            assert cursor.fetchone() == (2,)
            cursor.execute("DEALLOCATE ALL")
        finally:
            dbapi_connection.autocommit = False
    assert prepared.executions == 2


def test_misses_in_a_transaction_are_sent_as_text(items: Items):
    """A miss that runs in the session's transaction is not prepared: a failed
    ``EXECUTE`` there would abort the transaction instead of falling back."""
    cache, factory = items.cache()
    item = items.model
    stmt = select(item.label).where(item.id == bindparam("id")).options(cached())
    for _ in range(THRESHOLD + 2):
        cache.backend.clear()
        with factory() as session:
            assert session.execute(select(item.id).where(item.id == 1)).scalar_one() == 1
            assert session.execute(stmt, {"id": 2}).all() == [("two",)]
            assert session.get_transaction() is not None
    assert cache.stats().misses == THRESHOLD + 2
    assert cache.stats().prepared == 0


def test_a_new_connection_prepares_again(items: Items):
    """The list of prepared statements lives in the pooled connection's ``info``, which
    SQLAlchemy empties when it replaces the DB-API connection: the new one prepares
    the statement again instead of failing over to text for good."""
    cache, factory = items.cache()
    item = items.model
    stmt = select(item.label).where(item.id == bindparam("id")).options(cached())
    for _ in range(THRESHOLD + 1):
        _misses(cache, factory, stmt, {"id": 1})
    with items.engine.connect() as conn:
        conn.invalidate()  # the pool opens a new DB-API connection at the next checkout
    for _ in range(2):
        assert _misses(cache, factory, stmt, {"id": 2}) == [("two",)]
    assert cache.stats().prepared == 3
    assert len(items.prepared_here()) == 1
