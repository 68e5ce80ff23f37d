"""RoutingSession against a real PostgreSQL streaming replica, MariaDB and SQLite."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Engine, insert, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.orm import sessionmaker

from sqlperf import ConfigurationError
from sqlperf.routing import (
    ConsistencyToken,
    RoutingSession,
    _text_is_read,
    engine_role,
    replica_health,
    routing_stats,
)
from tests.conftest import cyclic_garbage, require
from tests.replica_cluster import (
    PORT,
    Cluster,
    make_item_model,
    pause_replay,
    resume_replay,
)
from tests.tcp_proxy import TcpProxy
from tests.web_harness import counting

MakeEngine = Callable[..., Engine]


def served_by(session: RoutingSession, stmt: object) -> Engine:
    """The engine whose connection ran ``stmt``."""
    result = session.execute(stmt)
    engine: Engine = result.context.root_connection.engine
    return engine


# -- the real PostgreSQL replica -------------------------------------------------------


def test_reads_go_to_the_replica_and_writes_to_the_primary(pg: Cluster):
    Session = sessionmaker(class_=RoutingSession, primary=pg.primary, replicas=[pg.replica])
    Item = pg.model
    with Session() as s:
        assert s.scalar(PORT) == 5433  # a plain read: the replica
        s.add(Item(id=1, name="one"))
        s.flush()
        assert s.scalar(PORT) == 5432  # after a flush: the primary, same transaction
        s.commit()
    with pg.primary.begin() as conn:  # written outside any routing session
        conn.execute(insert(Item.__table__), [{"id": 2, "name": "two"}])  # type: ignore[attr-defined]
    # Without a token nothing pins the next session: it reads the replica once replayed.
    deadline = time.monotonic() + 30
    while True:
        with Session() as s:
            names = s.scalars(select(Item.name).order_by(Item.id)).all()  # type: ignore[attr-defined]
            port = s.scalar(PORT)
        if names == ["one", "two"]:
            assert port == 5433
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_closed_sessions_leave_no_reference_cycles_and_keep_their_token(pg: Cluster):
    """Sessions that read a replica, or wrote, are freed by reference counting once
    closed and dropped (the ended transaction they kept referred back to them); the
    writer's token, read after the close, still names its commit."""
    Item = pg.model

    def work(mode: str) -> str | None:
        Session = sessionmaker(
            class_=RoutingSession, primary=pg.primary, replicas=[pg.replica], mode=mode
        )
        with Session() as reader:  # the second statement marks the transaction
            assert [reader.scalar(PORT), reader.scalar(PORT)] == [5433, 5433]
        with Session() as writer:
            writer.add(Item(name=mode))
            writer.commit()
        return writer.consistency_token()

    with cyclic_garbage() as garbage:
        tokens = [work("statement"), work("transaction")]
    assert [o for o in garbage if isinstance(o, RoutingSession)] == []
    del garbage
    assert None not in tokens
    Session = sessionmaker(class_=RoutingSession, primary=pg.primary, replicas=[pg.replica])
    with Session(consistency_token=tokens[-1]) as s:
        names = s.scalars(select(Item.name).order_by(Item.id)).all()  # type: ignore[attr-defined]
    assert names == ["statement", "transaction"]


def test_locking_reads_dml_and_text_writes_go_to_the_primary(pg: Cluster):
    Session = sessionmaker(class_=RoutingSession, primary=pg.primary, replicas=[pg.replica])
    Item = pg.model
    t = Item.__table__  # type: ignore[attr-defined]
    with Session() as s:
        assert served_by(s, select(t.c.id).with_for_update()) is pg.primary
    with Session() as s:
        assert served_by(s, select(t.c.id).with_for_update(read=True)) is pg.primary
    with Session() as s:
        assert served_by(s, text(f"SELECT id FROM {pg.table} FOR SHARE")) is pg.primary
    with Session() as s:
        assert served_by(s, update(t).values(name="x")) is pg.primary
        assert served_by(s, select(t.c.id)) is pg.primary  # sticky after the write
    with Session() as s:
        assert served_by(s, text(f"UPDATE {pg.table} SET name = 'y'")) is pg.primary
        assert s.scalar(PORT) == 5432
        s.rollback()
        assert s.scalar(PORT) == 5433  # a new transaction reads the replica again
    with Session() as s:
        assert s.connection().engine is pg.primary  # may run anything: the primary


