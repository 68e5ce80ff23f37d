"""QueryRecorder: every statement timed and aggregated, slow and failed ones recorded.

The recorder listens to ``before_cursor_execute``, ``after_cursor_execute`` and
``handle_error`` of the engines it is attached to (never of the ``Engine``
class), so it sees each DB-API call: ``executemany``, every insertmanyvalues
batch, and the result cache's hits (which are answered at the DB-API step).

Per statement, on the application's thread, it does only this: read the clock
twice, look the SQL string up in a fingerprint cache (a fingerprint is computed
once per distinct string), append the duration to that fingerprint's pending
array, and compare it with ``slow_ms``. No lock is taken: ``array.append`` is
atomic under the GIL. Every ``_FOLD`` durations, and before statistics are read,
the pending ones are folded into the aggregates (calls, total, max, histogram)
under a lock in one loop. Updating the aggregates statement by statement under
the lock, as an earlier version did, cost about 1.5 us per statement inside
``bench_capture``'s query loop, three times what the same code cost in a
micro-benchmark. A statement over the threshold, or one that failed, is queued
as a pending record; the writer thread formats its parameters, takes its plan
and hands it to the sinks (see ``writer.py``).

Inside :meth:`QueryRecorder.scope` (one per web request, say) it also counts each
(fingerprint, call site) pair, which is how an N+1 loop shows itself: the same
query shape run again and again from one line of the application. When the scope
closes, every pair seen ``n_plus_one`` times or more is reported once.
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import threading
import time
import uuid
from array import array
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import Connection, Engine, event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.engine.interfaces import CacheStats as CompiledCacheStats

from sqlperf.cache.query_cache import _OUTCOME_ATTR, QueryCache, cache_outcome
from sqlperf.capture.callsite import CallSiteFinder
from sqlperf.capture.explain import explain_plan
from sqlperf.capture.fingerprint import Fingerprint, FingerprintCache
from sqlperf.capture.histogram import (
    LAST_BUCKET as _LAST_BUCKET,
)
from sqlperf.capture.histogram import (
    MAX_BITS as _MAX_BITS,
)
from sqlperf.capture.histogram import (
    SMALL_BITS as _SMALL_BITS,
)
from sqlperf.capture.histogram import (
    SUB_BITS as _SUB_BITS,
)
from sqlperf.capture.histogram import (
    LatencyHistogram,
)
from sqlperf.capture.records import QueryRecord, StatsRow
from sqlperf.capture.sinks import MemorySink, Sink
from sqlperf.capture.writer import Writer
from sqlperf.engine import safe_url
from sqlperf.exceptions import ConfigurationError
from sqlperf.pool import CHECKOUT_WAIT_KEY
from sqlperf.routing import engine_role

if TYPE_CHECKING:
    import pandas as pd
    from typing_extensions import Self

__all__ = ["CAPTURE_OPTION", "CaptureStats", "ParamsMode", "QueryRecorder", "Scope"]

#: Execution option: ``conn.execution_options(sqlperf_capture=False)`` hides a
#: connection's statements from every recorder (the database sink uses it).
CAPTURE_OPTION = "sqlperf_capture"

ParamsMode = Literal["redact", "keep", "drop"]

_UTC = timezone.utc
_T0 = "_sqlperf_t0"
_SQL = "_sqlperf_sql"
_MAX_PARAM_SETS = 10
_MAX_VALUE_CHARS = 500
_OVERFLOW_ID = "~overflow"
_HOT_ENTRIES = 20_000
#: Pending durations (and row counts) per aggregate before they are folded in.
_FOLD = 256
_SUB_MASK = (1 << _SUB_BITS) - 1
_TAG_VALUE = re.compile(r"[^A-Za-z0-9._:-]")
_COMPILED_CACHE = {
    CompiledCacheStats.CACHE_HIT: "hit",
    CompiledCacheStats.CACHE_MISS: "miss",
    CompiledCacheStats.CACHING_DISABLED: "disabled",
    CompiledCacheStats.NO_CACHE_KEY: "no_key",
    CompiledCacheStats.NO_DIALECT_SUPPORT: "unsupported",
}


# -- aggregates ---------------------------------------------------------------------------


class _Agg:
    """The running aggregates of one fingerprint on one engine.

    ``pending`` and ``pending_rows`` are appended to by any thread without a lock;
    every other field is guarded by the recorder's lock and brought up to date by
    :func:`_fold`.
    """

    __slots__ = (
        "calls",
        "counts",
        "engine",
        "errors",
        "fp",
        "hits",
        "max_ns",
        "misses",
        "n_plus_one",
        "pending",
        "pending_rows",
        "rows",
        "sql",
        "total_ns",
        "window_max_ns",
    )

    def __init__(self, engine: _EngineInfo, fp: Fingerprint, sql: str) -> None:
        self.engine = engine
        self.fp = fp
        self.sql = sql
        self.calls = self.errors = self.rows = self.n_plus_one = self.hits = self.misses = 0
        self.total_ns = self.max_ns = self.window_max_ns = 0
        self.counts: dict[int, int] = {}  # LatencyHistogram buckets
        self.pending = array("q")  # durations in ns, not yet folded in
        self.pending_rows = array("q")  # positive row counts, not yet folded in


def _fold(agg: _Agg) -> None:
    """Fold ``agg``'s pending durations and row counts in (the caller holds the lock)."""
    pending = agg.pending
    n = len(pending)
    if n:
        # Other threads may append while this runs: only the first n are taken.
        values = pending[:n]
        del pending[:n]
        agg.calls += n
        agg.total_ns += sum(values)
        top = max(values)
        agg.max_ns = max(agg.max_ns, top)
        agg.window_max_ns = max(agg.window_max_ns, top)
        counts = agg.counts
        get = counts.get
        for ns in values:
            # histogram.bucket_of, inlined: this runs once per statement.
            bits = ns.bit_length()
            if bits <= _SMALL_BITS:
                index = ns
            elif bits <= _MAX_BITS:
                index = (bits << _SUB_BITS) + ((ns >> (bits - _SMALL_BITS)) & _SUB_MASK)
            else:
                index = _LAST_BUCKET
            counts[index] = get(index, 0) + 1
    rows = agg.pending_rows
    n = len(rows)
    if n:
        agg.rows += sum(rows[:n])
        del rows[:n]


