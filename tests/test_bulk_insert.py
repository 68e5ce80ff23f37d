"""bulk_insert on SQLite, PostgreSQL and MariaDB: every path, every input form, transactions."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    event,
    func,
    select,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from sqlperf import ConfigurationError
from sqlperf.bulk import BulkResult, bulk_insert
from sqlperf.cache import MemoryBackend, QueryCache, cached

MakeEngine = Callable[..., Engine]
UTC = dt.timezone.utc


class Db:
    """An engine and an empty table of its own, dropped afterwards."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.tz = engine.dialect.name == "postgresql"  # the only one of the three keeping zones
        self.metadata = MetaData()
        self.table = Table(
            f"sqlperf_bulk_{uuid.uuid4().hex[:10]}",
            self.metadata,
            Column("id", Integer, primary_key=True, autoincrement=False),
            Column("name", String(100)),
            Column("at", DateTime(timezone=self.tz)),
            Column("amount", Numeric(12, 4)),
            Column("doc", JSON),
        )
        self.metadata.create_all(engine)

    def rows(self, n: int, start: int = 1) -> list[dict[str, Any]]:
        tz = UTC if self.tz else None
        return [
            {
                "id": i,
                "name": None if i % 7 == 0 else f"name {i} ü€😀\t\"'\\N",
                "at": None if i % 5 == 0 else dt.datetime(2024, 5, 6, 7, 8, i % 60, tzinfo=tz),
                "amount": None if i % 3 == 0 else Decimal(i) / 8,
                "doc": None if i % 4 == 0 else {"i": i, "tags": ["a", "ü"], "nested": {"x": None}},
            }
            for i in range(start, start + n)
        ]

    def read(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(select(self.table).order_by("id"))]

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(self.table)).scalar_one())


@pytest.fixture
def db(any_url: str, make_engine: MakeEngine) -> Iterator[Db]:
    database = Db(make_engine(any_url))
    yield database
    database.metadata.drop_all(database.engine)


def _methods(db: Db) -> list[str]:
    methods = ["auto", "executemany", "values"]
    return [*methods, "copy"] if db.engine.dialect.name == "postgresql" else methods


def test_every_path_writes_every_value_exactly(db: Db):
    for n, method in enumerate(_methods(db)):
        rows = db.rows(25, start=1 + 100 * n)
        result = bulk_insert(db.engine, db.table, rows, method=method, batch_size=10)  # type: ignore[arg-type]
        assert result.ok
        assert (result.rows, result.batches, result.committed_batches) == (25, 3, 3)
        if method != "auto":  # what auto picks: test_auto_takes_the_fastest_path
            assert result.method == method
    written = db.read()
    expected = [r for n in range(len(_methods(db))) for r in db.rows(25, start=1 + 100 * n)]
    assert written == expected


def test_auto_takes_the_fastest_path(db: Db):
    result = bulk_insert(db.engine, db.table, db.rows(3))
    fastest = {"postgresql": "copy", "sqlite": "executemany", "mysql": "executemany"}
    assert result.method == fastest[db.engine.dialect.name]


def test_tuples_and_dataframes(db: Db):
    pd = pytest.importorskip("pandas")
    rows = db.rows(30)
    bulk_insert(db.engine, db.table, [tuple(r.values()) for r in rows[:10]])
    frame = pd.DataFrame(rows[10:])
    bulk_insert(db.engine, db.table, frame)
    assert db.read() == rows


def test_a_failing_batch_in_atomic_mode_leaves_the_table_as_before(db: Db):
    bulk_insert(db.engine, db.table, db.rows(5))
    before = db.read()
    rows = db.rows(40, start=6) + db.rows(1, start=3)  # the last batch repeats id 3
    with pytest.raises(IntegrityError):
        bulk_insert(db.engine, db.table, rows, batch_size=10)
    assert db.read() == before


def test_per_batch_commits_are_exactly_the_reported_ones(db: Db):
    rows = db.rows(40)
    rows[25]["id"] = 2  # the third batch of 10 fails
    result = bulk_insert(db.engine, db.table, rows, batch_size=10, commit_every=1)
    assert not result.ok
    assert isinstance(result.error, IntegrityError)
    assert (result.failed_batch, result.committed_batches, result.rows) == (2, 2, 20)
    assert [r["id"] for r in db.read()] == list(range(1, 21))
    rest = bulk_insert(db.engine, db.table, db.rows(20, start=21), commit_every=1)  # resume
    assert rest.ok
    assert db.count() == 40


def test_inside_the_callers_transaction(db: Db):
    with Session(db.engine) as s:
        bulk_insert(s, db.table, db.rows(10))
        with pytest.raises(IntegrityError):  # a failure takes back only its own rows
            bulk_insert(s, db.table, db.rows(3, start=11) + db.rows(1, start=1))
        assert s.scalar(select(func.count()).select_from(db.table)) == 10
        s.rollback()
    assert db.count() == 0  # nothing committed behind the caller's back
    with db.engine.connect() as conn:
        bulk_insert(conn, db.table, db.rows(4))
        conn.commit()
    assert db.count() == 4


def test_returning(db: Db):
    result = bulk_insert(db.engine, db.table, db.rows(12), returning=["id", "name"], batch_size=5)
    assert result.method == "values"
    assert [r.id for r in result.returned] == list(range(1, 13))


def test_the_query_cache_forgets_written_tables(db: Db):
    cache = QueryCache(MemoryBackend())
    cache.attach(db.engine)
    try:
        count = select(func.count()).select_from(db.table).options(cached())
        with db.engine.connect() as conn:
            assert conn.execute(count).scalar_one() == 0
            assert conn.execute(count).scalar_one() == 0  # now from the cache
        bulk_insert(db.engine, db.table, db.rows(7))  # COPY on PostgreSQL: no events
        with db.engine.connect() as conn:
            assert conn.execute(count).scalar_one() == 7
        with Session(db.engine) as s:
            bulk_insert(s, db.table, db.rows(3, start=8))
            s.commit()
        with db.engine.connect() as conn:
            assert conn.execute(count).scalar_one() == 10
    finally:
        cache.detach()


def test_bad_rows_are_refused_before_anything_is_written(db: Db):
    statements: list[str] = []
    event.listen(db.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    rows = db.rows(3)
    rows[2]["nmae"] = "typo"
    with pytest.raises(ConfigurationError, match="nmae"):
        bulk_insert(db.engine, db.table, rows)
    with pytest.raises(ConfigurationError, match="method"):
        bulk_insert(db.engine, db.table, db.rows(1), method="fast")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="commit_every"), Session(db.engine) as s:
        bulk_insert(s, db.table, db.rows(1), commit_every=1)
    assert not [s for s in statements if db.table.name in s]
    empty = bulk_insert(db.engine, db.table, [])
    assert isinstance(empty, BulkResult)
    assert empty.rows == 0
