"""Both built-in backends pass the conformance suite; plus what is specific to each."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from sqlperf.cache.backends import MemoryBackend, RedisBackend
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

    def test_lookup_is_one_round_trip(self, backend: RedisBackend) -> None:
        calls: list[object] = []
        original = backend.client.execute_command

        def counting(*args: object, **kw: object) -> object:
            calls.append(args[0])
            return original(*args, **kw)

        backend.client.execute_command = counting
        try:
            look = backend.lookup("k", ["a", "b", "c"])
            backend.store("k", ["a", "b", "c"], look.generations, b"v", 60)
            backend.lookup("k", ["a", "b", "c"])
            backend.begin_write(["a", "b"])
            backend.end_write(["a", "b"])
        finally:
            backend.client.execute_command = original
        assert len(calls) == 5  # lookup, store, lookup, begin_write, end_write


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