#: What the hot path keeps per SQL string: the fingerprint, its aggregates and
#: their two pending arrays (looked up once, not per statement).
_Entry = tuple[Fingerprint, _Agg, "array[int]", "array[int]"]


@dataclass(frozen=True, slots=True)
class _Snapshot:
    calls: int
    errors: int
    rows: int
    n_plus_one: int
    hits: int
    misses: int
    total_ns: int
    counts: dict[int, int]


def _snapshot(agg: _Agg) -> _Snapshot:
    return _Snapshot(
        agg.calls,
        agg.errors,
        agg.rows,
        agg.n_plus_one,
        agg.hits,
        agg.misses,
        agg.total_ns,
        dict(agg.counts),
    )


_EMPTY = _Snapshot(0, 0, 0, 0, 0, 0, 0, {})


@dataclass(eq=False)
class _EngineInfo:
    """What the recorder keeps per attached engine."""

    engine: Engine
    name: str
    url: str
    dialect: str
    fingerprints: FingerprintCache
    aggs: dict[str, _Agg] = field(default_factory=dict)
    # SQL string -> (fingerprint, aggregates): one lookup per statement on the hot path.
    hot: dict[str, _Entry] = field(default_factory=dict)
    listeners: list[tuple[str, Callable[..., Any]]] = field(default_factory=list)


def _engine_name(engine: Engine) -> str:
    if engine.logging_name:
        return str(engine.logging_name)
    url = engine.url
    where = f"{url.host or ''}:{url.port}" if url.port else (url.host or "")
    database = os.path.basename(url.database or "") or ":memory:"
    return (
        f"{url.get_backend_name()}@{where}/{database}"
        if where
        else f"{url.get_backend_name()}/{database}"
    )


