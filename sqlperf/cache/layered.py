"""``LayeredBackend``: an in-process memory level in front of a :class:`RedisBackend`.

A hit in the memory level (L1) costs no round trip; a miss asks Redis (L2), and an
entry Redis has is copied into L1 for at most ``local_ttl`` seconds. L1 is kept
correct across processes by Redis pub/sub:

* **publishing**: the remote's ``publish`` flag is set, so the Lua script that
  bumps generations before a commit (:meth:`RedisBackend.begin_write`) also
  publishes the table names, ``"\\n"``-joined, on ``remote.channel``, in the same
  atomic step as the bump;
* **subscribing**: a daemon thread (``sqlperf-cache-l1``) listens on that channel
  and invalidates each table it hears about in L1 (bumping L1's own generations,
  which makes L1's entries of the table unreachable). The thread pings the
  server every second and counts a PING unanswered for three seconds as a lost
  connection, so a silently dead connection is noticed too;
* **usable only while subscribed**: L1 is used only while the subscription is
  confirmed alive. When the subscriber fails or is disconnected, L1 is switched
  off and cleared at once, and the thread resubscribes with a backoff (0.05 s
  doubling to 2 s). When the server confirms a (re)subscription, L1 is cleared
  again (invalidations sent while nobody listened are lost) and then used again;
* **the fill race**: a lookup that misses L1 reads L1's generations *before* it
  asks Redis, and copies Redis's answer into L1 only under those generations
  (:meth:`MemoryBackend.store` is conditional). An invalidation heard between
  the two makes the copy fail; one heard after it invalidates the copy. Each
  clear of L1 also bumps an epoch the copy is checked against, because a clear
  resets L1's generations to zero, where an old read could match them again.
  A lookup that misses both levels hands those L1 generations and the epoch on,
  with Redis's generations: the entry that the miss's query then stores goes into
  Redis and, once Redis took it, into L1 under the same rule (so the next lookup
  of the key is answered by L1, not by another round trip);
* **this process's own writes**: :meth:`LayeredBackend.begin_write` bumps Redis
  first and L1 right after, without waiting for its own message to come back,
  so after a commit returns this process never reads its own stale L1 entry;
* **fork**: a forked child starts with an empty L1 that is off; its first lookup
  starts the child's own subscriber (the parent's is left alone).

Staleness bound: after a commit in another process, this process's L1 may serve
an entry that the commit invalidated for at most the pub/sub delivery delay
(typically well under a millisecond on a LAN), and never for longer than
``local_ttl``; while the subscription is known to be down (an error, a
disconnect, or a PING unanswered for three seconds) L1 is not used at all. Two
conditions for the bound: every process that writes the cached tables must
publish (use a ``LayeredBackend``, or set ``publish = True`` on its
``RedisBackend``), and a copy in L1 lives ``local_ttl`` from when it was copied,
whatever remains of the Redis entry's own TTL (so an entry can outlive its TTL
by up to ``local_ttl``, though never an invalidation).

Example::

    from sqlperf.cache import LayeredBackend, QueryCache, RedisBackend

    backend = LayeredBackend(RedisBackend("redis://127.0.0.1:6379/0"), local_ttl=5)
    cache = QueryCache(backend).attach(engine)
    ...
    cache.close()
    backend.close()
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sys
import threading
import time
import weakref
from collections.abc import Sequence
from contextlib import suppress
from typing import Any

from sqlperf.cache.backends import Lookup, MemoryBackend, RedisBackend
from sqlperf.exceptions import ConfigurationError

__all__ = ["LayeredBackend"]

logger = logging.getLogger("sqlperf.cache")

#: The subscriber thread's name.
THREAD_NAME = "sqlperf-cache-l1"

_POLL_S = 0.05  # how long one get_message() waits: also how soon close() is noticed
_HEARTBEAT_S = 1.0  # a PING after this long without an answered one
_PONG_TIMEOUT_S = 3.0  # an unanswered PING this old means the connection is dead
_BACKOFF_MIN_S = 0.05
_BACKOFF_MAX_S = 2.0
_JOIN_S = 5.0
_PING_TOKEN = "sqlperf-l1"


class _SubscriptionLost(Exception):
    """The subscription is no longer known to be alive."""


def _text(data: Any) -> str:
    return data.decode() if isinstance(data, bytes) else str(data)


def _reset_in_child(ref: weakref.ReferenceType[LayeredBackend]) -> None:
    backend = ref()
    if backend is not None:
        backend._reset_after_fork()


class _MissGenerations(tuple[int, ...]):
    """Redis's generations from a lookup that missed both levels, carrying what the
    store of the entry needs to copy it into L1 as well: L1's generations, read before
    Redis was asked, and L1's epoch then."""

    local: tuple[int, ...]
    epoch: int

    def __new__(cls, remote: Sequence[int], local: tuple[int, ...], epoch: int) -> _MissGenerations:
        generations = super().__new__(cls, remote)
        generations.local = local
        generations.epoch = epoch
        return generations


