"""Worker threads for an ASGI app's blocking calls: :func:`run_in_thread` and what
:class:`~sqlperf.integrations.asgi.SqlperfMiddleware` keeps for it.

In a server bound by CPython's GIL, an event loop busy with requests it answers
itself and a worker thread running a database call take turns on one lock. The
worker gives the GIL up around every blocking step of the driver (each row that
``sqlite3`` steps to, each round trip), and each time it must wait for the loop
to give it back: about twenty thread switches for one cache miss of the example
shop on SQLite, which made a miss cost as much CPU as five or six hits. Two
things here keep that in bounds:

* **waiting first** (``thread_wait_s``): :func:`run_in_thread` waits for its call
  on the event loop, GIL released, for up to three milliseconds before it lets the
  loop go on. A call done by then ran without anyone taking turns with it, and
  returns without another trip through the loop. The loop idles while the call
  waits on round trips (a miss on PostgreSQL and Redis spends about 40% of its time
  so), but taking turns costs more: each of the call's blocking steps hands the
  GIL to the busy loop and waits to get it back, two thread switches and the
  loop's next turn each time. The wait is bounded: a call not done within it is a
  strike, and after three in a row the waiting stops for a second, then is tried
  again (so slow queries, or a far database, are not waited for);
* **giving way** (``yield_to_threads``): while a call runs on its own, the
  middleware gives up the GIL once after each response, so that the call is not
  left waiting for the loop's whole turns.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TypeVar

import anyio

__all__ = ["CURRENT", "WorkerThreads", "counted", "give_way", "run_in_thread", "to_thread"]

T = TypeVar("T")

#: Strikes in a row (calls not done within the wait) after which waiting pauses.
STRIKES = 3
#: How long waiting pauses then, in seconds.
PAUSE_S = 1.0


class WorkerThreads:
    """The worker threads of one middleware's requests.

    Args:
        wait_s: how long :func:`run_in_thread` waits for a call on the event loop
            before letting the loop go on; ``0`` never waits.
        max_workers: the pool's size (``None``: asyncio's default, ``min(32, CPUs + 4)``).

    A context manager counting one running call while its block runs (see
    :attr:`running`).
    """

    __slots__ = (
        "_executor",
        "_lock",
        "_paused_until",
        "_pid",
        "_strikes",
        "max_workers",
        "running",
        "wait_s",
    )

    def __init__(self, wait_s: float, max_workers: int | None) -> None:
        self.wait_s = wait_s
        self.max_workers = max_workers
        #: Calls running now (those of :func:`run_in_thread`, and whatever else the
        #: middleware counts with :func:`counted`).
        self.running = 0
        # One app may be served by event loops in several threads (test clients):
        # a lost update would leave the count wrong for good.
        self._lock = threading.Lock()
        self._strikes = 0
        self._paused_until = 0.0
        self._executor: ThreadPoolExecutor | None = None
        self._pid = 0

    def __enter__(self) -> None:
        with self._lock:
            self.running += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.running -= 1

    def submit(self, func: Callable[[], T]) -> Future[T]:
        """Start ``func()`` on a worker thread."""
        with self._lock:
            # Made on first use, and again in a forked child, whose copy of the pool
            # would count threads that do not exist there.
            if self._executor is None or self._pid != os.getpid():
                self._executor = ThreadPoolExecutor(
                    self.max_workers, thread_name_prefix="sqlperf-worker"
                )
                self._pid = os.getpid()
            executor = self._executor
        return executor.submit(func)

    def done_soon(self, future: Future[Any]) -> bool:
        """Wait up to :attr:`wait_s` for ``future``, unless waiting is paused (see the
        module); whether it is done."""
        if self.wait_s <= 0 or (self._paused_until and time.monotonic() < self._paused_until):
            return False
        try:
            future.exception(self.wait_s)  # (the call's own exception is returned, not raised)
        except TimeoutError:
            self._strike()
            return False
        if self._strikes:
            with self._lock:
                self._strikes = 0
        return True

    def _strike(self) -> None:
        with self._lock:
            self._strikes += 1
            if self._strikes >= STRIKES:
                self._strikes = 0
                self._paused_until = time.monotonic() + PAUSE_S

    def close(self) -> None:
        """Let the pool's threads end once their calls return."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False)


#: The running request's middleware's :class:`WorkerThreads` (``None`` outside one).
CURRENT: contextvars.ContextVar[WorkerThreads | None] = contextvars.ContextVar(
    "sqlperf_worker_threads", default=None
)
_UNCOUNTED = nullcontext()


def counted() -> AbstractContextManager[None]:
    """Count the block as a running worker-thread call of the current request's
    middleware, if there is one."""
    return CURRENT.get() or _UNCOUNTED


def give_way() -> None:
    """Give up the GIL for a moment, so that a worker thread waiting for it takes it."""
    # A zero-length sleep is a blocking call: CPython releases the GIL around it.
    time.sleep(0)


async def run_in_thread(func: Callable[..., T], /, *args: Any) -> T:
    """Run the blocking ``func(*args)`` on a worker thread, handed over at once.

    For an ``async`` endpoint's database work, such as what
    :meth:`~sqlperf.QueryCache.answer_locally` could not answer. FastAPI's
    ``run_in_threadpool`` (anyio's ``to_thread.run_sync``) first yields to the event
    loop twice, for a checkpoint and for its thread limiter: two full turns of the
    loop, about a millisecond each on a server busy with cache hits. This hands the
    call over at once.

    Under :class:`~sqlperf.integrations.asgi.SqlperfMiddleware` the call runs on the
    middleware's own pool (``threads``), and the event loop first waits for it,
    GIL released, for up to ``thread_wait_s`` (three milliseconds): a call done by then
    returns at once, having run without taking turns on the GIL with the loop (see
    ``docs/integrations.md``; a call that needs the loop itself, such as one waiting
    for ``asyncio.run_coroutine_threadsafe``, goes on once that wait is over). While
    it runs on, the loop gives up the GIL after
    each response it sends (``yield_to_threads``). Outside the middleware the call
    runs on the event loop's default executor (``min(32, CPUs + 4)`` threads unless
    the app sets its own with ``loop.set_default_executor``).

    The call runs in a copy of the caller's context, so the recorder's scope and
    other context variables are seen. Cancelling the caller waits for the call to
    return (a thread cannot be interrupted), as anyio's default does: a session
    passed to it is never closed while the call still uses it.

    Example::

        result = cache.answer_locally(session, stmt, {"id": order_id})
        if result is None:
            result = await run_in_thread(session.execute, stmt, {"id": order_id})
    """
    context = contextvars.copy_context()
    threads = CURRENT.get()
    if threads is None:
        loop = asyncio.get_running_loop()
        with anyio.CancelScope(shield=True):
            result = await loop.run_in_executor(None, context.run, func, *args)
        return result  # noqa: RET504 - returned after the block: a cancel scope may swallow exceptions
    with threads:
        future: Future[T] = threads.submit(functools.partial(context.run, func, *args))
        if threads.done_soon(future):
            return future.result()
        with anyio.CancelScope(shield=True):
            result = await asyncio.wrap_future(future)
    return result


async def to_thread(func: Callable[[], T]) -> T:
    """``anyio.to_thread.run_sync(func)``, counted as running for ``yield_to_threads``."""
    with counted():
        return await anyio.to_thread.run_sync(func)