# -- pending records ----------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class _Pending:
    """A record as the query's thread leaves it; the writer thread finishes it."""

    wall: float
    kind: str
    ns: int
    fp: Fingerprint
    sql: str
    parameters: Any
    executemany: bool
    rowcount: int | None
    info: _EngineInfo
    route: str | None
    pool_wait_s: float | None
    compiled_cache: str | None
    result_cache: str | None
    call_site: str | None
    thread: str
    scope: Scope | None
    count: int = 1
    error_class: str | None = None
    error_message: str | None = None
    explain: bool = False


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _shape(params: Any, values: bool) -> Any:
    convert: Callable[[Any], Any] = _plain if values else _type_name
    if isinstance(params, Mapping):
        return {str(k): convert(v) for k, v in params.items()}
    if isinstance(params, (list, tuple)):
        return [convert(v) for v in params]
    return convert(params)


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        text = raw[: _MAX_VALUE_CHARS // 2].hex()
        return f"<{len(raw)} bytes: {text}{'...' if len(raw) > _MAX_VALUE_CHARS // 2 else ''}>"
    if isinstance(value, datetime):
        return value.isoformat()
    text = str(value) if isinstance(value, (str, Decimal, uuid.UUID)) else repr(value)
    return text if len(text) <= _MAX_VALUE_CHARS else text[:_MAX_VALUE_CHARS] + "..."


def format_params(parameters: Any, mode: ParamsMode, *, executemany: bool) -> str | None:
    """Render DB-API parameters as JSON for a record.

    ``"redact"`` keeps the names and the types of the values, never the values;
    ``"keep"`` keeps the values (long ones cut at 500 characters); ``"drop"`` gives
    ``None``. ``executemany`` parameter lists keep their first 10 sets and a count.
    """
    if mode == "drop" or parameters is None:
        return None
    values = mode == "keep"
    if executemany and isinstance(parameters, (list, tuple)):
        shown: Any = {
            "sets": len(parameters),
            "first": [_shape(p, values) for p in parameters[:_MAX_PARAM_SETS]],
        }
    else:
        shown = _shape(parameters, values)
    return json.dumps(shown, ensure_ascii=False, default=repr)


# -- scopes -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Repeat:
    """One (fingerprint, call site) pair of a scope: its runs so far.

    The record of a suspect is built at the pair's second run, not its first: most
    statements run once in a scope, and building a record costs more than the rest
    of the scope's bookkeeping together. ``wall`` keeps the start of the first run.
    """

    count: int
    ns: int
    wall: float
    first: _Pending | None = None


@dataclass(eq=False, slots=True)
class Scope:
    """One unit of work (a web request, a job) whose statements are counted together.

    Attributes:
        request_id: the id given to :meth:`QueryRecorder.scope`, or a generated one.
        tags: the other keyword arguments given to ``scope()``.
        queries: statements executed inside the scope (result-cache hits included).
        errors: of those, how many failed.
        cache_hits: statements answered by the result cache at the DB-API level.
        db_ms: the time spent in those statements, in milliseconds.
        suspects: the N+1 records reported when the scope closed.
    """

    request_id: str
    tags: dict[str, str]
    queries: int = 0
    errors: int = 0
    cache_hits: int = 0
    db_ns: int = 0
    suspects: list[QueryRecord] = field(default_factory=list)
    _repeats: dict[tuple[str, str | None], _Repeat] = field(default_factory=dict)

    @property
    def db_ms(self) -> float:
        """Milliseconds spent in the database by the scope's statements."""
        return self.db_ns / 1e6


# -- statistics -----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class CaptureStats:
    """The recorder's aggregates since it was made, and its own counters.

    Attributes:
        fingerprints: one :class:`StatsRow` per fingerprint and engine, by total time.
        statements: statements measured (with ``sample < 1``: sampled into the aggregates).
        recorded: records handed to the sinks.
        dropped: records dropped because the writer's queue was full.
        queued: records waiting for the writer thread.
        sink_errors: failed sink calls (each batch lost only for that sink).
    """

    fingerprints: list[StatsRow]
    statements: int
    recorded: int
    dropped: int
    queued: int
    sink_errors: int

    def to_dataframe(self) -> pd.DataFrame:
        """The fingerprints as a DataFrame with the statistics schema (``STATS_COLUMNS``)."""
        from sqlperf.capture.log import stats_frame

        return stats_frame(self.fingerprints)

    def top(self, n: int = 10) -> list[StatsRow]:
        """The ``n`` fingerprints with the largest total time."""
        return self.fingerprints[:n]


# -- the recorder ---------------------------------------------------------------------------


class QueryRecorder:
    """Time every statement of the engines it is attached to; record the slow and failed ones.

    Args:
        slow_ms: statements that take at least this long become records (0 records all).
        sample: the fraction of statements that feed the aggregates, chosen at random.
            Slow and failed statements are recorded whatever the sample.
        params: parameters in records: ``"redact"`` (names and types only, the
            default), ``"keep"`` (values) or ``"drop"`` (nothing).
        explain: add the query plan to records of slow SELECTs (plain ``EXPLAIN``,
            taken afterwards on another connection by the writer thread).
        sinks: where records and statistics go; default one :class:`MemorySink`.
        stack: find the application's call site of records and N+1 suspects.
        n_plus_one: inside a :meth:`scope`, report a fingerprint run this many
            times or more from one call site; ``None`` turns detection off.
        comments: append sqlcommenter tags (``sqlperf_fp``, ``route``,
            ``request_id``) to each statement, so the server's own views and slow
            log can be joined with the records.
        queue_size: records waiting for the writer before new ones are dropped.
        stats_interval_s: how often statistics rows go to the sinks; ``None``:
            only on :meth:`flush` and :meth:`close`.
        max_fingerprints: distinct fingerprints kept per engine; later ones are
            counted together under the id ``"~overflow"``.

    Raises:
        ConfigurationError: for an argument out of range.

    Example::

        >>> from sqlalchemy import create_engine, text
        >>> engine = create_engine("sqlite://")
        >>> recorder = QueryRecorder(slow_ms=100).attach(engine)
        >>> with engine.connect() as conn:
        ...     _ = conn.execute(text("SELECT 1")).all()
        >>> recorder.stats().fingerprints[0].fingerprint
        'select ?'
        >>> recorder.close()
    """

    def __init__(
        self,
        *,
        slow_ms: float = 100.0,
        sample: float = 1.0,
        params: ParamsMode = "redact",
        explain: bool = False,
        sinks: Sequence[Sink] | None = None,
        stack: bool = True,
        n_plus_one: int | None = 5,
        comments: bool = False,
        queue_size: int = 10_000,
        stats_interval_s: float | None = 60.0,
        max_fingerprints: int = 5_000,
    ) -> None:
        _check(slow_ms >= 0, f"slow_ms must be >= 0, not {slow_ms!r}")
        _check(0.0 < sample <= 1.0, f"sample must be in (0, 1], not {sample!r}")
        _check(
            params in ("redact", "keep", "drop"),
            f"params must be 'redact', 'keep' or 'drop', not {params!r}",
        )
        _check(
            n_plus_one is None or n_plus_one >= 2,
            f"n_plus_one must be >= 2 or None, not {n_plus_one!r}",
        )
        _check(queue_size >= 1, f"queue_size must be >= 1, not {queue_size!r}")
        _check(
            stats_interval_s is None or stats_interval_s > 0,
            f"stats_interval_s must be > 0 or None, not {stats_interval_s!r}",
        )
        _check(max_fingerprints >= 1, f"max_fingerprints must be >= 1, not {max_fingerprints!r}")
        self.slow_ms = slow_ms
        self.sample = sample
        self.params: ParamsMode = params
        self.explain = explain
        self.stack = stack
        self.n_plus_one = n_plus_one
        self.comments = comments
        self.max_fingerprints = max_fingerprints
        self.sinks: list[Sink] = list(sinks) if sinks is not None else [MemorySink()]
        for sink in self.sinks:
            _check(
                isinstance(sink, Sink),
                f"{sink!r} is not a sink: it needs write(items), flush() and close()",
            )
        self._slow_ns = int(slow_ms * 1e6)
        self._lock = threading.Lock()
        self._engines: dict[Engine, _EngineInfo] = {}
        self._statements = 0
        self._scope: ContextVar[Scope | None] = ContextVar("sqlperf_scope", default=None)
        self._sites = CallSiteFinder()
        self._random = random.Random()
        self._host = socket.gethostname()
        self._pid = os.getpid()
        self._started = datetime.now(_UTC)
        self._window_start = self._started
        self._previous: dict[int, _Snapshot] = {}
        self._writer = Writer(
            self.sinks,
            build=self._build,
            window=self._window_rows,
            capacity=queue_size,
            stats_interval_s=stats_interval_s,
        )
        self._closed = False

    def __repr__(self) -> str:
        engines = ", ".join(info.name for info in self._engines.values() if info.listeners)
        return (
            f"QueryRecorder(slow_ms={self.slow_ms}, sample={self.sample}, params={self.params!r}, "
            f"engines=[{engines}])"
        )

    # -- attaching ------------------------------------------------------------------------

    def attach(self, *engines: Any) -> Self:
        """Listen to ``engines`` (``Engine`` or ``AsyncEngine``); returns the recorder.

        Attaching an engine twice changes nothing.

        Raises:
            ConfigurationError: if the recorder is closed or an argument is not an engine.
        """
        if self._closed:
            raise ConfigurationError("this QueryRecorder is closed: make a new one")
        for given in engines:
            engine = getattr(given, "sync_engine", given)
            if not isinstance(engine, Engine):
                raise ConfigurationError(
                    f"QueryRecorder.attach() takes SQLAlchemy engines, not {given!r}"
                )
            info = self._engines.get(engine)
            if info is not None and info.listeners:
                continue
            info = info or _EngineInfo(
                engine=engine,
                name=_engine_name(engine),
                url=safe_url(engine.url),
                dialect=engine.dialect.name,
                fingerprints=FingerprintCache(mysql=engine.dialect.name in ("mysql", "mariadb")),
            )
            info.listeners = self._listeners(info)
            for name, fn in info.listeners:
                event.listen(engine, name, fn, retval=name == "before_cursor_execute")
            self._engines[engine] = info
        self._writer.start()
        return self

    def detach(self, *engines: Any) -> None:
        """Stop listening to ``engines`` (all of them when none is given).

        Aggregates gathered so far are kept; records already queued are still written.
        """
        targets = (
            [getattr(e, "sync_engine", e) for e in engines] if engines else list(self._engines)
        )
        for engine in targets:
            info = self._engines.get(engine)
            if info is None:
                continue
            for name, fn in info.listeners:
                if event.contains(engine, name, fn):
                    event.remove(engine, name, fn)
            info.listeners = []

    @property
    def engines(self) -> list[Engine]:
        """The engines the recorder listens to."""
        return [info.engine for info in self._engines.values() if info.listeners]

    # -- scopes ---------------------------------------------------------------------------

    def scope(self, request_id: str | None = None, **tags: str) -> AbstractContextManager[Scope]:
        """Group the statements of one unit of work; report its N+1 suspects at the end.

        Args:
            request_id: the id records carry in ``request_id`` (for example the
                ``X-Request-ID`` header); a random one if not given.
            **tags: more labels, kept as JSON in the records' ``tags``.

        Returns:
            A context manager whose value is the :class:`Scope`, whose counters grow
            as its statements run.

        Example::

            with recorder.scope(request_id="r-42", endpoint="/orders") as scope:
                handle_request()
            print(scope.queries, scope.db_ms, scope.suspects)
        """
        labels = {k: str(v) for k, v in tags.items()} if tags else {}
        return _ScopeContext(self, Scope(request_id or os.urandom(8).hex(), labels))

    def count_cache_hits(self, cache: QueryCache) -> Callable[[], None]:
        """Count in the current scope the hits ``cache`` answers before any connection.

        A result-cache hit on a plain ORM select is answered in the session and
        reaches no engine event; with this, it still counts in ``scope.cache_hits``
        (and so in the integrations' ``Server-Timing``). Hits answered at the
        cursor are counted without it.

        Returns:
            A function that stops the counting.

        Example::

            recorder.count_cache_hits(cache)
            with recorder.scope() as scope:
                session.get(Order, 1)  # a hit
            assert scope.cache_hits == 1
        """

        def hit() -> None:
            scope = self._scope.get()
            if scope is not None:
                scope.cache_hits += 1

        return cache.observe_session_hits(hit)

    def current_scope(self) -> Scope | None:
        """The scope of the calling context, if any."""
        return self._scope.get()

    # -- the listeners ----------------------------------------------------------------------

    def _listeners(  # noqa: PLR0915 - the hot path, kept in one place on purpose
        self, info: _EngineInfo
    ) -> list[tuple[str, Callable[..., Any]]]:
        fp_cache = info.fingerprints.get
        hot = info.hot
        lock = self._lock
        perf = time.perf_counter_ns
        slow_ns = self._slow_ns
        sample = self.sample
        rand = self._random.random
        scope_var = self._scope

        def resolve(statement: str) -> _Entry:
            fp = fp_cache(statement)
            agg = self._agg(info, fp, statement)
            entry = (fp, agg, agg.pending, agg.pending_rows)
            if len(hot) >= _HOT_ENTRIES:
                hot.clear()
            hot[statement] = entry
            return entry

        def count_outcome(agg: _Agg, outcome: str) -> None:
            if outcome == "hit":
                with lock:
                    agg.hits += 1
            elif outcome == "miss":
                with lock:
                    agg.misses += 1

        def fold(agg: _Agg) -> None:
            with lock:
                _fold(agg)

        put = self._writer.put
        pending = self._pending
        find_site = self._sites.find
        comments = self.comments

        def before(  # noqa: PLR0917 - SQLAlchemy's signature
            conn: Connection,
            cursor: Any,
            statement: str,
            parameters: Any,
            context: Any,
            executemany: bool,
        ) -> tuple[str, Any]:
            # Registered with retval=True and returning the arguments itself: without
            # it SQLAlchemy wraps the listener in one more Python call per statement.
            if context.execution_options.get(CAPTURE_OPTION, True):
                context._sqlperf_t0 = perf()
            return statement, parameters

        def before_commented(  # noqa: PLR0917 - SQLAlchemy's signature
            conn: Connection,
            cursor: Any,
            statement: str,
            parameters: Any,
            context: Any,
            executemany: bool,
        ) -> tuple[str, Any]:
            if not context.execution_options.get(CAPTURE_OPTION, True):
                return statement, parameters
            context._sqlperf_sql = statement
            tagged = statement + self._comment(conn, fp_cache(statement))
            context._sqlperf_t0 = perf()
            return tagged, parameters

        def after(  # noqa: PLR0917 - SQLAlchemy's signature
            conn: Connection,
            cursor: Any,
            statement: str,
            parameters: Any,
            context: Any,
            executemany: bool,
        ) -> None:
            t0 = getattr(context, _T0, None)
            if t0 is None:
                return
            ns = perf() - t0
            context._sqlperf_t0 = None
            if comments:
                statement = getattr(context, _SQL, statement)
            entry = hot.get(statement) or resolve(statement)
            scope = scope_var.get()
            outcome = getattr(context, _OUTCOME_ATTR, None)
            if sample == 1.0 or rand() < sample:
                durations = entry[2]
                durations.append(ns)
                rowcount = cursor.rowcount
                if rowcount is not None and rowcount > 0:
                    entry[3].append(rowcount)
                if outcome is not None:
                    count_outcome(entry[1], outcome)
                if len(durations) >= _FOLD:
                    fold(entry[1])
            if ns >= slow_ns:
                args = (info, conn, cursor, statement, parameters, context, executemany)
                put(pending("slow", *args, entry[0], ns, scope))
            if scope is None:
                return
            # The scope's bookkeeping, here rather than in a method: it runs per statement.
            scope.queries += 1
            scope.db_ns += ns
            if outcome == "hit":
                scope.cache_hits += 1
            if self.n_plus_one is None:
                return
            # find_site(3) starts above this listener and SQLAlchemy's dispatcher that
            # called it: both are library frames.
            site = find_site(3) if self.stack else None
            key = (entry[0].id, site)
            repeat = scope._repeats.get(key)
            if repeat is None:
                scope._repeats[key] = _Repeat(1, ns, time.time() - ns / 1e9)
                return
            repeat.count += 1
            repeat.ns += ns
            if repeat.first is None:
                args = (info, conn, cursor, statement, parameters, context, executemany)
                first = pending("n_plus_one", *args, entry[0], ns, scope, call_site=site)
                first.wall = repeat.wall
                repeat.first = first

        def on_error(ctx: ExceptionContext) -> None:
            context: Any = ctx.execution_context
            statement = ctx.statement
            if context is None or statement is None:
                return
            options = context.execution_options
            if options.get("skip_user_error_events") or not options.get(CAPTURE_OPTION, True):
                # An error SQLAlchemy expects and handles itself, e.g. MySQL's has_table()
                # running DESCRIBE on a missing table; the option is not always checked
                # before handle_error listeners run.
                return
            t0 = getattr(context, _T0, None)
            ns = perf() - t0 if t0 is not None else 0
            context._sqlperf_t0 = None
            if comments:
                statement = getattr(context, _SQL, statement)
            fp, agg, durations, _ = hot.get(statement) or resolve(statement)
            with lock:
                agg.errors += 1
            if t0 is not None:  # it ran (and failed); an error after it ran is not a call
                durations.append(ns)
            scope = scope_var.get()
            if scope is not None:
                scope.errors += 1
            err = ctx.original_exception
            pending = self._pending(
                "error",
                info,
                ctx.connection,
                None,
                statement,
                ctx.parameters,
                context,
                bool(getattr(context, "executemany", False)),
                fp,
                ns,
                scope,
            )
            pending.error_class = f"{type(err).__module__}.{type(err).__qualname__}"
            pending.error_message = str(err).strip()[:2000]
            self._writer.put(pending)

        return [
            ("before_cursor_execute", before_commented if comments else before),
            ("after_cursor_execute", after),
            ("handle_error", on_error),
        ]

    def _agg(self, info: _EngineInfo, fp: Fingerprint, statement: str) -> _Agg:
        with self._lock:
            agg = info.aggs.get(fp.id)
            if agg is not None:
                return agg
            if len(info.aggs) >= self.max_fingerprints:
                overflow = info.aggs.get(_OVERFLOW_ID)
                if overflow is None:
                    overflow = _Agg(
                        info, Fingerprint(_OVERFLOW_ID, "(other fingerprints)", False), ""
                    )
                    info.aggs[_OVERFLOW_ID] = overflow
                return overflow
            agg = info.aggs[fp.id] = _Agg(info, fp, statement)
            return agg

    def _comment(self, conn: Connection, fp: Fingerprint) -> str:
        tags = []
        scope = self._scope.get()
        if scope is not None:
            tags.append(f"request_id='{_TAG_VALUE.sub('', scope.request_id)}'")
        role = engine_role(conn.engine)
        if role is not None:
            tags.append(f"route='{role}'")
        tags.append(f"sqlperf_fp='{fp.id}'")
        return " /*" + ",".join(tags) + "*/"

    def _pending(  # noqa: PLR0917 - the listener's arguments, passed on
        self,
        kind: str,
        info: _EngineInfo,
        conn: Connection | None,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
        fp: Fingerprint,
        ns: int,
        scope: Scope | None,
        *,
        call_site: str | Literal[False] | None = False,
    ) -> _Pending:
        """A record to build on the writer thread; ``call_site`` if the caller has
        found it already (``False``: find it here)."""
        rowcount = getattr(cursor, "rowcount", None) if cursor is not None else None
        if call_site is False:
            call_site = self._sites.find() if self.stack else None
        wait = conn.info.get(CHECKOUT_WAIT_KEY) if conn is not None and not conn.closed else None
        return _Pending(
            wall=time.time() - ns / 1e9,
            kind=kind,
            ns=ns,
            fp=fp,
            sql=statement,
            parameters=parameters,
            executemany=executemany,
            rowcount=rowcount if rowcount is not None and rowcount >= 0 else None,
            info=info,
            route=engine_role(info.engine),
            pool_wait_s=wait,
            compiled_cache=(
                None if context.compiled is None else _COMPILED_CACHE.get(context.cache_hit)
            ),
            result_cache=cache_outcome(context),
            call_site=call_site,
            thread=threading.current_thread().name,
            scope=scope,
            explain=self.explain and kind == "slow" and fp.is_select and not executemany,
        )

    def _close_scope(self, scope: Scope) -> None:
        threshold = self.n_plus_one
        if threshold is None or not scope._repeats:
            return
        for repeat in scope._repeats.values():
            pending = repeat.first
            if repeat.count < threshold or pending is None:  # None: a single run
                continue
            pending.count = repeat.count
            pending.ns = repeat.ns
            pending.explain = False
            record = self._build(pending)
            scope.suspects.append(record)
            self._writer.put(record)  # already built: the writer passes it on as it is
            with self._lock:
                agg = pending.info.aggs.get(pending.fp.id)
                if agg is not None:
                    agg.n_plus_one += 1
        scope._repeats.clear()

    # -- the writer thread's side ---------------------------------------------------------

    def _build(self, p: _Pending) -> QueryRecord:
        plan = None
        if p.explain:
            try:
                plan = explain_plan(p.info.engine, p.sql, p.parameters)
            except Exception as err:
                plan = f"unavailable: {type(err).__name__}: {str(err).strip().splitlines()[0]}"
        scope = p.scope
        return QueryRecord(
            ts=datetime.fromtimestamp(p.wall, _UTC),
            kind=p.kind,
            duration_ms=p.ns / 1e6,
            fingerprint_id=p.fp.id,
            fingerprint=p.fp.text,
            sql=p.sql,
            params=format_params(p.parameters, self.params, executemany=p.executemany),
            rowcount=p.rowcount,
            executemany=p.executemany,
            count=p.count,
            engine=p.info.name,
            url=p.info.url,
            dialect=p.info.dialect,
            route=p.route,
            pool_wait_ms=None if p.pool_wait_s is None else p.pool_wait_s * 1000.0,
            compiled_cache=p.compiled_cache,
            result_cache=p.result_cache,
            call_site=p.call_site,
            thread=p.thread,
            request_id=None if scope is None else scope.request_id,
            tags=json.dumps(scope.tags, ensure_ascii=False) if scope and scope.tags else None,
            error_class=p.error_class,
            error_message=p.error_message,
            explain=plan,
            host=self._host,
            pid=self._pid,
        )

    def _row(
        self, agg: _Agg, delta: _Snapshot, start: datetime, end: datetime, max_ns: int
    ) -> StatsRow:
        hist = LatencyHistogram(delta.counts)
        info = agg.engine
        return StatsRow(
            window_start=start,
            window_end=end,
            engine=info.name,
            url=info.url,
            dialect=info.dialect,
            route=engine_role(info.engine),
            fingerprint_id=agg.fp.id,
            fingerprint=agg.fp.text,
            sql=agg.sql,
            calls=delta.calls,
            errors=delta.errors,
            rows=delta.rows,
            n_plus_one=delta.n_plus_one,
            cache_hits=delta.hits,
            cache_misses=delta.misses,
            total_ms=delta.total_ns / 1e6,
            mean_ms=delta.total_ns / delta.calls / 1e6 if delta.calls else 0.0,
            p50_ms=hist.percentile(0.50) / 1e6,
            p95_ms=hist.percentile(0.95) / 1e6,
            p99_ms=hist.percentile(0.99) / 1e6,
            max_ms=max_ns / 1e6,
            sample=self.sample,
            histogram=hist.to_json(),
            host=self._host,
            pid=self._pid,
        )

    def _all_aggs(self) -> list[_Agg]:
        return [agg for info in self._engines.values() for agg in info.aggs.values()]

    def _window_rows(self) -> list[StatsRow]:
        """Statistics of the window that ends now (called on the writer thread)."""
        end = datetime.now(_UTC)
        start, self._window_start = self._window_start, end
        with self._lock:
            taken = []
            for agg in self._all_aggs():
                _fold(agg)
                taken.append((agg, _snapshot(agg), agg.window_max_ns))
                agg.window_max_ns = 0
        rows = []
        for agg, snap, max_ns in taken:
            before = self._previous.get(id(agg), _EMPTY)
            self._previous[id(agg)] = snap
            if (
                snap.calls == before.calls
                and snap.errors == before.errors
                and snap.n_plus_one == before.n_plus_one
            ):
                continue
            delta = _Snapshot(
                snap.calls - before.calls,
                snap.errors - before.errors,
                snap.rows - before.rows,
                snap.n_plus_one - before.n_plus_one,
                snap.hits - before.hits,
                snap.misses - before.misses,
                snap.total_ns - before.total_ns,
                {
                    k: n - before.counts.get(k, 0)
                    for k, n in snap.counts.items()
                    if n != before.counts.get(k, 0)
                },
            )
            rows.append(self._row(agg, delta, start, end, max_ns))
        return rows

    # -- results --------------------------------------------------------------------------

    def stats(self) -> CaptureStats:
        """Aggregates since the recorder was made, per fingerprint and engine, by total time.

        Example::

            for row in recorder.stats().top(5):
                print(f"{row.total_ms:9.1f} ms {row.calls:6}x {row.fingerprint}")
        """
        now = datetime.now(_UTC)
        with self._lock:
            aggs = self._all_aggs()
            for agg in aggs:
                _fold(agg)
            taken = [(agg, _snapshot(agg), agg.max_ns) for agg in aggs]
        rows = [self._row(agg, snap, self._started, now, max_ns) for agg, snap, max_ns in taken]
        rows.sort(key=lambda r: r.total_ms, reverse=True)
        writer = self._writer
        return CaptureStats(
            fingerprints=rows,
            statements=sum(r.calls for r in rows),
            recorded=writer.written,
            dropped=writer.dropped,
            queued=writer.queued,
            sink_errors=writer.sink_errors,
        )

    def records(self) -> list[QueryRecord]:
        """The records held by the first :class:`MemorySink`, oldest first (after a flush).

        Raises:
            ConfigurationError: if no sink is a ``MemorySink``.
        """
        self.flush()
        return self._memory().records()

    def to_dataframe(self) -> pd.DataFrame:
        """The records of the first :class:`MemorySink` as a DataFrame (``RECORD_COLUMNS``).

        To read a JSON Lines file, a Parquet file or the database table, use
        :func:`sqlperf.capture.read_query_log`.
        """
        from sqlperf.capture.log import records_frame

        return records_frame(self.records())

    def _memory(self) -> MemorySink:
        for sink in self.sinks:
            if isinstance(sink, MemorySink):
                return sink
        raise ConfigurationError(
            "this recorder has no MemorySink: add one to sinks=[...], or read the log "
            "its sinks wrote with sqlperf.capture.read_query_log(path_or_url)"
        )

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Write every queued record and the statistics so far to the sinks.

        Returns:
            False if ``timeout`` seconds passed first (a sink is slow or stuck).
        """
        return self._writer.flush(timeout)

    def close(self, timeout: float | None = 30.0) -> None:
        """Detach from every engine, write what is queued, stop the writer, close the sinks."""
        if self._closed:
            return
        self.detach()
        self._closed = True
        self._writer.close(timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _ScopeContext:
    """What :meth:`QueryRecorder.scope` returns: sets the recorder's current scope on
    entry, restores the previous one and closes the scope on exit. (A class rather
    than a generator: it runs once per request.)"""

    __slots__ = ("_recorder", "_scope", "_token")

    def __init__(self, recorder: QueryRecorder, scope: Scope) -> None:
        self._recorder = recorder
        self._scope = scope
        self._token: Token[Scope | None] | None = None

    def __enter__(self) -> Scope:
        self._token = self._recorder._scope.set(self._scope)
        return self._scope

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            self._recorder._scope.reset(self._token)
            self._token = None
            self._recorder._close_scope(self._scope)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigurationError(message)
