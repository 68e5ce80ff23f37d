"""The ORM side of :class:`~sqlperf.cache.QueryCache`: session events.

``do_orm_execute`` answers hits of plain selects before a connection is opened
(:mod:`sqlperf.cache.orm_fast`) and runs their misses itself, building the result
from the rows as for a hit; it routes cached statements of a
:class:`~sqlperf.RoutingSession` to the primary, and hands a miss's key and
lookup down to the DB-API step so the backend is asked once. ``after_begin``
attaches engines met late and remembers the connections of the session's
transaction, so a session that wrote is never answered from the cache.
"""

from __future__ import annotations

import datetime
import decimal
import time
import uuid
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, event
from sqlalchemy.engine import Result
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.session import ORMExecuteState, SessionTransaction
from sqlalchemy.sql.selectable import Select

from sqlperf.cache.backends import Lookup
from sqlperf.cache.keys import Memo, result_key
from sqlperf.cache.options import CACHE_OPTION, CacheDirective, directive_of
from sqlperf.cache.orm_fast import Fallback, FastPlan, plan_for
from sqlperf.cache.payload import BadPayload
from sqlperf.exceptions import ConfigurationError
from sqlperf.routing import ROUTE_OPTION

if TYPE_CHECKING:
    from sqlperf.cache.query_cache import QueryCache

__all__ = ["LOCAL_ONLY", "ORM_LOOKUP", "WRITTEN", "NotLocal", "OrmLookup", "SessionHook"]

#: Execution option carrying a miss's :class:`OrmLookup` to the DB-API step.
ORM_LOOKUP = "_sqlperf_cache_lookup"
#: Execution option: answer from this process's memory or raise :class:`NotLocal`.
LOCAL_ONLY = "_sqlperf_cache_local_only"


class NotLocal(Exception):
    """The statement cannot be answered without I/O (see ``QueryCache.answer_locally``)."""


#: ``connection.info`` key of the tables a connection's transaction wrote.
WRITTEN = "sqlperf.cache.written"

_SESSION_CONNS = "sqlperf.cache.connections"
_DEFAULT = CacheDirective()
#: The largest entry whose rows are memoized (point lookups, small pages).
_MEMO_MAX_BYTES = 8192
#: Value types a memoized result row may hold: none can be changed in place.
_IMMUTABLE = frozenset(
    {
        type(None),
        bool,
        int,
        float,
        str,
        bytes,
        complex,
        decimal.Decimal,
        datetime.datetime,
        datetime.date,
        datetime.time,
        datetime.timedelta,
        uuid.UUID,
    }
)
_UNKNOWN: Any = object()
#: Drivers whose ``autocommit`` switch is the client's alone: turning it on and off
#: sends nothing to the server.
_CLIENT_SIDE_AUTOCOMMIT = frozenset({"psycopg2"})
#: Isolation levels under which a transaction's first statement reads what an
#: autocommit statement would: the latest commits.
_PER_STATEMENT_LEVELS = frozenset({"READ COMMITTED", "READ UNCOMMITTED"})


@dataclass
class OrmLookup:
    """A fast-path miss handed to the DB-API step, which fills in what happened there."""

    key: str
    tables: tuple[str, ...]
    look: Lookup
    spent_ns: int  # the fast path's time (key and lookup)
    outcome: str | None = None  # "miss" once the DB-API step ran the query
    cache_ns: int = 0  # the DB-API step's own cache time (storing), its query excluded


