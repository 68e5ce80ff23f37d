"""QueryRecorder on SQLite, PostgreSQL and MariaDB: records, aggregates, scopes, N+1, sinks.

Slow statements sleep in the database (``pg_sleep``, ``SLEEP()``, and a SQLite
function registered on each connection), so their durations are real.
"""

from __future__ import annotations

import inspect
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    Engine,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    insert,
    select,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from sqlperf import ConfigurationError, RoutingSession, safe_url
from sqlperf.cache import MemoryBackend, QueryCache, cached
from sqlperf.capture import RECORD_COLUMNS, MemorySink, QueryRecorder, fingerprint
from sqlperf.capture.records import QueryRecord, StatsRow

MakeEngine = Callable[..., Engine]
HERE = os.path.relpath(__file__)

SLEEP_SQL = {
    "sqlite": "SELECT count(*) FROM {t} WHERE id >= :lo AND (SELECT sqlperf_sleep(:s)) = 0",
    "postgresql": "SELECT count(*) FROM {t}, pg_sleep(:s) WHERE id >= :lo",
    "mysql": "SELECT count(*) FROM {t} WHERE id >= :lo AND (SELECT SLEEP(:s)) = 0",
}


def _line_after() -> int:
    """The number of the line after the caller's."""
    frame = inspect.currentframe()
    assert frame is not None
    assert frame.f_back is not None
    return frame.f_back.f_lineno + 1


def _sqlite_sleep(seconds: float) -> int:
    time.sleep(seconds)
    return 0


@dataclass
class Db:
    engine: Engine
    table: Table
    kind: str  # "sqlite", "postgresql" or "mysql"

    def sleep_sql(self) -> str:
        return SLEEP_SQL[self.kind].format(t=self.table.name)


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def db(request: pytest.FixtureRequest, tmp_path: Path, make_engine: MakeEngine) -> Iterator[Db]:
    """A table of five rows on each dialect (SQLite in a file, so EXPLAIN can see it)."""
    kind: str = request.param
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'capture.db'}"
    else:
        url = request.getfixturevalue("postgres_url" if kind == "postgresql" else "mysql_url")
    engine = make_engine(url)
    if kind == "sqlite":

        @event.listens_for(engine, "connect")
        def _functions(dbapi_connection: Any, record: Any) -> None:
            dbapi_connection.create_function("sqlperf_sleep", 1, _sqlite_sleep)

    metadata = MetaData()
    table = Table(
        f"sqlperf_t_{uuid.uuid4().hex[:10]}",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("name", String(40)),
    )
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(table), [{"id": i, "name": f"n{i}"} for i in range(1, 6)])
    try:
        yield Db(engine, table, kind)
    finally:
        metadata.drop_all(engine)


@pytest.fixture
def recorder() -> Iterator[QueryRecorder]:
    rec = QueryRecorder(slow_ms=40, stats_interval_s=None)
    yield rec
    rec.close()


def _only(records: list[QueryRecord], kind: str) -> QueryRecord:
    found = [r for r in records if r.kind == kind]
    assert len(found) == 1, found
    return found[0]


# -- slow, fast and failing statements ---------------------------------------------------


def test_slow_query_is_recorded_with_every_field(db: Db, recorder: QueryRecorder):
    recorder.attach(db.engine)
    started = datetime.now(timezone.utc)
    with recorder.scope(request_id="req-1", endpoint="/orders"), db.engine.connect() as conn:
        line = _line_after()
        count = conn.execute(text(db.sleep_sql()), {"lo": 2, "s": 0.06}).scalar_one()
    finished = datetime.now(timezone.utc)
    assert count == 4

    rec = _only(recorder.records(), "slow")
    assert started <= rec.ts <= finished
    assert rec.ts.tzinfo is not None
    assert 55 <= rec.duration_ms <= (finished - started).total_seconds() * 1000
    assert rec.sql.startswith("SELECT count(*)")
    expected = fingerprint(rec.sql, mysql=db.kind == "mysql")
    assert (rec.fingerprint_id, rec.fingerprint) == (expected.id, expected.text)
    assert len(rec.fingerprint_id) == 16
    params = json.loads(rec.params or "")
    # Redacted by default: the types are there, the values are not.
    assert sorted(params.values() if isinstance(params, dict) else params) == ["float", "int"]
    assert "0.06" not in (rec.params or "")
    assert rec.rowcount == (None if db.kind == "sqlite" else 1)
    assert rec.executemany is False
    assert rec.count == 1
    url = db.engine.url
    assert rec.url == safe_url(url)
    assert rec.dialect == db.engine.dialect.name
    assert rec.engine is not None
    assert (url.database or "").split("/")[-1] in rec.engine
    assert rec.route is None
    assert rec.pool_wait_ms is not None
    assert rec.pool_wait_ms >= 0
    assert rec.compiled_cache in ("hit", "miss")
    assert rec.result_cache is None
    assert rec.call_site == f"{HERE}:{line} test_slow_query_is_recorded_with_every_field"
    assert rec.thread == threading.current_thread().name
    assert rec.request_id == "req-1"
    assert json.loads(rec.tags or "") == {"endpoint": "/orders"}
    assert rec.error_class is None
    assert rec.error_message is None
    assert rec.explain is None
    assert (rec.host, rec.pid) == (socket.gethostname(), os.getpid())

    frame = recorder.to_dataframe()
    assert list(frame.columns) == list(RECORD_COLUMNS)
    assert {c: str(t) for c, t in frame.dtypes.items()} == dict(RECORD_COLUMNS)
    assert frame.loc[0, "call_site"] == rec.call_site


