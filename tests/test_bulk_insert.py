"""bulk_insert on SQLite, PostgreSQL and MariaDB: every path, every input form, transactions."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import (
    Engine,
    event,
    func,
    select,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from sqlperf import ConfigurationError
from sqlperf.bulk import BulkResult, bulk_insert
from sqlperf.cache import MemoryBackend, QueryCache, cached
from tests.bulk_db import Db

MakeEngine = Callable[..., Engine]


@pytest.fixture
def db(any_url: str, make_engine: MakeEngine) -> Iterator[Db]:
    # MariaDB: a connection that may LOAD DATA LOCAL, so "auto" takes that path.
    options = {"connect_args": {"local_infile": True}} if any_url.startswith("mysql") else {}
    database = Db(make_engine(any_url, **options))
    yield database
    database.metadata.drop_all(database.engine)


def _methods(db: Db) -> list[str]:
    methods = ["auto", "executemany", "values"]
    extra = {"postgresql": ["copy"], "mysql": ["load_data"]}
    return methods + extra.get(db.engine.dialect.name, [])


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
    fastest = {"postgresql": "copy", "sqlite": "executemany", "mysql": "load_data"}
    assert result.method == fastest[db.engine.dialect.name]


def test_mysql_without_local_infile_uses_executemany(mysql_url: str, make_engine: MakeEngine):
    db = Db(make_engine(mysql_url))  # local_infile is off unless the engine asks for it
    try:
        assert bulk_insert(db.engine, db.table, db.rows(3)).method == "executemany"
        with pytest.raises(ConfigurationError, match="local_infile"):
            bulk_insert(db.engine, db.table, db.rows(3, start=4), method="load_data")
        assert db.read() == db.rows(3)
    finally:
        db.metadata.drop_all(db.engine)


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


def test_json_none_is_stored_as_sqlalchemy_stores_it(db: Db):
    """None in a JSON column is JSON ``null`` (not SQL NULL) on every path, as with insert()."""
    with db.engine.begin() as conn:
        conn.execute(db.table.insert(), [{"id": 1000, "doc": None}])
    for n, method in enumerate(_methods(db)):
        bulk_insert(db.engine, db.table, [{"id": n + 1, "doc": None}], method=method)  # type: ignore[arg-type]
    sql_null = select(func.count()).select_from(db.table).where(db.table.c.doc.is_(None))
    with db.engine.connect() as conn:
        assert conn.execute(sql_null).scalar_one() == 0
