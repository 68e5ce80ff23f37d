"""A conformance suite for cache backends.

A third-party backend runs it by subclassing :class:`BackendConformance` and
providing a ``backend`` fixture that yields a fresh, empty backend::

    class TestMyBackend(BackendConformance):
        @pytest.fixture
        def backend(self):
            b = MyBackend(...)
            yield b
            b.clear()
            b.close()
"""

from __future__ import annotations

import threading
import time

from sqlperf.cache.backends import CacheBackend, Lookup


class BackendConformance:
    """Behaviour every :class:`~sqlperf.cache.backends.CacheBackend` must have."""

    def test_is_a_backend(self, backend: CacheBackend) -> None:
        assert isinstance(backend, CacheBackend)

    def test_miss_then_hit(self, backend: CacheBackend) -> None:
        first = backend.lookup("q1", ["users", "orders"])
        assert first == Lookup((0, 0), False, None)
        assert backend.store("q1", ["users", "orders"], first.generations, b"rows", 60)
        assert backend.lookup("q1", ["users", "orders"]).value == b"rows"
        assert backend.lookup("q2", ["users", "orders"]).value is None

    def test_write_invalidates_only_its_tables(self, backend: CacheBackend) -> None:
        for key, tables in (("u", ["users"]), ("o", ["orders"]), ("uo", ["users", "orders"])):
            look = backend.lookup(key, tables)
            assert backend.store(key, tables, look.generations, key.encode(), 60)
        backend.begin_write(["users"])
        backend.end_write(["users"])
        assert backend.lookup("u", ["users"]).value is None
        assert backend.lookup("uo", ["users", "orders"]).value is None
        assert backend.lookup("o", ["orders"]).value == b"o"
        assert backend.lookup("u", ["users"]).generations == (1,)

    def test_in_flight_blocks_use_and_store(self, backend: CacheBackend) -> None:
        look = backend.lookup("k", ["t"])
        assert backend.store("k", ["t"], look.generations, b"old", 60)
        backend.begin_write(["t"])
        during = backend.lookup("k", ["t"])
        assert during.in_flight
        assert during.value is None
        # A reader that read the generations during the commit may not store.
        assert not backend.store("k", ["t"], during.generations, b"maybe-old", 60)
        backend.end_write(["t"])
        after = backend.lookup("k", ["t"])
        assert not after.in_flight
        assert after.value is None

    def test_store_is_conditional_on_generations(self, backend: CacheBackend) -> None:
        before = backend.lookup("k", ["t"])
        backend.begin_write(["t"])
        backend.end_write(["t"])
        # The slow reader read generations before the write: its result is stale.
        assert not backend.store("k", ["t"], before.generations, b"stale", 60)
        assert backend.lookup("k", ["t"]).value is None

    def test_ttl_expires(self, backend: CacheBackend) -> None:
        look = backend.lookup("k", ["t"])
        assert backend.store("k", ["t"], look.generations, b"v", 0.05)
        time.sleep(0.15)
        assert backend.lookup("k", ["t"]).value is None

    def test_overlapping_writers(self, backend: CacheBackend) -> None:
        backend.begin_write(["t"])
        backend.begin_write(["t"])
        backend.end_write(["t"])
        assert backend.lookup("k", ["t"]).in_flight  # the second writer is still committing
        backend.end_write(["t"])
        assert not backend.lookup("k", ["t"]).in_flight

    def test_no_tables(self, backend: CacheBackend) -> None:
        assert backend.lookup("k", []).value is None
        assert backend.store("k", [], (), b"v", 60)
        assert backend.lookup("k", []).value == b"v"

    def test_concurrent_use(self, backend: CacheBackend) -> None:
        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                for i in range(50):
                    look = backend.lookup(f"k{i % 5}", ["t"])
                    backend.store(f"k{i % 5}", ["t"], look.generations, b"x" * n, 60)
                    if i % 10 == 0:
                        backend.begin_write(["t"])
                        backend.end_write(["t"])
            except BaseException as err:
                errors.append(err)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(1, 7)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert backend.lookup("k", ["t"]).generations == (30,)  # 6 threads x 5 writes
        assert not backend.lookup("k", ["t"]).in_flight

    def test_clear(self, backend: CacheBackend) -> None:
        look = backend.lookup("k", ["t"])
        backend.store("k", ["t"], look.generations, b"v", 60)
        backend.clear()
        assert backend.lookup("k", ["t"]) == Lookup((0,), False, None)
