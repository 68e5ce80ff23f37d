"""Connection-pool instrumentation: checkout waits, liveness, fork safety, leaks.

:func:`sqlperf.create_optimized_engine` builds its engines on
:class:`MonitoredQueuePool` and calls :func:`install_pool_listeners`; this module
holds both, plus :func:`pool_status`, which reads what they measured.

Liveness without a ping per checkout
------------------------------------
``pool_pre_ping=True`` sends ``SELECT 1`` on every checkout: one round trip
(about 160-200 us on loopback PostgreSQL, against about 10 us for the checkout
itself). sqlperf instead checks, on each checkout:

1. the socket, with a zero-timeout ``poll(2)`` (about 1 us). A server that
   closed or killed the session (``pg_terminate_backend``, ``KILL``, restart,
   ``wait_timeout``) has sent a FIN and often an error packet, so an idle pooled
   socket that is readable is dead or carries something unexpected; either way
   it is pinged before use.
2. the idle time: a connection that sat in the pool longer than
   ``ping_after_idle_s`` (HikariCP's "alive bypass window") is pinged, which
   covers peers that vanished without a FIN (a dropped NAT entry, a dead host).

A failed ping raises ``DisconnectionError`` inside the checkout event, which
SQLAlchemy answers by replacing that connection and retrying the checkout, so
the caller never sees the dead connection.
"""

from __future__ import annotations

import collections
import logging
import os
import select
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, event, exc
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection, QueuePool

from sqlperf.exceptions import PoolTimeout

__all__ = [
    "CHECKOUT_WAIT_KEY",
    "MonitoredQueuePool",
    "PoolListeners",
    "PoolMonitor",
    "PoolStatus",
    "WaitStats",
    "install_pool_listeners",
    "pool_status",
]

logger = logging.getLogger("sqlperf.pool")

#: Key in a pooled connection's ``info``: seconds its latest checkout waited
#: (``MonitoredQueuePool`` only). The query recorder reports it per statement.
CHECKOUT_WAIT_KEY = "sqlperf.checkout_wait_s"

_CHECKIN_AT = "sqlperf.checkin_at"
_PID = "sqlperf.pid"
_POLLER = "sqlperf.poller"
_POLL_MASK = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP
_WAIT_SAMPLES = 2048


@dataclass(frozen=True, kw_only=True)
class WaitStats:
    """How long checkouts waited for a connection, in milliseconds.

    ``p95_ms`` is computed over the most recent 2,048 checkouts; ``count``,
    ``mean_ms`` and ``max_ms`` cover every checkout since the pool was created.
    """

    count: int
    mean_ms: float
    p95_ms: float
    max_ms: float
    timeouts: int


@dataclass(frozen=True, kw_only=True)
class PoolStatus:
    """A snapshot of an engine's pool, as returned by :func:`pool_status`."""

    pool_class: str
    size: int | None
    max_overflow: int | None
    checked_in: int | None
    checked_out: int | None
    overflow: int | None
    timeout_s: float | None
    waits: WaitStats | None
    leaked: int

    def __str__(self) -> str:
        parts = [
            f"{self.pool_class}: size={self.size} max_overflow={self.max_overflow}",
            f"checked_in={self.checked_in} checked_out={self.checked_out} overflow={self.overflow}",
        ]
        if self.waits is not None:
            w = self.waits
            parts.append(
                f"waits: n={w.count} mean={w.mean_ms:.3f}ms p95={w.p95_ms:.3f}ms "
                f"max={w.max_ms:.3f}ms timeouts={w.timeouts}"
            )
        if self.leaked:
            parts.append(f"leaked={self.leaked}")
        return "; ".join(parts)


@dataclass
class _Holder:
    since: float
    stack: str | None
    reported: bool = False