class SessionHook:
    """Session events of one :class:`~sqlperf.cache.QueryCache`."""

    def __init__(self, cache: QueryCache) -> None:
        self.cache = cache
        self._installed: list[tuple[Any, list[tuple[str, Any]]]] = []
        self._plans = Memo(4096)  # (statement shape, engine) -> FastPlan, or None: no fit
        # The same by statement object: hashing a shape (a deep tuple, whose hash
        # Python does not keep) costs more than the rest of a hit's lookup, and an
        # app usually runs the statements it built once. Weak: a statement built per
        # call leaves with it. Statements are immutable, so a plan found stays right.
        self._plan_of: weakref.WeakKeyDictionary[Any, tuple[int, FastPlan | None]] = (
            weakref.WeakKeyDictionary()
        )
        # (id(plan), stored value) -> (plan, its processed rows): a hit on an entry met
        # before skips unpickling and result processing. Only rows of immutable values
        # are kept, since every hit of the entry shares them.
        self._rows = Memo(1024)

    def install(self, target: Any) -> None:
        """See :meth:`QueryCache.install`."""
        if target is Session:
            raise ConfigurationError(
                "install(Session) would change every Session of the process: pass your "
                "sessionmaker, a Session subclass or a session"
            )
        if not (
            isinstance(target, (sessionmaker, Session))
            or (isinstance(target, type) and issubclass(target, Session))
        ):
            raise ConfigurationError(
                "install() takes a sessionmaker, a Session subclass or a Session, "
                f"not {type(target).__name__}"
            )
        if any(t is target for t, _ in self._installed):
            return
        self.cache.attach(*_engines_of(target))
        listeners: list[tuple[str, Any]] = [
            ("do_orm_execute", self.on_orm_execute),
            ("after_begin", self.after_begin),
        ]
        for name, fn in listeners:
            event.listen(target, name, fn)
        self._installed.append((target, listeners))

    def uninstall(self, target: Any = None) -> None:
        """See :meth:`QueryCache.uninstall`."""
        keep = []
        for t, listeners in self._installed:
            if target is not None and t is not target:
                keep.append((t, listeners))
                continue
            for name, fn in listeners:
                if event.contains(t, name, fn):
                    event.remove(t, name, fn)
        self._installed = keep

    def on_orm_execute(self, state: ORMExecuteState) -> Result[Any] | None:
        """``do_orm_execute``: a hit's result, or ``None`` to run the statement.

        Raises:
            NotLocal: under :data:`LOCAL_ONLY`, when the answer would need I/O.
        """
        local = bool(state.execution_options.get(LOCAL_ONLY))
        result = self._hit(state, local)
        if result is None and local:
            raise NotLocal
        return result

    def _hit(self, state: ORMExecuteState, local: bool) -> Result[Any] | None:
        if not state.is_select:
            return None
        stmt = state.statement
        directive = self._directive(state.execution_options, stmt)
        if directive is None:
            return None
        session = state.session
        if (
            hasattr(session, "replicas")
            and ROUTE_OPTION not in state.bind_arguments
            and ROUTE_OPTION not in state.execution_options
        ):
            state.bind_arguments[ROUTE_OPTION] = "primary"
        if (
            state.is_relationship_load
            or state.is_column_load
            or directive.tables is not None
            or state.load_options._populate_existing
            or state.execution_options.get("yield_per")
            or state.execution_options.get("stream_results")
        ):
            return None
        fit = self._fit(session, stmt)
        if fit is None:
            return None
        if local:
            return self._answer_locally(state.parameters, session, *fit)
        return self._answer(state, session, *fit)

    def answer_locally(
        self, session: Session, stmt: Any, params: Mapping[str, Any] | None
    ) -> Result[Any] | None:
        """See :meth:`QueryCache.answer_locally`."""
        if not self._direct(session, stmt, params):  # (true only when installed)
            if not self.is_installed_on(session):
                raise ConfigurationError(
                    "answer_locally needs the cache installed on this session: "
                    "cache.install(sessionmaker or Session subclass)"
                )
            try:
                result: Result[Any] = session.execute(
                    stmt, params, execution_options={LOCAL_ONLY: True}
                )
            except NotLocal:
                return None
            return result
        # Where ``session.execute`` would come to, without its pipeline: this hook,
        # alone, with the statement's own options and these parameters.
        directive = self._directive(stmt._execution_options, stmt)
        if directive is None or directive.tables is not None:
            return None
        fit = self._fit(session, stmt)
        if fit is None:
            return None
        return self._answer_locally(params, session, *fit)

    def _direct(self, session: Session, stmt: Any, params: Any) -> bool:
        """Whether :meth:`answer_locally` may skip ``session.execute`` for ``stmt``: a plain
        ``Select`` with no execution option but the cache's, dict parameters, no
        session-wide execution options, and no ``do_orm_execute`` hook but this one
        (another may change the statement). Otherwise it goes through ``execute``."""
        hooks = session.dispatch.do_orm_execute
        return (
            type(stmt) is Select
            and (params is None or type(params) is dict)
            and not session.execution_options
            and len(hooks) == 1
            and next(iter(hooks)) == self.on_orm_execute
            and all(k == CACHE_OPTION for k in stmt._execution_options)
        )

    def _directive(self, execution_options: Mapping[str, Any], stmt: Any) -> CacheDirective | None:
        """The cache directive of a select, or ``None`` if it is not to be cached."""
        directive: CacheDirective | None = execution_options.get(CACHE_OPTION)
        if directive is None:
            directive = directive_of(stmt._with_options)
            if directive is None:
                return _DEFAULT if self.cache.cache_all else None
        return directive if directive.enabled else None

    def _fit(self, session: Session, stmt: Any) -> tuple[Engine, FastPlan, list[Any]] | None:
        """The engine, plan and bound values to answer ``stmt`` in ``session`` with the
        fast path, or ``None`` if it cannot (another engine, a shape without a plan, or
        a session whose query would see its own writes or flush first)."""
        bind = getattr(session, "primary", None) or session.bind
        if type(bind) is not Engine:
            return None
        if not self.cache._is_attached(bind):
            # The session will begin on it (``after_begin`` would attach it then):
            # attach it now, or the first query would miss the fast path's key.
            self.cache.attach(bind)
        found = self._plan(stmt, bind)
        if (
            found is None
            or self.session_wrote(session)
            # the query would flush first: it must see the flush
            or (session.autoflush and not session._is_clean())
        ):
            return None
        plan, bound_values = found
        return bind, plan, bound_values

    def _plan(self, stmt: Any, bind: Engine) -> tuple[FastPlan, list[Any]] | None:
        """The statement shape's plan and this statement's bound values, or ``None``."""
        # (SQLAlchemy memoizes the key on the statement: the same object each call.)
        cache_key = stmt._generate_cache_key()
        if cache_key is None:
            return None
        known = self._plan_of.get(stmt)
        if known is not None and known[0] == id(bind):
            plan = known[1]
        else:
            shape = (cache_key.key, id(bind))
            plan = self._plans.get(shape, _UNKNOWN)
            if plan is _UNKNOWN:
                plan = plan_for(stmt, bind)
                self._plans.put(shape, plan)
            self._plan_of[stmt] = (id(bind), plan)
        if plan is None:
            return None
        # Read each time: a bound value may be a callable's.
        return plan, [b.effective_value for b in cache_key.bindparams]

    def _key(self, parameters: Any, bind: Engine, plan: FastPlan, values: list[Any]) -> str:
        cache = self.cache
        prefix = f"{cache.namespace}\0orm\0{bind.dialect.name}\0{bind.url.database or ''}\0"
        return result_key(prefix, plan.sql, (values, parameters))

    def _answer_locally(
        self,
        parameters: Any,
        session: Session,
        bind: Engine,
        plan: FastPlan,
        values: list[Any],
    ) -> Result[Any] | None:
        """A hit held in this process's memory, or ``None``; never any I/O."""
        began = time.perf_counter_ns()
        cache = self.cache
        lookup_local = getattr(cache.backend, "lookup_local", None)
        if (
            lookup_local is None
            or cache._pending  # delivering them would talk to the backend
            or not cache._breaker.allows()
            or not cache._admits(plan.sql)
        ):
            return None
        tables = cache._prefixed(plan.tables)
        value = lookup_local(self._key(parameters, bind, plan, values), tables)
        if value is None:
            return None
        return self._result_of(session, plan, value, began)

    def _result_of(
        self, session: Session, plan: FastPlan, value: bytes, began: int
    ) -> Result[Any] | None:
        """A hit's result built from a stored ``value`` (counted as a hit), or ``None``
        when the payload is bad (logged and counted) or its rows do not fit the plan."""
        cache = self.cache
        try:
            rows = self._rows_of(plan, value)
            result = plan.result(session, rows)
        except BadPayload as exc:
            cache._bad_payload(str(exc))
            return None
        except Fallback:
            return None
        cache._count_session_hit(len(value))
        cache._measured_hit(plan.sql, time.perf_counter_ns() - began, plan.tables)
        return result

    def _rows_of(self, plan: FastPlan, value: bytes) -> list[tuple[Any, ...]]:
        """``value``'s rows as the query returns them, decoded once per entry.

        Raises:
            BadPayload: the payload is bad.
            Fallback: its rows do not fit the plan.
        """
        memo = len(value) <= _MEMO_MAX_BYTES  # (hashing a large payload costs too)
        # Keyed by the bytes themselves: equal bytes decode to equal rows, and a
        # bytes object keeps its hash, so a memory backend's entry hashes once.
        memo_key = (id(plan), value)
        if memo:
            found = self._rows.get(memo_key)
            if found is not None and found[0] is plan:
                rows: list[tuple[Any, ...]] = found[1]
                return rows
        description, stored = self.cache._codec.decode(value)
        rows = plan.rows(description, stored)
        if memo and all(type(v) in _IMMUTABLE for row in rows for v in row):
            self._rows.put(memo_key, (plan, rows))
        return rows

    def _answer(
        self,
        state: ORMExecuteState,
        session: Session,
        bind: Engine,
        plan: FastPlan,
        values: list[Any],
    ) -> Result[Any] | None:
        began = time.perf_counter_ns()
        cache = self.cache
        if not cache._deliver_pending() or not cache._admits(plan.sql):
            return None  # the general path runs the query and counts the bypass
        key = self._key(state.parameters, bind, plan, values)
        tables = cache._prefixed(plan.tables)
        look = cache._lookup(key, tables)
        if look is None:
            return None
        if look.value is not None:
            result = self._result_of(session, plan, look.value, began)
            if result is not None:
                return result
        lookup = OrmLookup(key, tables, look, time.perf_counter_ns() - began)
        state.update_execution_options(**{ORM_LOOKUP: lookup})
        # Run it here, to time the whole execution a hit of this shape saves (a hit
        # skips the connection and SQLAlchemy's pipeline, not only the query).
        began = time.perf_counter_ns()
        if look.value is None and not state._remaining_events():
            ran = self._run(state, session, bind, plan)
        else:  # a stored entry that did not fit the plan, or another hook to run first
            ran = state.invoke_statement()
        admission = cache._admission
        if admission is not None and lookup.outcome == "miss":
            elapsed = time.perf_counter_ns() - began
            admission.miss(
                plan.sql,
                cache_ns=lookup.spent_ns + lookup.cache_ns,
                query_ns=elapsed - lookup.cache_ns,
                tables=plan.tables,
            )
        return ran

    def _run(
        self, state: ORMExecuteState, session: Session, bind: Engine, plan: FastPlan
    ) -> Result[Any]:
        """A miss: the statement run as the ORM runs it (``Connection.execute``, so engine
        events and the DB-API step's store see it), and its rows made into the result by
        the plan, as a hit's are.

        What it skips is the ORM's loading step: on a point lookup that costs more
        than the query, and with it a miss returns what the hits after it return.
        Rows that do not fit the plan (an entity with a partly NULL primary key) go
        through the ORM's pipeline instead, which runs the query again.

        It runs on the connection the ORM would use, in the session's transaction;
        or, when the session has none yet and :func:`_reads_alone` allows it, on a
        connection of its own in autocommit, which spares the ``BEGIN`` and the
        ``ROLLBACK`` at the end of the session: two round trips, on a miss that has
        only one of its own, and the session holds no connection afterwards.
        """
        chosen = session.get_bind(**state.bind_arguments)  # (a route the caller set)
        if chosen is bind and _reads_alone(session, bind):
            with bind.connect() as conn:
                rows = _autocommit_rows(conn, state)
        else:
            conn = session.connection(bind_arguments={**state.bind_arguments, "bind": chosen})
            rows = _rows(conn, state)
        try:
            return plan.result(session, rows)
        except Fallback:
            return state.invoke_statement()

    def is_installed_on(self, session: Session) -> bool:
        """Whether this hook runs for ``session``'s statements."""
        return any(fn == self.on_orm_execute for fn in session.dispatch.do_orm_execute)

    def session_wrote(self, session: Session) -> bool:
        """Has a connection of the session's current transaction written?"""
        txn = session.get_transaction()
        if txn is None:
            return False
        seen = session.info.get(_SESSION_CONNS)
        if seen is None or seen[0]() is not txn:
            return True  # connections this cache has not seen: assume the worst
        return any(not c.closed and c.info.get(WRITTEN) for c in seen[1])

    def after_begin(
        self, session: Session, transaction: SessionTransaction, connection: Connection
    ) -> None:
        """``after_begin``: attach a new engine; note the transaction's connections."""
        if not self.cache._is_attached(connection.engine):
            self.cache.attach(connection.engine)
        root = session.get_transaction()
        seen: tuple[weakref.ref[Any], list[Connection]] | None = session.info.get(_SESSION_CONNS)
        if seen is None or seen[0]() is not root:
            # A weak reference: the transaction refers to the session, whose info
            # holds this, and a cycle would leave every session to the garbage collector.
            session.info[_SESSION_CONNS] = seen = (weakref.ref(root), [])
        seen[1].append(connection)