def test_fast_queries_only_feed_the_aggregates(db: Db, recorder: QueryRecorder):
    recorder.attach(db.engine)
    with db.engine.connect() as conn:
        for i in range(25):
            conn.execute(select(db.table.c.name).where(db.table.c.id == i % 5 + 1)).one()
    assert recorder.records() == []
    stats = recorder.stats()
    row = next(r for r in stats.fingerprints if db.table.name in r.fingerprint)
    assert row.fingerprint.startswith("select ")
    assert (row.calls, row.errors) == (25, 0)
    assert 0 < row.p50_ms <= row.p95_ms <= row.p99_ms
    assert row.max_ms >= row.p99_ms * 0.96  # percentiles are bucket midpoints, within 3.2%
    assert row.total_ms == pytest.approx(row.mean_ms * 25)
    assert row.rows == (0 if db.kind == "sqlite" else 25)
    assert int(stats.to_dataframe()["calls"].iloc[0]) >= 1


def test_failing_query_is_recorded_with_its_error(db: Db, recorder: QueryRecorder):
    recorder.attach(db.engine)
    with db.engine.connect() as conn:
        line = _line_after() + 1
        with pytest.raises(Exception, match="no_such_table"):
            conn.execute(text("SELECT * FROM no_such_table WHERE id = :id"), {"id": 7})
    rec = _only(recorder.records(), "error")
    assert rec.call_site == f"{HERE}:{line} test_failing_query_is_recorded_with_its_error"
    assert rec.error_class is not None
    assert rec.error_class.rsplit(".", 1)[-1] in (
        "OperationalError",  # SQLite
        "UndefinedTable",  # psycopg2
        "ProgrammingError",  # PyMySQL
    )
    assert "no_such_table" in (rec.error_message or "")
    assert rec.fingerprint == "select * from no_such_table where id = ?"
    row = next(r for r in recorder.stats().fingerprints if r.fingerprint_id == rec.fingerprint_id)
    assert (row.errors, row.calls) == (1, 1)


@pytest.mark.parametrize("mode", ["keep", "drop"])
def test_params_keep_and_drop(sqlite_file_url: str, make_engine: MakeEngine, mode: str):
    engine = make_engine(sqlite_file_url)
    with QueryRecorder(slow_ms=0, params=mode, stats_interval_s=None) as rec:  # type: ignore[arg-type]
        rec.attach(engine)
        with engine.connect() as conn:
            conn.execute(text("SELECT :a, :b"), {"a": "secret", "b": 7}).one()
        (record,) = [r for r in rec.records() if r.fingerprint == "select ?, ?"]
    if mode == "keep":
        assert json.loads(record.params or "") == ["secret", 7]
    else:
        assert record.params is None


def test_executemany_is_recorded_as_such(sqlite_file_url: str, make_engine: MakeEngine):
    engine = make_engine(sqlite_file_url)
    metadata = MetaData()
    t = Table("items", metadata, Column("id", Integer, primary_key=True), Column("v", String(10)))
    metadata.create_all(engine)
    with QueryRecorder(slow_ms=0, stats_interval_s=None) as rec:
        rec.attach(engine)
        with engine.begin() as conn:
            conn.execute(insert(t), [{"id": i, "v": f"v{i}"} for i in range(30)])
        inserts = [r for r in rec.records() if r.fingerprint.startswith("insert")]
    assert len(inserts) == 1
    assert inserts[0].executemany is True
    assert inserts[0].rowcount == 30
    shown = json.loads(inserts[0].params or "")
    assert (shown["sets"], len(shown["first"])) == (30, 10)


