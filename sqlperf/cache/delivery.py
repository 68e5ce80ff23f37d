"""Getting invalidations to the backend: a circuit breaker for a failing backend,
and the thread that clears in-flight marks off the commit's path."""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Sequence

__all__ = ["Breaker", "MarkClearer"]

#: How long the clearer waits so the marks of commits in quick succession share
#: one round trip (a mark only makes readers bypass; it never serves stale data).
_MARK_BATCH_S = 0.005


class Breaker:
    """Open after ``threshold`` consecutive failures; retry after ``cooldown_s``."""

    def __init__(self, threshold: int, cooldown_s: float) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.failures = 0
        self.open_until = 0.0

    def allows(self) -> bool:
        """May the backend be asked now?"""
        return self.failures < self.threshold or time.monotonic() >= self.open_until

    def succeeded(self) -> None:
        """A call answered: close the breaker."""
        self.failures = 0

    def failed(self) -> None:
        """A call failed: count it; open the breaker at the threshold."""
        self.failures += 1
        if self.failures >= self.threshold:
            self.open_until = time.monotonic() + self.cooldown_s


class MarkClearer:
    """Clears in-flight marks off the commit's path, on a daemon thread (restarted
    after a fork). ``flush()`` waits until everything queued was sent."""

    def __init__(self, send: Callable[[Sequence[str]], None]) -> None:
        self._send = send
        self._queue: queue.Queue[list[str] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def put(self, tables: list[str]) -> None:
        """Queue the marks of ``tables`` to be cleared."""
        if self._pid != os.getpid() or self._thread is None:
            with self._lock:
                if self._pid != os.getpid() or self._thread is None:
                    self._queue = queue.Queue()
                    self._thread = threading.Thread(
                        target=self._run, name="sqlperf-cache-marks", daemon=True
                    )
                    self._pid = os.getpid()
                    self._thread.start()
        self._queue.put(tables)

    def _run(self) -> None:
        q = self._queue
        while True:
            tables = q.get()
            if tables is None:
                q.task_done()
                return
            time.sleep(_MARK_BATCH_S)
            batch = list(tables)
            n = 1
            while True:  # whatever piled up goes in the same round trip
                try:
                    more = q.get_nowait()
                except queue.Empty:
                    break
                n += 1
                if more is None:
                    q.put(None)
                    n -= 1
                    q.task_done()
                    break
                batch.extend(more)
            self._send(batch)
            for _ in range(n):
                q.task_done()

    def flush(self) -> None:
        """Wait until everything queued was sent."""
        if self._thread is not None and self._pid == os.getpid():
            self._queue.join()

    def stop(self) -> None:
        """Send what is queued and stop the thread."""
        if self._thread is not None and self._pid == os.getpid():
            self._queue.put(None)
            self._thread.join(5)
        self._thread = None
