"""Cache backends: where generations and entries live.

A backend stores two kinds of thing:

* a **generation** per table: a counter that every committed write to the table
  bumps. Cache entries are stored under their tables' generations, so bumping
  makes every entry that read the table unreachable at once: invalidation is
  O(tables written), needs no key scan, and crosses processes through Redis;
* **entries**: opaque bytes under ``(key, generations)``, with a TTL.

A write marks its tables *in flight* before its commit and clears the mark
after (:meth:`CacheBackend.begin_write` / :meth:`CacheBackend.end_write`).
While a table is in flight, readers neither use nor store entries that read it:
a reader that ran its query against the pre-commit data can never store it
under the post-commit generation, and the mark expires by itself if the writer
dies. Stores are conditional (:meth:`CacheBackend.store`): an entry is written
only if its tables' generations are still the ones read before the query.

Any object with these methods is a backend; it need not inherit from anything.
``tests/cache_conformance.py`` is a test suite a third-party backend can run.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from sqlperf.exceptions import ConfigurationError, MissingDependency

__all__ = ["CacheBackend", "Lookup", "MemoryBackend", "RedisBackend"]

#: How long an in-flight mark outlives a writer that died before clearing it.
INFLIGHT_TTL_S = 30


@dataclass(frozen=True)
class Lookup:
    """The answer of :meth:`CacheBackend.lookup`.

    Attributes:
        generations: the generation of each table, in the order asked.
        in_flight: a write to one of the tables is committing: do not use or
            store a cached result now.
        value: the entry stored for the key under ``generations``, if any.
    """

    generations: tuple[int, ...]
    in_flight: bool
    value: bytes | None


@runtime_checkable
class CacheBackend(Protocol):
    """What :class:`~sqlperf.QueryCache` needs from a store. Every method may raise
    any exception when the store is unreachable; the cache then fails open."""

    def lookup(self, key: str, tables: Sequence[str]) -> Lookup:
        """Read ``tables``' generations and in-flight marks, and the entry stored for
        ``key`` under those generations (one round trip)."""
        ...

    def store(
        self,
        key: str,
        tables: Sequence[str],
        generations: Sequence[int],
        value: bytes,
        ttl: float,
    ) -> bool:
        """Store ``value`` for ``key`` under ``generations`` for ``ttl`` seconds, only if
        ``tables``' generations are still ``generations`` and none is in flight.
        Returns whether it stored (one round trip)."""
        ...

    def begin_write(self, tables: Sequence[str]) -> None:
        """Before a commit that wrote ``tables``: bump their generations and mark
        them in flight (one round trip)."""
        ...

    def end_write(self, tables: Sequence[str]) -> None:
        """After that commit (or its failure): clear the in-flight marks."""
        ...

    def clear(self) -> None:
        """Drop every entry and generation of this backend's namespace."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


def _full_key(key: str, generations: Sequence[int]) -> str:
    return f"{key}@{'.'.join(map(str, generations))}"