def _rows(conn: Connection, state: ORMExecuteState) -> list[tuple[Any, ...]]:
    """The rows of ``state``'s statement run on ``conn``."""
    cursor_result = conn.execute(
        state.statement, state.parameters or {}, execution_options=state.local_execution_options
    )
    return [tuple(row) for row in cursor_result]


def _reads_alone(session: Session, bind: Engine) -> bool:
    """Whether a miss may run in autocommit on a connection of its own rather than
    begin the session's transaction: the session has none yet, the driver switches
    autocommit without a round trip, and the isolation level reads the latest
    commits at each statement. Then the read sees what it would have seen as the
    transaction's first statement, and nothing later in the session depended on
    that transaction's snapshot."""
    if session.get_transaction() is not None or bind.dialect.driver not in _CLIENT_SIDE_AUTOCOMMIT:
        return False
    level = bind.get_execution_options().get("isolation_level") or getattr(
        bind.dialect,
        "default_isolation_level",
        None,  # (known once a connection was made)
    )
    return str(level).upper() in _PER_STATEMENT_LEVELS


def _autocommit_rows(conn: Connection, state: ORMExecuteState) -> list[tuple[Any, ...]]:
    """The rows of ``state``'s statement run on ``conn`` (newly checked out, so in no
    transaction) with the driver's autocommit on, and off again before the
    connection goes back to the pool."""
    dbapi_connection: Any = conn.connection.dbapi_connection
    dbapi_connection.autocommit = True
    try:
        return _rows(conn, state)
    finally:
        if not dbapi_connection.closed:  # (a lost connection is discarded by the pool)
            dbapi_connection.autocommit = False


def _engines_of(target: Any) -> list[Engine]:
    """The engines a sessionmaker or session names (bind, binds, primary, replicas)."""
    kw: dict[str, Any] = dict(getattr(target, "kw", {}))  # a sessionmaker's arguments
    found: list[Any] = [kw.get("bind"), kw.get("primary"), *kw.get("replicas", ())]
    found.extend((kw.get("binds") or {}).values())
    if isinstance(target, Session):
        found.append(target.bind)
        if hasattr(target, "replicas"):
            found.extend([getattr(target, "primary", None), *target.replicas])
    return [e for e in dict.fromkeys(found) if isinstance(e, Engine)]