class LayeredBackend:
    """An in-process LRU (L1) in front of a :class:`~sqlperf.cache.RedisBackend`,
    invalidated across processes by Redis pub/sub (see the module documentation
    for the design and the staleness bound).

    Args:
        remote: the shared level; its ``publish`` flag is set. Closed by :meth:`close`.
        max_entries: entries kept in L1 at most (least recently used go first).
        max_bytes: total size of the values kept in L1 at most.
        local_ttl: seconds a copy lives in L1 at most.

    Raises:
        ConfigurationError: ``remote`` is not a ``RedisBackend``, or a size or
            ``local_ttl`` is not positive.

    Attributes:
        remote: the :class:`~sqlperf.cache.RedisBackend`.
        local: the :class:`~sqlperf.cache.MemoryBackend` of L1.
        local_ttl: seconds a copy lives in L1 at most.
    """

    def __init__(
        self,
        remote: RedisBackend,
        *,
        max_entries: int = 10_000,
        max_bytes: int = 32 * 1024 * 1024,
        local_ttl: float = 5.0,
    ) -> None:
        if not isinstance(remote, RedisBackend):
            raise ConfigurationError(
                f"LayeredBackend needs a RedisBackend as its remote level, not "
                f"{type(remote).__name__}: LayeredBackend(RedisBackend('redis://host:6379/0'))"
            )
        if max_entries < 1 or max_bytes < 1:
            raise ConfigurationError(
                f"LayeredBackend(max_entries={max_entries!r}, max_bytes={max_bytes!r}): "
                "both must be positive integers"
            )
        if not (local_ttl > 0 and math.isfinite(local_ttl)):
            raise ConfigurationError(
                f"LayeredBackend(local_ttl={local_ttl!r}): give a positive number of seconds "
                "(the longest an entry may be served from process memory), e.g. 5.0"
            )
        remote.publish = True
        self.remote = remote
        self.local = MemoryBackend(max_entries=max_entries, max_bytes=max_bytes)
        self.local_ttl = float(local_ttl)
        self._lock = threading.Lock()  # _usable, _epoch, and clears vs. fills of L1
        self._usable = False
        self._epoch = 0
        self._closed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._counts_lock = threading.Lock()
        self._local_hits = 0
        self._remote_hits = 0
        self._misses = 0
        self._subscriptions = 0
        if sys.platform != "win32":
            os.register_at_fork(
                after_in_child=functools.partial(_reset_in_child, weakref.ref(self))
            )
        with self._lock:
            self._start()

    # -- the CacheBackend protocol ---------------------------------------------------

    def lookup(self, key: str, tables: Sequence[str]) -> Lookup:
        """See :meth:`CacheBackend.lookup`. An L1 hit returns ``Lookup((), False, value)``:
        Redis's generations are not read then (a hit's generations are never used)."""
        if self._pid != os.getpid():
            self._restart()
        epoch = self._epoch  # before L1's generations: see _fill_local
        local_look = self.local.lookup(key, tables) if self._usable else None
        if local_look is not None and local_look.value is not None:
            with self._counts_lock:
                self._local_hits += 1
            return Lookup((), False, local_look.value)
        look = self.remote.lookup(key, tables)
        if look.value is None:
            with self._counts_lock:
                self._misses += 1
            if local_look is None or local_look.in_flight or look.in_flight:
                return look
            generations = _MissGenerations(look.generations, local_look.generations, epoch)
            return Lookup(generations, False, None)
        with self._counts_lock:
            self._remote_hits += 1
        if local_look is not None and not look.in_flight and not local_look.in_flight:
            self._fill_local(key, tables, local_look.generations, look.value, epoch)
        return look

    def lookup_local(self, key: str, tables: Sequence[str]) -> bytes | None:
        """L1's value of ``key``, or ``None`` (never a round trip to Redis): the optional
        method ``QueryCache.answer_locally`` uses. ``None`` too while L1 is switched off."""
        if self._pid != os.getpid() or not self._usable:
            return None
        value = self.local.lookup(key, tables).value
        if value is not None:
            with self._counts_lock:
                self._local_hits += 1
        return value

    def _fill_local(  # noqa: PLR0917 - the store's arguments plus the epoch
        self,
        key: str,
        tables: Sequence[str],
        generations: Sequence[int],
        value: bytes,
        epoch: int,
        ttl: float = math.inf,
    ) -> bool:
        """Copy an entry into L1 for at most ``local_ttl`` (and ``ttl``), under the L1
        generations read before the remote lookup, unless L1 was cleared (or switched
        off) since."""
        with self._lock:
            if not self._usable or self._epoch != epoch:
                return False
            return self.local.store(key, tables, generations, value, min(ttl, self.local_ttl))

    def store(
        self,
        key: str,
        tables: Sequence[str],
        generations: Sequence[int],
        value: bytes,
        ttl: float,
    ) -> bool:
        """See :meth:`CacheBackend.store`: stores in Redis under Redis's ``generations``;
        when those come from a lookup of this backend that missed both levels, and
        Redis took the entry, copies it into L1 too (see the fill race in the module
        documentation)."""
        stored = self.remote.store(key, tables, generations, value, ttl)
        if stored and isinstance(generations, _MissGenerations):
            self._fill_local(key, tables, generations.local, value, generations.epoch, ttl)
        return stored

    def begin_write(self, tables: Sequence[str]) -> None:
        """See :meth:`CacheBackend.begin_write`: bumps and publishes in Redis, then
        invalidates ``tables`` in L1 at once (even if Redis failed)."""
        try:
            self.remote.begin_write(tables)
        finally:
            self._invalidate_local(tables)

    def end_write(self, tables: Sequence[str]) -> None:
        """See :meth:`CacheBackend.end_write`."""
        self.remote.end_write(tables)

    def clear(self) -> None:
        """Drop L1 and every key of the remote's namespace. Other processes' L1 levels
        are not told: they keep their copies for at most ``local_ttl``."""
        self._clear_local(usable=None)
        self.remote.clear()

    def close(self) -> None:
        """Stop the subscriber thread, drop L1, and close the remote."""
        self._closed = True
        self._stop.set()
        thread = self._thread
        if thread is not None and self._pid == os.getpid():
            thread.join(_JOIN_S)
            if thread.is_alive():
                logger.warning("the %s thread did not stop within %s s", THREAD_NAME, _JOIN_S)
        self._thread = None
        self._clear_local(usable=False)
        self.remote.close()

    # -- optional backend methods ------------------------------------------------------

    def try_lock(self, key: str, ttl: float) -> bool:
        """See :meth:`RedisBackend.try_lock` (enables ``QueryCache(lock_s=...)``)."""
        return self.remote.try_lock(key, ttl)

    def unlock(self, key: str) -> None:
        """See :meth:`RedisBackend.unlock`."""
        self.remote.unlock(key)

    # -- state ---------------------------------------------------------------------------

    @property
    def local_usable(self) -> bool:
        """Whether L1 is in use now: the invalidation subscription is confirmed alive."""
        return self._usable

    def stats(self) -> dict[str, int]:
        """Counters since this backend was made: ``local_hits`` (answered by L1),
        ``remote_hits`` (answered by Redis), ``misses`` (neither had the entry) and
        ``subscriptions`` (times the invalidation channel was (re)subscribed)."""
        with self._counts_lock:
            return {
                "local_hits": self._local_hits,
                "remote_hits": self._remote_hits,
                "misses": self._misses,
                "subscriptions": self._subscriptions,
            }

    # -- L1 maintenance ------------------------------------------------------------------

    def _invalidate_local(self, tables: Sequence[str]) -> None:
        if tables:
            self.local.begin_write(tables)
            self.local.end_write(tables)

    def _clear_local(self, *, usable: bool | None) -> bool:
        """Clear L1 and bump the epoch; set ``_usable`` unless ``usable`` is None.
        Returns whether L1 was usable before."""
        with self._lock:
            was = self._usable
            if usable is not None:
                self._usable = usable
            self.local.clear()
            self._epoch += 1
            return was

    # -- the subscriber thread -------------------------------------------------------------

    def _start(self) -> None:
        """Start the subscriber thread for this process (with ``_lock`` held)."""
        self._pid = os.getpid()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(self._stop,), name=THREAD_NAME, daemon=True
        )
        self._thread.start()

    def _restart(self) -> None:
        with self._lock:
            if self._pid != os.getpid() and not self._closed:
                self._start()

    def _reset_after_fork(self) -> None:
        """In a forked child (one thread, before anything else runs): fresh locks and
        an empty L1, off until the child's own subscriber (started by the next
        lookup) is confirmed. The parent's subscription is left alone."""
        self._lock = threading.Lock()
        self._counts_lock = threading.Lock()
        self.local = MemoryBackend(
            max_entries=self.local.max_entries, max_bytes=self.local.max_bytes
        )
        self._usable = False
        self._epoch += 1
        self._thread = None

    def _run(self, stop: threading.Event) -> None:
        delay = _BACKOFF_MIN_S
        while not stop.is_set():
            confirmed = self._subscriptions
            try:
                self._listen(stop)
            except Exception as exc:
                if self._clear_local(usable=False):
                    logger.warning(
                        "cache invalidation subscription lost (%s); the in-process level is "
                        "off until it is back",
                        exc,
                    )
                else:
                    logger.debug("cache invalidation subscription failed: %s", exc)
            else:
                break
            if self._subscriptions != confirmed:
                delay = _BACKOFF_MIN_S
            if stop.wait(delay):
                break
            delay = min(delay * 2, _BACKOFF_MAX_S)
        self._clear_local(usable=False)

    def _listen(self, stop: threading.Event) -> None:
        """Subscribe and apply invalidations until ``stop`` is set (returns) or the
        subscription is lost (raises)."""
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        pubsub = self.remote.client.pubsub()
        conn: Any = None
        saved_retry: Any = None
        try:
            pubsub.subscribe(self.remote.channel)
            # Fail at once instead of reconnecting silently inside redis-py, which
            # would lose messages without telling us (restored before release).
            conn = getattr(pubsub, "connection", None)
            saved_retry = getattr(conn, "retry", None)
            if saved_retry is not None:
                conn.retry = Retry(NoBackoff(), 0)
            answered = time.monotonic()
            pinged: float | None = None
            while not stop.is_set():
                now = time.monotonic()
                if pinged is None:
                    if now - answered >= _HEARTBEAT_S:
                        pubsub.ping(_PING_TOKEN)
                        pinged = now
                elif now - pinged > _PONG_TIMEOUT_S:
                    raise _SubscriptionLost(f"no answer to a PING in {_PONG_TIMEOUT_S} s")
                message = pubsub.get_message(timeout=_POLL_S)
                if message is not None and self._on_message(message):
                    pinged = None
                    answered = time.monotonic()
        finally:
            if saved_retry is not None:
                conn.retry = saved_retry
            with suppress(Exception):
                pubsub.close()

    def _on_message(self, message: dict[str, Any]) -> bool:
        """Apply one pub/sub message; True if it answers our PING."""
        kind = _text(message["type"])
        if kind == "message":
            self._on_invalidation(message["data"])
        elif kind == "subscribe":
            # Confirmed: whatever was published while nobody listened is lost, so
            # clear L1 and only then use it.
            self._clear_local(usable=True)
            with self._counts_lock:
                self._subscriptions += 1
        elif kind == "pong":
            return _text(message["data"]) == _PING_TOKEN
        else:
            raise _SubscriptionLost(f"unexpected {kind!r} message")
        return False

    def _on_invalidation(self, data: Any) -> None:
        try:
            tables = _text(data).split("\n")
        except UnicodeDecodeError:
            logger.warning("undecodable invalidation message: clearing the in-process level")
            self._clear_local(usable=None)
            return
        self._invalidate_local(tables)
