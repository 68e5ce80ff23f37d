"""The pool advisor: does ``workers x (pool_size + max_overflow)`` fit the server?

Each process of a service (gunicorn/uvicorn worker, Celery worker) has its own
pool, so the server sees up to ``workers * (pool_size + max_overflow)``
connections from one deployment. When that passes ``max_connections``, the
failure shows up only at peak load, as "too many connections" errors.
:func:`check_pool_budget` does the arithmetic against the live server.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, text
from sqlalchemy.pool import QueuePool

from sqlperf.exceptions import ConfigurationError

__all__ = ["PoolBudget", "check_pool_budget"]


@dataclass(frozen=True, kw_only=True)
class PoolBudget:
    """The verdict of :func:`check_pool_budget`.

    Attributes:
        fits: whether the deployment's worst case fits with the reserve left.
        workers: processes assumed to run this engine's configuration.
        per_worker: ``pool_size + max_overflow`` of one process.
        needed: ``workers * per_worker``.
        max_connections: the server's limit (``None`` for SQLite).
        reserved: connections kept back: the server's superuser reserve plus
            ``reserve`` (for migrations, consoles, replicas and other apps).
        available: ``max_connections - reserved``.
        in_use: connections open on the server right now, from anyone.
        advice: one human sentence saying what to change, or that all is well.
    """

    fits: bool
    workers: int
    per_worker: int
    needed: int
    max_connections: int | None
    reserved: int
    available: int | None
    in_use: int | None
    advice: str

    def __str__(self) -> str:
        return self.advice


def _server_limits(engine: Engine) -> tuple[int, int, int]:
    """Return (max_connections, superuser reserve, connections in use)."""
    name = engine.dialect.name
    with engine.connect() as conn:
        if name == "postgresql":
            max_conn = int(conn.exec_driver_sql("SHOW max_connections").scalar_one())
            su = int(conn.exec_driver_sql("SHOW superuser_reserved_connections").scalar_one())
            in_use = int(
                conn.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE backend_type = 'client backend'"
                    )
                ).scalar_one()
            )
            return max_conn, su, in_use
        if name in ("mysql", "mariadb"):
            max_conn = int(conn.exec_driver_sql("SELECT @@max_connections").scalar_one())
            in_use = int(
                conn.exec_driver_sql("SHOW GLOBAL STATUS LIKE 'Threads_connected'").one()[1]
            )
            # MySQL/MariaDB keep one extra connection for SUPER/CONNECTION ADMIN.
            return max_conn, 1, in_use
    raise ConfigurationError(f"check_pool_budget does not know how to ask {name!r} for its limits")


def check_pool_budget(engine: Engine, *, workers: int, reserve: int | None = None) -> PoolBudget:
    """Check that ``workers`` processes using ``engine``'s pool settings fit the server.

    Args:
        engine: an engine whose pool settings every worker uses.
        workers: number of processes (e.g. gunicorn ``--workers``).
        reserve: connections to keep free for everything else; defaults to
            10% of ``max_connections``, at least 5.

    Returns:
        A :class:`PoolBudget`; ``str()`` of it is a sentence of advice.

    Raises:
        ConfigurationError: ``workers`` or ``reserve`` is not a positive number.

    Example::

        >>> from sqlperf import create_optimized_engine, check_pool_budget
        >>> check_pool_budget(create_optimized_engine("sqlite://"), workers=4).fits
        True
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigurationError(f"workers must be a positive int, got {workers!r}")
    if reserve is not None and reserve < 0:
        raise ConfigurationError(f"reserve must be >= 0, got {reserve!r}")
    pool = engine.pool
    # A pool that is not a QueuePool (NullPool, StaticPool) holds one connection
    # per concurrent user; count one.
    per_worker = pool.size() + max(0, pool._max_overflow) if isinstance(pool, QueuePool) else 1
    needed = workers * per_worker
    if engine.dialect.name == "sqlite":
        return PoolBudget(
            fits=True,
            workers=workers,
            per_worker=per_worker,
            needed=needed,
            max_connections=None,
            reserved=0,
            available=None,
            in_use=None,
            advice=f"SQLite has no connection limit; {workers} worker(s) x {per_worker} "
            "connection(s) is fine (writers still take turns on the file lock).",
        )
    max_conn, su_reserved, in_use = _server_limits(engine)
    extra = reserve if reserve is not None else max(5, max_conn // 10)
    reserved = su_reserved + extra
    available = max(0, max_conn - reserved)
    fits = needed <= available
    if fits:
        advice = (
            f"fits: {workers} worker(s) x {per_worker} = {needed} connection(s) "
            f"of {available} available (max_connections={max_conn}, {reserved} reserved)."
        )
    else:
        per = available // workers
        if per >= 1:
            size = max(1, (per * 2) // 3)
            fix = (
                f"use pool_size={size}, max_overflow={per - size} per worker, run at most "
                f"{max(1, available // per_worker)} worker(s), raise max_connections "
                f"to at least {needed + reserved}, or put PgBouncer/ProxySQL in front"
            )
        else:
            fix = (
                f"{workers} workers cannot each have a connection: raise max_connections to "
                f"at least {needed + reserved} or put a connection pooler in front"
            )
        advice = (
            f"does not fit: {workers} worker(s) x {per_worker} = {needed} connection(s) "
            f"but only {available} available (max_connections={max_conn}, {reserved} "
            f"reserved). {fix[0].upper()}{fix[1:]}."
        )
    return PoolBudget(
        fits=fits,
        workers=workers,
        per_worker=per_worker,
        needed=needed,
        max_connections=max_conn,
        reserved=reserved,
        available=available,
        in_use=in_use,
        advice=advice,
    )