# -- scopes and N+1 ---------------------------------------------------------------------


def _shop(engine: Engine) -> tuple[Any, Any, MetaData]:
    suffix = uuid.uuid4().hex[:8]

    class Base(DeclarativeBase):
        pass

    class Customer(Base):
        __tablename__ = f"sqlperf_c_{suffix}"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(String(40))

    class Order(Base):
        __tablename__ = f"sqlperf_o_{suffix}"
        id: Mapped[int] = mapped_column(primary_key=True)
        customer_id: Mapped[int] = mapped_column(ForeignKey(Customer.id))
        customer: Mapped[Customer] = relationship()

    Base.metadata.create_all(engine)
    with Session(engine) as s:
        customers = [Customer(id=i, name=f"c{i}") for i in range(1, 8)]
        s.add_all(customers)
        s.add_all([Order(id=i, customer_id=i) for i in range(1, 8)])
        s.commit()
    return Customer, Order, Base.metadata


def test_n_plus_one_lazy_loads_are_reported_once_with_count_and_call_site(
    db: Db, recorder: QueryRecorder
):
    customer, order, metadata = _shop(db.engine)
    try:
        recorder.attach(db.engine)
        names = []
        with recorder.scope(request_id="n1") as scope, Session(db.engine) as s:
            orders = s.scalars(select(order).order_by(order.id)).all()
            for o in orders:
                line = _line_after()
                names.append(o.customer.name)  # one lazy load per order: N+1
        assert names == [f"c{i}" for i in range(1, 8)]
        assert len(scope.suspects) == 1
        suspect = scope.suspects[0]
        assert suspect.kind == "n_plus_one"
        assert suspect.count == 7
        assert suspect.request_id == "n1"
        assert suspect.call_site == (
            f"{HERE}:{line} test_n_plus_one_lazy_loads_are_reported_once_with_count_and_call_site"
        )
        assert customer.__tablename__ in suspect.fingerprint
        assert scope.queries >= 8
        logged = _only(recorder.records(), "n_plus_one")
        assert (logged.count, logged.call_site) == (7, suspect.call_site)
        row = next(
            r for r in recorder.stats().fingerprints if r.fingerprint_id == suspect.fingerprint_id
        )
        assert (row.n_plus_one, row.calls) == (1, 7)
    finally:
        metadata.drop_all(db.engine)


def test_repeats_below_the_threshold_or_outside_a_scope_are_not_suspects(
    sqlite_file_url: str, make_engine: MakeEngine
):
    engine = make_engine(sqlite_file_url)
    with QueryRecorder(n_plus_one=5, stats_interval_s=None) as rec:
        rec.attach(engine)
        with engine.connect() as conn:
            for i in range(10):  # outside any scope
                conn.execute(text("SELECT :i"), {"i": i}).one()
            with rec.scope() as scope:
                for i in range(4):  # below the threshold
                    conn.execute(text("SELECT :i"), {"i": i}).one()
                for i in range(3):  # five in all, but from two call sites
                    conn.execute(text("SELECT :i + 1"), {"i": i}).one()
                conn.execute(text("SELECT :i + 1"), {"i": 9}).one()
                conn.execute(text("SELECT :i + 1"), {"i": 9}).one()
        assert scope.suspects == []
        assert scope.request_id
        assert scope.queries == 9
        assert rec.records() == []


def test_a_suspect_starts_at_its_first_run_and_sums_every_run(
    sqlite_file_url: str, make_engine: MakeEngine
):
    # The record is built at the pair's second run (most statements run once in a
    # scope and need none); its start and its total must still cover the first.
    engine = make_engine(sqlite_file_url)
    with QueryRecorder(n_plus_one=3, params="keep", stats_interval_s=None) as rec:
        rec.attach(engine)
        with engine.connect() as conn, rec.scope() as scope:
            before_first = datetime.now(timezone.utc)
            for i in range(4):
                conn.execute(text("SELECT :i * 2"), {"i": i}).one()
                if i == 0:
                    after_first = datetime.now(timezone.utc)
                    time.sleep(0.02)
        (suspect,) = scope.suspects
        assert before_first <= suspect.ts <= after_first
        assert suspect.count == 4
        row = next(r for r in rec.stats().fingerprints if r.fingerprint == "select ? * ?")
        assert row.calls == 4
        assert suspect.duration_ms == pytest.approx(row.total_ms)
        assert json.loads(suspect.params or "") == [1]  # the second run's (qmark)


