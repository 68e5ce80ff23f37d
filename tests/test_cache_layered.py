"""LayeredBackend on a real Redis: L1 hits, cross-process invalidation by pub/sub,
the fill race, subscription loss, fork, and QueryCache end to end."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import Column, Integer, MetaData, Table, create_engine, select, update

from sqlperf.cache import layered
from sqlperf.cache.backends import Lookup, RedisBackend
from sqlperf.cache.layered import THREAD_NAME, LayeredBackend
from sqlperf.cache.options import cached
from sqlperf.cache.query_cache import QueryCache
from sqlperf.exceptions import ConfigurationError
from tests.cache_conformance import BackendConformance
from tests.conftest import wait_until

DEADLINE_S = 5.0


@pytest.fixture(autouse=True)
def no_leftover_threads() -> Iterator[None]:
    """Every subscriber thread a test starts is stopped by the end of the test."""
    before = set(threading.enumerate())
    yield
    left = [t for t in threading.enumerate() if t.name == THREAD_NAME and t not in before]
    assert not left, f"subscriber threads left running: {left}"


@pytest.fixture
def namespace(redis_url: str) -> Iterator[str]:
    ns = f"sqlperf-test-{uuid.uuid4().hex[:8]}"
    yield ns
    cleaner = RedisBackend(redis_url, namespace=ns)
    cleaner.clear()
    cleaner.close()


@pytest.fixture
def make_layered(redis_url: str, namespace: str) -> Iterator[Callable[..., LayeredBackend]]:
    """Make LayeredBackends on the test's namespace (each a stand-in for one process),
    named so their pub/sub connection can be found; all are closed at teardown."""
    made: list[LayeredBackend] = []

    def make(name: str = "", **kwargs: Any) -> LayeredBackend:
        client = redis.Redis.from_url(
            redis_url,
            socket_timeout=0.25,
            socket_connect_timeout=0.25,
            client_name=f"{namespace}-{name or len(made)}",
        )
        backend = LayeredBackend(RedisBackend(namespace=namespace, client=client), **kwargs)
        made.append(backend)
        return backend

    try:
        yield make
    finally:
        for backend in made:
            backend.close()


def usable(backend: LayeredBackend) -> LayeredBackend:
    wait_until(lambda: backend.local_usable, "the subscription is confirmed")
    return backend


def kill_subscriber(redis_url: str, backend: LayeredBackend) -> None:
    """``CLIENT KILL TYPE pubsub``, restricted to ``backend``'s own subscriber
    connection (other test runs may share the server)."""
    name = backend.remote.client.connection_pool.connection_kwargs["client_name"]
    admin = redis.Redis.from_url(redis_url)
    try:
        ids = [c["id"] for c in admin.client_list(_type="pubsub") if c["name"] == name]
        assert len(ids) == 1, ids
        assert admin.client_kill_filter(_id=ids[0], _type="pubsub") == 1
    finally:
        admin.close()


# -- conformance --------------------------------------------------------------------------


class TestLayeredConformance(BackendConformance):
    @pytest.fixture
    def backend(self, make_layered: Callable[..., LayeredBackend]) -> LayeredBackend:
        return usable(make_layered())


# -- arguments ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_entries": 0}, "positive"),
        ({"max_bytes": -1}, "positive"),
        ({"local_ttl": 0}, "positive number of seconds"),
        ({"local_ttl": float("inf")}, "positive number of seconds"),
    ],
)
def test_bad_arguments(redis_url: str, namespace: str, kwargs: dict[str, Any], message: str):
    remote = RedisBackend(redis_url, namespace=namespace)
    try:
        with pytest.raises(ConfigurationError, match=message):
            LayeredBackend(remote, **kwargs)
    finally:
        remote.close()


def test_remote_must_be_redis() -> None:
    from sqlperf.cache.backends import MemoryBackend

    with pytest.raises(ConfigurationError, match=r"LayeredBackend\(RedisBackend\("):
        LayeredBackend(MemoryBackend())  # type: ignore[arg-type]


def test_is_remote_and_publishes(make_layered: Callable[..., LayeredBackend]) -> None:
    b = make_layered()
    assert b.remote.publish
    assert not getattr(b, "is_local", False)  # QueryCache clears its marks off-thread
    assert b.try_lock("k", 5)
    assert not b.try_lock("k", 5)
    b.unlock("k")
    assert b.try_lock("k", 5)


# -- behaviour ----------------------------------------------------------------------------


def test_other_process_commit_invalidates_local_level(
    make_layered: Callable[..., LayeredBackend],
) -> None:
    a, b = usable(make_layered("a")), usable(make_layered("b"))
    look = a.lookup("k", ["t"])
    assert look == Lookup((0,), False, None)
    assert a.store("k", ["t"], look.generations, b"v1", 60)

    assert b.lookup("k", ["t"]).value == b"v1"  # from Redis; copied into B's L1
    assert b.stats() == {"local_hits": 0, "remote_hits": 1, "misses": 0, "subscriptions": 1}
    assert b.lookup("k", ["t"]) == Lookup((), False, b"v1")  # from L1
    assert b.stats()["local_hits"] == 1

    assert a.lookup("k", ["t"]).value == b"v1"  # fill A's L1 too
    # The writer never reads its own stale copy, even before its subscriber hears
    # its own message (held back here).
    release = threading.Event()
    heard = a._on_invalidation

    def held(data: Any) -> None:
        release.wait(DEADLINE_S)
        heard(data)

    a._on_invalidation = held  # type: ignore[method-assign]
    try:
        a.begin_write(["t"])
        a.end_write(["t"])
        assert a.lookup("k", ["t"]) == Lookup((1,), False, None)
    finally:
        release.set()

    # B's copy goes as soon as B's subscriber has heard of the write.
    wait_until(lambda: b.lookup("k", ["t"]).value is None, "B stops serving the old entry")
    assert b.local.lookup("k", ["t"]).generations == (1,)  # B's L1 generation was bumped
    hits = b.stats()["local_hits"]
    assert b.lookup("k", ["t"]).value is None
    assert b.stats()["local_hits"] == hits
    assert b.local.lookup("k", ["t"]).value is None

    # A new entry is served from L1 again.
    look = a.lookup("k", ["t"])
    assert a.store("k", ["t"], look.generations, b"v2", 60)
    assert b.lookup("k", ["t"]).value == b"v2"
    assert b.lookup("k", ["t"]).value == b"v2"
    assert b.stats()["local_hits"] == hits + 1


def test_untouched_tables_keep_their_local_entries(
    make_layered: Callable[..., LayeredBackend],
) -> None:
    a, b = usable(make_layered("a")), usable(make_layered("b"))
    for key, tables in (("u", ["users"]), ("o", ["orders"])):
        look = a.lookup(key, tables)
        assert a.store(key, tables, look.generations, key.encode(), 60)
        assert b.lookup(key, tables).value == key.encode()  # fills B's L1
    a.begin_write(["users"])
    a.end_write(["users"])
    wait_until(lambda: b.local.lookup("u", ["users"]).generations == (1,), "B hears the write")
    hits = b.stats()["local_hits"]
    assert b.lookup("o", ["orders"]).value == b"o"
    assert b.stats()["local_hits"] == hits + 1
    assert b.lookup("u", ["users"]).value is None


def test_own_write_invalidates_local_level_after_redis(
    make_layered: Callable[..., LayeredBackend],
) -> None:
    """begin_write bumps Redis, then L1: a lookup of another thread that falls
    between the two steps fills L1 under the old L1 generations, which the L1 bump
    then retires (the other order would file the old value under the new ones)."""
    a = usable(make_layered("a"))
    look = a.lookup("k", ["t"])
    assert a.store("k", ["t"], look.generations, b"old", 60)
    release = threading.Event()
    heard = a._on_invalidation

    def held(data: Any) -> None:  # A's subscriber does not hear its own write yet
        release.wait(DEADLINE_S)
        heard(data)

    remote_begin = a.remote.begin_write

    def interleaved_begin(tables: Any) -> None:
        assert a.lookup("k", tables).value == b"old"  # another thread, just before
        remote_begin(tables)

    a._on_invalidation = held  # type: ignore[method-assign]
    a.remote.begin_write = interleaved_begin  # type: ignore[method-assign]
    try:
        a.begin_write(["t"])
        a.end_write(["t"])
        assert a.lookup("k", ["t"]).value is None
    finally:
        release.set()
        del a.remote.begin_write


def _spy_local_stores(backend: LayeredBackend) -> list[bool]:
    results: list[bool] = []
    original = backend.local.store

    def store(*args: Any, **kwargs: Any) -> bool:
        stored = original(*args, **kwargs)
        results.append(stored)
        return stored

    backend.local.store = store  # type: ignore[method-assign]
    return results


def test_invalidation_between_local_read_and_local_fill_refuses_the_fill(
    make_layered: Callable[..., LayeredBackend],
) -> None:
    """B reads its L1 generations, asks Redis (old value), an invalidation arrives and
    is applied, then B copies the old value: the copy must be refused."""
    a, b = usable(make_layered("a")), usable(make_layered("b"))
    for key in ("k", "control"):
        look = a.lookup(key, ["t"])
        assert a.store(key, ["t"], look.generations, b"old", 60)
    stores = _spy_local_stores(b)

    assert b.lookup("control", ["t"]).value == b"old"
    assert stores == [True]  # the spy sees an ordinary fill succeed

    original = b.remote.lookup

    def lookup_then_commit_elsewhere(key: str, tables: Any) -> Lookup:
        answer = original(key, tables)  # Redis answers just before A's write...
        a.begin_write(["t"])  # ...then A commits, and B's subscriber applies it
        a.end_write(["t"])
        wait_until(lambda: b.local.lookup(key, tables).generations == (1,), "B hears the write")
        return answer

    b.remote.lookup = lookup_then_commit_elsewhere  # type: ignore[method-assign]
    try:
        assert b.lookup("k", ["t"]).value == b"old"  # Redis's answer, as of its read
    finally:
        del b.remote.lookup
    assert stores == [True, False]  # the conditional copy into L1 was refused
    assert b.local.lookup("k", ["t"]).value is None
    hits = b.stats()["local_hits"]
    assert b.lookup("k", ["t"]).value is None  # Redis's generation moved: no entry
    assert b.stats()["local_hits"] == hits


def test_fill_across_a_resubscribe_is_refused(
    redis_url: str, make_layered: Callable[..., LayeredBackend]
) -> None:
    """A clear resets L1's generations to 0: a fill that read them before the
    subscription was lost must not match them again afterwards."""
    a, b = usable(make_layered("a")), usable(make_layered("b"))
    look = a.lookup("k", ["t"])
    assert a.store("k", ["t"], look.generations, b"old", 60)
    stores = _spy_local_stores(b)
    original = b.remote.lookup

    def lookup_then_lose_subscription(key: str, tables: Any) -> Lookup:
        answer = original(key, tables)
        kill_subscriber(redis_url, b)
        wait_until(lambda: b.stats()["subscriptions"] == 2 and b.local_usable, "B resubscribes")
        return answer

    b.remote.lookup = lookup_then_lose_subscription  # type: ignore[method-assign]
    try:
        assert b.lookup("k", ["t"]).value == b"old"
    finally:
        del b.remote.lookup
    assert stores == []  # not even attempted: L1 was cleared since its generations were read
    assert b.local.size == (0, 0)


def test_a_miss_stored_goes_into_the_local_level_too(
    make_layered: Callable[..., LayeredBackend],
) -> None:
    """The entry a miss goes on to store is in this process's L1 at once: the next
    lookup needs no round trip. Another process finds it in Redis."""
    a, b = usable(make_layered("a")), usable(make_layered("b"))
    look = a.lookup("k", ["t"])
    assert look == Lookup((0,), False, None)
    assert a.store("k", ["t"], look.generations, b"v", 60)
    assert a.lookup_local("k", ["t"]) == b"v"
    assert a.lookup("k", ["t"]) == Lookup((), False, b"v")
    assert a.stats() == {"local_hits": 2, "remote_hits": 0, "misses": 1, "subscriptions": 1}
    assert b.lookup_local("k", ["t"]) is None
    assert b.lookup("k", ["t"]).value == b"v"
    assert b.stats()["remote_hits"] == 1

    # A store of generations that a lookup did not hand out stores in Redis only.
    assert a.store("plain", ["t"], (0,), b"p", 60)
    assert a.lookup_local("plain", ["t"]) is None
    assert a.lookup("plain", ["t"]).value == b"p"


def test_a_stored_miss_lives_in_the_local_level_no_longer_than_its_ttl(
    make_layered: Callable[..., LayeredBackend],
) -> None:
    a = usable(make_layered(local_ttl=60))
    look = a.lookup("k", ["t"])
    assert a.store("k", ["t"], look.generations, b"v", 0.05)
    assert a.lookup_local("k", ["t"]) == b"v"
    time.sleep(0.15)
    assert a.lookup_local("k", ["t"]) is None


def test_a_stored_miss_is_kept_out_of_the_local_level_after_an_invalidation(
    make_layered: Callable[..., LayeredBackend],
) -> None:
    """A write heard between a miss's lookup and its store: Redis refuses the entry
    (its generation moved), and L1 gets nothing either."""
    a, b = usable(make_layered("a")), usable(make_layered("b"))
    look = a.lookup("k", ["t"])
    b.begin_write(["t"])
    b.end_write(["t"])
    wait_until(lambda: a.local.lookup("k", ["t"]).generations == (1,), "A hears the write")
    assert not a.store("k", ["t"], look.generations, b"old", 60)
    assert a.local.size == (0, 0)
    assert a.lookup("k", ["t"]).value is None


def test_a_stored_miss_across_a_resubscribe_stays_out_of_the_local_level(
    redis_url: str, make_layered: Callable[..., LayeredBackend]
) -> None:
    """Invalidations sent while the subscription was down are lost: an entry whose
    lookup came before a resubscribe may go into Redis (whose generations it was
    checked against) but not into L1."""
    a = usable(make_layered("a"))
    look = a.lookup("k", ["t"])
    kill_subscriber(redis_url, a)
    wait_until(lambda: a.stats()["subscriptions"] == 2 and a.local_usable, "A resubscribes")
    assert a.store("k", ["t"], look.generations, b"v", 60)
    assert a.local.size == (0, 0)
    assert a.lookup("k", ["t"]).value == b"v"  # from Redis, and copied into L1 now
    assert a.local.size[0] == 1


def test_a_miss_during_a_write_is_not_stored_in_either_level(
    make_layered: Callable[..., LayeredBackend],
) -> None:
    a = usable(make_layered("a"))
    a.begin_write(["t"])
    look = a.lookup("k", ["t"])
    assert look.in_flight
    assert not a.store("k", ["t"], look.generations, b"maybe-old", 60)
    a.end_write(["t"])
    assert a.local.size == (0, 0)


def test_subscription_loss_turns_the_local_level_off_until_resubscribed(
    redis_url: str, make_layered: Callable[..., LayeredBackend]
) -> None:
    a, b = usable(make_layered("a")), usable(make_layered("b"))
    look = a.lookup("k", ["t"])
    assert a.store("k", ["t"], look.generations, b"v", 60)
    b.lookup("k", ["t"])
    b.lookup("k", ["t"])
    assert b.stats()["local_hits"] == 1
    assert b.local.size[0] == 1

    # Hold the resubscription back, so the "off" state can be observed.
    gate = threading.Event()
    pubsub = b.remote.client.pubsub

    def gated_pubsub(**kwargs: Any) -> Any:
        if not gate.is_set():
            raise redis.exceptions.ConnectionError("held down by the test")
        return pubsub(**kwargs)

    b.remote.client.pubsub = gated_pubsub
    try:
        kill_subscriber(redis_url, b)
        wait_until(lambda: not b.local_usable, "B notices the lost subscription")
        assert b.local.size == (0, 0)  # cleared
        before = b.stats()
        for _ in range(3):
            assert b.lookup("k", ["t"]).value == b"v"  # from Redis...
        after = b.stats()
        assert after["local_hits"] == before["local_hits"]  # ...never from L1
        assert after["remote_hits"] == before["remote_hits"] + 3
        assert b.local.size == (0, 0)  # and nothing copied into L1 while it is off
    finally:
        gate.set()
    wait_until(lambda: b.local_usable, "B resubscribes")
    assert b.stats()["subscriptions"] == 2
    del b.remote.client.pubsub
    b.lookup("k", ["t"])  # refills L1
    hits = b.stats()["local_hits"]
    assert b.lookup("k", ["t"]).value == b"v"
    assert b.stats()["local_hits"] == hits + 1

    # And invalidations are heard again on the new subscription.
    a.begin_write(["t"])
    a.end_write(["t"])
    wait_until(lambda: b.lookup("k", ["t"]).value is None, "B hears the write")


def test_silent_connection_is_detected_by_heartbeat(
    redis_url: str, make_layered: Callable[..., LayeredBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A subscription whose connection stops answering (no error, no data) is dropped."""
    b = usable(make_layered())
    monkeypatch.setattr(layered, "_HEARTBEAT_S", 0.02)
    monkeypatch.setattr(layered, "_PONG_TIMEOUT_S", 0.2)
    pubsub = b.remote.client.pubsub

    def silent_pubsub(**kwargs: Any) -> Any:
        ps = pubsub(**kwargs)
        ps.ping = lambda *args: None  # its PINGs are never answered
        return ps

    monkeypatch.setattr(b.remote.client, "pubsub", silent_pubsub)
    kill_subscriber(redis_url, b)  # the next subscriptions are silent ones
    # Subscription 2 is silent; only the heartbeat can end it and make way for 3.
    wait_until(lambda: b.stats()["subscriptions"] >= 3, "a silent subscription is dropped")
    monkeypatch.undo()
    wait_until(lambda: b.local_usable, "B resubscribes normally")