def test_explicit_routes(pg: Cluster):
    Session = sessionmaker(class_=RoutingSession, primary=pg.primary, replicas=[pg.replica])
    with Session() as s:
        with s.using_primary():
            assert s.scalar(PORT) == 5432
        assert s.scalar(PORT) == 5433
        assert s.scalar(PORT.execution_options(sqlperf_route="primary")) == 5432
        assert s.scalar(PORT, execution_options={"sqlperf_route": "primary"}) == 5432
        s.execute(text(f"DELETE FROM {pg.table}"))
        assert s.scalar(PORT) == 5432
        assert s.scalar(PORT, execution_options={"sqlperf_route": "replica"}) == 5433


def test_a_write_inside_using_primary_is_a_write(pg: Cluster):
    """Its commit gives a read-your-writes token, and the session's reads stay on the primary."""
    Session = sessionmaker(class_=RoutingSession, primary=pg.primary, replicas=[pg.replica])
    with Session() as s:
        with s.using_primary():
            s.execute(text(f"DELETE FROM {pg.table} WHERE id = -1"))
        assert s.scalar(PORT) == 5432  # sticky after the write, like any other
        s.commit()
        assert s.consistency_token() is not None


def test_read_your_writes_while_replay_is_paused(pg: Cluster):
    Session = sessionmaker(class_=RoutingSession, primary=pg.primary, replicas=[pg.replica])
    Item = pg.model
    with Session() as s:
        assert s.scalar(PORT) == 5433  # warm: the replica is known and healthy
    pause_replay(pg.replica)
    try:
        with Session() as writer:
            writer.add(Item(id=10, name="fresh"))
            writer.commit()
            token = writer.consistency_token()
            # The same session, right after commit: it sees its own commit.
            assert writer.scalar(select(Item.name).where(Item.id == 10)) == "fresh"  # type: ignore[attr-defined]
            assert writer.scalar(PORT) == 5432
        assert token is not None
        # Another session (another request) given the token sees it too.
        with Session(consistency_token=token) as reader:
            assert reader.scalar(select(Item.name).where(Item.id == 10)) == "fresh"  # type: ignore[attr-defined]
        # The control: a session without the token reads the paused replica, which lacks it.
        with Session() as stale:
            assert stale.scalar(PORT) == 5433
            assert stale.scalar(select(Item.name).where(Item.id == 10)) is None  # type: ignore[attr-defined]
    finally:
        resume_replay(pg.replica)
    # Once replayed, the token no longer pins reads to the primary.
    deadline = time.monotonic() + 30
    while True:
        with Session(consistency_token=token, lsn_refresh_s=0.0) as s:
            if s.scalar(PORT) == 5433:
                assert s.scalar(select(Item.name).where(Item.id == 10)) == "fresh"  # type: ignore[attr-defined]
                break
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_lagging_replica_is_skipped(pg: Cluster):
    Session = sessionmaker(
        class_=RoutingSession,
        primary=pg.primary,
        replicas=[pg.replica],
        max_lag=0.2,
        health_check_s=0.0,
        cooldown_s=0.0,
    )
    Item = pg.model
    with Session() as s:
        assert s.scalar(PORT) == 5433
    pause_replay(pg.replica)
    try:
        with pg.primary.begin() as conn:  # WAL the replica has not replayed
            conn.execute(insert(Item.__table__), [{"id": 20, "name": "lag"}])  # type: ignore[attr-defined]
        time.sleep(0.5)
        before = routing_stats(pg.primary).fallbacks
        with Session() as s:
            assert s.scalar(PORT) == 5432
        assert routing_stats(pg.primary).fallbacks == before + 1
        health = replica_health(pg.replica)
        assert health.lag_s is not None
        assert health.lag_s > 0.2
    finally:
        resume_replay(pg.replica)
    deadline = time.monotonic() + 30
    while True:
        with Session() as s:
            if s.scalar(PORT) == 5433:
                break
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_replica_outage_mid_session_falls_back_and_recovers(pg: Cluster, make_engine: MakeEngine):
    url = make_url(str(pg.replica.url.render_as_string(hide_password=False)))
    with TcpProxy((url.host or "127.0.0.1", url.port or 5433)) as proxy:
        replica = make_engine(url.set(port=proxy.port), read_only=True)
        # A cool-down long enough that a slow moment of a loaded machine between the
        # failure and the next session cannot end it (0.3 s once did, in CI).
        Session = sessionmaker(
            class_=RoutingSession, primary=pg.primary, replicas=[replica], cooldown_s=2.0
        )
        with Session() as s:
            assert s.scalar(PORT) == 5433  # through the proxy
            proxy.stop()  # the replica vanishes while this session holds a connection to it
            assert s.scalar(PORT) == 5432  # the read is served by the primary, no error
            assert s.scalar(PORT) == 5432
            assert not replica_health(replica).healthy
            s.add(pg.model(id=30, name="still writes"))
            s.commit()  # the dead replica connection does not break the commit
        failures = routing_stats(replica).failures
        with Session() as s:  # during the cool-down the replica is not even tried
            assert s.scalar(PORT) == 5432
        assert routing_stats(replica).failures == failures
        proxy.start()  # the replica is back
        time.sleep(2.05)
        with Session() as s:
            assert s.scalar(PORT) == 5433


