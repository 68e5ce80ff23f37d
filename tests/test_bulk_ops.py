"""bulk_upsert, bulk_update and bulk_delete on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import (
    DDL,
    Column,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    event,
    func,
    select,
    text,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session

from sqlperf import ConfigurationError
from sqlperf.bulk import bulk_delete, bulk_insert, bulk_update, bulk_upsert
from sqlperf.bulk import progress as progress_module
from sqlperf.cache import MemoryBackend, QueryCache, cached
from tests.bulk_db import Db

MakeEngine = Callable[..., Engine]
# What a failed CHECK constraint raises: IntegrityError, or OperationalError on MariaDB.
CHECK_FAILED = (IntegrityError, OperationalError)

UPSERT_METHODS: dict[str, list[Any]] = {
    "postgresql": ["staged", "values"],
    "sqlite": ["executemany"],
}
UPSERT_METHODS["mysql"] = ["executemany"]
UPDATE_METHODS: dict[str, list[Any]] = {
    "postgresql": ["staged", "executemany"],
    "sqlite": ["executemany"],
}
UPDATE_METHODS["mysql"] = ["staged"]


@pytest.fixture
def db(any_url: str, make_engine: MakeEngine) -> Iterator[Db]:
    database = Db(make_engine(any_url))
    yield database
    database.metadata.drop_all(database.engine)


def _changed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with a new name and doc (the other columns as they were)."""
    return [{**r, "name": f"new {r['id']} ∑", "doc": {"v": 2, "id": r["id"]}} for r in rows]


def _dialect(db: Db) -> str:
    return db.engine.dialect.name


# -- upsert -------------------------------------------------------------------------------


def test_upsert_inserts_new_rows_and_updates_existing_ones(db: Db):
    for n, method in enumerate(UPSERT_METHODS[_dialect(db)]):
        base = 1000 * n
        bulk_insert(db.engine, db.table, db.rows(20, start=base + 1))
        rows = _changed(db.rows(20, start=base + 1)) + db.rows(15, start=base + 21)
        result = bulk_upsert(
            db.engine, db.table, rows, conflict=["id"], method=method, batch_size=7
        )
        assert (result.method, result.rows, result.batches) == (method, 35, 5)
        if _dialect(db) == "sqlite":  # inserted and updated rows are counted together
            assert (result.inserted, result.updated, result.unchanged) == (None, None, 0)
        else:
            assert (result.inserted, result.updated, result.unchanged) == (15, 20, 0)
    expected = [
        r
        for n in range(len(UPSERT_METHODS[_dialect(db)]))
        for r in _changed(db.rows(20, start=1000 * n + 1)) + db.rows(15, start=1000 * n + 21)
    ]
    assert db.read() == expected


def test_upsert_only_changed_leaves_equal_rows_alone(db: Db):
    for n, method in enumerate(UPSERT_METHODS[_dialect(db)]):
        base = 1000 * n
        bulk_insert(db.engine, db.table, db.rows(30, start=base + 1))
        # 10 changed, 20 equal, 10 new
        rows = _changed(db.rows(10, start=base + 1)) + db.rows(30, start=base + 11)
        result = bulk_upsert(
            db.engine, db.table, rows, conflict=["id"], only_changed=True, method=method
        )
        counts = (result.inserted, result.updated, result.unchanged)
        assert counts == ((None, None, 20) if _dialect(db) == "sqlite" else (10, 10, 20))
        again = bulk_upsert(db.engine, db.table, rows, conflict=["id"], method=method)
        everything = {"postgresql": (0, 40, 0), "mysql": (0, 0, 40), "sqlite": (None, None, 0)}
        # Without only_changed PostgreSQL and SQLite rewrite every row; MySQL never
        # rewrites an equal one.
        assert (again.inserted, again.updated, again.unchanged) == everything[_dialect(db)]
        expected = _changed(db.rows(10, start=base + 1)) + db.rows(30, start=base + 11)
        assert [r for r in db.read() if base < r["id"] <= base + 1000] == expected


def test_upsert_without_update_keeps_existing_rows(db: Db):
    bulk_insert(db.engine, db.table, db.rows(10))
    rows = _changed(db.rows(10)) + db.rows(5, start=11)
    result = bulk_upsert(db.engine, db.table, rows, conflict=["id"], update=None)
    assert (result.inserted, result.updated, result.unchanged) == (5, 0, 10)
    assert db.read() == db.rows(15)