class PoolMonitor:
    """Checkout-wait statistics and leak tracking for one engine's pool.

    It lives on :class:`MonitoredQueuePool` and survives ``engine.dispose()``
    (the recreated pool keeps the same monitor). All methods are thread-safe.
    """

    def __init__(self, *, leak_threshold_s: float | None = None) -> None:
        self.leak_threshold_s = leak_threshold_s
        self._lock = threading.Lock()
        self._count = 0
        self._total = 0.0
        self._max = 0.0
        self._timeouts = 0
        self._recent: collections.deque[float] = collections.deque(maxlen=_WAIT_SAMPLES)
        self._holders: dict[int, _Holder] = {}
        self._next_leak_scan = 0.0

    def record_wait(self, seconds: float) -> None:
        """Account one successful checkout that took ``seconds``."""
        with self._lock:
            self._count += 1
            self._total += seconds
            self._max = max(self._max, seconds)
            self._recent.append(seconds)

    def record_timeout(self, seconds: float) -> None:
        """Account one checkout that gave up after ``seconds``."""
        with self._lock:
            self._timeouts += 1
            self._max = max(self._max, seconds)

    def wait_stats(self) -> WaitStats:
        """Return the statistics gathered so far."""
        with self._lock:
            recent = sorted(self._recent)
            count, total, peak, timeouts = self._count, self._total, self._max, self._timeouts
        p95 = recent[min(len(recent) - 1, int(len(recent) * 0.95))] if recent else 0.0
        return WaitStats(
            count=count,
            mean_ms=(total / count * 1000.0) if count else 0.0,
            p95_ms=p95 * 1000.0,
            max_ms=peak * 1000.0,
            timeouts=timeouts,
        )

    # -- leak detection -------------------------------------------------------

    def checked_out(self, record: ConnectionPoolEntry) -> None:
        """Note that ``record`` was handed out now, with the caller's stack."""
        stack = "".join(traceback.format_stack(limit=25)[:-4])
        now = time.monotonic()
        with self._lock:
            self._holders[id(record)] = _Holder(since=now, stack=stack)
        if now >= self._next_leak_scan:
            self.report_leaks(now)

    def checked_in(self, record: ConnectionPoolEntry) -> None:
        """Note that ``record`` came back."""
        with self._lock:
            self._holders.pop(id(record), None)

    def report_leaks(self, now: float | None = None) -> int:
        """Log, once each, connections held longer than the leak threshold.

        Returns how many connections are currently held beyond the threshold.
        """
        threshold = self.leak_threshold_s
        if threshold is None:
            return 0
        now = time.monotonic() if now is None else now
        to_log: list[tuple[float, str | None]] = []
        leaked = 0
        with self._lock:
            self._next_leak_scan = now + threshold / 2
            for holder in self._holders.values():
                held = now - holder.since
                if held > threshold:
                    leaked += 1
                    if not holder.reported:
                        holder.reported = True
                        to_log.append((held, holder.stack))
        for held, stack in to_log:
            logger.warning(
                "connection held for %.1f s (leak_threshold_s=%.1f); checked out at:\n%s",
                held,
                threshold,
                stack,
            )
        return leaked

    def oldest_holders(self, limit: int = 3) -> list[tuple[float, str | None]]:
        """Return (seconds held, stack) of the longest-held connections."""
        now = time.monotonic()
        with self._lock:
            holders = sorted(self._holders.values(), key=lambda h: h.since)[:limit]
        return [(now - h.since, h.stack) for h in holders]