def test_confirmation_while_in_use_clears_the_local_level(
    make_layered: Callable[..., LayeredBackend],
) -> None:
    """A subscribe confirmation while L1 is in use means the connection was re-made
    under us (e.g. by redis-py): what was published meanwhile is lost, so L1 goes."""
    a, b = usable(make_layered("a")), usable(make_layered("b"))
    look = a.lookup("k", ["t"])
    assert a.store("k", ["t"], look.generations, b"v", 60)
    b.lookup("k", ["t"])
    assert b.local.size[0] == 1
    b._on_message({"type": "subscribe", "channel": b.remote.channel, "data": 1})
    assert b.local.size == (0, 0)
    assert b.local_usable


def test_clear_drops_both_levels(make_layered: Callable[..., LayeredBackend]) -> None:
    b = usable(make_layered())
    look = b.lookup("k", ["t"])
    assert b.store("k", ["t"], look.generations, b"v", 60)
    b.lookup("k", ["t"])
    assert b.local.size[0] == 1
    b.clear()
    assert b.local.size == (0, 0)
    assert b.remote.lookup("k", ["t"]).value is None


def test_close_stops_the_subscriber(make_layered: Callable[..., LayeredBackend]) -> None:
    before = set(threading.enumerate())
    b = usable(make_layered())
    [thread] = [t for t in threading.enumerate() if t.name == THREAD_NAME and t not in before]
    b.close()
    assert not thread.is_alive()
    assert not b.local_usable
    b.close()  # idempotent


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_forked_child_subscribes_on_its_own(make_layered: Callable[..., LayeredBackend]) -> None:
    a, b = usable(make_layered("a")), usable(make_layered("b"))
    look = a.lookup("k", ["t"])
    assert a.store("k", ["t"], look.generations, b"v", 60)
    b.lookup("k", ["t"])  # the parent's L1 holds a copy
    pid = os.fork()
    if pid == 0:  # the child: report through the exit status only
        code = 1
        try:
            assert not b.local_usable  # inherited L1 is off until the child subscribes
            assert b.lookup("k", ["t"]).value == b"v"  # from Redis; starts the subscriber
            wait_until(lambda: b.local_usable, "the child subscribes")
            b.lookup("k", ["t"])
            hits = b.stats()["local_hits"]
            assert b.lookup("k", ["t"]).value == b"v"
            assert b.stats()["local_hits"] == hits + 1
            a.begin_write(["t"])  # a write elsewhere reaches the child's L1
            a.end_write(["t"])
            wait_until(lambda: b.lookup("k", ["t"]).value is None, "the child hears the write")
            b.close()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's subscription was not disturbed by the child's.
    assert b.local_usable
    wait_until(lambda: b.lookup("k", ["t"]).value is None, "the parent hears the write")