# -- sinks, the queue, windows ---------------------------------------------------------------


class BlockingSink:
    """A sink whose writes wait until the test lets them through."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.items: list[QueryRecord | StatsRow] = []

    def write(self, items: Any) -> None:
        self.entered.set()
        self.gate.wait()
        self.items.extend(items)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_stuck_sink_never_blocks_queries_and_drops_are_counted(
    sqlite_file_url: str, make_engine: MakeEngine
):
    engine = make_engine(sqlite_file_url)
    stuck = BlockingSink()
    memory = MemorySink(capacity=1000)
    rec = QueryRecorder(slow_ms=0, sinks=[stuck, memory], queue_size=10, stats_interval_s=None)
    try:
        rec.attach(engine)
        with engine.connect() as conn:
            conn.execute(text("SELECT 0")).one()
            assert stuck.entered.wait(10)  # the writer thread is now stuck inside write()
            for i in range(200):  # would hang here if the application waited for the sink
                conn.execute(text("SELECT :i"), {"i": i}).one()
        stats = rec.stats()
        assert stats.dropped == 200 - 10  # the queue held ten; the rest were dropped
        assert stats.queued == 10
    finally:
        stuck.gate.set()
        rec.close()
    records = [i for i in memory.records() if i.kind == "slow"]
    assert len(records) == 1 + 10
    assert rec.stats().dropped + len(records) == 201


def test_nothing_is_lost_when_the_queue_has_room(sqlite_file_url: str, make_engine: MakeEngine):
    engine = make_engine(sqlite_file_url)
    memory = MemorySink(capacity=5000)
    with QueryRecorder(slow_ms=0, sinks=[memory], stats_interval_s=None) as rec:
        rec.attach(engine)

        def work() -> None:
            with engine.connect() as conn:
                for i in range(500):
                    conn.execute(text("SELECT :i"), {"i": i}).one()

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rec.flush()
        assert rec.stats().dropped == 0
        selects = [r for r in memory.records() if r.fingerprint == "select ?"]
        assert len(selects) == 2000
        (row,) = [r for r in rec.stats().fingerprints if r.fingerprint == "select ?"]
        assert row.calls == 2000


def test_statistics_windows_add_up_to_the_totals(sqlite_file_url: str, make_engine: MakeEngine):
    engine = make_engine(sqlite_file_url)
    memory = MemorySink()
    with QueryRecorder(sinks=[memory], stats_interval_s=None) as rec:
        rec.attach(engine)
        with engine.connect() as conn:
            for i in range(30):
                conn.execute(text("SELECT :i"), {"i": i}).one()
            rec.flush()
            for i in range(12):
                conn.execute(text("SELECT :i"), {"i": i}).one()
            rec.flush()
            rec.flush()  # an empty window writes no rows
        windows = [r for r in memory.stats_rows() if r.fingerprint == "select ?"]
        assert [w.calls for w in windows] == [30, 12]
        assert windows[0].window_end == windows[1].window_start
        (total,) = [r for r in rec.stats().fingerprints if r.fingerprint == "select ?"]
        assert total.calls == 42
        assert total.total_ms == pytest.approx(sum(w.total_ms for w in windows))


def test_aggregates_are_exact_with_many_threads_and_concurrent_windows(
    sqlite_file_url: str, make_engine: MakeEngine
):
    # Durations are appended without a lock and folded in batches: with four
    # threads querying while windows are cut, every statement is still counted
    # exactly once, in the totals and in exactly one window.
    engine = make_engine(sqlite_file_url)
    memory = MemorySink()
    per_thread = 1001  # not a multiple of the fold size: some are still pending at the end
    with QueryRecorder(sinks=[memory], stats_interval_s=None) as rec:
        rec.attach(engine)
        done = threading.Event()

        def work() -> None:
            with engine.connect() as conn:
                for i in range(per_thread):
                    conn.execute(text("SELECT :i"), {"i": i}).one()

        def cut_windows() -> None:
            while not done.is_set():
                rec.flush()
                time.sleep(0.005)

        cutter = threading.Thread(target=cut_windows)
        cutter.start()
        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        done.set()
        cutter.join()
        rec.flush()
        (total,) = [r for r in rec.stats().fingerprints if r.fingerprint == "select ?"]
        windows = [r for r in memory.stats_rows() if r.fingerprint == "select ?"]
    assert total.calls == 4 * per_thread
    assert len(windows) > 1
    assert sum(w.calls for w in windows) == total.calls
    assert sum(json.loads(total.histogram).values()) == total.calls
    assert total.total_ms == pytest.approx(sum(w.total_ms for w in windows))
    assert total.max_ms == pytest.approx(max(w.max_ms for w in windows))
    assert 0 < total.p50_ms <= total.p99_ms <= total.max_ms * 1.04


def test_rows_and_maximum_survive_folding(sqlite_file_url: str, make_engine: MakeEngine):
    engine = make_engine(sqlite_file_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE fold_t (id INTEGER PRIMARY KEY, g INTEGER, v INTEGER)"))
        conn.execute(
            text("INSERT INTO fold_t (id, g, v) VALUES (:id, :g, 0)"),
            [{"id": i, "g": i % 2} for i in range(4)],
        )
    with QueryRecorder(stats_interval_s=None) as rec:
        rec.attach(engine)
        with engine.begin() as conn:
            for i in range(300):  # more than one fold of 256
                conn.execute(text("UPDATE fold_t SET v = v + 1 WHERE g = :g"), {"g": i % 2})
        (row,) = [r for r in rec.stats().fingerprints if r.fingerprint.startswith("update")]
    assert row.calls == 300
    assert row.rows == 600  # two rows per UPDATE
    assert row.max_ms >= row.p99_ms > 0


def test_sampling_thins_the_aggregates_but_not_the_records(
    sqlite_file_url: str, make_engine: MakeEngine
):
    engine = make_engine(sqlite_file_url)
    with QueryRecorder(slow_ms=0, sample=0.5, stats_interval_s=None) as rec:
        rec.attach(engine)
        with engine.connect() as conn:
            for i in range(400):
                conn.execute(text("SELECT :i"), {"i": i}).one()
        (row,) = [r for r in rec.stats().fingerprints if r.fingerprint == "select ?"]
        assert 100 < row.calls < 300  # binomial(400, 0.5): outside this range p < 1e-20
        assert row.sample == 0.5
        assert len([r for r in rec.records() if r.fingerprint == "select ?"]) == 400


def test_detach_removes_the_listeners(sqlite_file_url: str, make_engine: MakeEngine):
    engine = make_engine(sqlite_file_url)
    plain = create_engine(sqlite_file_url)
    try:
        with QueryRecorder(stats_interval_s=None) as rec:
            rec.attach(engine, plain, engine)  # attaching twice changes nothing
            assert rec.engines == [engine, plain]
            for e in (engine, plain):
                with e.connect() as conn:
                    conn.execute(text("SELECT 1")).one()
            rec.detach(engine)
            assert not engine.dispatch.after_cursor_execute
            assert not engine.dispatch.before_cursor_execute
            for e in (engine, plain):
                with e.connect() as conn:
                    conn.execute(text("SELECT 1")).one()
                    with pytest.raises(Exception, match="nope"):
                        conn.execute(text("SELECT * FROM nope"))
            # Same URL, same name, but aggregates of their own; the detached engine's
            # failure was not seen.
            calls = sorted((r.fingerprint, r.calls) for r in rec.stats().fingerprints)
            assert calls == [("select * from nope", 1), ("select ?", 1), ("select ?", 2)]
            assert rec.engines == [plain]
        assert rec.engines == []
        assert not plain.dispatch.after_cursor_execute
    finally:
        plain.dispose()


def test_bad_arguments_are_refused():
    for kwargs in (
        {"slow_ms": -1},
        {"sample": 0},
        {"sample": 1.5},
        {"params": "all"},
        {"n_plus_one": 1},
        {"queue_size": 0},
        {"sinks": [object()]},
    ):
        with pytest.raises(ConfigurationError):
            QueryRecorder(**kwargs)
    with QueryRecorder() as rec, pytest.raises(ConfigurationError, match="engines"):
        rec.attach("sqlite://")


# -- what other parts of sqlperf leave on the execution ------------------------------------


def test_explain_plans_of_slow_selects(db: Db):
    with QueryRecorder(slow_ms=40, explain=True, stats_interval_s=None) as rec:
        rec.attach(db.engine)
        with db.engine.connect() as conn:
            conn.execute(text(db.sleep_sql()), {"lo": 2, "s": 0.06}).one()
        rec_ = _only(rec.records(), "slow")
    plan = rec_.explain or ""
    marker = {"sqlite": "SCAN", "postgresql": "Seq Scan", "mysql": "select_type"}[db.kind]
    assert marker in plan, plan


def test_no_plan_for_slow_writes(postgres_url: str, make_engine: MakeEngine):
    engine = make_engine(postgres_url)
    with QueryRecorder(slow_ms=40, explain=True, stats_interval_s=None) as rec:
        rec.attach(engine)
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TEMP TABLE w (x int)")
            conn.exec_driver_sql("INSERT INTO w SELECT 1 FROM pg_sleep(0.06)")
        rec_ = _only(rec.records(), "slow")
    assert rec_.fingerprint.startswith("insert into w")
    assert rec_.explain is None


def test_compiled_cache_and_result_cache_outcomes(sqlite_file_url: str, make_engine: MakeEngine):
    engine = make_engine(sqlite_file_url)
    metadata = MetaData()
    t = Table("things", metadata, Column("id", Integer, primary_key=True))
    metadata.create_all(engine)
    cache = QueryCache(MemoryBackend())
    cache.attach(engine)
    try:
        with QueryRecorder(slow_ms=0, stats_interval_s=None) as rec:
            rec.attach(engine)
            stmt = select(t.c.id).where(t.c.id > 0).options(cached())
            for _ in range(3):
                with engine.connect() as conn:
                    conn.execute(stmt).all()
            records = [r for r in rec.records() if "things" in r.sql and r.kind == "slow"]
            assert [r.result_cache for r in records] == ["miss", "hit", "hit"]
            assert [r.compiled_cache for r in records] == ["miss", "hit", "hit"]
            (row,) = [
                r for r in rec.stats().fingerprints if r.fingerprint_id == records[0].fingerprint_id
            ]
            assert (row.cache_hits, row.cache_misses, row.calls) == (2, 1, 3)
    finally:
        cache.detach()


def test_sqlcommenter_tags_reach_the_server_and_keep_cache_keys(db: Db):
    sent: list[str] = []

    def spy(cursor: Any, statement: str, parameters: Any, context: Any) -> None:
        sent.append(statement)

    event.listen(db.engine, "do_execute", spy)  # before the cache's: it sees hits too
    cache = QueryCache(MemoryBackend())
    cache.attach(db.engine)
    try:
        with QueryRecorder(slow_ms=0, comments=True, stats_interval_s=None) as rec:
            rec.attach(db.engine)
            stmt = select(db.table.c.name).where(db.table.c.id == 3).options(cached())
            for request in ("a-1", "b/2"):
                with rec.scope(request_id=request), db.engine.connect() as conn:
                    assert conn.execute(stmt).scalar_one() == "n3"
            records = [r for r in rec.records() if db.table.name in r.sql]
    finally:
        cache.detach()
        event.remove(db.engine, "do_execute", spy)
    # Each statement carried its request's tags; the second was a cache hit all the same.
    tagged = [s for s in sent if db.table.name in s]
    fp = records[0].fingerprint_id
    assert tagged[0].endswith(f" /*request_id='a-1',sqlperf_fp='{fp}'*/")
    assert tagged[1].endswith(f" /*request_id='b2',sqlperf_fp='{fp}'*/")  # "/" is left out
    assert [r.result_cache for r in records] == ["miss", "hit"]
    assert "/*" not in records[0].sql  # records keep the application's SQL
    assert records[1].request_id == "b/2"


def test_route_comes_from_the_routing_session(
    postgres_url: str, replica_url: str, make_engine: MakeEngine
):
    primary = make_engine(postgres_url)
    replica = make_engine(replica_url, read_only=True)
    with QueryRecorder(slow_ms=0, stats_interval_s=None) as rec:
        rec.attach(primary, replica)
        with RoutingSession(primary=primary, replicas=[replica]) as s:
            s.execute(text("SELECT 1 AS read_me")).one()
            s.execute(text("CREATE TEMP TABLE sqlperf_route_t (x int)"))
            s.commit()
        routes = {r.fingerprint: r.route for r in rec.records()}
    assert routes["select ? as read_me"] == "replica"
    assert routes["create temp table sqlperf_route_t (x int)"] == "primary"


def test_errors_sqlalchemy_expects_are_not_records(db: Db, recorder: QueryRecorder):
    # MySQL's has_table() runs DESCRIBE and catches the error of a missing table.
    recorder.attach(db.engine)
    with db.engine.connect() as conn:
        assert not db.engine.dialect.has_table(conn, "sqlperf_no_such_table")
    assert [r for r in recorder.records() if r.kind == "error"] == []
