"""``create_optimized_engine``: a plain SQLAlchemy ``Engine`` with tuned defaults.

Each default below is chosen for a reason written beside it; ``docs/engine.md``
has the same table for readers. Every SQLAlchemy keyword the caller passes wins
over sqlperf's default for it.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import sqlalchemy
from sqlalchemy import URL, Engine, event, exc, make_url
from sqlalchemy.pool import ConnectionPoolEntry, QueuePool

from sqlperf.exceptions import ConfigurationError, MissingDependency, UnsupportedDatabase
from sqlperf.pool import MonitoredQueuePool, install_pool_listeners

__all__ = ["PoolPlan", "Workload", "create_optimized_engine", "plan_pool", "safe_url"]

logger = logging.getLogger("sqlperf.engine")

Workload = Literal["web", "worker", "batch"]
"""What the engine's process does: ``"web"`` serves short requests from many
threads, ``"worker"`` runs background jobs a few at a time, ``"batch"`` runs long
bulk statements from one or two threads."""

_WORKLOADS: tuple[str, ...] = get_args(Workload)

#: Drivers whose connection arguments sqlperf tunes. Other drivers of these
#: dialects get the pool tuning and the liveness check only.
_TUNED_DRIVERS = {"postgresql": "psycopg2", "mysql": "pymysql", "mariadb": "pymysql"}
_EXTRAS = {"psycopg2": "postgres", "pymysql": "mysql"}


@dataclass(frozen=True, kw_only=True)
class PoolPlan:
    """Pool settings that follow from a workload and the CPU count.

    Attributes:
        pool_size: connections kept open. Kept small on purpose: every process
            of the service holds this many, and the server's
            ``max_connections`` is shared by all of them (see
            :func:`sqlperf.check_pool_budget`).
        max_overflow: extra connections allowed during a burst, closed when
            returned.
        pool_timeout: seconds a checkout may wait before
            :class:`~sqlperf.PoolTimeout`. Web requests fail fast rather than
            pile up behind a saturated pool.
        pool_recycle: seconds after which a connection is replaced, below
            MySQL's default ``wait_timeout`` (8 h) and the idle cut-offs of
            common load balancers and proxies.
        read_write_timeout_s: how long a read or write may wait on a dead
            peer before the kernel fails it (MySQL: ``TCP_USER_TIMEOUT`` plus
            keepalives; PostgreSQL gets keepalives from libpq).
    """

    pool_size: int
    max_overflow: int
    pool_timeout: float
    pool_recycle: int
    read_write_timeout_s: int


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def plan_pool(workload: Workload, cpus: int | None = None) -> PoolPlan:
    """Return the pool settings sqlperf uses for ``workload`` on ``cpus`` CPUs.

    Raises:
        ConfigurationError: ``workload`` is not one of ``web``, ``worker``, ``batch``.

    Example::

        >>> plan_pool("web", cpus=2).pool_size
        10
    """
    if workload not in _WORKLOADS:
        raise ConfigurationError(
            f"unknown workload {workload!r}: choose one of {', '.join(map(repr, _WORKLOADS))}"
        )
    n = cpus or _cpus()
    if workload == "web":
        # A threaded web process runs 2-4 request threads per core (gunicorn
        # gthread, a FastAPI thread pool) and each holds a connection for most of
        # its request, so the steady state lives in the pool, not in overflow:
        # an overflow connection is closed on return, and a new connection costs
        # 2.5-26 ms, i.e. hundreds of checkouts. Capped: the server is shared.
        size = min(max(4 * n + 2, 5), 20)
        return PoolPlan(
            pool_size=size,
            max_overflow=max(5, size // 2),
            pool_timeout=5.0,
            pool_recycle=1800,
            read_write_timeout_s=60,
        )
    if workload == "worker":
        return PoolPlan(
            pool_size=min(max(n + 1, 2), 10),
            max_overflow=2,
            pool_timeout=30.0,
            pool_recycle=1800,
            read_write_timeout_s=600,
        )
    return PoolPlan(
        pool_size=2,
        max_overflow=2,
        pool_timeout=60.0,
        pool_recycle=3600,
        read_write_timeout_s=3600,
    )


def safe_url(url: str | URL) -> str:
    """Render a database URL with its password hidden, for logs and messages.

    Example::

        >>> safe_url("postgresql://app:s3cret@db/app")
        'postgresql://app:***@db/app'
    """
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    head, at, tail = url.rpartition("@")
    if not at:
        return url
    # The user info starts after the scheme ("name:" or "name://"); a password is
    # whatever follows the first ":" inside it, whether or not the URL parses.
    scheme_end = head.find("://") + 3 if "://" in head else head.find(":") + 1
    colon = head.find(":", scheme_end)
    if colon < 0:
        return url
    return f"{head[: colon + 1]}***@{tail}"


def _parse(url: str | URL) -> URL:
    if isinstance(url, URL):
        return url
    if not isinstance(url, str):
        raise ConfigurationError(f"url must be a str or sqlalchemy.URL, not {type(url).__name__}")
    try:
        return make_url(url)
    except (exc.ArgumentError, ValueError):
        raise ConfigurationError(
            f"could not parse database URL {safe_url(url)!r}: expected "
            "dialect+driver://user:password@host:port/database, "
            "e.g. postgresql+psycopg2://app@localhost/app or sqlite:///app.db"
        ) from None


def _is_memory_sqlite(url: URL) -> bool:
    db = url.database or ""
    return db in ("", ":memory:") or "mode=memory" in db or url.query.get("mode") == "memory"


def _default_application_name(workload: str) -> str:
    prog = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] else "python"
    return f"{prog or 'python'}/{workload}"[:63]  # PostgreSQL's NAMEDATALEN - 1


def create_optimized_engine(
    url: str | URL,
    *,
    workload: Workload = "web",
    read_only: bool = False,
    application_name: str | None = None,
    statement_timeout_ms: int | None = None,
    ping_after_idle_s: float | None = 1.0,
    leak_threshold_s: float | None = None,
    **overrides: Any,
) -> Engine:
    """Create a ``sqlalchemy.Engine`` with pool and driver settings tuned for ``workload``.

    What is tuned, and why, is listed in ``docs/engine.md``. In short:

    * every dialect: pool size/overflow from the workload and CPU count, LIFO
      checkout, ``pool_recycle``, fail-fast ``pool_timeout``, checkout-wait
      statistics (:func:`sqlperf.pool_status`), fork safety, and a liveness
      check that pings only connections that idled longer than
      ``ping_after_idle_s`` or whose socket shows the server hung up;
    * PostgreSQL (psycopg2): ``connect_timeout``, TCP keepalives,
      ``application_name``, ``statement_timeout``; ``read_only`` sets
      ``default_transaction_read_only``;
    * MySQL/MariaDB (PyMySQL): ``utf8mb4``, connect/read/write timeouts, no
      ``ROLLBACK`` round trip on checkin when nothing ran, no TLS set-up on
      loopback/unix-socket connections that did not ask for TLS;
      ``read_only`` makes each session ``READ ONLY``;
    * SQLite: WAL, ``synchronous=NORMAL``, ``foreign_keys=ON``,
      ``busy_timeout`` on every connection; ``:memory:`` databases share one
      connection that threads take turns on; ``read_only`` opens the file
      read-only.

    Args:
        url: database URL, e.g. ``"postgresql+psycopg2://app@db/app"``.
        workload: ``"web"``, ``"worker"`` or ``"batch"`` (see :func:`plan_pool`).
        read_only: make the server refuse writes through this engine (for
            replicas and reporting).
        application_name: shown in ``pg_stat_activity``; defaults to
            ``"<program>/<workload>"``.
        statement_timeout_ms: server-side limit per statement (PostgreSQL
            ``statement_timeout``, MariaDB ``max_statement_time``, MySQL
            ``max_execution_time``); ``None`` for no limit.
        ping_after_idle_s: ping a pooled connection before reuse when it sat
            idle longer than this many seconds; ``None`` disables sqlperf's
            liveness check. Ignored when ``pool_pre_ping=True`` is passed.
        leak_threshold_s: log (once, with the stack that checked it out) any
            connection held longer than this. Costs a stack capture per
            checkout, so it is off by default.
        **overrides: any ``sqlalchemy.create_engine`` keyword; each wins over
            sqlperf's default.

    Returns:
        A plain ``sqlalchemy.Engine``.

    Raises:
        ConfigurationError: a bad URL or option (the message says which).
        UnsupportedDatabase: a dialect sqlperf does not know, or an async driver.
        MissingDependency: the driver is not installed (names the extra).

    Example::

        >>> from sqlperf import create_optimized_engine
        >>> engine = create_optimized_engine("sqlite://", workload="worker")
        >>> with engine.connect() as conn:
        ...     conn.exec_driver_sql("PRAGMA foreign_keys").scalar()
        1
    """
    plan = plan_pool(workload)
    _check_options(statement_timeout_ms, ping_after_idle_s, leak_threshold_s)
    t = _Tuning(url=_parse(url))
    backend, driver = _resolve(t.url)
    memory = backend == "sqlite" and _is_memory_sqlite(t.url)
    t.kwargs.update(_pool_defaults(plan, memory, overrides))
    timeout_ms = statement_timeout_ms

    if backend == "postgresql":
        if driver == "psycopg2":
            app = application_name or _default_application_name(workload)
            _tune_postgres(t, read_only=read_only, timeout_ms=timeout_ms, application_name=app)
        # Larger INSERT .. VALUES pages mean fewer round trips for bulk inserts.
        t.kwargs["insertmanyvalues_page_size"] = 5000 if workload == "batch" else 1000
    elif backend in ("mysql", "mariadb"):
        if driver == "pymysql":
            _tune_mysql(t, plan=plan, read_only=read_only, timeout_ms=timeout_ms)
        elif read_only or timeout_ms:
            raise UnsupportedDatabase(
                f"read_only and statement_timeout_ms need PyMySQL; {driver!r} is not tuned"
            )
    else:
        _tune_sqlite(t, read_only=read_only, memory=memory)

    engine = _build(t, overrides, backend=backend, driver=driver)
    pool = engine.pool
    monitor = None
    if isinstance(pool, MonitoredQueuePool):
        pool.description = f"the pool of {safe_url(t.url)}"
        pool.monitor.leak_threshold_s = leak_threshold_s
        monitor = pool.monitor
    pre_ping = bool(t.kwargs.get("pool_pre_ping"))
    install_pool_listeners(
        engine,
        ping_after_idle_s=None if (backend == "sqlite" or pre_ping) else ping_after_idle_s,
        socket_check=driver in ("psycopg2", "pymysql"),
        monitor=monitor,
    )
    for step in t.setup:
        step(engine)
    return engine


@dataclass
class _Tuning:
    """What the per-dialect tuners build up before ``create_engine`` is called."""

    url: URL
    kwargs: dict[str, Any] = field(default_factory=dict)
    connect_args: dict[str, Any] = field(default_factory=dict)
    setup: list[Callable[[Engine], None]] = field(default_factory=list)


def _check_options(
    statement_timeout_ms: int | None,
    ping_after_idle_s: float | None,
    leak_threshold_s: float | None,
) -> None:
    if statement_timeout_ms is not None and (
        isinstance(statement_timeout_ms, bool) or statement_timeout_ms <= 0
    ):
        raise ConfigurationError("statement_timeout_ms must be a positive number of milliseconds")
    for name, value in (
        ("ping_after_idle_s", ping_after_idle_s),
        ("leak_threshold_s", leak_threshold_s),
    ):
        if value is not None and value < 0:
            raise ConfigurationError(f"{name} must be >= 0 or None, got {value!r}")


def _resolve(u: URL) -> tuple[str, str]:
    """Return (backend, driver) of a URL sqlperf can tune, or raise why not."""
    backend = u.get_backend_name()
    try:
        dialect_cls = u.get_dialect()
    except exc.NoSuchModuleError:
        raise UnsupportedDatabase(
            f"SQLAlchemy has no dialect for {u.drivername!r} (in {safe_url(u)!r}); "
            "sqlperf tunes postgresql+psycopg2, mysql+pymysql/mariadb+pymysql and sqlite"
        ) from None
    if getattr(dialect_cls, "is_async", False):
        raise UnsupportedDatabase(
            f"{u.drivername!r} is an asyncio driver; create_optimized_engine builds "
            "synchronous engines: use a sync driver (psycopg2, pymysql, pysqlite)"
        )
    if backend not in ("postgresql", "mysql", "mariadb", "sqlite"):
        raise UnsupportedDatabase(
            f"sqlperf cannot tune {backend!r} (from {safe_url(u)!r}); it supports PostgreSQL, "
            "MySQL/MariaDB and SQLite. Use sqlalchemy.create_engine for other databases."
        )
    return backend, str(dialect_cls.driver)


def _pool_defaults(plan: PoolPlan, memory: bool, overrides: dict[str, Any]) -> dict[str, Any]:
    if not memory:
        return {
            "poolclass": MonitoredQueuePool,
            "pool_size": plan.pool_size,
            "max_overflow": plan.max_overflow,
            "pool_timeout": plan.pool_timeout,
            "pool_recycle": plan.pool_recycle,
            # LIFO reuses the most recently returned connection, so under light
            # load a few connections stay warm and the rest idle out.
            "pool_use_lifo": True,
        }
    if (
        "poolclass" not in overrides
        and "pool" not in overrides
        and (overrides.get("pool_size", 1) != 1 or overrides.get("max_overflow", 0) != 0)
    ):
        raise ConfigurationError(
            "a SQLite :memory: database lives in one connection, so its pool has "
            "pool_size=1 and max_overflow=0; use a file database for a bigger pool"
        )
    # One connection holds the whole database: every thread must use it, one at
    # a time (a pool of one), and it must never be recycled.
    return {
        "poolclass": MonitoredQueuePool,
        "pool_size": 1,
        "max_overflow": 0,
        "pool_timeout": plan.pool_timeout,
        "pool_recycle": -1,
    }


def _build(t: _Tuning, overrides: dict[str, Any], *, backend: str, driver: str) -> Engine:
    """Apply the caller's keywords over sqlperf's and call ``create_engine``."""
    overrides = dict(overrides)
    kwargs, connect_args = t.kwargs, t.connect_args
    user_connect_args = dict(overrides.pop("connect_args", None) or {})
    if "options" in user_connect_args and "options" in connect_args:
        # PostgreSQL applies -c settings left to right, so the caller's come last.
        connect_args["options"] += " " + user_connect_args.pop("options")
    connect_args.update(user_connect_args)
    for key in list(connect_args):
        if key in t.url.query:  # URL query parameters are the caller's too
            del connect_args[key]
    if connect_args:
        kwargs["connect_args"] = connect_args
    user_pool = overrides.get("poolclass") or overrides.get("pool")
    if user_pool is not None and not (
        isinstance(user_pool, type) and issubclass(user_pool, QueuePool)
    ):
        for key in ("pool_size", "max_overflow", "pool_timeout", "pool_use_lifo"):
            kwargs.pop(key, None)
    if "pool" in overrides:
        kwargs.pop("poolclass")
        kwargs.pop("pool_recycle", None)
    kwargs.update(overrides)
    try:
        return sqlalchemy.create_engine(t.url, **kwargs)
    except ModuleNotFoundError as err:
        missing = (err.name or "").split(".")[0]
        raise MissingDependency(
            missing or driver, extra=_EXTRAS.get(missing), purpose=f"{backend} URLs"
        ) from None
    except TypeError as err:
        raise ConfigurationError(
            f"create_engine rejected the options for {safe_url(t.url)!r}: {err}"
        ) from None
    except exc.ArgumentError as err:
        raise ConfigurationError(f"invalid engine option for {safe_url(t.url)!r}: {err}") from None


# -- PostgreSQL ----------------------------------------------------------------


def _tune_postgres(
    t: _Tuning, *, read_only: bool, timeout_ms: int | None, application_name: str
) -> None:
    t.connect_args.update(
        # Fail a connect to an unreachable host in seconds, not minutes.
        connect_timeout=5,
        # Detect a peer that vanished without a FIN in ~60 s rather than the
        # kernel's default 2 h.
        keepalives=1,
        keepalives_idle=30,
        keepalives_interval=10,
        keepalives_count=3,
        application_name=application_name,
    )
    options = []
    if timeout_ms is not None:
        options.append(f"-c statement_timeout={int(timeout_ms)}")
    if read_only:
        options.append("-c default_transaction_read_only=on")
    if options:
        t.connect_args["options"] = " ".join(options)


# -- MySQL / MariaDB -------------------------------------------------------------


def _tune_mysql(t: _Tuning, *, plan: PoolPlan, read_only: bool, timeout_ms: int | None) -> None:
    from sqlperf._mysql import TLS_KEYS, TrackedConnection, is_local_host

    if "charset" not in t.url.query:
        # utf8mb4 is real UTF-8; MySQL's "utf8" cannot store 4-byte characters.
        t.url = t.url.update_query_dict({"charset": "utf8mb4"})
    t.connect_args["connect_timeout"] = 5
    io_timeout = plan.read_write_timeout_s

    def do_connect(dialect: Any, record: ConnectionPoolEntry, cargs: Any, cparams: Any) -> Any:
        if not TLS_KEYS.intersection(cparams) and is_local_host(cparams):
            # PyMySQL's default "preferred" TLS builds a fresh SSL context, loading
            # the system CA store, on every connect (~26 ms). Traffic that never
            # leaves the host gains nothing from TLS, so skip it there; any TLS
            # option the caller set (or a remote host) keeps PyMySQL's behaviour.
            cparams["ssl_disabled"] = True
        connection = TrackedConnection(*cargs, **cparams)
        connection.set_tcp_timeouts(io_timeout)
        return connection

    session_sql: list[str] = []
    if read_only:
        session_sql.append("SET SESSION TRANSACTION READ ONLY")

    def on_connect(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        statements = list(session_sql)
        if timeout_ms is not None:
            if "mariadb" in dbapi_connection.get_server_info().lower():
                statements.append(f"SET SESSION max_statement_time = {timeout_ms / 1000:.3f}")
            else:
                statements.append(f"SET SESSION max_execution_time = {int(timeout_ms)}")
        if statements:
            with dbapi_connection.cursor() as cursor:
                for sql in statements:
                    cursor.execute(sql)
            dbapi_connection.commit()

    def install(engine: Engine) -> None:
        event.listen(engine, "do_connect", do_connect)
        if session_sql or timeout_ms is not None:
            event.listen(engine, "connect", on_connect)

    t.setup.append(install)


# -- SQLite ------------------------------------------------------------------------


def _tune_sqlite(t: _Tuning, *, read_only: bool, memory: bool) -> None:
    # Our pool hands connections between threads; SQLite's own serialisation
    # and the pool (one user per connection at a time) make that safe.
    t.connect_args["check_same_thread"] = False
    t.connect_args["timeout"] = 5.0  # the driver's busy wait, matched by the PRAGMA
    if read_only:
        if memory:
            raise ConfigurationError("read_only=True needs a SQLite file, not :memory:")
        db = t.url.database or ""
        if not db.startswith("file:"):
            if not Path(db).exists():
                raise ConfigurationError(
                    f"read_only=True opens an existing SQLite file, and {db!r} does not exist"
                )
            t.url = t.url.set(database=f"file:{db}").update_query_dict(
                {"mode": "ro", "uri": "true"}
            )

    pragmas = [
        "PRAGMA synchronous=NORMAL",  # safe with WAL; fsync at checkpoints only
        "PRAGMA foreign_keys=ON",  # SQLite ignores FOREIGN KEY clauses by default
        "PRAGMA busy_timeout=5000",  # wait for a writer instead of failing at once
    ]
    if not read_only and not memory:
        # Readers no longer block the writer, nor the writer readers.
        pragmas.insert(0, "PRAGMA journal_mode=WAL")

    def on_connect(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        cursor = dbapi_connection.cursor()
        try:
            for pragma in pragmas:
                cursor.execute(pragma)
        finally:
            cursor.close()

    t.setup.append(lambda engine: event.listen(engine, "connect", on_connect))