def test_upsert_updates_only_the_columns_named(db: Db):
    bulk_insert(db.engine, db.table, db.rows(10))
    rows = _changed(db.rows(10))
    bulk_upsert(db.engine, db.table, rows, conflict=["id"], update=["name"])
    assert db.read() == [{**r, "name": f"new {r['id']} ∑"} for r in db.rows(10)]


def test_upsert_from_a_dataframe(db: Db):
    pd = pytest.importorskip("pandas")
    bulk_insert(db.engine, db.table, db.rows(10))
    frame = pd.DataFrame(_changed(db.rows(10)) + db.rows(10, start=11))
    result = bulk_upsert(db.engine, db.table, frame, conflict=["id"])
    assert result.rows == 20
    assert db.read() == _changed(db.rows(10)) + db.rows(10, start=11)


def _count_statements(engine: Engine, table: Table) -> Callable[[], int]:
    """Count INSERT statements the server runs on ``table`` (not rows, not client calls)."""
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(text(f"CREATE TABLE {table.name}_calls (n integer)"))
            conn.execute(text(f"INSERT INTO {table.name}_calls VALUES (0)"))
            conn.execute(
                text(
                    f"CREATE FUNCTION {table.name}_count() RETURNS trigger LANGUAGE plpgsql AS "
                    f"$$ BEGIN UPDATE {table.name}_calls SET n = n + 1; RETURN NULL; END $$"
                )
            )
            conn.execute(
                text(
                    f"CREATE TRIGGER {table.name}_count AFTER INSERT ON {table.name} "
                    f"FOR EACH STATEMENT EXECUTE FUNCTION {table.name}_count()"
                )
            )

        def count() -> int:
            with engine.connect() as conn:
                return int(conn.scalar(text(f"SELECT n FROM {table.name}_calls")) or 0)

        event.listen(
            table.metadata,
            "after_drop",
            DDL(  # type: ignore[no-untyped-call]
                f"DROP TABLE IF EXISTS {table.name}_calls; "
                f"DROP FUNCTION IF EXISTS {table.name}_count()"
            ),
        )
        return count
    raise AssertionError("PostgreSQL only: MySQL counts its statements per session")


@pytest.mark.parametrize("method", ["staged", "values"])
def test_postgresql_upsert_never_goes_row_by_row(
    postgres_url: str, make_engine: MakeEngine, method: Any
):
    db = Db(make_engine(postgres_url))
    try:
        count = _count_statements(db.engine, db.table)
        bulk_insert(db.engine, db.table, db.rows(1000))
        before = count()
        rows = _changed(db.rows(1000)) + db.rows(1000, start=1001)
        result = bulk_upsert(db.engine, db.table, rows, conflict=["id"], method=method)
        assert (result.inserted, result.updated) == (1000, 1000)
        # staged: one INSERT ... SELECT; values: SQLAlchemy's 1,000-row pages.
        assert count() - before == {"staged": 1, "values": 2}[method]
        # The trap the statement count guards against: SQLAlchemy's own ON CONFLICT
        # with a list of rows runs one statement per row.
        before = count()
        stmt = postgresql.insert(db.table)
        stmt = stmt.on_conflict_do_update(index_elements=["id"], set_={"name": stmt.excluded.name})
        with db.engine.begin() as conn:
            conn.execute(stmt, rows[:50])
        assert count() - before == 50
    finally:
        db.metadata.drop_all(db.engine)


def test_mysql_upsert_sends_multi_row_statements(mysql_url: str, make_engine: MakeEngine):
    db = Db(make_engine(mysql_url))
    try:
        bulk_insert(db.engine, db.table, db.rows(1000))
        rows = _changed(db.rows(1000)) + db.rows(1500, start=1001)
        with db.engine.connect() as conn:
            status = text("SHOW SESSION STATUS LIKE 'Com_insert'")
            before = int(conn.execute(status).one()[1])
            result = bulk_upsert(conn, db.table, rows, conflict=["id"])
            conn.commit()
            sent = int(conn.execute(status).one()[1]) - before
        assert (result.inserted, result.updated, result.unchanged) == (1500, 1000, 0)
        assert sent == 3  # 1,000 rows a statement
    finally:
        db.metadata.drop_all(db.engine)


# -- update -------------------------------------------------------------------------------