class MonitoredQueuePool(QueuePool):
    """A :class:`~sqlalchemy.pool.QueuePool` that measures checkout waits.

    It behaves exactly like ``QueuePool``; in addition every ``connect()`` is
    timed into :attr:`monitor`, and a checkout that times out raises
    :class:`~sqlperf.PoolTimeout` (a ``sqlalchemy.exc.TimeoutError``) whose
    message describes the pool and what to do about it.
    """

    monitor: PoolMonitor
    description: str = "pool"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.monitor = PoolMonitor()

    def connect(self) -> PoolProxiedConnection:
        """Check out a connection, timing the wait."""
        start = time.perf_counter()
        try:
            conn = super().connect()
        except exc.TimeoutError as err:
            waited = time.perf_counter() - start
            self.monitor.record_timeout(waited)
            raise PoolTimeout(self._timeout_message(waited)) from err
        waited = time.perf_counter() - start
        self.monitor.record_wait(waited)
        conn.info[CHECKOUT_WAIT_KEY] = waited
        return conn

    def recreate(self) -> MonitoredQueuePool:
        """Recreate the pool (``engine.dispose()``), keeping the monitor."""
        new = super().recreate()
        assert isinstance(new, MonitoredQueuePool)
        new.monitor = self.monitor
        new.description = self.description
        return new

    def _timeout_message(self, waited: float) -> str:
        msg = (
            f"no connection available from {self.description} after {waited:.2f} s "
            f"(pool_timeout={self.timeout():g} s): {self.checkedout()} checked out, "
            f"pool_size={self.size()}, max_overflow={self._max_overflow}. "
            "Shorten transactions and make sure every connection and Session is closed; "
            "if the load is real, raise pool_size/max_overflow after checking "
            "sqlperf.check_pool_budget(engine, workers=N)."
        )
        holders = self.monitor.oldest_holders() if self.monitor.leak_threshold_s else []
        if holders:
            held, stack = holders[0]
            msg += (
                f" The oldest connection has been held for {held:.1f} s, checked out at:\n{stack}"
            )
        elif not self.monitor.leak_threshold_s:
            msg += " Pass leak_threshold_s=... to log who holds connections too long."
        return msg


@dataclass
class PoolListeners:
    """The pool listeners installed on one engine; :meth:`remove` undoes them."""

    engine: Engine
    listeners: list[tuple[str, Callable[..., Any]]]

    def remove(self) -> None:
        """Remove every listener this object installed."""
        for name, fn in self.listeners:
            if event.contains(self.engine, name, fn):
                event.remove(self.engine, name, fn)
        self.listeners.clear()


def _socket_of(dbapi_connection: Any) -> int | None:
    """Return the socket file descriptor of a psycopg2 or PyMySQL connection.

    ``-1`` means the driver already knows the connection is closed; ``None``
    means this driver does not expose its socket.
    """
    fileno = getattr(dbapi_connection, "fileno", None)
    if fileno is not None:  # psycopg2
        if dbapi_connection.closed:
            return -1
        fd: int = fileno()
        return fd
    if not hasattr(dbapi_connection, "_sock"):
        return None
    sock = dbapi_connection._sock  # PyMySQL keeps its socket here, None once closed
    return -1 if sock is None else int(sock.fileno())


def _socket_says_ping(dbapi_connection: Any, info: dict[str, Any]) -> bool:
    """True if the idle connection's socket is closed, readable or hung up."""
    poller = info.get(_POLLER)
    if poller is None:
        fd = _socket_of(dbapi_connection)
        if fd is None:  # a driver that hides its socket: rely on the idle window
            return False
        if fd < 0:
            return True
        # One poll object per DBAPI connection; info is dropped with the connection.
        poller = info[_POLLER] = select.poll()
        poller.register(fd, _POLL_MASK)
    elif _dbapi_closed(dbapi_connection):
        return True
    return bool(poller.poll(0))


def _dbapi_closed(dbapi_connection: Any) -> bool:
    """True if the driver itself knows the connection is closed."""
    closed = getattr(dbapi_connection, "closed", None)  # psycopg2: int, nonzero once closed
    if closed is not None:
        return bool(closed)
    return getattr(dbapi_connection, "_sock", True) is None  # PyMySQL drops its socket


