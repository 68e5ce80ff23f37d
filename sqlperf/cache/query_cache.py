"""``QueryCache``: results cached by statement, invalidated on commit by table.

This module holds the Core side (``cache.execute(conn, stmt)``) and the
invalidation machinery every side shares:

* **what is written**: listeners on each attached engine note the tables every
  ``INSERT``/``UPDATE``/``DELETE`` touches (Core, ORM flushes, bulk helpers),
  and for raw SQL the table parsed from the text, or *every* table when the
  statement cannot be understood;
* **when it becomes visible**: just before the commit of a transaction that
  wrote, the tables' generations are bumped and marked *in flight*; the mark is
  cleared when the connection is next used or returned to the pool, which for
  ``with engine.begin()`` and ``Session.commit()`` happens before they return.
  In between, readers neither use nor store entries of those tables, so after
  ``commit()`` returns no reader gets pre-commit data, and a reader that ran
  its query before the commit cannot store it under the new generation;
* **what may be stored**: a result read inside a transaction that wrote is never
  stored; under ``REPEATABLE READ``/``SERIALIZABLE`` (MySQL's default) only the
  first statement of a transaction stores, because later ones read an older
  snapshot than the generations they would be stored under; every store is
  conditional on the generations read before the query (see the backends).

A backend that fails (Redis down or slow) never fails a query: the cache opens a
circuit breaker and queries go to the database. Invalidations that could not be
delivered are kept and delivered first when the backend answers again; while it
cannot be reached, another process may serve an entry that this process's
writes should have invalidated for at most the entry's TTL.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import pickle
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, event
from sqlalchemy.engine import Result
from sqlalchemy.engine.result import IteratorResult, SimpleResultMetaData
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.elements import ClauseElement

from sqlperf.cache.backends import CacheBackend
from sqlperf.cache.keys import ALL_TABLES, result_key, tables_read, tables_written_by_sql
from sqlperf.exceptions import ConfigurationError

__all__ = ["CacheStats", "QueryCache"]

logger = logging.getLogger("sqlperf.cache")

_WRITTEN = "sqlperf.cache.written"
_COMMITTING = "sqlperf.cache.committing"
_SNAPSHOT_LEVELS = frozenset({"REPEATABLE READ", "SERIALIZABLE"})
_MAC_SIZE = 32

# Only plain data may come out of a cached payload, whoever wrote it.
_SAFE_GLOBALS = {
    ("builtins", name)
    for name in ("tuple", "list", "dict", "set", "frozenset", "bytearray", "complex", "slice")
} | {
    ("datetime", "datetime"),
    ("datetime", "date"),
    ("datetime", "time"),
    ("datetime", "timedelta"),
    ("datetime", "timezone"),
    ("decimal", "Decimal"),
    ("uuid", "UUID"),
    ("copyreg", "_reconstructor"),
    ("builtins", "object"),
}


class _DataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a cached result")
        return super().find_class(module, name)


@dataclass(frozen=True, kw_only=True)
class CacheStats:
    """Counters of a :class:`QueryCache` since it was made.

    Attributes:
        hits / misses / stores: lookups answered, lookups not answered, entries written.
        bypasses: queries not looked up, by reason (``"dirty_transaction"``,
            ``"in_flight"``, ``"uncacheable"``, ``"breaker_open"``, ``"snapshot"``).
        invalidations: generation bumps, per table.
        errors: backend failures (each also counted by the breaker).
        bad_payloads: entries dropped because their signature or content was wrong.
        bytes_stored: total size of the payloads stored.
    """

    hits: int
    misses: int
    stores: int
    bypasses: dict[str, int]
    invalidations: dict[str, int]
    errors: int
    bad_payloads: int
    bytes_stored: int

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
    bypasses: Counter[str] = field(default_factory=Counter)
    invalidations: Counter[str] = field(default_factory=Counter)


class _Breaker:
    """Open after ``threshold`` consecutive failures; retry after ``cooldown_s``."""

    def __init__(self, threshold: int, cooldown_s: float) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.failures = 0
        self.open_until = 0.0

    def allows(self) -> bool:
        return self.failures < self.threshold or time.monotonic() >= self.open_until

    def succeeded(self) -> None:
        self.failures = 0

    def failed(self) -> None:
        self.failures += 1
        if self.failures >= self.threshold:
            self.open_until = time.monotonic() + self.cooldown_s


class QueryCache:
    """A result cache whose entries are invalidated on commit, by table.

    Args:
        backend: where entries and generations live (:class:`~sqlperf.cache.MemoryBackend`,
            :class:`~sqlperf.cache.RedisBackend`, or any :class:`~sqlperf.cache.CacheBackend`).
        ttl: default seconds an entry lives.
        jitter: entries live ``ttl * (1 ± jitter)``, so entries stored together
            do not expire together.
        signing_key: if given, payloads are HMAC-SHA256 signed; an entry whose
            signature fails is dropped and counted, never unpickled.
        cache_empty: also cache results with no rows.
        breaker_threshold / breaker_cooldown_s: after that many consecutive
            backend failures, skip the backend for that long.

    Example::

        >>> from sqlalchemy import text
        >>> from sqlperf import create_optimized_engine
        >>> from sqlperf.cache import MemoryBackend, QueryCache
        >>> engine = create_optimized_engine("sqlite://")
        >>> cache = QueryCache(MemoryBackend()).attach(engine)
        >>> with engine.begin() as conn:
        ...     _ = conn.exec_driver_sql("CREATE TABLE t (v int)")
        ...     _ = conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        >>> from sqlalchemy import table, column, select
        >>> t = table("t", column("v"))
        >>> with engine.connect() as conn:
        ...     cache.execute(conn, select(t.c.v)).all()
        ...     cache.execute(conn, select(t.c.v)).all()
        [(1,)]
        [(1,)]
        >>> cache.stats().hits
        1
    """

    def __init__(
        self,
        backend: CacheBackend,
        *,
        ttl: float = 300.0,
        jitter: float = 0.1,
        signing_key: bytes | str | None = None,
        cache_empty: bool = True,
        breaker_threshold: int = 3,
        breaker_cooldown_s: float = 5.0,
    ) -> None:
        if not isinstance(backend, CacheBackend):
            raise ConfigurationError(
                f"{type(backend).__name__} is not a cache backend: it needs lookup, store, "
                "begin_write, end_write, clear and close (see sqlperf.cache.CacheBackend)"
            )
        if ttl <= 0 or not 0 <= jitter < 1:
            raise ConfigurationError("ttl must be > 0 and jitter in [0, 1)")
        self.backend = backend
        self.ttl = ttl
        self.jitter = jitter
        self.cache_empty = cache_empty
        self._key = signing_key.encode() if isinstance(signing_key, str) else signing_key
        self._breaker = _Breaker(breaker_threshold, breaker_cooldown_s)
        self._counters = _Counters()
        self._sql_cache: dict[Any, str] = {}
        self._pending: set[str] = set()  # invalidations not yet delivered
        self._pending_lock = threading.Lock()
        self._attached: dict[int, tuple[Engine, list[tuple[str, Callable[..., Any]]]]] = {}

    # -- engines ------------------------------------------------------------------------

    def attach(self, *engines: Engine) -> QueryCache:
        """Watch ``engines`` for writes, so their commits invalidate. Returns ``self``."""
        for engine in engines:
            if id(engine) in self._attached:
                continue
            listeners = self._listeners()
            for name, fn in listeners:
                event.listen(engine, name, fn)
            self._attached[id(engine)] = (engine, listeners)
        return self

    def detach(self, *engines: Engine) -> None:
        """Undo :meth:`attach` (all attached engines if none are given)."""
        for key in [id(e) for e in engines] or list(self._attached):
            entry = self._attached.pop(key, None)
            if entry is None:
                continue
            engine, listeners = entry
            for name, fn in listeners:
                if event.contains(engine, name, fn):
                    event.remove(engine, name, fn)

    def _listeners(self) -> list[tuple[str, Callable[..., Any]]]:
        def before_cursor_execute(  # noqa: PLR0917 - SQLAlchemy's signature
            conn: Connection, cursor: Any, statement: str, params: Any, context: Any, many: bool
        ) -> None:
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
                or (context.is_text)
            ):
                names = tables_written_by_sql(statement)
            else:
                return
            if names:
                self._note_written(conn, names)

        def on_commit(conn: Connection) -> None:
            written = conn.info.pop(_WRITTEN, None)
            if written:
                tables = sorted(written)
                self._begin_write(tables)
                conn.info.setdefault(_COMMITTING, []).extend(tables)

        def on_rollback(conn: Connection) -> None:
            conn.info.pop(_WRITTEN, None)

        def on_begin(conn: Connection) -> None:
            self._end_write(conn.info.pop(_COMMITTING, None))

        def on_checkin(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
            self._end_write(record.info.pop(_COMMITTING, None))
            record.info.pop(_WRITTEN, None)

        return [
            ("before_cursor_execute", before_cursor_execute),
            ("commit", on_commit),
            ("rollback", on_rollback),
            ("begin", on_begin),
            ("checkin", on_checkin),
        ]

    def _note_written(self, conn: Connection, names: Sequence[str]) -> None:
        if _autocommit(conn):
            # No transaction to wait for: the statement is its own commit.
            self._begin_write(names)
            conn.info.setdefault(_COMMITTING, []).extend(names)
            return
        written = conn.info.get(_WRITTEN)
        if written is None:
            conn.info[_WRITTEN] = written = set()
        written.update(names)

    # -- invalidation ---------------------------------------------------------------------

    def invalidate(self, tables: Iterable[str]) -> None:
        """Invalidate every entry that read ``tables`` (for writes sqlperf cannot see,
        e.g. another service, or the bulk helpers)."""
        names = sorted(set(tables))
        if names:
            self._begin_write(names)
            self._end_write(names)

    def _begin_write(self, tables: Sequence[str]) -> None:
        with self._counters.lock:
            self._counters.invalidations.update(tables)
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

    def _end_write(self, tables: Sequence[str] | None) -> None:
        if not tables:
            return
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
        """Run a read through the cache on a Core connection.

        Args:
            conn: a connection of an attached engine.
            stmt: a ``select()`` (or ``text()`` with ``tables=``).
            params: bound parameters, as for ``conn.execute``.
            ttl: seconds this entry lives, instead of the cache's ``ttl``.
            tables: the tables a ``text()`` statement reads (required to cache it).

        Returns:
            A ``Result``, from the cache or from the database.
        """
        read = (
            (ALL_TABLES, *sorted(set(tables)))
            if tables
            else tables_read(stmt)
            if isinstance(stmt, ClauseElement)
            else None
        )
        reason = self._bypass_reason(conn, read)
        if reason is not None:
            self._count_bypass(reason)
            return _run(conn, stmt, params)
        assert read is not None
        assert isinstance(stmt, ClauseElement)  # read is None for anything else
        key = result_key(stmt, params, conn.dialect, self._sql_cache)
        try:
            look = self.backend.lookup(key, read)
            self._breaker.succeeded()
        except Exception:
            self._failed("lookup")
            return _run(conn, stmt, params)
        if look.value is not None:
            decoded = self._decode(look.value)
            if decoded is not None:
                with self._counters.lock:
                    self._counters.hits += 1
                return _result(*decoded)
        with self._counters.lock:
            self._counters.misses += 1
        # Decided before the query: a statement that opens the transaction reads
        # a snapshot taken after the generations were read.
        storable = not look.in_flight and _snapshot_is_fresh(conn)
        result = _run(conn, stmt, params)
        columns = tuple(str(k) for k in result.keys())  # noqa: SIM118 - plain str, not quoted_name
        rows = [tuple(r) for r in result]
        if not storable:
            self._count_bypass("in_flight" if look.in_flight else "snapshot")
        elif (rows or self.cache_empty) and not conn.info.get(_WRITTEN):
            self._store(key, read, look.generations, columns=columns, rows=rows, ttl=ttl)
        return _result(columns, rows)

    def _bypass_reason(self, conn: Connection, read: Sequence[str] | None) -> str | None:
        if read is None:
            return "uncacheable"
        if conn.info.get(_WRITTEN):
            return "dirty_transaction"
        if not self._deliver_pending():
            return "breaker_open"
        return None

    def _count_bypass(self, reason: str) -> None:
        with self._counters.lock:
            self._counters.bypasses[reason] += 1

    def _store(
        self,
        key: str,
        tables: Sequence[str],
        generations: Sequence[int],
        *,
        columns: tuple[str, ...],
        rows: list[tuple[Any, ...]],
        ttl: float | None,
    ) -> None:
        try:
            payload = self._encode(columns, rows)
        except (pickle.PicklingError, TypeError):
            self._count_bypass("unpicklable")
            return
        life = (ttl or self.ttl) * (1 + random.uniform(-self.jitter, self.jitter))
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

    def _encode(self, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> bytes:
        payload = pickle.dumps((columns, rows), protocol=pickle.HIGHEST_PROTOCOL)
        if self._key is None:
            return payload
        return hmac.new(self._key, payload, hashlib.sha256).digest() + payload

    def _decode(self, value: bytes) -> tuple[tuple[str, ...], list[tuple[Any, ...]]] | None:
        payload = value
        if self._key is not None:
            mac, payload = value[:_MAC_SIZE], value[_MAC_SIZE:]
            expected = hmac.new(self._key, payload, hashlib.sha256).digest()
            if not hmac.compare_digest(mac, expected):
                self._bad_payload("signature")
                return None
        try:
            columns, rows = _DataUnpickler(io.BytesIO(payload)).load()
        except Exception:
            self._bad_payload("content")
            return None
        return columns, rows

    def _bad_payload(self, why: str) -> None:
        with self._counters.lock:
            self._counters.bad_payloads += 1
        logger.warning("dropped a cached payload with a bad %s", why)

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
            )


def _run(conn: Connection, stmt: Executable, params: Any) -> Result[Any]:
    result: Result[Any] = conn.execute(stmt, params)
    return result


def _name(table: Any) -> str:
    schema = getattr(table, "schema", None)
    return f"{schema}.{table.name}" if schema else str(table.name)


def _autocommit(conn: Connection) -> bool:
    return conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT"


def _snapshot_is_fresh(conn: Connection) -> bool:
    """Will the next statement read a snapshot taken after this moment?"""
    if conn.dialect.name == "sqlite":
        return True  # pysqlite begins no transaction for reads: each reads afresh
    level = conn.get_execution_options().get("isolation_level") or conn.default_isolation_level
    return str(level).upper() not in _SNAPSHOT_LEVELS or not conn.in_transaction()


def _result(columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> Result[Any]:
    return IteratorResult(SimpleResultMetaData(columns), iter(rows))
