"""QueryCache on real databases: SQLite + MemoryBackend, PostgreSQL and MariaDB + Redis."""

from __future__ import annotations

import os
import pickle
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import (
    Column,
    Engine,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    delete,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session

from sqlperf.cache import MemoryBackend, QueryCache, RedisBackend
from sqlperf.cache.backends import CacheBackend
from tests.conftest import require
from tests.tcp_proxy import TcpProxy

MakeEngine = Callable[..., Engine]


@dataclass
class Setup:
    engine: Engine
    cache: QueryCache
    backend: CacheBackend
    users: Table
    orders: Table


def _backend(kind: str) -> CacheBackend:
    if kind == "memory":
        return MemoryBackend()
    return RedisBackend(require("redis"), namespace=f"sqlperf-test-{uuid.uuid4().hex[:8]}")


@pytest.fixture(params=["sqlite+memory", "postgresql+redis", "mysql+redis"])
def setup(
    request: pytest.FixtureRequest, tmp_path: Path, make_engine: MakeEngine
) -> Iterator[Setup]:
    db, kind = request.param.split("+")
    url = f"sqlite:///{tmp_path / 'cache.db'}" if db == "sqlite" else require(db)
    engine = make_engine(url)
    suffix = uuid.uuid4().hex[:8]
    md = MetaData()
    users = Table(
        f"cu_{suffix}", md, Column("id", Integer, primary_key=True), Column("name", String(40))
    )
    orders = Table(
        f"co_{suffix}",
        md,
        Column("id", Integer, primary_key=True),
        Column("user_id", ForeignKey(users.c.id)),
        Column("total", Integer),
    )
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(users), [{"id": 1, "name": "ann"}, {"id": 2, "name": "bob"}])
        conn.execute(insert(orders), [{"id": 1, "user_id": 1, "total": 10}])
    backend = _backend(kind)
    cache = QueryCache(backend, ttl=60).attach(engine)
    try:
        yield Setup(engine, cache, backend, users, orders)
    finally:
        cache.detach()
        md.drop_all(engine)
        backend.clear()
        backend.close()


def _names(s: Setup) -> list[str]:
    with s.engine.connect() as conn:
        rows = s.cache.execute(conn, select(s.users.c.name).order_by(s.users.c.id)).all()
    return [r.name for r in rows]


def test_miss_then_hit_and_commit_invalidates(setup: Setup):
    assert _names(setup) == ["ann", "bob"]
    assert _names(setup) == ["ann", "bob"]
    stats = setup.cache.stats()
    assert (stats.misses, stats.hits, stats.stores) == (1, 1, 1)
    with setup.engine.begin() as conn:  # a Core write on an attached engine
        conn.execute(update(setup.users).where(setup.users.c.id == 2).values(name="bea"))
    assert _names(setup) == ["ann", "bea"]  # right after commit: never the old rows
    assert setup.cache.stats().invalidations[setup.users.name] == 1


def test_rollback_invalidates_nothing(setup: Setup):
    _names(setup)
    with setup.engine.connect() as conn:
        conn.execute(update(setup.users).values(name="zed"))
        conn.rollback()
    assert _names(setup) == ["ann", "bob"]
    stats = setup.cache.stats()
    assert stats.hits == 1
    assert setup.users.name not in stats.invalidations


def test_reads_inside_a_writing_transaction_bypass_and_store_nothing(setup: Setup):
    _names(setup)
    stores = setup.cache.stats().stores
    with setup.engine.connect() as conn:
        conn.execute(update(setup.users).where(setup.users.c.id == 1).values(name="uncommitted"))
        rows = setup.cache.execute(conn, select(setup.users.c.name).order_by(setup.users.c.id))
        assert [r.name for r in rows] == ["uncommitted", "bob"]  # its own write, from the db
        conn.rollback()
    assert setup.cache.stats().stores == stores
    assert setup.cache.stats().bypasses["dirty_transaction"] == 1
    assert _names(setup) == ["ann", "bob"]  # nothing uncommitted leaked into the cache


def test_joined_table_write_invalidates_the_join_only(setup: Setup):
    u, o = setup.users, setup.orders
    join = select(u.c.name, o.c.total).join(o, o.c.user_id == u.c.id)
    with setup.engine.connect() as conn:
        assert [tuple(r) for r in setup.cache.execute(conn, join)] == [("ann", 10)]
    _names(setup)
    with setup.engine.begin() as conn:
        conn.execute(update(o).values(total=99))
    hits = setup.cache.stats().hits
    assert _names(setup) == ["ann", "bob"]  # users-only entry survives an orders write
    assert setup.cache.stats().hits == hits + 1
    with setup.engine.connect() as conn:
        assert [tuple(r) for r in setup.cache.execute(conn, join)] == [("ann", 99)]


def test_text_and_orm_writes_invalidate(setup: Setup):
    _names(setup)
    with setup.engine.begin() as conn:
        conn.execute(text(f"UPDATE {setup.users.name} SET name = 'tex' WHERE id = 1"))
    assert _names(setup) == ["tex", "bob"]
    with setup.engine.begin() as conn:
        conn.exec_driver_sql(f"DELETE FROM {setup.orders.name}")
        conn.exec_driver_sql(f"DELETE FROM {setup.users.name} WHERE id = 2")
    assert _names(setup) == ["tex"]
    with Session(setup.engine) as session:  # an ORM-style flush through a Session
        session.execute(insert(setup.users).values(id=3, name="orm"))
        session.commit()
    assert _names(setup) == ["tex", "orm"]


