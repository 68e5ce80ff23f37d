"""The recorder's background writer: records leave the query's thread here.

The application's thread only appends to a deque (a few tens of nanoseconds,
never blocking, never taking a lock): when the deque holds ``capacity`` items
the new one is dropped and counted. One daemon thread wakes every ``poll_s``
(backing off to ``idle_s`` while there is nothing to do), turns the pending
items into rows with the recorder's ``build`` function (parameter formatting and
``EXPLAIN`` happen here, off the query's thread), and hands each batch to every
sink. :meth:`Writer.flush` does the same at once on
the caller's thread; a lock keeps the two from calling the sinks concurrently.

Every wake-up takes the GIL from the query thread, so an idle writer sleeps
longer and longer (doubling up to ``idle_s``): a record queued after a quiet
spell reaches the sinks within ``idle_s``, and within ``poll_s`` while records
keep coming. It sleeps on a lock that :meth:`Writer.close` releases, so closing
does not wait out the sleep.

A sink that raises loses that batch for itself alone: the error is counted and
logged (at most once per sink per minute), and the other sinks still get it. A
slow sink delays only the writer; the application keeps appending until the
deque is full, and from then on drops are counted instead of waiting.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlperf.capture.records import QueryRecord, StatsRow
from sqlperf.capture.sinks import Sink

__all__ = ["Writer"]

logger = logging.getLogger("sqlperf.capture")

_ERROR_LOG_EVERY_S = 60.0


class Writer:
    """A bounded queue in front of the sinks, drained by one daemon thread.

    Args:
        sinks: where batches go, in order.
        build: turns one pending item into a :class:`QueryRecord` (off the query's thread).
        window: returns the statistics rows of the window that ends now.
        capacity: pending items held before new ones are dropped.
        stats_interval_s: how often ``window`` is called; ``None``: only on flush and close.
        poll_s: how long the thread sleeps after a pass that found work.
        idle_s: the longest it sleeps after passes that found none.
    """

    def __init__(
        self,
        sinks: Sequence[Sink],
        *,
        build: Callable[[Any], QueryRecord],
        window: Callable[[], list[StatsRow]],
        capacity: int,
        stats_interval_s: float | None,
        poll_s: float = 0.05,
        idle_s: float = 1.0,
    ) -> None:
        self.sinks = list(sinks)
        self.capacity = capacity
        self._build = build
        self._window = window
        self._interval = stats_interval_s
        self._poll_s = poll_s
        self._idle_s = max(idle_s, poll_s)
        self._pending: collections.deque[Any] = collections.deque()
        self._lock = threading.Lock()
        self._draining = threading.Lock()  # held while the sinks are being called
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._alarm: threading.Lock | None = None  # held while the thread runs; close() releases it
        self.dropped = 0
        self.written = 0
        self.sink_errors = 0
        self.build_errors = 0
        self._last_error_log: dict[int, float] = {}

    def put(self, item: Any) -> None:
        """Queue a pending record (or a finished ``QueryRecord``); drop it if the queue is full."""
        pending = self._pending
        if len(pending) < self.capacity:
            pending.append(item)
        else:
            with self._lock:
                self.dropped += 1

    @property
    def queued(self) -> int:
        """Items waiting for the writer thread."""
        return len(self._pending)

    def start(self) -> None:
        """Start the writer thread if it is not running."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stopping = False
                alarm = self._alarm = threading.Lock()
                alarm.acquire()
                self._thread = threading.Thread(
                    target=self._run, args=(alarm,), name="sqlperf-capture-writer", daemon=True
                )
                self._thread.start()

    def flush(self, timeout: float | None = 30.0, *, stats: bool = True) -> bool:
        """Write everything queued so far to the sinks, on the calling thread.

        Args:
            timeout: seconds to wait at most for the writer thread to finish its
                batch; ``None`` waits for ever.
            stats: also emit the statistics of the window so far.

        Returns:
            False if the timeout passed first (the writer is stuck in a slow sink).
        """
        if not self._draining.acquire(timeout=-1 if timeout is None else timeout):
            return False
        try:
            self._drain()
            if stats:
                self._emit_stats()
            for sink in self.sinks:
                self._call(sink, "flush")
        finally:
            self._draining.release()
        return True

    def close(self, timeout: float | None = 30.0) -> None:
        """Flush, stop the thread and close every sink."""
        with self._lock:
            self._stopping = True
            thread, alarm, self._alarm = self._thread, self._alarm, None
        if alarm is not None:
            alarm.release()
        if thread is not None:
            thread.join(timeout)
        self.flush(timeout)
        for sink in self.sinks:
            self._call(sink, "close")

    def _run(self, alarm: threading.Lock) -> None:
        interval = self._interval
        next_window = time.monotonic() + interval if interval is not None else float("inf")
        delay = self._poll_s
        while not self._stopping:
            if alarm.acquire(timeout=max(0.0, min(delay, next_window - time.monotonic()))):
                return  # close() released it: it drains on its own thread
            window = time.monotonic() >= next_window
            if not (self._pending or window):
                delay = min(delay * 2, self._idle_s)
                continue
            delay = self._poll_s
            with self._draining:
                self._drain()
                if window:
                    self._emit_stats()
            if window and interval is not None:
                next_window = time.monotonic() + interval

    def _drain(self) -> None:
        pending = self._pending
        batch: list[QueryRecord | StatsRow] = []
        while pending:
            item = pending.popleft()
            if isinstance(item, QueryRecord):
                batch.append(item)
                continue
            try:
                batch.append(self._build(item))
            except Exception:
                self.build_errors += 1
                logger.exception("sqlperf: could not build a query record; it is dropped")
            if len(batch) >= 1000:
                self._write(batch)
                batch = []
        self._write(batch)

    def _emit_stats(self) -> None:
        try:
            rows = self._window()
        except Exception:
            self.build_errors += 1
            logger.exception("sqlperf: could not snapshot the query statistics")
            return
        self._write(rows)

    def _write(self, batch: Sequence[QueryRecord | StatsRow]) -> None:
        if not batch:
            return
        for sink in self.sinks:
            self._call(sink, "write", batch)
        self.written += sum(isinstance(item, QueryRecord) for item in batch)

    def _call(self, sink: Sink, method: str, *args: Any) -> None:
        try:
            getattr(sink, method)(*args)
        except Exception:
            self.sink_errors += 1
            now = time.monotonic()
            if now - self._last_error_log.get(id(sink), -_ERROR_LOG_EVERY_S) >= _ERROR_LOG_EVERY_S:
                self._last_error_log[id(sink)] = now
                logger.exception("sqlperf: sink %r failed in %s()", sink, method)
