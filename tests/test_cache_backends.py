"""Both built-in backends pass the conformance suite; plus what is specific to each."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from sqlperf.cache.backends import Lookup, MemoryBackend, OutOfStep, RedisBackend
from tests.cache_conformance import BackendConformance


class TestMemoryBackend(BackendConformance):
    @pytest.fixture
    def backend(self) -> Iterator[MemoryBackend]:
        b = MemoryBackend(max_entries=1000)
        yield b
        b.clear()


class TestRedisBackend(BackendConformance):
    @pytest.fixture
    def backend(self, redis_url: str) -> Iterator[RedisBackend]:
        b = RedisBackend(redis_url, namespace=f"sqlperf-test-{uuid.uuid4().hex[:8]}")
        yield b
        b.clear()
        b.close()

    def test_lookup_is_one_round_trip(
        self, backend: RedisBackend, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        calls: list[object] = []
        for client in {backend.client, backend._reads}:
            original = client.execute_command

            def counting(*args: object, _original: Any = original, **kw: object) -> object:
                calls.append(args[0])
                return _original(*args, **kw)

            monkeypatch.setattr(client, "execute_command", counting)
        look = backend.lookup("k", ["a", "b", "c"])
        backend.store("k", ["a", "b", "c"], look.generations, b"v", 60)
        backend.lookup("k", ["a", "b", "c"])
        backend.begin_write(["a", "b"])
        backend.end_write(["a", "b"])
        assert len(calls) == 5  # lookup, store, lookup, begin_write, end_write

    def test_a_lookup_without_tables_finds_what_was_stored(self, backend: RedisBackend) -> None:
        look = backend.lookup("k", [])
        assert look == Lookup((), False, None)
        assert backend.store("k", [], look.generations, b"v", 60)
        assert backend.lookup("k", []) == Lookup((), False, b"v")

    def test_a_reply_that_is_not_the_lookups_own_is_never_taken_for_an_entry(
        self, backend: RedisBackend, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A connection out of step would hand a lookup another command's reply, such as
        another key's entry: the lookup notices (its reply echoes its key), drops the
        pool's connections and raises; the cache then reads the database."""
        for key in ("mine", "other"):
            look = backend.lookup(key, ["t"])
            assert backend.store(key, ["t"], look.generations, key.encode(), 60)
        others = backend._lookup(keys=backend._keys(["t"]), args=[f"{backend.namespace}:e:other"])
        assert others[-1] == b"other"
        pool = backend._reads.connection_pool
        disconnects: list[object] = []
        real_disconnect = pool.disconnect

        def disconnect(*args: Any, **kwargs: Any) -> None:
            disconnects.append(args)
            real_disconnect(*args, **kwargs)

        monkeypatch.setattr(pool, "disconnect", disconnect)
        monkeypatch.setattr(backend, "_lookup", lambda **kwargs: others)
        with pytest.raises(OutOfStep, match="not this lookup's"):
            backend.lookup("mine", ["t"])
        assert len(disconnects) == 1
        monkeypatch.undo()
        assert backend.lookup("mine", ["t"]).value == b"mine"

    def test_lookups_and_stores_do_not_poll_connections_at_checkout(
        self, backend: RedisBackend, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """redis-py's readiness poll is a system call that gives up the GIL (see
        ``_pool_class``): lookups and stores, on a pool of their own, skip it; writes
        keep it."""
        from redis.connection import AbstractConnection

        backend.lookup("k", ["t"])
        backend.begin_write(["t"])
        backend.end_write(["t"])  # a connection in each pool
        polls: list[str] = []
        real = AbstractConnection.can_read

        def can_read(connection: Any, *args: Any, **kwargs: Any) -> bool:
            polls.append("poll")
            return bool(real(connection, *args, **kwargs))

        monkeypatch.setattr(AbstractConnection, "can_read", can_read)
        look = backend.lookup("k", ["t"])
        assert backend.store("k", ["t"], look.generations, b"v", 60)
        assert backend.lookup("k", ["t"]).value == b"v"
        assert polls == []
        backend.begin_write(["t"])
        backend.end_write(["t"])
        assert polls == ["poll", "poll"]

    def test_a_lookup_or_store_on_a_connection_the_server_closed_goes_on(
        self, backend: RedisBackend, redis_url: str
    ) -> None:
        """Without the poll the pool may hand out a connection the server has closed:
        lookups and stores, which are safe to repeat, then run again on a new one."""
        look = backend.lookup("k", ["t"])
        admin = redis.Redis.from_url(redis_url)
        try:
            for _ in range(2):
                reads_id = backend._reads.client_id()  # the reads pool's one connection
                assert admin.client_kill_filter(_id=str(reads_id)) == 1
                if look.value is None:
                    assert backend.store("k", ["t"], look.generations, b"v", 60)
                    look = backend.lookup("k", ["t"])
                else:
                    assert backend.lookup("k", ["t"]).value == b"v"
                assert backend._reads.client_id() != reads_id
        finally:
            admin.close()


def test_memory_lru_bounds_entries_and_bytes() -> None:
    b = MemoryBackend(max_entries=3, max_bytes=10)
    for i in range(5):
        look = b.lookup(f"k{i}", ["t"])
        assert b.store(f"k{i}", ["t"], look.generations, b"xx", 60)
    assert b.size == (3, 6)
    assert b.lookup("k0", ["t"]).value is None
    assert b.lookup("k4", ["t"]).value == b"xx"
    look = b.lookup("big", ["t"])
    assert not b.store("big", ["t"], look.generations, b"x" * 11, 60)  # larger than the budget
    assert b.store("mid", ["t"], look.generations, b"x" * 8, 60)
    entries, size = b.size
    assert size <= 10
    assert entries <= 3