def install_pool_listeners(
    engine: Engine,
    *,
    ping_after_idle_s: float | None,
    socket_check: bool,
    monitor: PoolMonitor | None,
) -> PoolListeners:
    """Install sqlperf's checkout/checkin listeners on ``engine``.

    Args:
        engine: the engine whose pool events to listen to (engine-level pool
            events survive ``engine.dispose()``).
        ping_after_idle_s: ping a connection that was idle longer than this;
            ``None`` disables liveness checks (fork safety stays on).
        socket_check: also ping connections whose idle socket is readable.
        monitor: where to record holders for leak detection, if enabled.

    Returns:
        A :class:`PoolListeners` whose ``remove()`` uninstalls them.
    """
    dialect = engine.dialect
    dbapi_error: type[BaseException] = getattr(dialect.loaded_dbapi, "Error", Exception)
    getpid = os.getpid
    monotonic = time.monotonic
    track_leaks = monitor is not None and monitor.leak_threshold_s is not None

    def on_connect(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[_PID] = getpid()

    def on_checkout(
        dbapi_connection: Any, record: ConnectionPoolEntry, proxy: PoolProxiedConnection
    ) -> None:
        info = record.info
        pid = info.get(_PID)
        if pid is None:  # made before these listeners were installed
            info[_PID] = pid = getpid()
        if pid != getpid():
            # Inherited through fork(): the socket belongs to the parent. Drop it
            # without closing (closing would end the parent's session) and let
            # the pool open a fresh connection for this process.
            record.dbapi_connection = proxy.dbapi_connection = None  # type: ignore[misc]
            raise exc.DisconnectionError("connection was created in another process")
        checked_in_at = info.get(_CHECKIN_AT)
        if (
            checked_in_at is not None
            and ping_after_idle_s is not None
            and (
                monotonic() - checked_in_at > ping_after_idle_s
                or (socket_check and _socket_says_ping(dbapi_connection, info))
            )
        ):
            try:
                dialect.do_ping(dbapi_connection)
            except dbapi_error as err:
                raise exc.DisconnectionError(f"liveness ping failed: {err}") from err
        if track_leaks:
            assert monitor is not None
            monitor.checked_out(record)

    def on_checkin(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[_CHECKIN_AT] = monotonic()
        if track_leaks:
            assert monitor is not None
            monitor.checked_in(record)

    listeners: list[tuple[str, Callable[..., Any]]] = [
        ("connect", on_connect),
        ("checkout", on_checkout),
        ("checkin", on_checkin),
    ]
    for name, fn in listeners:
        event.listen(engine, name, fn)
    return PoolListeners(engine=engine, listeners=listeners)


def pool_status(engine: Engine) -> PoolStatus:
    """Report the state of ``engine``'s connection pool.

    Works for any pool; checkout-wait statistics and leak counts are present
    when the engine was made by :func:`sqlperf.create_optimized_engine`.

    Example::

        >>> from sqlperf import create_optimized_engine, pool_status
        >>> engine = create_optimized_engine("sqlite://")
        >>> with engine.connect() as conn:
        ...     _ = conn.exec_driver_sql("select 1")
        >>> pool_status(engine).waits.count
        1
    """
    pool = engine.pool
    size = checked_in = checked_out = overflow = max_overflow = None
    timeout: float | None = None
    if isinstance(pool, QueuePool):
        size = pool.size()
        checked_in = pool.checkedin()
        checked_out = pool.checkedout()
        overflow = max(0, pool.overflow())
        max_overflow = pool._max_overflow
        timeout = pool.timeout()
    waits = None
    leaked = 0
    if isinstance(pool, MonitoredQueuePool):
        waits = pool.monitor.wait_stats()
        leaked = pool.monitor.report_leaks()
    return PoolStatus(
        pool_class=type(pool).__name__,
        size=size,
        max_overflow=max_overflow,
        checked_in=checked_in,
        checked_out=checked_out,
        overflow=overflow,
        timeout_s=timeout,
        waits=waits,
        leaked=leaked,
    )