def test_update_sets_the_columns_of_the_rows_found(db: Db):
    for n, method in enumerate(UPDATE_METHODS[_dialect(db)]):
        base = 1000 * n
        bulk_insert(db.engine, db.table, db.rows(30, start=base + 1))
        new = [
            {"id": r["id"], "name": r["name"], "doc": r["doc"]}
            for r in _changed(db.rows(20, start=base + 1))
        ]
        missing = [{"id": base + 900, "name": "nobody", "doc": None}]
        result = bulk_update(db.engine, db.table, new + missing, method=method, batch_size=6)
        assert (result.method, result.rows, result.batches) == (method, 21, 4)
        assert (result.updated, result.unchanged) == (20, 0)
        expected = _changed(db.rows(20, start=base + 1)) + db.rows(10, start=base + 21)
        assert [r for r in db.read() if base < r["id"] <= base + 1000] == expected


def test_update_only_changed_counts_the_rows_left_alone(db: Db):
    for n, method in enumerate(UPDATE_METHODS[_dialect(db)]):
        base = 1000 * n
        bulk_insert(db.engine, db.table, db.rows(30, start=base + 1))
        rows = _changed(db.rows(10, start=base + 1)) + db.rows(20, start=base + 11)
        rows.append({**db.rows(1, start=base + 900)[0]})  # a key that matches nothing
        result = bulk_update(db.engine, db.table, rows, only_changed=True, method=method)
        assert result.updated == 10
        # SQLite and executemany cannot tell an equal row from a missing key.
        tells = method == "staged"
        assert result.unchanged == (20 if tells else None)
        assert [r for r in db.read() if base < r["id"] <= base + 1000] == rows[:30]


def test_update_by_another_key_from_a_dataframe(db: Db):
    pd = pytest.importorskip("pandas")
    bulk_insert(db.engine, db.table, [{"id": i, "name": f"n{i}", "amount": i} for i in range(1, 6)])
    frame = pd.DataFrame({"name": ["n2", "n4", "n9"], "amount": [20.5, 40.0, 90.0]})
    result = bulk_update(db.engine, db.table, frame, key=["name"])
    assert result.updated == 2
    assert [(r["id"], float(r["amount"])) for r in db.read()] == [
        (1, 1.0),
        (2, 20.5),
        (3, 3.0),
        (4, 40.0),
        (5, 5.0),
    ]


# -- delete -------------------------------------------------------------------------------


def test_delete_by_primary_key_in_every_form(db: Db):
    pd = pytest.importorskip("pandas")
    bulk_insert(db.engine, db.table, db.rows(40))
    first = bulk_delete(db.engine, db.table, [1, 2, 3, 999])
    assert (first.rows, first.deleted) == (4, 3)
    assert bulk_delete(db.engine, db.table, [(4,), (5,)]).deleted == 2
    assert bulk_delete(db.engine, db.table, [{"id": 6}]).deleted == 1
    assert bulk_delete(db.engine, db.table, pd.DataFrame({"id": [7, 8]})).deleted == 2
    assert bulk_delete(db.engine, db.table, iter(range(9, 21)), batch_size=5).deleted == 12
    assert [r["id"] for r in db.read()] == list(range(21, 41))


@pytest.fixture
def pairs(any_url: str, make_engine: MakeEngine) -> Iterator[tuple[Engine, Table]]:
    """A table keyed by two columns."""
    engine = make_engine(any_url)
    metadata = MetaData()
    table = Table(
        f"sqlperf_pairs_{uuid.uuid4().hex[:8]}",
        metadata,
        Column("a", Integer, primary_key=True, autoincrement=False),
        Column("b", String(20), primary_key=True),
        Column("v", Integer),
    )
    metadata.create_all(engine)
    yield engine, table
    metadata.drop_all(engine)


def test_delete_and_update_by_a_key_of_two_columns(pairs: tuple[Engine, Table]):
    engine, table = pairs
    bulk_insert(engine, table, [(i, f"b{i % 3}", i) for i in range(30)])
    updated = bulk_update(
        engine, table, [{"a": 1, "b": "b1", "v": -1}, {"a": 1, "b": "b2", "v": 5}]
    )
    assert updated.updated == 1
    result = bulk_delete(engine, table, [(i, f"b{i % 3}") for i in range(0, 30, 2)] + [(1, "b2")])
    assert (result.rows, result.deleted) == (16, 15)
    with engine.connect() as conn:
        left = conn.execute(select(table.c.a, table.c.v).order_by(table.c.a)).all()
    assert left == [(i, -1 if i == 1 else i) for i in range(1, 30, 2)]


