"""``QueryCache``: results cached by statement, invalidated on commit by table.

How a read is served: the cache listens to the DB-API ``do_execute`` step of
each attached engine. A statement that asked for the cache (``cached()``, or
``cache_all=True``) is looked up by its SQL text, its parameters and the
generations of the tables it reads; a hit hands SQLAlchemy a cursor that plays
the stored rows back (:class:`~sqlperf.cache.replay.ReplayCursor`), so Core
results and ORM loading (identity map, eager loads, types) run unchanged and
no ORM state is ever stored. A miss runs the query, keeps its rows and stores
them.

How writes invalidate:

* **what is written**: every ``INSERT``/``UPDATE``/``DELETE`` on a connection of
  an attached engine (Core, ORM flushes, bulk helpers) notes its table; raw SQL
  is parsed, and a statement that cannot be understood counts as writing
  *every* table;
* **when it becomes visible**: just before the commit of a transaction that
  wrote, the tables' generations are bumped and marked *in flight* (one backend
  round trip). The mark is cleared after the commit, off the commit's path (a
  background thread for remote backends). While it is set, readers neither use
  nor store entries of those tables, so after ``commit()`` returns no reader
  gets pre-commit data, and a reader that ran its query before the commit
  cannot store it under the new generation;
* **what may be stored**: nothing read in a transaction that wrote; under
  ``REPEATABLE READ``/``SERIALIZABLE`` (MySQL's default) only what the first
  statement of a transaction read, because later ones read an older snapshot
  than the generations they would be stored under; nothing read from a
  replica, whose lag the entry would outlive; and every store is conditional
  on the generations read before the query (see the backends).

A backend that fails (Redis down or slow) never fails a query: the cache opens a
circuit breaker and queries go to the database. Invalidations that could not be
delivered are kept and delivered first when the backend answers again; while it
cannot be reached, another process may serve an entry that this process's
writes should have invalidated for at most the entry's TTL.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, event
from sqlalchemy.engine import Result
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.sql.base import Executable

from sqlperf.cache.admission import Admission
from sqlperf.cache.backends import CacheBackend, Lookup
from sqlperf.cache.delivery import Breaker, MarkClearer
from sqlperf.cache.flight import SingleFlight
from sqlperf.cache.keys import (
    ALL_TABLES,
    result_key,
    tables_of_compiled,
    tables_written_by_sql,
)
from sqlperf.cache.options import CACHE_OPTION, CacheDirective, directive_of
from sqlperf.cache.orm import ORM_LOOKUP, WRITTEN, OrmLookup, SessionHook
from sqlperf.cache.payload import BadPayload, PayloadCodec
from sqlperf.cache.prepared import PreparedStatements
from sqlperf.cache.replay import ReplayCursor
from sqlperf.exceptions import ConfigurationError
from sqlperf.routing import engine_role

__all__ = ["CacheStats", "QueryCache", "attached_cache", "cache_outcome"]

logger = logging.getLogger("sqlperf.cache")

_COMMITTING = "sqlperf.cache.committing"
_FRESH = "sqlperf.cache.fresh"
_OUTCOME_ATTR = "_sqlperf_cache_outcome"
_OWNER_ATTR = "_sqlperf_query_cache"
_SNAPSHOT_LEVELS = frozenset({"REPEATABLE READ", "SERIALIZABLE"})
_DEFAULT = CacheDirective()


def attached_cache(engine: Engine) -> QueryCache | None:
    """The :class:`QueryCache` attached to ``engine``, or ``None``."""
    owner = engine.__dict__.get(_OWNER_ATTR)
    cache: QueryCache | None = owner() if owner is not None else None
    return cache


def cache_outcome(context: Any) -> str | None:
    """What the cache did with the statement of an execution context: ``"hit"``,
    ``"miss"``, ``"bypass:<reason>"``, or ``None`` if it was not a cached statement.
    For listeners such as the query recorder (``after_cursor_execute``)."""
    outcome: str | None = getattr(context, _OUTCOME_ATTR, None)
    return outcome


@dataclass(frozen=True, kw_only=True)
class CacheStats:
    """Counters of a :class:`QueryCache` since it was made.

    Attributes:
        hits / misses / stores: lookups answered, lookups not answered, entries written.
        bypasses: cached statements not served from nor stored in the cache, by
            reason (``"dirty_transaction"``, ``"in_flight"``, ``"uncacheable"``,
            ``"breaker_open"``, ``"snapshot"``, ``"replica_read"``, ``"streaming"``,
            ``"unpicklable"``, ``"unprofitable"``).
        invalidations: generation bumps, per table.
        errors: backend failures (each also counted by the breaker).
        bad_payloads: entries dropped because their signature or content was wrong.
        bytes_stored / bytes_served: total size of the payloads stored and hit.
        flight_waits: misses that waited for another thread's identical query.
        prepared: misses run as server-side prepared statements (``prepare_misses``).
    """

    hits: int
    misses: int
    stores: int
    bypasses: dict[str, int]
    invalidations: dict[str, int]
    errors: int
    bad_payloads: int
    bytes_stored: int
    bytes_served: int
    flight_waits: int
    prepared: int

    @property
    def hit_ratio(self) -> float:
        """``hits / (hits + misses)``, 0 when nothing was looked up."""
        looked = self.hits + self.misses
        return self.hits / looked if looked else 0.0


@dataclass
class _Counters:
    lock: threading.Lock = field(default_factory=threading.Lock)
    hits: int = 0
    misses: int = 0
    stores: int = 0
    errors: int = 0
    bad_payloads: int = 0
    bytes_stored: int = 0
    bytes_served: int = 0
    flight_waits: int = 0
    bypasses: Counter[str] = field(default_factory=Counter)
    invalidations: Counter[str] = field(default_factory=Counter)


class QueryCache:
    """A result cache whose entries are invalidated on commit, by table.

    Args:
        backend: where entries and generations live (:class:`~sqlperf.cache.MemoryBackend`,
            :class:`~sqlperf.cache.RedisBackend`, :class:`~sqlperf.cache.LayeredBackend`,
            or any :class:`~sqlperf.cache.CacheBackend`).
        ttl: default seconds an entry lives.
        cache_all: cache every ``SELECT`` on attached engines (except ``FOR UPDATE``,
            ``text()`` and statements with ``no_cache()``), not only ``cached()`` ones.
        namespace: prefix of keys and table generations, to keep apart caches that
            share a backend but not a database.
        signing_key: if given, payloads are HMAC-SHA256 signed; an entry whose
            signature fails is dropped and counted, never unpickled.
        jitter: entries live ``ttl * (1 ± jitter)``, so entries stored together
            do not expire together.
        cache_empty: also cache results with no rows.
        single_flight: concurrent misses on one key in this process run the query once.
        lock_s: if set and the backend supports it (``RedisBackend``), a miss also
            takes a lock of that many seconds in the backend, so concurrent misses
            across processes run the query once.
        breaker_threshold / breaker_cooldown_s: after that many consecutive
            backend failures, skip the backend for that long.
        skip_unprofitable: measure, per statement shape, what lookups and stores
            cost against what hits save, and let a shape that costs more than it
            saves (its tables are written before its entries are read again) skip
            the cache for a while (:mod:`sqlperf.cache.admission`); an
            :class:`~sqlperf.cache.Admission` to tune the window and cooldown;
            ``False`` always uses the cache.
        prepare_misses: on PostgreSQL with psycopg2, run a repeated statement's misses
            that read in autocommit as server-side prepared statements, planned once
            per connection (:mod:`sqlperf.cache.prepared`); ``False`` sends them as
            text, as psycopg2 does. Turn it off behind a pooler that cannot keep
            prepared statements (PgBouncer in transaction mode): they would fail and
            fall back to text, costing a round trip each first time.

    Example::

        >>> from sqlalchemy import column, select, table
        >>> from sqlperf import create_optimized_engine
        >>> from sqlperf.cache import MemoryBackend, QueryCache, cached
        >>> engine = create_optimized_engine("sqlite://")
        >>> cache = QueryCache(MemoryBackend()).attach(engine)
        >>> with engine.begin() as conn:
        ...     _ = conn.exec_driver_sql("CREATE TABLE t (v int)")
        ...     _ = conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        >>> t = table("t", column("v"))
        >>> with engine.connect() as conn:
        ...     conn.execute(select(t.c.v).options(cached())).all()
        ...     conn.execute(select(t.c.v).options(cached())).all()
        [(1,)]
        [(1,)]
        >>> cache.stats().hits
        1
        >>> cache.close()
    """

    def __init__(
        self,
        backend: CacheBackend,
        *,
        ttl: float = 300.0,
        cache_all: bool = False,
        namespace: str = "",
        signing_key: bytes | str | None = None,
        jitter: float = 0.1,
        cache_empty: bool = True,
        single_flight: bool = True,
        lock_s: float | None = None,
        breaker_threshold: int = 3,
        breaker_cooldown_s: float = 5.0,
        skip_unprofitable: bool | Admission = True,
        prepare_misses: bool = True,
    ) -> None:
        if not isinstance(backend, CacheBackend):
            raise ConfigurationError(
                f"{type(backend).__name__} is not a cache backend: it needs lookup, store, "
                "begin_write, end_write, clear and close (see sqlperf.cache.CacheBackend)"
            )
        if ttl <= 0 or not 0 <= jitter < 1:
            raise ConfigurationError(
                f"QueryCache(ttl={ttl!r}, jitter={jitter!r}): ttl must be > 0 and jitter in [0, 1)"
            )
        if lock_s is not None and (lock_s <= 0 or not hasattr(backend, "try_lock")):
            raise ConfigurationError(
                f"lock_s={lock_s!r} needs a positive number of seconds and a backend with "
                "try_lock/unlock (RedisBackend)"
            )
        self.backend = backend
        self.ttl = ttl
        self.cache_all = cache_all
        self.namespace = namespace
        self.jitter = jitter
        self.cache_empty = cache_empty
        self.lock_s = lock_s
        self._codec = PayloadCodec(signing_key)
        self._breaker = Breaker(breaker_threshold, breaker_cooldown_s)
        self._counters = _Counters()
        self._flight = SingleFlight() if single_flight else None
        self._pending: set[str] = set()  # invalidations not yet delivered
        self._pending_lock = threading.Lock()
        self._attached: dict[int, tuple[Engine, list[tuple[str, Callable[..., Any]]]]] = {}
        # A local backend clears marks at once; a remote one off the commit's path.
        self._marks = None if getattr(backend, "is_local", False) else MarkClearer(self._clear)
        self._attach_lock = threading.Lock()
        self._orm = SessionHook(self)
        self._session_hit_observers: tuple[Callable[[], None], ...] = ()
        self._admission: Admission | None
        if isinstance(skip_unprofitable, Admission):
            self._admission = skip_unprofitable
        else:
            self._admission = Admission() if skip_unprofitable else None
        self._prepared = PreparedStatements() if prepare_misses else None

    def __repr__(self) -> str:
        return (
            f"QueryCache({type(self.backend).__name__}, ttl={self.ttl}, "
            f"cache_all={self.cache_all}, engines={len(self._attached)})"
        )

    # -- engines ------------------------------------------------------------------------

    def attach(self, *engines: Engine) -> QueryCache:
        """Serve cached statements and watch writes on ``engines``. Returns ``self``."""
        with self._attach_lock:
            for engine in engines:
                if not isinstance(engine, Engine):
                    raise ConfigurationError(f"attach() takes Engines, not {type(engine).__name__}")
                if id(engine) in self._attached:
                    continue
                owner = engine.__dict__.get(_OWNER_ATTR)
                if owner is not None and owner() is not None:
                    raise ConfigurationError(
                        f"{engine!r} is already attached to another QueryCache: one cache per "
                        "engine (detach the other first)"
                    )
                engine.__dict__[_OWNER_ATTR] = weakref.ref(self)
                listeners = self._listeners(engine)
                for name, fn in listeners:
                    event.listen(engine, name, fn)
                self._attached[id(engine)] = (engine, listeners)
        return self

    def detach(self, *engines: Engine) -> None:
        """Undo :meth:`attach` (all attached engines if none are given)."""
        with self._attach_lock:
            for key in [id(e) for e in engines] or list(self._attached):
                entry = self._attached.pop(key, None)
                if entry is None:
                    continue
                engine, listeners = entry
                for name, fn in listeners:
                    if event.contains(engine, name, fn):
                        event.remove(engine, name, fn)
                engine.__dict__.pop(_OWNER_ATTR, None)
        if self._marks is not None:
            self._marks.flush()

    def _listeners(self, engine: Engine) -> list[tuple[str, Callable[..., Any]]]:
        database = f"{self.namespace}\0{engine.dialect.name}\0{engine.url.database or ''}\0"

        def before_cursor_execute(  # noqa: PLR0917 - SQLAlchemy's signature
            conn: Connection, cursor: Any, statement: str, params: Any, context: Any, many: bool
        ) -> None:
            info = conn.info
            if _FRESH in info:
                del info[_FRESH]
                if context is not None:
                    context._sqlperf_first = True
            if context is None:
                return
            names: Sequence[str] | None
            if context.isinsert or context.isupdate or context.isdelete:
                table = getattr(context.compiled.statement, "table", None)
                names = (_name(table),) if table is not None and hasattr(table, "name") else None
                if names is None:
                    names = tables_written_by_sql(statement)
            elif context.isddl:
                names = (ALL_TABLES,)
            elif (
                context.compiled is None
                or getattr(context.compiled, "statement", None) is None
                or context.is_text
            ):
                names = tables_written_by_sql(statement)
            else:
                return
            if names:
                self._note_written(conn, names)

        def do_execute(cursor: Any, statement: str, parameters: Any, context: Any) -> bool:
            directive = self._directive(context)
            if directive is None:
                return False
            return self._serve(cursor, statement, parameters, context, directive, database)

        def do_execute_no_params(cursor: Any, statement: str, context: Any) -> bool:
            directive = self._directive(context)
            if directive is None:
                return False
            return self._serve(cursor, statement, None, context, directive, database)

        def on_begin(conn: Connection) -> None:
            self._end_write(conn.info.pop(_COMMITTING, None))
            conn.info[_FRESH] = True

        def on_commit(conn: Connection) -> None:
            written = conn.info.pop(WRITTEN, None)
            if written:
                tables = sorted(written)
                self._begin_write(tables)
                conn.info.setdefault(_COMMITTING, []).extend(tables)

        def on_rollback(conn: Connection) -> None:
            conn.info.pop(WRITTEN, None)

        def on_checkin(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
            self._end_write(record.info.pop(_COMMITTING, None))
            record.info.pop(WRITTEN, None)
            record.info.pop(_FRESH, None)

        return [
            ("before_cursor_execute", before_cursor_execute),
            ("do_execute", do_execute),
            ("do_execute_no_params", do_execute_no_params),
            ("begin", on_begin),
            ("commit", on_commit),
            ("rollback", on_rollback),
            ("checkin", on_checkin),
        ]

    def _note_written(self, conn: Connection, names: Sequence[str]) -> None:
        if _autocommit(conn):
            # No transaction to wait for: the statement is its own commit.
            self._begin_write(names)
            conn.info.setdefault(_COMMITTING, []).extend(names)
            return
        written = conn.info.get(WRITTEN)
        if written is None:
            conn.info[WRITTEN] = written = set()
        written.update(names)

    # -- sessions ---------------------------------------------------------------------------

    def install(self, target: sessionmaker[Any] | type[Session] | Session) -> QueryCache:
        """Use the cache in the sessions of ``target`` (a ``sessionmaker``, a ``Session``
        subclass or one session). Returns ``self``.

        The engines the sessions use are attached (:meth:`attach`): those named in
        the ``sessionmaker`` at once, others when a session first begins on them.
        Hits of plain entity and column selects are answered before SQLAlchemy
        opens a connection (:mod:`sqlperf.cache.orm_fast`). In a
        :class:`~sqlperf.RoutingSession`, cached statements are answered by the
        cache or, on a miss, by the primary: a replica's answer may lag, and a
        cached copy would outlive the lag.
        """
        self._orm.install(target)
        return self

    def answer_locally(
        self, session: Session, stmt: Executable, params: Mapping[str, Any] | None = None
    ) -> Result[Any] | None:
        """What ``session.execute(stmt, params)`` returns, if this process's memory holds it.

        Only a hit of the session's fast path (``docs/cache.md``) whose entry is in
        memory (a :class:`MemoryBackend`, or the memory level of a
        :class:`LayeredBackend`) is answered; anything else returns ``None``
        without any I/O: no database, no Redis, no flush. So an ``async`` endpoint
        can call it on the event loop and send only what it cannot answer to a
        worker thread, sparing a cache hit the thread pool's round trip::

            result = cache.answer_locally(session, stmt, {"id": order_id})
            if result is None:  # run_in_thread: sqlperf.integrations.asgi's
                result = await run_in_thread(session.execute, stmt, {"id": order_id})

        The hit counts as any other (stats, ``Server-Timing``). Other
        ``do_orm_execute`` hooks of the session run first, as for ``execute``.

        Raises:
            ConfigurationError: the cache is not installed on ``session``.
        """
        return self._orm.answer_locally(session, stmt, params)

    def uninstall(self, target: Any = None) -> None:
        """Undo :meth:`install` for ``target`` (every target if ``None``). Engines stay
        attached; :meth:`detach` them too if the cache is being dropped."""
        self._orm.uninstall(target)

    # -- invalidation ---------------------------------------------------------------------

    def note_written(self, conn: Connection, tables: Iterable[str]) -> None:
        """Record that ``tables`` were written on ``conn`` by a path the cache cannot see
        (``COPY``, a raw DB-API cursor): they are invalidated when ``conn``'s transaction
        commits, exactly like the tables of the statements the cache watches."""
        self._note_written(conn, sorted(set(tables)))

    def invalidate(self, tables: Iterable[str]) -> None:
        """Invalidate every entry that read ``tables``, now (for writes sqlperf cannot
        see: another service, ``COPY``, the bulk helpers)."""
        names = sorted({self.namespace + t for t in tables})
        if names:
            self._begin_write(names, prefixed=True)
            self._clear(names)

    def _begin_write(self, tables: Sequence[str], *, prefixed: bool = False) -> None:
        if self.namespace and not prefixed:
            tables = [self.namespace + t for t in tables]
        names = [t[len(self.namespace) :] for t in tables]
        with self._counters.lock:
            self._counters.invalidations.update(names)
        if self._admission is not None:
            self._admission.written(names)
        if not self._deliver_pending():
            with self._pending_lock:
                self._pending.update(tables)
            return
        try:
            self.backend.begin_write(tables)
            self._breaker.succeeded()
        except Exception:
            self._failed("invalidate")
            with self._pending_lock:
                self._pending.update(tables)

    def _end_write(self, tables: list[str] | None) -> None:
        if not tables:
            return
        if self.namespace:
            tables = [self.namespace + t for t in tables]
        if self._marks is None:
            self._clear(tables)
        else:
            self._marks.put(tables)

    def _clear(self, tables: Sequence[str]) -> None:
        try:
            self.backend.end_write(tables)
        except Exception:
            self._failed("end_write")  # the marks expire by themselves

    def _deliver_pending(self) -> bool:
        """Bump the tables whose invalidation failed earlier; False if still failing."""
        if not self._pending:
            return self._breaker.allows()
        if not self._breaker.allows():
            return False
        with self._pending_lock:
            tables = sorted(self._pending)
            self._pending.clear()
        try:
            self.backend.begin_write(tables)
            self.backend.end_write(tables)
            self._breaker.succeeded()
            return True
        except Exception:
            self._failed("retry invalidate")
            with self._pending_lock:
                self._pending.update(tables)
            return False

    def _failed(self, what: str) -> None:
        with self._counters.lock:
            self._counters.errors += 1
        self._breaker.failed()
        logger.warning("cache backend failed during %s; queries go to the database", what)

    # -- reads ------------------------------------------------------------------------------

    def execute(
        self,
        conn: Connection,
        stmt: Executable,
        params: Any = None,
        *,
        ttl: float | None = None,
        tables: Sequence[str] | None = None,
    ) -> Result[Any]:
        """Run a read through the cache on a Core connection of an attached engine.

        The same as ``conn.execute(stmt.options(cached(ttl, tables=tables)), params)``.

        Args:
            conn: a connection of an attached engine.
            stmt: a ``select()``, or a ``text()`` with ``tables=``.
            params: bound parameters, as for ``conn.execute``.
            ttl: seconds this entry lives, instead of the cache's ``ttl``.
            tables: the tables a ``text()`` statement reads (required to cache it).

        Returns:
            A ``Result``, from the cache or from the database.
        """
        if id(conn.engine) not in self._attached:
            raise ConfigurationError(
                "this connection's engine is not attached to the cache: call cache.attach(engine)"
            )
        names = tuple(sorted(set(tables))) if tables else None
        result: Result[Any] = conn.execute(
            stmt, params, execution_options={CACHE_OPTION: CacheDirective(True, ttl, names)}
        )
        return result

    def _directive(self, context: Any) -> CacheDirective | None:
        directive: CacheDirective | None = context.execution_options.get(CACHE_OPTION)
        if directive is None:
            stmt = context.invoked_statement
            options = getattr(stmt, "_with_options", None)
            if options:
                directive = directive_of(options)
            if directive is None:
                if not self.cache_all or context.is_text:
                    return None
                directive = _DEFAULT
        if (
            not directive.enabled
            or context.isinsert
            or context.isupdate
            or context.isdelete
            or context.isddl
            or context.executemany
        ):
            return None
        return directive

    def _serve(  # noqa: PLR0917 - the DB-API step's arguments plus ours
        self,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        directive: CacheDirective,
        database: str,
    ) -> bool:
        """Answer a cached statement from the cache or the database; True: handled."""
        began = time.perf_counter_ns()
        tables = _tables_of(context, directive)
        reason = self._bypass_reason(context, tables)
        compiled = context.compiled
        # The shape: the SQL before expanding IN lists (the ORM fast path's key too).
        shape = compiled.string if compiled is not None else context.statement or statement
        if reason is None and self._admission is not None and not self._admission.admits(shape):
            reason = "unprofitable"
            self._admission.skipped(shape)
        if reason is not None:
            self._count_bypass(reason)
            context._sqlperf_cache_outcome = "bypass:" + reason
            return False
        from_orm: OrmLookup | None = context.execution_options.get(ORM_LOOKUP)
        look: Lookup | None
        if from_orm is not None:
            key, tables, look = from_orm.key, from_orm.tables, from_orm.look
        else:
            tables = self._prefixed(tables)
            # context.statement is the SQL before before_cursor_execute listeners
            # edited it: a recorder's sqlcommenter tags (a request id) must not split keys.
            key = result_key(database, context.statement or statement, parameters)
            look = self._lookup(key, tables)
        if look is None:
            context._sqlperf_cache_outcome = "bypass:breaker_open"
            return False
        done = self._hit_or_fill(cursor, statement, parameters, context, key, tables, look)
        if done is None or self._admission is None:
            return done is not None
        if done == "hit":
            earlier = 0 if from_orm is None else from_orm.spent_ns
            ns = earlier + time.perf_counter_ns() - began
            self._admission.hit(shape, ns, self._unprefixed(tables))
        elif context._sqlperf_cache_outcome == "miss":
            query_ns = context._sqlperf_query_ns
            spent = time.perf_counter_ns() - began - query_ns
            if from_orm is not None:  # the session's hook times the whole execution
                from_orm.outcome, from_orm.cache_ns = "miss", spent
            else:
                names = self._unprefixed(tables)
                self._admission.miss(shape, cache_ns=spent, query_ns=query_ns, tables=names)
        return True

    def _hit_or_fill(  # noqa: PLR0917 - _serve's arguments
        self,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        key: str,
        tables: Sequence[str],
        look: Lookup,
    ) -> str | None:
        """``"hit"``: answered from the cache; ``"filled"``: the query ran (and its rows
        were stored if that is safe); ``None``: not handled, SQLAlchemy runs it."""
        if look.value is not None and self._replay(look.value, cursor, context):
            return "hit"
        if self._flight is None:
            self._fill(cursor, statement, parameters, context, key, tables, look)
            return "filled"
        with self._flight.lead(key) as leader:
            if not leader:
                with self._counters.lock:
                    self._counters.flight_waits += 1
                again = self._lookup(key, tables)
                if again is None:
                    return None
                if again.value is not None and self._replay(again.value, cursor, context):
                    return "hit"
                look = again
            self._fill(cursor, statement, parameters, context, key, tables, look)
            return "filled"

    def _measured_hit(self, shape: str, ns: int, tables: Sequence[str]) -> None:
        if self._admission is not None:
            self._admission.hit(shape, ns, tables)

    def _admits(self, shape: str) -> bool:
        """Whether statements of ``shape`` use the cache now (see ``skip_unprofitable``)."""
        return self._admission is None or self._admission.admits(shape)

    def _bypass_reason(self, context: Any, tables: tuple[str, ...]) -> str | None:
        if not tables:
            return "uncacheable"
        if context.root_connection.info.get(WRITTEN):
            return "dirty_transaction"
        if context._is_server_side:
            return "streaming"
        if not self._deliver_pending():
            return "breaker_open"
        return None

    def _is_attached(self, engine: Engine) -> bool:
        return id(engine) in self._attached

    def _prefixed(self, tables: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(self.namespace + t for t in tables) if self.namespace else tables

    def _unprefixed(self, tables: Sequence[str]) -> Sequence[str]:
        n = len(self.namespace)
        return [t[n:] for t in tables] if n else tables

    def observe_session_hits(self, observer: Callable[[], None]) -> Callable[[], None]:
        """Call ``observer()`` on each hit answered in the session, before any connection.

        Those hits (plain ORM selects, see ``docs/cache.md``) reach no engine
        event, so a :class:`~sqlperf.capture.QueryRecorder` attached to the
        engines cannot see them; :meth:`QueryRecorder.count_cache_hits` uses this.
        Hits answered at the cursor are not reported here (the recorder sees them).

        Returns:
            A function that stops the observation.
        """
        with self._attach_lock:
            self._session_hit_observers = (*self._session_hit_observers, observer)

        def stop() -> None:
            with self._attach_lock:
                self._session_hit_observers = tuple(
                    o for o in self._session_hit_observers if o is not observer
                )

        return stop

    def _count_session_hit(self, size: int) -> None:
        self._count_hit(size)
        for observer in self._session_hit_observers:
            observer()

    def _count_hit(self, size: int) -> None:
        with self._counters.lock:
            self._counters.hits += 1
            self._counters.bytes_served += size

    def _lookup(self, key: str, tables: Sequence[str]) -> Lookup | None:
        try:
            look = self.backend.lookup(key, tables)
        except Exception:
            self._failed("lookup")
            return None
        self._breaker.succeeded()
        return look

    def _replay(self, value: bytes, cursor: Any, context: Any) -> bool:
        try:
            description, rows = self._codec.decode(value)
        except BadPayload as exc:
            self._bad_payload(str(exc))
            return False
        context.cursor = ReplayCursor(description, rows, cursor)
        context._sqlperf_cache_outcome = "hit"
        self._count_hit(len(value))
        return True

    def _fill(  # noqa: PLR0917
        self,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        key: str,
        tables: Sequence[str],
        look: Lookup,
    ) -> None:
        """Run the query on the database and store its rows if that is safe."""
        with self._counters.lock:
            self._counters.misses += 1
        context._sqlperf_cache_outcome = "miss"
        locked = False
        if self.lock_s is not None and not look.in_flight:
            locked = self._cross_process_wait(key, tables, cursor, context)
            if context._sqlperf_cache_outcome == "hit":
                return
        try:
            began = time.perf_counter_ns()
            if parameters is None:
                context.dialect.do_execute_no_params(cursor, statement, context)
            elif not self._execute_prepared(cursor, statement, parameters, context):
                context.dialect.do_execute(cursor, statement, parameters, context)
            description = cursor.description
            rows = list(cursor.fetchall()) if description is not None else []
            context._sqlperf_query_ns = time.perf_counter_ns() - began
            if description is not None:
                context.cursor = ReplayCursor(description, rows, cursor)
            reason = self._unstorable(context, look)
            if reason is not None:
                self._count_bypass(reason)
            elif description is not None and (rows or self.cache_empty):
                self._store(key, tables, look.generations, description, rows, context)
        finally:
            if locked:
                self._unlock(key)

    def _execute_prepared(self, cursor: Any, statement: str, parameters: Any, context: Any) -> bool:
        """Run a miss as a prepared statement if it may be one (psycopg2, autocommit,
        named parameters; see :mod:`sqlperf.cache.prepared`): whether it ran."""
        if (
            self._prepared is None
            or type(parameters) is not dict
            or context.dialect.driver != "psycopg2"
            or not cursor.connection.autocommit
        ):
            return False
        return self._prepared.execute(cursor, statement, parameters, context.root_connection.info)

    def _unstorable(self, context: Any, look: Lookup) -> str | None:
        if look.in_flight:
            return "in_flight"
        if engine_role(context.root_connection.engine) == "replica":
            return "replica_read"
        if context.root_connection.info.get(WRITTEN):
            return "dirty_transaction"
        if not getattr(context, "_sqlperf_first", False) and not _reads_fresh(
            context.root_connection
        ):
            return "snapshot"
        return None

    def _cross_process_wait(self, key: str, tables: Sequence[str], cursor: Any, ctx: Any) -> bool:
        """Take the backend lock for ``key``, or wait (up to ``lock_s``) for its holder's
        entry. True if this process holds the lock."""
        assert self.lock_s is not None
        backend: Any = self.backend
        deadline = time.monotonic() + self.lock_s
        delay = 0.002
        try:
            while True:
                if backend.try_lock(key, self.lock_s):
                    return True
                if time.monotonic() >= deadline:
                    return False
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
                look = self.backend.lookup(key, tables)
                if look.value is not None and self._replay(look.value, cursor, ctx):
                    with self._counters.lock:  # counted as a miss already
                        self._counters.misses -= 1
                    return False
        except Exception:
            self._failed("lock")
            return False

    def _unlock(self, key: str) -> None:
        backend: Any = self.backend
        try:
            backend.unlock(key)
        except Exception:
            self._failed("unlock")  # the lock expires by itself

    def _bad_payload(self, why: str) -> None:
        with self._counters.lock:
            self._counters.bad_payloads += 1
        logger.warning("dropped a cached payload with a bad %s", why)

    def _count_bypass(self, reason: str) -> None:
        with self._counters.lock:
            self._counters.bypasses[reason] += 1

    def _store(  # noqa: PLR0917
        self,
        key: str,
        tables: Sequence[str],
        generations: Sequence[int],
        description: Sequence[Sequence[Any]],
        rows: list[tuple[Any, ...]],
        context: Any,
    ) -> None:
        try:
            payload = self._codec.encode(description, rows)
        except Exception:  # a value that is not plain data (pickling errors vary)
            self._count_bypass("unpicklable")
            return
        directive = context.execution_options.get(CACHE_OPTION)
        ttl = (directive.ttl if directive is not None else None) or self.ttl
        life = ttl * (1 + random.uniform(-self.jitter, self.jitter))
        try:
            stored = self.backend.store(key, tables, generations, payload, life)
            self._breaker.succeeded()
        except Exception:
            self._failed("store")
            return
        if stored:
            with self._counters.lock:
                self._counters.stores += 1
                self._counters.bytes_stored += len(payload)

    # -- state ------------------------------------------------------------------------------

    def stats(self) -> CacheStats:
        """A snapshot of the counters."""
        c = self._counters
        with c.lock:
            return CacheStats(
                hits=c.hits,
                misses=c.misses,
                stores=c.stores,
                bypasses=dict(c.bypasses),
                invalidations=dict(c.invalidations),
                errors=c.errors,
                bad_payloads=c.bad_payloads,
                bytes_stored=c.bytes_stored,
                bytes_served=c.bytes_served,
                flight_waits=c.flight_waits,
                prepared=0 if self._prepared is None else self._prepared.executions,
            )

    def flush(self) -> None:
        """Wait until every in-flight mark of a finished commit has been cleared."""
        if self._marks is not None:
            self._marks.flush()

    def close(self) -> None:
        """Uninstall, detach, and finish clearing marks. The backend stays open (it
        is yours: close it when nothing else uses it)."""
        self.uninstall()
        self.detach()
        if self._marks is not None:
            self._marks.stop()


def _tables_of(context: Any, directive: CacheDirective) -> tuple[str, ...]:
    """The tables a cached statement reads, plus :data:`ALL_TABLES`; ``()`` if it
    cannot be cached."""
    if directive.tables is not None:
        return (ALL_TABLES, *directive.tables)
    if context.compiled is None or context.is_text:
        return ()
    return tables_of_compiled(context.compiled)


def _name(table: Any) -> str:
    schema = getattr(table, "schema", None)
    return f"{schema}.{table.name}" if schema else str(table.name)


def _autocommit(conn: Connection) -> bool:
    return conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT"


def _reads_fresh(conn: Connection) -> bool:
    """Does every statement on ``conn`` read a snapshot taken when it starts?"""
    if conn.dialect.name == "sqlite":
        return True  # pysqlite begins no transaction for reads: each reads afresh
    level = conn.get_execution_options().get("isolation_level") or conn.default_isolation_level
    return str(level).upper() not in _SNAPSHOT_LEVELS