class MemoryBackend:
    """An in-process backend: a thread-safe LRU bounded by entries and by bytes.

    Args:
        max_entries: entries kept at most; the least recently used go first.
        max_bytes: total size of the stored values kept at most.

    Example::

        >>> b = MemoryBackend(max_entries=100)
        >>> look = b.lookup("k", ["users"])
        >>> b.store("k", ["users"], look.generations, b"rows", ttl=60)
        True
        >>> b.lookup("k", ["users"]).value
        b'rows'
        >>> b.begin_write(["users"]); b.end_write(["users"])
        >>> b.lookup("k", ["users"]).value is None
        True
    """

    #: In-process: clearing an in-flight mark costs nothing, so it is done at once.
    is_local = True

    def __init__(self, *, max_entries: int = 10_000, max_bytes: int = 64 * 1024 * 1024) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ConfigurationError("max_entries and max_bytes must be positive")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._bytes = 0
        self._gens: dict[str, int] = {}
        self._inflight: dict[str, list[float]] = {}

    def _in_flight(self, tables: Sequence[str], now: float) -> bool:
        for t in tables:
            marks = self._inflight.get(t)
            if marks:
                marks[:] = [m for m in marks if m > now]
                if marks:
                    return True
        return False

    def lookup_local(self, key: str, tables: Sequence[str]) -> bytes | None:
        """The value of ``key``, from this process's memory (all of this backend is):
        the optional method ``QueryCache.answer_locally`` uses."""
        return self.lookup(key, tables).value

    def lookup(self, key: str, tables: Sequence[str]) -> Lookup:
        """See :meth:`CacheBackend.lookup`."""
        now = time.monotonic()
        with self._lock:
            gens = tuple(self._gens.get(t, 0) for t in tables)
            if self._inflight and self._in_flight(tables, now):
                return Lookup(gens, True, None)
            full = _full_key(key, gens)
            entry = self._entries.get(full)
            if entry is None:
                return Lookup(gens, False, None)
            if entry[0] <= now:
                self._drop(full)
                return Lookup(gens, False, None)
            self._entries.move_to_end(full)
            return Lookup(gens, False, entry[1])

    def store(
        self,
        key: str,
        tables: Sequence[str],
        generations: Sequence[int],
        value: bytes,
        ttl: float,
    ) -> bool:
        """See :meth:`CacheBackend.store`."""
        if len(value) > self.max_bytes:
            return False
        now = time.monotonic()
        with self._lock:
            if tuple(self._gens.get(t, 0) for t in tables) != tuple(generations):
                return False
            if self._inflight and self._in_flight(tables, now):
                return False
            full = _full_key(key, generations)
            if full in self._entries:
                self._drop(full)
            self._entries[full] = (now + ttl, value)
            self._bytes += len(value)
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                self._drop(next(iter(self._entries)))
            return True

    def _drop(self, full: str) -> None:
        _, value = self._entries.pop(full)
        self._bytes -= len(value)

    def begin_write(self, tables: Sequence[str]) -> None:
        """See :meth:`CacheBackend.begin_write`."""
        expires = time.monotonic() + INFLIGHT_TTL_S
        with self._lock:
            for t in tables:
                self._gens[t] = self._gens.get(t, 0) + 1
                self._inflight.setdefault(t, []).append(expires)

    def end_write(self, tables: Sequence[str]) -> None:
        """See :meth:`CacheBackend.end_write`."""
        with self._lock:
            for t in tables:
                marks = self._inflight.get(t)
                if marks:
                    marks.pop(0)
                    if not marks:
                        del self._inflight[t]

    def clear(self) -> None:
        """See :meth:`CacheBackend.clear`."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0
            self._gens.clear()
            self._inflight.clear()

    def close(self) -> None:
        """Nothing to release."""

    @property
    def size(self) -> tuple[int, int]:
        """(entries, bytes) held now."""
        with self._lock:
            return len(self._entries), self._bytes


# Redis: every operation is one round trip, by a Lua script. KEYS are the
# generation keys of the tables, then their in-flight keys; ARGV[1] the entry key.
# The lookup's reply starts with its own entry key: a reply that is not this
# lookup's (a connection out of step) is noticed, never taken for an entry.
_LOOKUP = """
local n = #KEYS / 2
local parts = {}
local busy = 0
if n > 0 then
  local gens = redis.call('MGET', unpack(KEYS, 1, n))
  local flights = redis.call('MGET', unpack(KEYS, n + 1, 2 * n))
  for i = 1, n do
    parts[i] = gens[i] or '0'
    if flights[i] and tonumber(flights[i]) > 0 then busy = 1 end
  end
end
local value = false
if busy == 0 then value = redis.call('GET', ARGV[1] .. '@' .. table.concat(parts, '.')) end
return {ARGV[1], table.concat(parts, '.'), busy, value}
"""

_STORE = """
local n = #KEYS / 2
local gens = redis.call('MGET', unpack(KEYS, 1, n))
local flights = redis.call('MGET', unpack(KEYS, n + 1, 2 * n))
local parts = {}
for i = 1, n do
  parts[i] = gens[i] or '0'
  if flights[i] and tonumber(flights[i]) > 0 then return 0 end