def test_no_key_list_is_too_long_for_the_database(pairs: tuple[Engine, Table]):
    """More bound parameters in one batch than the database takes in one statement."""
    engine, table = pairs
    n = 130_000  # 260,000 values: over the 250,000 of the SQLite here, 65,535 of PostgreSQL
    bulk_insert(engine, table, [(i, "x", i) for i in range(n)])
    result = bulk_delete(engine, table, [(i, "x") for i in range(n)], batch_size=n)
    assert (result.batches, result.deleted) == (1, n)
    bulk_insert(engine, table, [(i, "y", i) for i in range(n)], batch_size=n, method="values")
    upserted = bulk_upsert(
        engine, table, [(i, "y", -i) for i in range(n)], conflict=["a", "b"], batch_size=n
    )
    assert upserted.rows == n
    with engine.connect() as conn:
        assert conn.execute(select(func.count(), func.sum(table.c.v)).select_from(table)).one() == (
            n,
            -sum(range(n)),
        )


# -- transactions, cache, progress, errors ------------------------------------------------


def _operations(db: Db) -> list[Callable[..., Any]]:
    """Each operation, writing ``rows`` with one bad row (a CHECK violation) at the end."""

    def upsert(target: Any, rows: list[dict[str, Any]], **kw: Any) -> Any:
        return bulk_upsert(target, db.table, rows, conflict=["id"], **kw)

    def update(target: Any, rows: list[dict[str, Any]], **kw: Any) -> Any:
        return bulk_update(target, db.table, rows, **kw)

    return [upsert, update]


def test_a_failing_batch_in_atomic_mode_leaves_the_table_as_before(db: Db):
    bulk_insert(db.engine, db.table, db.rows(40))
    before = db.read()
    for operation in _operations(db):
        rows = _changed(db.rows(40))
        rows[-1]["amount"] = -1
        with pytest.raises(CHECK_FAILED):
            operation(db.engine, rows, batch_size=10)
        assert db.read() == before


def test_per_batch_commits_are_exactly_the_reported_ones(db: Db):
    bulk_insert(db.engine, db.table, db.rows(40))
    for operation in _operations(db):
        rows = _changed(db.rows(40))
        rows[25]["amount"] = -1  # the third batch of 10 fails
        result = operation(db.engine, rows, batch_size=10, commit_every=1)
        assert isinstance(result.error, CHECK_FAILED)
        assert (result.failed_batch, result.committed_batches, result.rows) == (2, 2, 20)
        assert db.read() == _changed(db.rows(20)) + db.rows(20, start=21)
        bulk_delete(db.engine, db.table, range(1, 41))
        bulk_insert(db.engine, db.table, db.rows(40))


def test_inside_the_callers_transaction(db: Db):
    bulk_insert(db.engine, db.table, db.rows(10))
    with Session(db.engine) as s:
        bulk_upsert(s, db.table, _changed(db.rows(5)), conflict=["id"])
        bad = db.rows(3, start=20)
        bad[-1]["amount"] = -1
        with pytest.raises(CHECK_FAILED):  # a failure takes back only its own rows
            bulk_upsert(s, db.table, bad, conflict=["id"])
        bulk_delete(s, db.table, [9, 10])
        assert s.scalar(select(func.count()).select_from(db.table)) == 8
        s.rollback()
    assert db.read() == db.rows(10)  # nothing committed behind the caller's back


def test_the_query_cache_forgets_the_tables_written(db: Db):
    cache = QueryCache(MemoryBackend())
    cache.attach(db.engine)
    total = select(func.count(), func.max(db.table.c.name)).select_from(db.table).options(cached())

    def read() -> tuple[Any, ...]:
        with db.engine.connect() as conn:
            first = tuple(conn.execute(total).one())
            assert tuple(conn.execute(total).one()) == first  # the second from the cache
            return first

    try:
        bulk_insert(db.engine, db.table, [{"id": 1, "name": "a"}])
        assert read() == (1, "a")
        bulk_upsert(db.engine, db.table, [{"id": 2, "name": "b"}], conflict=["id"])
        assert read() == (2, "b")
        bulk_update(db.engine, db.table, [{"id": 1, "name": "c"}])
        assert read() == (2, "c")
        bulk_delete(db.engine, db.table, [1])
        assert read() == (1, "b")
    finally:
        cache.detach()


