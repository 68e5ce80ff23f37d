"""Single flight: concurrent misses on one key run the query once.

The first thread to miss a key becomes its *leader* and runs the query; the
others wait (bounded) for it to finish and then look the key up again, finding
the leader's entry. Across processes the same is done, optionally, with a
short lock in the backend (see ``RedisBackend.try_lock``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["SingleFlight"]


class SingleFlight:
    """In-process leader election per key.

    Args:
        wait_s: how long a follower waits for the leader before running the
            query itself (a slow leader must not stall everyone).
    """

    def __init__(self, wait_s: float = 5.0) -> None:
        self.wait_s = wait_s
        self._lock = threading.Lock()
        self._running: dict[str, threading.Event] = {}

    @contextmanager
    def lead(self, key: str) -> Iterator[bool]:
        """Yield ``True`` to the leader of ``key``; a follower waits for the leader
        to finish and gets ``False`` (it should look the key up again)."""
        with self._lock:
            event = self._running.get(key)
            if event is None:
                self._running[key] = event = threading.Event()
                leader = True
            else:
                leader = False
        if not leader:
            event.wait(self.wait_s)
            yield False
            return
        try:
            yield True
        finally:
            with self._lock:
                del self._running[key]
            event.set()