def test_concurrent_readers_see_their_own_commits(pg: Cluster):
    Session = sessionmaker(class_=RoutingSession, primary=pg.primary, replicas=[pg.replica])
    Item = pg.model
    errors: list[str] = []
    replica_reads = [0]

    def worker(n: int) -> None:
        for i in range(15):
            key = n * 1000 + i
            try:
                with Session() as s:
                    if s.scalar(PORT) == 5433:
                        replica_reads[0] += 1
                    s.add(Item(id=key, name=f"v{key}"))
                    s.commit()
                    got = s.scalar(select(Item.name).where(Item.id == key))  # type: ignore[attr-defined]
                    if got != f"v{key}":
                        errors.append(f"same session missed {key}")
                    token = s.consistency_token()
                with Session(consistency_token=token) as other:
                    got = other.scalar(select(Item.name).where(Item.id == key))  # type: ignore[attr-defined]
                    if got != f"v{key}":
                        errors.append(f"token session missed {key}")
            except Exception as err:
                errors.append(repr(err))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert replica_reads[0] > 0  # the replica did serve reads meanwhile


# -- MariaDB and SQLite with a second engine standing in as the replica -----------------


@pytest.fixture(params=["mysql", "sqlite"])
def stand_in(
    request: pytest.FixtureRequest, tmp_path: object, make_engine: MakeEngine
) -> Iterator[Cluster]:
    """A primary and a read-only engine on the same database standing in as its replica."""
    url = require("mysql") if request.param == "mysql" else f"sqlite:///{tmp_path}/routing.db"
    primary = make_engine(url)
    table = f"sqlperf_rt_{uuid.uuid4().hex[:10]}"
    model = make_item_model(table)
    model.metadata.create_all(primary)  # type: ignore[attr-defined]
    replica = make_engine(url, read_only=True)
    yield Cluster(primary, replica, table, model)
    model.metadata.drop_all(primary)  # type: ignore[attr-defined]


def test_stand_in_replica_routing_and_pin_window(stand_in: Cluster):
    Session = sessionmaker(
        class_=RoutingSession,
        primary=stand_in.primary,
        replicas=[stand_in.replica],
        pin_window_s=0.3,
    )
    Item = stand_in.model
    read = select(Item.__table__.c.id)  # type: ignore[attr-defined]
    with Session() as s:
        assert served_by(s, read) is stand_in.replica
        s.add(Item(id=1, name="a"))
        s.flush()
        assert served_by(s, read) is stand_in.primary
        s.commit()
        token = s.consistency_token()
        assert served_by(s, read) is stand_in.primary  # pinned: no WAL position here
    assert token is not None
    assert ConsistencyToken.parse(token).lsn is None
    with Session(consistency_token=token) as s:
        assert served_by(s, read) is stand_in.primary
    time.sleep(0.35)
    with Session(consistency_token=token) as s:
        assert served_by(s, read) is stand_in.replica  # the pin window has passed
        assert s.scalars(read).all() == [1]
    assert engine_role(stand_in.primary) == "primary"
    assert engine_role(stand_in.replica) == "replica"