def test_query_cache_end_to_end_on_sqlite(tmp_path: Path, redis_url: str, namespace: str) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'l.db'}")
    md = MetaData()
    t = Table("t", md, Column("id", Integer, primary_key=True), Column("v", Integer))
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(t.insert(), [{"id": 1, "v": 10}])
    backend = LayeredBackend(RedisBackend(redis_url, namespace=namespace))
    cache = QueryCache(backend, ttl=60)
    try:
        cache.attach(engine)
        usable(backend)

        def read() -> list[int]:
            with engine.connect() as conn:
                return list(conn.execute(select(t.c.v).options(cached())).scalars())

        assert read() == [10]  # miss: stored in Redis and in L1
        assert read() == [10]  # L1 hit
        assert read() == [10]  # L1 hit
        stats = cache.stats()
        assert (stats.misses, stats.hits, stats.stores) == (1, 2, 1)
        assert backend.stats()["local_hits"] == 2
        assert backend.stats()["remote_hits"] == 0

        with engine.begin() as conn:
            conn.execute(update(t).where(t.c.id == 1).values(v=11))
        assert read() == [11]  # right after commit: never the old rows
        cache.flush()  # the in-flight mark is cleared off the commit's path
        assert read() == [11]  # stored now if it was not before the flush
        assert read() == [11]  # in L1 by now
        hits, local_hits = cache.stats().hits, backend.stats()["local_hits"]
        assert read() == [11]
        assert cache.stats().hits == hits + 1
        assert backend.stats()["local_hits"] == local_hits + 1
        assert cache.stats().invalidations == {"t": 1}
    finally:
        cache.close()
        backend.close()
        engine.dispose()