end
local current = table.concat(parts, '.')
if current ~= ARGV[2] then return 0 end
redis.call('SET', ARGV[1] .. '@' .. current, ARGV[3], 'PX', ARGV[4])
return 1
"""

_BEGIN_WRITE = """
local n = #KEYS / 2
local names = {}
for i = 1, n do
  redis.call('INCR', KEYS[i])
  redis.call('INCR', KEYS[n + i])
  redis.call('EXPIRE', KEYS[n + i], ARGV[1])
  names[i] = string.sub(KEYS[i], #ARGV[3] + 1)
end
if ARGV[2] == '1' then
  redis.call('PUBLISH', ARGV[3] .. 'invalidate', table.concat(names, string.char(10)))
end
return n
"""

_END_WRITE = """
for i = 1, #KEYS do
  local left = redis.call('DECR', KEYS[i])
  if left <= 0 then redis.call('DEL', KEYS[i]) end
end
return #KEYS
"""


class OutOfStep(Exception):
    """A Redis reply that was not the answer to the command just sent."""


@functools.cache
def _pool_class(redis: Any) -> type[Any]:
    """redis-py's ``ConnectionPool`` without its readiness poll at each checkout.

    redis-py polls every connection it hands out for unread data (a reply left
    behind, or a close by the server). That system call releases the GIL, and in an
    ASGI server whose event loop is busy with cache hits, a worker thread that
    releases the GIL waits to get it back: one more hand-over per command (on the
    example shop's read-heavy load, PostgreSQL + Redis, +9% req/s without it,
    higher in every round of ten). What the poll guarded against is covered
    otherwise: redis-py drops a connection on any error while sending or reading,
    so none is left out of step; a lookup checks that its reply is its own
    (:class:`OutOfStep`); and a connection the server closed is noticed by the
    health check (a PING before a command on a connection idle for 30 s) or by
    its next command failing, which :class:`RedisBackend` then runs once more on
    a new connection (lookups and stores only, which are safe to repeat; when Redis
    is down, that second try fails too and the cache reads the database).
    """

    class LeanConnectionPool(redis.ConnectionPool):  # type: ignore[misc]
        def ensure_connection(self, connection: Any) -> None:
            connection.connect()

    return LeanConnectionPool


class RedisBackend:
    """A Redis backend shared by every process that uses the same Redis and namespace.

    Each operation is one round trip (a Lua script); entries expire by Redis TTL;
    generations are never expired (a lost generation could resurrect old entries).

    Args:
        url: ``redis://host:port/db`` (``rediss://`` for TLS).
        namespace: prefix of every key, so several applications can share a Redis.
        socket_timeout: seconds before a Redis call fails (the cache then fails open).
        client: an existing ``redis.Redis`` to use instead of ``url``.

    Raises:
        MissingDependency: redis-py is not installed (``pip install 'sqlperf[redis]'``).
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        namespace: str = "sqlperf",
        socket_timeout: float = 0.25,
        client: Any = None,
    ) -> None:
        try:
            import redis
        except ImportError:
            raise MissingDependency("redis", extra="redis", purpose="RedisBackend") from None
        options = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": socket_timeout,
            "health_check_interval": 30,
        }
        if client is None:
            client = redis.Redis.from_url(url, **options)
            # Lookups and stores, the hot path, on a pool of their own that skips
            # redis-py's readiness poll (see _pool_class); writes keep it.
            reads = redis.Redis(connection_pool=_pool_class(redis).from_url(url, **options))
        else:
            reads = client
        self.client = client
        self._reads = reads
        self._closed_errors = (redis.ConnectionError,)
        self.namespace = namespace
        #: Publish invalidated tables on ``<namespace>:invalidate`` (for
        #: :class:`~sqlperf.cache.LayeredBackend`'s in-process level).
        self.publish = False
        self._lookup = reads.register_script(_LOOKUP)
        self._store = reads.register_script(_STORE)
        self._begin = client.register_script(_BEGIN_WRITE)
        self._end = client.register_script(_END_WRITE)

    def _read(self, script: Any, **arguments: Any) -> Any:
        """Run a lookup or store script, once more on a new connection if the first one
        was closed (by the server, say): both are safe to repeat."""
        try:
            return script(**arguments)
        except self._closed_errors:
            return script(**arguments)

    def _keys(self, tables: Sequence[str]) -> list[str]:
        ns = self.namespace
        return [f"{ns}:gen:{t}" for t in tables] + [f"{ns}:inflight:{t}" for t in tables]

    def lookup(self, key: str, tables: Sequence[str]) -> Lookup:
        """See :meth:`CacheBackend.lookup`.

        Raises:
            OutOfStep: the reply was not this lookup's (the connections are dropped).
        """
        entry = f"{self.namespace}:e:{key}"
        reply = self._read(self._lookup, keys=self._keys(tables), args=[entry])
        if not (isinstance(reply, list) and len(reply) == 4 and reply[0] == entry.encode()):
            self._reads.connection_pool.disconnect()
            raise OutOfStep(f"a Redis reply that is not this lookup's: {reply!r:.200}")
        _, gens, busy, value = reply
        generations = tuple(int(g) for g in gens.split(b".")) if tables else ()
        return Lookup(generations, bool(busy), value or None)

    def store(
        self,
        key: str,
        tables: Sequence[str],
        generations: Sequence[int],
        value: bytes,
        ttl: float,
    ) -> bool:
        """See :meth:`CacheBackend.store`."""
        if not tables:
            entry = f"{self.namespace}:e:{key}@"
            return bool(self.client.set(entry, value, px=max(1, int(ttl * 1000))))
        stored = self._read(
            self._store,
            keys=self._keys(tables),
            args=[
                f"{self.namespace}:e:{key}",
                ".".join(map(str, generations)),
                value,
                max(1, int(ttl * 1000)),
            ],
        )
        return bool(stored)

    def begin_write(self, tables: Sequence[str]) -> None:
        """See :meth:`CacheBackend.begin_write`."""
        if tables:
            self._begin(
                keys=self._keys(tables),
                args=[INFLIGHT_TTL_S, "1" if self.publish else "0", f"{self.namespace}:gen:"],
            )

    def end_write(self, tables: Sequence[str]) -> None:
        """See :meth:`CacheBackend.end_write`."""
        if tables:
            self._end(keys=[f"{self.namespace}:inflight:{t}" for t in tables])

    @property
    def channel(self) -> str:
        """The pub/sub channel invalidations are published on (when :attr:`publish`)."""
        return f"{self.namespace}:gen:invalidate"

    def try_lock(self, key: str, ttl: float) -> bool:
        """Take the fill lock of ``key`` for ``ttl`` seconds unless another process holds it
        (optional backend method; enables ``QueryCache(lock_s=...)``)."""
        lock = f"{self.namespace}:lock:{key}"
        return bool(self.client.set(lock, b"1", nx=True, px=max(1, int(ttl * 1000))))

    def unlock(self, key: str) -> None:
        """Release the fill lock of ``key``."""
        self.client.delete(f"{self.namespace}:lock:{key}")

    def clear(self) -> None:
        """Delete every key of this namespace (a SCAN; for tests and resets, not hot paths)."""
        batch = []
        for k in self.client.scan_iter(match=f"{self.namespace}:*", count=1000):
            batch.append(k)
            if len(batch) >= 1000:
                self.client.delete(*batch)
                batch = []
        if batch:
            self.client.delete(*batch)

    def close(self) -> None:
        """Close the Redis connection pools."""
        self.client.close()
        if self._reads is not self.client:
            self._reads.close()