def test_progress_bar(db: Db, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    bulk_insert(db.engine, db.table, db.rows(30), batch_size=10, progress=True)
    assert "insert" in capsys.readouterr().err
    bulk_update(db.engine, db.table, db.rows(30), batch_size=10, progress=True)
    shown = capsys.readouterr().err
    assert "update" in shown
    assert "100%" in shown
    bulk_update(db.engine, db.table, db.rows(30), batch_size=10)  # stderr is no terminal
    assert capsys.readouterr().err == ""
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    monkeypatch.setattr(progress_module, "LONG_RUN", 0.0)
    bulk_delete(db.engine, db.table, range(1, 31), batch_size=10)  # a long run in a terminal
    assert "100%" in capsys.readouterr().err


def test_bad_input_is_refused_before_anything_is_written(db: Db):
    statements: list[str] = []
    event.listen(db.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    rows = db.rows(3)
    with pytest.raises(ConfigurationError, match="rows 0 and 2 have the same conflict key"):
        bulk_upsert(db.engine, db.table, [rows[0], rows[1], rows[0]], conflict=["id"])
    with pytest.raises(ConfigurationError, match="conflict target"):
        bulk_upsert(db.engine, db.table, [{"name": "x"}], conflict=["id"])
    with pytest.raises(ConfigurationError, match="key column"):
        bulk_upsert(db.engine, db.table, rows, conflict=["id"], update=["id"])
    with pytest.raises(ConfigurationError, match="do not have"):
        bulk_upsert(db.engine, db.table, [{"id": 1}], conflict=["id"], update=["name"])
    with pytest.raises(ConfigurationError, match="method='copy'"):
        bulk_upsert(db.engine, db.table, rows, conflict=["id"], method="copy")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="only the key"):
        bulk_update(db.engine, db.table, [{"id": 1}])
    with pytest.raises(ConfigurationError, match="same key"):
        bulk_update(db.engine, db.table, [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}])
    with pytest.raises(ConfigurationError, match="not the key's"):
        bulk_delete(db.engine, db.table, [{"id": 1, "name": "a"}])
    with pytest.raises(ConfigurationError, match="2 columns"):
        bulk_delete(db.engine, db.table, [1], key=["id", "name"])
    assert not [s for s in statements if db.table.name in s]


def test_progress_true_without_tqdm_names_the_extra(db: Db, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    bulk_insert(db.engine, db.table, db.rows(2))  # no progress asked: fine without tqdm
    with pytest.raises(ConfigurationError, match=r"sqlperf\[progress\]"):
        bulk_delete(db.engine, db.table, [1], progress=True)


def test_mysql_drops_its_staging_table_after_a_failure(mysql_url: str, make_engine: MakeEngine):
    """MySQL temporary tables outlive a rollback: sqlperf drops them itself."""
    db = Db(make_engine(mysql_url))
    staged: list[str] = []

    def seen(*args: Any) -> None:
        if args[2].startswith("INSERT INTO sqlperf_stage_"):
            staged.append(args[2].split()[2])

    try:
        bulk_insert(db.engine, db.table, db.rows(5))
        event.listen(db.engine, "before_cursor_execute", seen)
        bad = _changed(db.rows(5))
        bad[-1]["amount"] = -1
        with db.engine.connect() as conn:
            with pytest.raises(CHECK_FAILED):
                bulk_update(conn, db.table, bad)
            conn.rollback()
            assert len(staged) == 1
            with pytest.raises(DBAPIError, match="doesn't exist"):
                conn.execute(text(f"SELECT 1 FROM {staged[0]}"))
    finally:
        db.metadata.drop_all(db.engine)


def test_a_mariadb_url_takes_the_mysql_paths(mysql_url: str, make_engine: MakeEngine):
    """``mariadb+pymysql://`` names the dialect "mariadb": the same paths as "mysql"."""
    db = Db(make_engine(mysql_url.replace("mysql+pymysql://", "mariadb+pymysql://", 1)))
    try:
        assert db.engine.dialect.name == "mariadb"
        bulk_insert(db.engine, db.table, db.rows(10))
        upserted = bulk_upsert(db.engine, db.table, _changed(db.rows(12)), conflict=["id"])
        assert (upserted.inserted, upserted.updated) == (2, 10)
        assert bulk_update(db.engine, db.table, db.rows(12)).updated == 12
        assert bulk_delete(db.engine, db.table, [1, 2]).deleted == 2
        assert db.read() == db.rows(10, start=3)
    finally:
        db.metadata.drop_all(db.engine)