def _check_token_needs_io(cluster: Cluster, *, on_postgresql: bool) -> None:
    Session = sessionmaker(
        class_=RoutingSession, primary=cluster.primary, replicas=[cluster.replica]
    )
    Item = cluster.model
    with counting(cluster.primary) as seen, Session() as s:
        assert not s.token_needs_io  # nothing happened yet
        s.scalars(select(Item.__table__.c.id)).all()  # type: ignore[attr-defined]
        s.rollback()
        assert not s.token_needs_io  # a transaction that only read ended
        s.add(Item(id=1, name="a"))
        s.flush()
        assert not s.token_needs_io  # it wrote, but is still open
        s.commit()
        assert s.token_needs_io is on_postgresql
        before = len(seen)
        token = s.consistency_token()
        asked = seen[before:]
        assert asked == (["SELECT pg_current_wal_lsn()::text"] if on_postgresql else [])
        assert token is not None
        assert not s.token_needs_io  # read once, kept
        before = len(seen)
        assert s.consistency_token() == token
        assert seen[before:] == []


def test_token_needs_io_says_when_reading_the_token_queries(pg: Cluster):
    """``token_needs_io`` is true exactly when ``consistency_token()`` would query the
    primary: after a transaction that wrote ended on PostgreSQL, until it is read."""
    _check_token_needs_io(pg, on_postgresql=True)


def test_token_needs_io_is_false_without_wal_positions(stand_in: Cluster):
    """On MariaDB and SQLite a token is the commit's time: reading it never queries."""
    _check_token_needs_io(stand_in, on_postgresql=False)


def test_transaction_mode_keeps_one_replica_and_begin_write_uses_the_primary(
    stand_in: Cluster, make_engine: MakeEngine
):
    url = stand_in.primary.url.render_as_string(hide_password=False)
    r1 = make_engine(url, read_only=True)
    r2 = make_engine(url, read_only=True)
    Item = stand_in.model
    read = select(Item.__table__.c.id)  # type: ignore[attr-defined]
    per_txn = sessionmaker(
        class_=RoutingSession, primary=stand_in.primary, replicas=[r1, r2], mode="transaction"
    )
    with per_txn() as s:
        first = served_by(s, read)
        assert first in (r1, r2)
        assert {served_by(s, read) for _ in range(4)} == {first}  # one replica per transaction
        s.rollback()
        assert served_by(s, read) is not first  # round-robin moves on with the next transaction
    per_stmt = sessionmaker(class_=RoutingSession, primary=stand_in.primary, replicas=[r1, r2])
    with per_stmt() as s:
        assert {served_by(s, read) for _ in range(4)} == {r1, r2}  # per statement
    with per_txn() as s, s.begin_write():
        assert served_by(s, read) is stand_in.primary  # declared writing: wholly primary
        s.add(Item(id=5, name="w"))
    with per_txn() as s:
        assert served_by(s, read) in (r1, r2)  # the declaration ended with its transaction


def test_dead_replica_at_connect_is_skipped_then_retried(
    stand_in: Cluster, make_engine: MakeEngine
):
    # Nothing listens on port 1: every connect to this "replica" fails at once.
    dead = make_engine("mysql+pymysql://root@127.0.0.1:1/test", pool_size=1)
    Session = sessionmaker(
        class_=RoutingSession, primary=stand_in.primary, replicas=[dead], cooldown_s=0.2
    )
    Item = stand_in.model
    with Session() as s:
        assert served_by(s, select(Item.__table__.c.id)) is stand_in.primary  # type: ignore[attr-defined]
    assert routing_stats(dead).failures == 1
    with Session() as s:
        s.scalars(select(Item.id)).all()  # type: ignore[attr-defined]
    assert routing_stats(dead).failures == 1  # cooling down: not tried
    time.sleep(0.25)
    with Session() as s:
        s.scalars(select(Item.id)).all()  # type: ignore[attr-defined]
    assert routing_stats(dead).failures == 2  # tried again after the cool-down


# -- independence, configuration and classification -------------------------------------