def test_unparsable_write_invalidates_everything(setup: Setup):
    _names(setup)
    with setup.engine.connect() as conn:
        assert setup.cache.execute(conn, select(setup.orders.c.total)).all() == [(10,)]
    o, u = setup.orders.name, setup.users.name
    unparsable = (
        f"UPDATE {o} JOIN {u} ON {u}.id = {o}.user_id SET {o}.total = 5"
        if setup.engine.dialect.name == "mysql"
        else f"WITH x AS (SELECT 1) UPDATE {o} SET total = 5"
    )
    with setup.engine.begin() as conn:
        conn.exec_driver_sql(unparsable)  # the cache must assume every table changed
    hits = setup.cache.stats().hits
    _names(setup)
    assert setup.cache.stats().hits == hits  # users' entry was dropped too


def test_autocommit_writes_invalidate(setup: Setup):
    _names(setup)
    with setup.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(delete(setup.orders))
        conn.execute(update(setup.users).values(name="auto"))
        # Read on another connection while this one is still open: already invalidated.
        assert _names(setup) == ["auto", "auto"]


def test_tampered_signed_payload_is_never_unpickled(tmp_path: Path, make_engine: MakeEngine):
    engine = make_engine(f"sqlite:///{tmp_path / 'signed.db'}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (v int)")
        conn.exec_driver_sql("INSERT INTO t VALUES (1)")
    backend = MemoryBackend()
    cache = QueryCache(backend, signing_key=b"secret").attach(engine)
    t = Table("t", MetaData(), Column("v", Integer))
    with engine.connect() as conn:
        assert cache.execute(conn, select(t.c.v)).all() == [(1,)]
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    evil = pickle.dumps(Evil())
    # An attacker with write access to the store replaces every entry, once
    # without a valid signature and once with the signature bytes kept.
    for full, (expires, _) in list(backend._entries.items()):
        backend._entries[full] = (expires, b"\0" * 32 + evil)
    with engine.connect() as conn:
        assert cache.execute(conn, select(t.c.v)).all() == [(1,)]  # from the database
    assert cache.stats().bad_payloads == 1
    for full, (expires, value) in list(backend._entries.items()):
        backend._entries[full] = (expires, value[:32] + evil)
    with engine.connect() as conn:
        assert cache.execute(conn, select(t.c.v)).all() == [(1,)]
    assert not marker.exists()
    cache.detach()
    # Unsigned caches still refuse to unpickle anything but plain data.
    unsigned_backend = MemoryBackend()
    unsigned = QueryCache(unsigned_backend).attach(engine)
    with engine.connect() as conn:
        unsigned.execute(conn, select(t.c.v)).all()
    for full, (expires, _) in list(unsigned_backend._entries.items()):
        unsigned_backend._entries[full] = (expires, evil)
    with engine.connect() as conn:
        assert unsigned.execute(conn, select(t.c.v)).all() == [(1,)]
    assert unsigned.stats().bad_payloads == 1
    assert not marker.exists()
    unsigned.detach()


def test_redis_outage_fails_open_and_recovers(
    postgres_url: str, redis_url: str, make_engine: MakeEngine
):
    from sqlalchemy.engine import make_url

    engine = make_engine(postgres_url)
    table = f"cr_{uuid.uuid4().hex[:8]}"
    t = Table(table, MetaData(), Column("id", Integer, primary_key=True), Column("v", Integer))
    t.metadata.create_all(engine)
    target = make_url(redis_url.replace("redis://", "postgresql://"))
    proxy = TcpProxy((target.host or "127.0.0.1", target.port or 6379)).start()
    backend = RedisBackend(
        f"redis://127.0.0.1:{proxy.port}/0", namespace=f"sqlperf-test-{uuid.uuid4().hex[:8]}"
    )
    cache = QueryCache(backend, breaker_threshold=2, breaker_cooldown_s=1.0).attach(engine)
    try:
        with engine.begin() as conn:
            conn.execute(insert(t), [{"id": 1, "v": 1}])
        cache.flush()  # the commit's in-flight mark is cleared off the commit's path

        def read() -> int:
            with engine.connect() as conn:
                return int(cache.execute(conn, select(t.c.v)).scalar_one())

        assert read() == 1
        assert read() == 1
        assert cache.stats().hits == 1
        proxy.stop()  # Redis vanishes
        for _ in range(20):
            assert read() == 1  # answered by the database
        # The breaker (threshold 2) stopped asking Redis: no timeout paid per query.
        outage = cache.stats()
        assert outage.errors == 2
        assert outage.bypasses["breaker_open"] == 18
        with engine.begin() as conn:  # a write during the outage: its invalidation is kept
            conn.execute(update(t).values(v=2))
        assert read() == 2
        stats = cache.stats()
        assert stats.errors >= 2
        assert stats.bypasses.get("breaker_open", 0) > 0
        proxy.start()  # Redis is back
        time.sleep(1.05)  # the breaker's cool-down
        assert read() == 2  # the kept invalidation was delivered before any lookup
        cache.flush()
        assert read() == 2
        assert cache.stats().hits > stats.hits  # caching resumed
    finally:
        cache.detach()
        backend.close()
        proxy.stop()
        t.metadata.drop_all(engine)
        cleaner = RedisBackend(redis_url, namespace=backend.namespace)
        cleaner.clear()
        cleaner.close()


def test_bad_backend_is_refused():
    from sqlperf import ConfigurationError

    with pytest.raises(ConfigurationError, match="not a cache backend"):
        QueryCache(object())  # type: ignore[arg-type]
