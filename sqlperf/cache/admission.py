"""Which statement shapes the cache steps aside for: those it costs more than it saves.

Table-level invalidation is what keeps the cache correct, and it is also why some
cached statements never pay: when the tables they read are written every few
requests, their entries die before anyone reads them again, and every lookup and
store is spent for nothing. :class:`Admission` measures, per statement shape
(its SQL), what the cache spends and what it saves, in windows of ``window``
lookups:

* **spent**: on each miss, the cache's own time around the query (the lookup,
  encoding and storing the rows), the query itself excluded;
* **saved**: on each hit, the shape's mean query time (measured on its misses)
  minus the time the hit took to answer.

A window in which fewer than one lookup in five hit, and which spent more than it
saved, makes the shape skip the cache: its statements run as if they were not
cached (no lookup, no store; counted as the bypass ``"unprofitable"``). A new
window measures again after ``cooldown_s`` seconds, or sooner once
``resume_after`` of the shape's reads in a row went by with no write to its
tables (this process's writes: the ones it sees), so a shape whose writes calm
down is cached again within a few reads. A window with more hits keeps the shape, whatever its
timings: it may be the cache warming up again after an invalidation, the times are
wall-clock times (under a busy GIL a hit's can swell past a lone miss's), and only
a shape with many misses gives a query time worth trusting.

Skipping only ever sends a read to the database, so it can never serve stale
data; writes still invalidate the shape's tables.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sqlperf.cache.keys import ALL_TABLES
from sqlperf.exceptions import ConfigurationError

__all__ = ["Admission"]


@dataclass
class _Window:
    lookups: int = 0
    hits: int = 0
    hit_ns: int = 0  # time spent answering the hits
    miss_ns: int = 0  # the cache's time on the misses, their queries excluded
    query_ns: int = 0  # the misses' query time
    skip_until: float = 0.0  # while in the future: the shape skips the cache
    quiet: int = 0  # reads skipped since the last write to the shape's tables
    tables: frozenset[str] = frozenset()
    shape: str = ""


class Admission:
    """Per statement shape, whether the cache is worth using (see the module).

    Args:
        window: lookups per measurement window, at least 10.
        cooldown_s: how long an unprofitable shape skips the cache at most.
        resume_after: skipped reads of a shape in a row, with no write to its
            tables between them, after which it is measured again.
        max_shapes: shapes remembered (least recently used forgotten first).
        clock: a monotonic clock in seconds (tests pass their own).

    Raises:
        ConfigurationError: a window under 10, a cooldown of 0 or less, a
            ``resume_after`` under 1, or no shapes.

    Example::

        >>> admission = Admission(window=10, cooldown_s=60.0)
        >>> for _ in range(10):  # misses of a 0.1 ms query that cost 0.2 ms each
        ...     admission.miss("SELECT ...", cache_ns=200_000, query_ns=100_000)
        >>> admission.admits("SELECT ...")
        False
        >>> admission.skipped("SELECT ...")  # the read went to the database
    """

    def __init__(
        self,
        *,
        window: int = 200,
        cooldown_s: float = 30.0,
        resume_after: int = 50,
        max_shapes: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window < 10 or cooldown_s <= 0 or resume_after < 1 or max_shapes < 1:
            raise ConfigurationError(
                f"Admission(window={window!r}, cooldown_s={cooldown_s!r}, "
                f"resume_after={resume_after!r}, max_shapes={max_shapes!r}): window >= 10, "
                "cooldown_s > 0, resume_after >= 1, max_shapes >= 1"
            )
        self.window = window
        self.cooldown_s = cooldown_s
        self.resume_after = resume_after
        self.max_shapes = max_shapes
        self._clock = clock
        self._shapes: OrderedDict[str, _Window] = OrderedDict()
        self._skipping: dict[str, _Window] = {}
        self._lock = threading.Lock()

    def admits(self, shape: str) -> bool:
        """Whether statements of ``shape`` should use the cache now."""
        w = self._shapes.get(shape)  # a plain read: no lock on the hot path
        if w is None or not w.skip_until:
            return True
        if w.quiet < self.resume_after and self._clock() < w.skip_until:
            return False
        with self._lock:  # quiet enough, or the cooldown is over: measure again
            w.skip_until = 0.0
            self._skipping.pop(shape, None)
        return True

    def skipped(self, shape: str) -> None:
        """A read of ``shape`` went around the cache (call it once per read)."""
        w = self._skipping.get(shape)
        if w is not None:
            w.quiet += 1  # unlocked: a lost count only delays the resume by a read

    def written(self, tables: Iterable[str]) -> None:
        """Tables written (a commit, about to invalidate them): the shapes skipping the
        cache that read one of them start counting their quiet reads again."""
        names = set(tables)
        if not self._skipping:
            return
        with self._lock:
            for w in self._skipping.values():
                if ALL_TABLES in names or not w.tables.isdisjoint(names):
                    w.quiet = 0

    def skipping(self) -> list[str]:
        """The shapes skipping the cache now."""
        now = self._clock()
        with self._lock:
            return [
                shape
                for shape, w in self._skipping.items()
                if w.skip_until > now and w.quiet < self.resume_after
            ]

    def hit(self, shape: str, ns: int, tables: Iterable[str] = ()) -> None:
        """A lookup of ``shape`` (which reads ``tables``) answered from the cache in
        ``ns`` nanoseconds."""
        with self._lock:
            w = self._window(shape, tables)
            w.lookups += 1
            w.hits += 1
            w.hit_ns += ns
            self._maybe_close(w)

    def miss(self, shape: str, *, cache_ns: int, query_ns: int, tables: Iterable[str] = ()) -> None:
        """A lookup of ``shape`` (which reads ``tables``) that ran its query
        (``query_ns``); the cache's own time around it (lookup, encoding, storing)
        was ``cache_ns``."""
        with self._lock:
            w = self._window(shape, tables)
            w.lookups += 1
            w.miss_ns += cache_ns
            w.query_ns += query_ns
            self._maybe_close(w)

    def _window(self, shape: str, tables: Iterable[str]) -> _Window:
        w = self._shapes.get(shape)
        if w is None:
            self._shapes[shape] = w = _Window(tables=frozenset(tables), shape=shape)
            if len(self._shapes) > self.max_shapes:
                forgotten, _ = self._shapes.popitem(last=False)
                self._skipping.pop(forgotten, None)
        else:
            self._shapes.move_to_end(shape)
        return w

    def _maybe_close(self, w: _Window) -> None:
        if w.lookups < self.window:
            return
        misses = w.lookups - w.hits
        # Only a shape that hit less than 1 lookup in 5 is judged. Its query time is
        # then estimated from many misses; a window that hits more is kept whatever
        # its timings: it may be the cache warming up after an invalidation, and
        # under a loaded GIL a hit's wall time can swell past a lone miss's.
        if w.hits * 5 < w.lookups:
            saved = w.hits * w.query_ns / misses - w.hit_ns
            if saved < w.miss_ns:
                w.skip_until = self._clock() + self.cooldown_s
                w.quiet = 0
                self._skipping[w.shape] = w
        w.lookups = w.hits = w.hit_ns = w.miss_ns = w.query_ns = 0