def test_two_sessionmakers_coexist(sqlite_file_url: str, make_engine: MakeEngine):
    primary = make_engine(sqlite_file_url)
    with primary.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (v int)")
    replica = make_engine(sqlite_file_url, read_only=True)
    with_replica = sessionmaker(class_=RoutingSession, primary=primary, replicas=[replica])
    primary_only = sessionmaker(class_=RoutingSession, primary=primary, replicas=[])
    read = text("SELECT v FROM t")
    with with_replica() as a, primary_only() as b:
        assert served_by(a, read) is replica
        assert served_by(b, read) is primary
        b.execute(text("INSERT INTO t VALUES (1)"))
        assert served_by(a, read) is replica  # b's write does not pin a
        b.commit()
        assert b.consistency_token() is None  # no replicas: nothing to be consistent with


def test_bad_configuration(sqlite_file_url: str, make_engine: MakeEngine):
    primary = make_engine(sqlite_file_url)
    with pytest.raises(ConfigurationError, match="policy"):
        RoutingSession(primary=primary, replicas=[], policy="fastest")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="mode"):
        RoutingSession(primary=primary, mode="query")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="cannot also be a replica"):
        RoutingSession(primary=primary, replicas=[primary])
    with pytest.raises(ConfigurationError, match="must be an Engine"):
        RoutingSession(primary="sqlite://")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="bind"):
        RoutingSession(primary=primary, bind=primary)
    with pytest.raises(ConfigurationError, match="consistency token"):
        RoutingSession(primary=primary, consistency_token="nonsense")


def test_token_round_trip():
    token = ConsistencyToken(committed_at=1795281088.301308, lsn=0x3F4BFF98)
    assert str(token) == "v1:1795281088.301308:0/3F4BFF98"
    assert ConsistencyToken.parse(str(token)) == token
    assert ConsistencyToken.parse("v1:12.5:-") == ConsistencyToken(12.5, None)
    newer = token.newer(ConsistencyToken(1.0, 0x4000_0000_0))
    assert newer.lsn == 0x4000_0000_0
    assert newer.committed_at == token.committed_at


@pytest.mark.parametrize(
    ("sql", "is_read"),
    [
        ("SELECT 1", True),
        ("  (select * from t) union (select * from u)", True),
        ("WITH x AS (SELECT 1) SELECT * FROM x", True),
        ("SHOW max_connections", True),
        ("SELECT * FROM t FOR UPDATE", False),
        ("select * from t for share", False),
        ("SELECT * FROM t LOCK IN SHARE MODE", False),
        ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", False),
        ("SELECT nextval('s')", False),
        ("SELECT * INTO t2 FROM t", False),
        ("UPDATE t SET v = 1", False),
        ("insert into t values (1)", False),
        ("CALL refresh()", False),
        ("VACUUM", False),
    ],
)
def test_text_classification(sql: str, is_read: bool):
    assert _text_is_read(sql) is is_read


def test_no_replicas_everything_on_primary(sqlite_file_url: str, make_engine: MakeEngine):
    primary = make_engine(sqlite_file_url)
    Session = sessionmaker(class_=RoutingSession, primary=primary)
    with Session() as s:
        assert served_by(s, text("SELECT 1")) is primary


def test_random_policy_spreads_reads(stand_in: Cluster, make_engine: MakeEngine):
    url = stand_in.primary.url.render_as_string(hide_password=False)
    r1 = make_engine(url, read_only=True)
    r2 = make_engine(url, read_only=True)
    Session = sessionmaker(
        class_=RoutingSession, primary=stand_in.primary, replicas=[r1, r2], policy="random"
    )
    read = select(stand_in.model.__table__.c.id)  # type: ignore[attr-defined]
    with Session() as s:
        seen = {served_by(s, read) for _ in range(40)}
    assert seen == {r1, r2}  # 2 ** -39 chance of a false failure


def test_exhausted_replica_pool_falls_back_to_primary(stand_in: Cluster, make_engine: MakeEngine):
    url = stand_in.primary.url.render_as_string(hide_password=False)
    busy = make_engine(url, read_only=True, pool_size=1, max_overflow=0, pool_timeout=0.1)
    Session = sessionmaker(class_=RoutingSession, primary=stand_in.primary, replicas=[busy])
    read = select(stand_in.model.__table__.c.id)  # type: ignore[attr-defined]
    with Session() as s:
        assert served_by(s, read) is busy  # warm: the replica works
    with busy.connect():  # someone holds the replica's only connection
        with Session() as s:
            assert served_by(s, read) is stand_in.primary  # waited pool_timeout, then fell back
        assert not replica_health(busy).healthy
