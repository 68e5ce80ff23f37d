"""Read/write routing: ``RoutingSession`` sends writes to the primary, reads to replicas.

Use it through a ``sessionmaker``::

    Session = sessionmaker(class_=RoutingSession, primary=primary, replicas=[r1, r2])
    with Session() as s:
        s.scalars(select(User)).all()        # a replica
        s.add(User(name="x")); s.commit()    # the primary
        s.scalars(select(User)).all()        # a replica that has replayed that commit,
                                             # or the primary until one has

Routing rules (``get_bind``), first match wins:

1. no replicas configured, a flush, ``session.using_primary()``, a transaction
   begun with ``session.begin_write()``, or ``execution_options(sqlperf_route="primary")``:
   the primary;
2. a write: ``insert``/``update``/``delete``, ``SELECT ... FOR UPDATE/SHARE``, a
   ``text()`` statement that is not plainly a read, or ``session.connection()``:
   the primary, and every later statement of that transaction too;
3. ``execution_options(sqlperf_route="replica")``: a healthy replica, even after a write;
4. a read after this session's (or a passed token's) commit: a replica only once it
   has replayed that commit (PostgreSQL: its replay LSN, checked against a cached
   value refreshed at most every ``lsn_refresh_s``; other databases: after
   ``pin_window_s``), else the primary;
5. any other read: a healthy replica, chosen round-robin or at random.

Two modes, and their trade-off (SQLAlchemy's docs warn that choosing a bind per
statement gives uncoordinated transactions):

* ``mode="statement"`` (default): each read may go to a different replica, so two
  reads of one transaction can see different snapshots, and reads before a write
  ran on another server than the write. Best spread of load; fine for the
  typical web request that reads, then writes, then commits.
* ``mode="transaction"``: a transaction that began on a replica keeps that one
  replica for all its reads (one snapshot), and a transaction declared as writing
  (``session.begin_write()``) runs wholly on the primary. An undeclared write
  still goes to the primary, with the earlier reads on the replica's snapshot.

Replica health: a replica that fails to connect, drops its connection, has no
pooled connection free within its ``pool_timeout``, or whose lag exceeds ``max_lag``
seconds (checked at most every ``health_check_s``, never per statement), is
skipped for ``cooldown_s`` and then tried again; its reads go to another
replica or the primary. The counters of each engine are in :func:`routing_stats`,
and :func:`engine_role` tells a query recorder whether an engine serves as
primary or replica.

Health and counters belong to the engines, so every session over the same
engines shares them; sessionmakers with different replica sets stay independent.
"""

from __future__ import annotations

import functools
import itertools
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from time import monotonic
from typing import Any, Literal

from sqlalchemy import Connection, Engine, exc
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.sql.elements import ClauseElement, TextClause
from sqlalchemy.sql.selectable import Select
from sqlalchemy.util import EMPTY_DICT

from sqlperf.exceptions import ConfigurationError

__all__ = [
    "ConsistencyToken",
    "ReplicaHealth",
    "RouteStats",
    "RoutingSession",
    "engine_role",
    "replica_health",
    "routing_stats",
]

Route = Literal["primary", "replica"]
ROUTE_OPTION = "sqlperf_route"
_STATE_ATTR = "_sqlperf_routing_state"

# A text() statement is a read only if it plainly starts as one and nothing in it
# writes or locks; anything else goes to the primary.
_READ_START = re.compile(r"^\s*\(*\s*(SELECT|WITH|SHOW|EXPLAIN|VALUES|TABLE|DESCRIBE)\b", re.I)
_WRITE_WORDS = re.compile(
    r"\b(INSERT|UPDATE|DELETE|MERGE|REPLACE|INTO|CREATE|ALTER|DROP|TRUNCATE|GRANT|"
    r"LOCK|NEXTVAL|SETVAL|FOR\s+UPDATE|FOR\s+SHARE|FOR\s+NO\s+KEY|FOR\s+KEY\s+SHARE)\b",
    re.I,
)


@functools.lru_cache(maxsize=4096)
def _text_is_read(sql: str) -> bool:
    return bool(_READ_START.match(sql)) and not _WRITE_WORDS.search(sql)


def _is_write(clause: ClauseElement) -> bool:
    """True if ``clause`` must run on the primary."""
    if isinstance(clause, Select):
        return clause._for_update_arg is not None
    if isinstance(clause, TextClause):
        return not _text_is_read(clause.text)
    if getattr(clause, "is_dml", False):
        return True
    # Compound selects (UNION) and other selectables read; anything unknown writes.
    return not getattr(clause, "is_select", False)


# -- per-engine state ---------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RouteStats:
    """How an engine has been used by routing sessions (see :func:`routing_stats`).

    The counters are bumped without a lock on the per-statement path, so under
    heavy thread contention they may undercount slightly; they never overcount.

    Attributes:
        role: ``"primary"``, ``"replica"`` or ``None`` if never routed to.
        reads: read statements routed here.
        writes: write statements and flushes routed here.
        fallbacks: reads meant for a replica that this primary served instead
            (replica down, lagging, or behind a read-your-writes token).
        failures: times this replica failed to connect or execute and was
            skipped for a cool-down.
        health_checks: lag/replay-position queries sent to this replica.
    """

    role: str | None
    reads: int
    writes: int
    fallbacks: int
    failures: int
    health_checks: int


@dataclass(frozen=True, kw_only=True)
class ReplicaHealth:
    """A replica's health as last observed."""

    healthy: bool
    down_for_s: float
    lag_s: float | None
    replay_lsn: int | None
    checked_ago_s: float | None


class _EngineState:
    """Routing state that belongs to one engine, shared by all sessions using it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.role: str | None = None
        self.reads = 0
        self.writes = 0
        self.fallbacks = 0
        self.failures = 0
        self.health_checks = 0
        self.down_until = 0.0
        self.lag_s: float | None = None
        self.replay_lsn: int | None = None  # None: unknown; -1: not a streaming replica
        self.checked_at: float | None = None
        self.checking = False
        self.rr: dict[tuple[int, ...], itertools.count[int]] = {}


def _state(engine: Engine) -> _EngineState:
    st: _EngineState | None = engine.__dict__.get(_STATE_ATTR)
    if st is None:
        st = engine.__dict__.setdefault(_STATE_ATTR, _EngineState())
    return st


def routing_stats(engine: Engine) -> RouteStats:
    """Return the routing counters of ``engine`` (primary or replica).

    Example::

        >>> from sqlperf import create_optimized_engine
        >>> routing_stats(create_optimized_engine("sqlite://")).reads
        0
    """
    st = _state(engine)
    with st.lock:
        return RouteStats(
            role=st.role,
            reads=st.reads,
            writes=st.writes,
            fallbacks=st.fallbacks,
            failures=st.failures,
            health_checks=st.health_checks,
        )


def replica_health(engine: Engine) -> ReplicaHealth:
    """Return what routing last observed of replica ``engine``."""
    st = _state(engine)
    now = time.monotonic()
    return ReplicaHealth(
        healthy=now >= st.down_until,
        down_for_s=max(0.0, st.down_until - now),
        lag_s=st.lag_s,
        replay_lsn=st.replay_lsn if st.replay_lsn is None or st.replay_lsn >= 0 else None,
        checked_ago_s=None if st.checked_at is None else now - st.checked_at,
    )


def engine_role(engine: Engine) -> str | None:
    """``"primary"`` or ``"replica"`` if a routing session uses ``engine`` so, else None.

    This is the hook a query recorder reads to label each query with its route.
    """
    st: _EngineState | None = engine.__dict__.get(_STATE_ATTR)
    return None if st is None else st.role


# -- consistency tokens ------------------------------------------------------------------


def _parse_lsn(text: str) -> int:
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


def _format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


@dataclass(frozen=True)
class ConsistencyToken:
    """What a reader must see: a commit, by WAL position and wall-clock time.

    ``str(token)`` is a short ASCII string for a cookie or header;
    :meth:`parse` reads it back.

    Example::

        >>> t = ConsistencyToken(committed_at=1700000000.5, lsn=0x3BDE2470)
        >>> ConsistencyToken.parse(str(t)) == t
        True
    """

    committed_at: float
    lsn: int | None = None

    def __str__(self) -> str:
        lsn = _format_lsn(self.lsn) if self.lsn is not None else "-"
        return f"v1:{self.committed_at:.6f}:{lsn}"

    @classmethod
    def parse(cls, text: str) -> ConsistencyToken:
        """Read a token written by ``str(token)``.

        Raises:
            ConfigurationError: ``text`` is not a token.
        """
        try:
            version, committed_at, lsn = text.split(":")
            if version != "v1":
                raise ValueError(version)
            return cls(float(committed_at), None if lsn == "-" else _parse_lsn(lsn))
        except (ValueError, AttributeError):
            raise ConfigurationError(
                f"not a sqlperf consistency token: {text!r} (expected 'v1:<time>:<lsn>')"
            ) from None

    def newer(self, other: ConsistencyToken | None) -> ConsistencyToken:
        """The later of two tokens."""
        if other is None:
            return self
        lsn = max(self.lsn or 0, other.lsn or 0) or None
        return ConsistencyToken(max(self.committed_at, other.committed_at), lsn)


# -- the session ---------------------------------------------------------------------------

_PENDING = object()  # per-transaction state claimed for a transaction about to begin
_ENDED = object()  # the marked transaction ended when the session was closed

_PG_REPLICA_CHECK = (
    "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, "
    "CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 "
    "ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0) END"
)


def _routed(method: Callable[..., Any]) -> Any:
    """Wrap a ``Session`` execution method for :class:`RoutingSession`."""

    def routed(
        self: RoutingSession,
        statement: Any,
        params: Any = None,
        *,
        execution_options: Any = EMPTY_DICT,
        bind_arguments: dict[str, Any] | None = None,
        **kw: Any,
    ) -> Any:
        if execution_options and ROUTE_OPTION in execution_options:
            bind_arguments = _with_route(bind_arguments, execution_options)
        try:
            return method(
                self,
                statement,
                params,
                execution_options=execution_options,
                bind_arguments=bind_arguments,
                **kw,
            )
        except (exc.DBAPIError, exc.TimeoutError) as err:
            self._fail_over(err)
        return method(
            self,
            statement,
            params,
            execution_options=execution_options,
            bind_arguments=bind_arguments,
            **kw,
        )

    routed.__name__ = method.__name__
    routed.__doc__ = (
        f"``Session.{method.__name__}``, honouring ``execution_options="
        '{"sqlperf_route": ...}`` and retrying a read whose replica failed.'
    )
    return routed


class RoutingSession(Session):
    """A ``Session`` that routes writes to ``primary`` and reads to ``replicas``.

    See the module docstring for the routing rules and the two modes.

    Args:
        primary: the engine that takes writes.
        replicas: engines serving reads; empty means everything goes to the primary.
        policy: ``"round_robin"`` or ``"random"`` choice among healthy replicas.
        mode: ``"statement"`` (per-statement routing) or ``"transaction"`` (one
            replica per transaction; ``begin_write()`` transactions wholly on the primary).
        max_lag: seconds of replication lag beyond which a replica is skipped;
            ``None`` never checks lag.
        cooldown_s: how long a failed or lagging replica is skipped.
        health_check_s: how often (at most) a replica's lag is measured.
        pin_window_s: without WAL positions (MySQL, SQLite, or a token without
            one), reads go to the primary this long after a commit that wrote.
        lsn_refresh_s: how stale a replica's cached replay position may be before
            a read that waits on a token refreshes it.
        consistency_token: a token (or its string) from another session whose
            commit this session's reads must see.
        **kwargs: any other ``Session`` argument (not ``bind``/``binds``).

    Raises:
        ConfigurationError: a bad option.

    Example::

        >>> from sqlalchemy.orm import sessionmaker
        >>> from sqlperf import create_optimized_engine
        >>> primary = create_optimized_engine("sqlite://")
        >>> Session = sessionmaker(class_=RoutingSession, primary=primary, replicas=[])
        >>> with Session() as s:
        ...     s.get_bind() is primary
        True
    """

    def __init__(
        self,
        *,
        primary: Engine,
        replicas: Sequence[Engine] = (),
        policy: Literal["round_robin", "random"] = "round_robin",
        mode: Literal["statement", "transaction"] = "statement",
        max_lag: float | None = 5.0,
        cooldown_s: float = 5.0,
        health_check_s: float = 1.0,
        pin_window_s: float = 2.0,
        lsn_refresh_s: float = 0.02,
        consistency_token: ConsistencyToken | str | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("bind") is not None or kwargs.get("binds"):
            raise ConfigurationError("RoutingSession takes primary= and replicas=, not bind/binds")
        if not isinstance(primary, Engine):
            raise ConfigurationError(f"primary must be an Engine, not {type(primary).__name__}")
        replicas = tuple(replicas)
        for r in replicas:
            if not isinstance(r, Engine):
                raise ConfigurationError(f"replicas must be Engines, not {type(r).__name__}")
            if r is primary:
                raise ConfigurationError("the primary engine cannot also be a replica")
        if policy not in ("round_robin", "random"):
            raise ConfigurationError(f"policy must be 'round_robin' or 'random', not {policy!r}")
        if mode not in ("statement", "transaction"):
            raise ConfigurationError(f"mode must be 'statement' or 'transaction', not {mode!r}")
        super().__init__(**kwargs)
        self.primary = primary
        self.replicas = replicas
        self.policy = policy
        self.mode = mode
        self.max_lag = max_lag
        self.cooldown_s = cooldown_s
        self.health_check_s = health_check_s
        self.pin_window_s = pin_window_s
        self.lsn_refresh_s = lsn_refresh_s
        self._primary_state = _state(primary)
        self._primary_state.role = "primary"
        self._pairs = [(r, _state(r)) for r in replicas]
        self._fast = mode == "statement" and policy == "round_robin"
        for _, st in self._pairs:
            st.role = "replica"
        key = tuple(id(r) for r in replicas)
        with self._primary_state.lock:
            self._rr = self._primary_state.rr.setdefault(key, itertools.count())
        self._force_primary = 0
        # Per-transaction state (_wrote, _declared_write, _txn_replica) belongs to
        # the transaction in _txn_marker; see _sync_transaction.
        self._txn_marker: object = None
        self._wrote = False
        self._declared_write = False
        self._txn_replica: Engine | None = None
        self._token: ConsistencyToken | None = None  # what consistency_token() hands out
        self._waiting: ConsistencyToken | None = None  # what reads still have to wait for
        self._last_replica: Engine | None = None
        if consistency_token is not None:
            self.require(consistency_token)

    # -- explicit control ------------------------------------------------------------

    @contextmanager
    def using_primary(self) -> Iterator[RoutingSession]:
        """Route every statement inside the block to the primary.

        Example::

            with session.using_primary():
                fresh = session.get(User, 1)
        """
        self._force_primary += 1
        try:
            yield self
        finally:
            self._force_primary -= 1

    def begin_write(self) -> SessionTransaction:
        """Begin a transaction that runs wholly on the primary (declared as writing)."""
        self._sync_transaction()
        txn = self.begin()
        self._txn_marker = txn
        self._declared_write = True
        return txn

    def close(self) -> None:
        """``Session.close()``: end the transaction, release the connections.

        The ended transaction is let go here rather than at the next statement: it
        refers back to the session, so keeping it would leave both (and what they
        hold) to the garbage collector's cycle pass, once per request in a web app.
        """
        super().close()
        if self._txn_marker is not None and self._txn_marker is not _PENDING:
            self._txn_marker = _ENDED  # still not the current one: see _sync_transaction

    def consistency_token(self) -> str | None:
        """The token of this session's last writing commit, for a cookie or header.

        Pass it to another session (``consistency_token=`` or :meth:`require`)
        so that its reads see that commit.
        """
        self._sync_transaction()
        return None if self._token is None else str(self._token)

    @property
    def token_needs_io(self) -> bool:
        """Whether :meth:`consistency_token` would query the primary now: a transaction
        that wrote has ended on PostgreSQL, and its commit's WAL position is still to
        be read (one round trip). Elsewhere a token is the commit's time: no I/O."""
        marker = self._txn_marker
        return (
            self._wrote
            and marker is not _PENDING
            and marker is not self.get_transaction()
            and self.primary.dialect.name == "postgresql"
        )

    def require(self, token: ConsistencyToken | str) -> None:
        """Make this session's reads see the commit that ``token`` names."""
        parsed = ConsistencyToken.parse(token) if isinstance(token, str) else token
        self._token = parsed.newer(self._token)
        self._waiting = parsed.newer(self._waiting)

    # -- routing ------------------------------------------------------------------------

    def get_bind(  # noqa: PLR0911, PLR0912 - one branch and return per routing rule
        self,
        mapper: Any = None,
        *,
        clause: Any = None,
        **kw: Any,
    ) -> Engine | Connection:
        """Choose the engine for a statement; see the module docstring for the rules."""
        pairs = self._pairs
        if not pairs:
            return self.primary
        self._last_replica = None
        route = None
        if kw:
            if kw.get("bind") is not None:  # an explicit bind_arguments={"bind": ...}
                bind: Engine | Connection = kw["bind"]
                return bind
            route = kw.get(ROUTE_OPTION)
        if self.get_transaction() is not self._txn_marker:
            self._sync_transaction()
        if route is None and clause is not None:  # statement-level option
            options = getattr(clause, "_execution_options", None)
            if options:
                route = options.get(ROUTE_OPTION)
        if self._flushing or self._declared_write:
            self._note_write()
            return self._to_primary(write=True)
        if clause is None or (
            route != "replica"
            and (
                clause._for_update_arg is not None
                if type(clause) is Select  # the common case, inlined
                else _is_write(clause)
            )
        ):
            # session.connection() with no statement may run anything: the primary.
            # A write inside using_primary() is a write too: its commit gives a token.
            self._note_write()
            return self._to_primary(write=True)
        if route == "primary" or self._force_primary:
            return self._to_primary(write=False)
        if self._wrote and route != "replica":
            return self._to_primary(write=False)
        if self._fast and self._waiting is None:
            # The common read: the next replica in turn is up and was checked
            # recently. Anything else takes the full path below.
            replica, st = pairs[next(self._rr) % len(pairs)]
            now = monotonic()
            if now >= st.down_until and (
                self.max_lag is None
                or (st.checked_at is not None and now - st.checked_at <= self.health_check_s)
            ):
                st.reads += 1
                self._last_replica = replica
                return replica
        chosen = self._choose_replica()
        if chosen is None:
            self._primary_state.fallbacks += 1
            return self._to_primary(write=False)
        self._last_replica = chosen
        return chosen

    def _sync_transaction(self) -> None:
        """Notice, without any event listener, that a transaction ended or began.

        Per-transaction state belongs to the transaction in ``_txn_marker``. It
        is recorded while the statement's transaction may not exist yet (SQLAlchemy
        autobegins it just after ``get_bind``), so it is claimed as ``_PENDING``
        and adopted by the next transaction seen. A different transaction means
        the marked one ended: if it wrote, this session's reads must now see
        that commit (on a rollback this is merely conservative).
        """
        current = self.get_transaction()
        marker = self._txn_marker
        if marker is current:
            return
        if marker is _PENDING:
            if current is not None:
                self._txn_marker = current
            return
        if self._wrote:
            token = _commit_token(self.primary)
            self._token = token.newer(self._token)
            self._waiting = token.newer(self._waiting)
        self._wrote = False
        self._declared_write = False
        self._txn_replica = None
        self._txn_marker = current

    def _claim_transaction(self) -> None:
        if self._txn_marker is None:
            self._txn_marker = _PENDING

    def _note_write(self) -> None:
        self._wrote = True
        self._claim_transaction()

    def _to_primary(self, *, write: bool) -> Engine:
        st = self._primary_state
        if write:
            st.writes += 1
        else:
            st.reads += 1
        return self.primary

    def _choose_replica(self) -> Engine | None:
        if self.mode == "transaction" and self._txn_replica is not None:
            if self._usable(self._txn_replica, _state(self._txn_replica)):
                return self._txn_replica
            self._txn_replica = None
        pairs = self._pairs
        n = len(pairs)
        start = next(self._rr) if self.policy == "round_robin" else random.randrange(n)
        for i in range(n):
            candidate, st = pairs[(start + i) % n]
            if self._usable(candidate, st):
                if self.mode == "transaction":
                    self._txn_replica = candidate
                    self._claim_transaction()
                st.reads += 1
                return candidate
        return None

    def _usable(self, replica: Engine, st: _EngineState) -> bool:
        """Healthy, not lagging, and caught up with this session's token."""
        now = time.monotonic()
        if now < st.down_until:
            return False
        if self.max_lag is not None and (
            st.checked_at is None or now - st.checked_at > self.health_check_s
        ):
            self._check(replica, st)
            if now < st.down_until:
                return False
        token = self._waiting
        if token is None:
            return True
        if not self._caught_up(replica, st, token, now):
            return False
        if self._all_caught_up(token):
            self._waiting = None  # every replica has it: back to the fast path
        return True

    def _all_caught_up(self, token: ConsistencyToken) -> bool:
        if token.lsn is None:
            return time.time() - token.committed_at >= self.pin_window_s
        return all(
            r.dialect.name == "postgresql" and _replayed(st.replay_lsn, token.lsn)
            for r, st in self._pairs
        )

    def _caught_up(
        self, replica: Engine, st: _EngineState, token: ConsistencyToken, now: float
    ) -> bool:
        """Has ``replica`` replayed the commit ``token`` names? (Cheap when it has.)"""
        if token.lsn is None or replica.dialect.name != "postgresql":
            return time.time() - token.committed_at >= self.pin_window_s
        if _replayed(st.replay_lsn, token.lsn):
            return True
        if st.checked_at is not None and now - st.checked_at <= self.lsn_refresh_s:
            return False
        self._check(replica, st)
        return _replayed(st.replay_lsn, token.lsn)

    def _check(self, replica: Engine, st: _EngineState) -> None:
        """Measure ``replica``'s lag and replay position (one round trip), or mark it down."""
        with st.lock:
            if st.checking:
                return  # another thread is measuring; use the last values
            st.checking = True
            st.health_checks += 1
        try:
            lag, lsn = self._measure(replica)
        except exc.SQLAlchemyError:  # cannot connect, dropped, or its pool is exhausted
            self._mark_down(replica)
            return
        finally:
            st.checking = False
        st.lag_s, st.replay_lsn, st.checked_at = lag, lsn, time.monotonic()
        if self.max_lag is not None and lag is not None and lag > self.max_lag:
            st.down_until = time.monotonic() + self.cooldown_s

    @staticmethod
    def _measure(replica: Engine) -> tuple[float | None, int | None]:
        name = replica.dialect.name
        with replica.connect() as conn:
            if name == "postgresql":
                autocommit = conn.execution_options(isolation_level="AUTOCOMMIT")
                in_recovery, lsn, lag = autocommit.exec_driver_sql(_PG_REPLICA_CHECK).one()
                if not in_recovery:
                    return 0.0, -1  # a primary standing in as replica: always current
                return float(lag), _parse_lsn(lsn)
            if name in ("mysql", "mariadb"):
                try:
                    row = conn.exec_driver_sql("SHOW SLAVE STATUS").mappings().first()
                except exc.DBAPIError as err:
                    if err.connection_invalidated:
                        raise
                    return None, None  # no REPLICATION CLIENT privilege: lag unknown
                if row is None:
                    return 0.0, None  # not a replica: nothing to lag behind
                behind = row.get("Seconds_Behind_Master")
                return (float(behind) if behind is not None else None), None
            conn.exec_driver_sql("SELECT 1")
            return 0.0, None

    def _mark_down(self, replica: Engine) -> None:
        st = _state(replica)
        with st.lock:
            st.failures += 1
            st.down_until = time.monotonic() + self.cooldown_s
        if self._txn_replica is replica:
            self._txn_replica = None

    # -- execution with replica fail-over -------------------------------------------------

    # Session.execute, .scalars and .scalar, with the ``sqlperf_route`` option of
    # the call honoured and a read retried elsewhere when its replica fails.
    execute = _routed(Session.execute)
    scalars = _routed(Session.scalars)
    scalar = _routed(Session.scalar)

    def _fail_over(self, err: exc.DBAPIError | exc.TimeoutError) -> None:
        """Re-raise ``err`` unless a replica failed a read; then skip that replica."""
        replica = self._replica_of_last_statement()
        if replica is None or not _replica_connection_failed(self, replica, err):
            raise err
        # The replica could not serve a read the primary can: skip it for a
        # cool-down; the caller runs the read again elsewhere.
        self._mark_down(replica)
        self._primary_state.fallbacks += 1

    def _replica_of_last_statement(self) -> Engine | None:
        return self._last_replica


def _with_route(bind_arguments: dict[str, Any] | None, options: Any) -> dict[str, Any]:
    return {**(bind_arguments or {}), ROUTE_OPTION: options[ROUTE_OPTION]}


def _replayed(replay_lsn: int | None, lsn: int) -> bool:
    # -1 marks a server that is not in recovery: it is current by definition.
    return replay_lsn is not None and (replay_lsn < 0 or replay_lsn >= lsn)


def _replica_connection_failed(
    session: Session, replica: Engine, err: exc.DBAPIError | exc.TimeoutError
) -> bool:
    """True if ``err`` came from connecting to ``replica`` (nothing of it joined the
    session's transaction), from its exhausted pool, or from a replica connection
    the server dropped."""
    if isinstance(err, exc.TimeoutError):
        return True  # no connection was checked out: nothing joined the transaction
    if err.connection_invalidated:
        _forget_connection(session, replica)
        return True
    return isinstance(err, exc.OperationalError | exc.InterfaceError) and not _in_transaction(
        session, replica
    )


def _in_transaction(session: Session, engine: Engine) -> bool:
    txn = session.get_transaction()  # the outermost transaction, which owns the connections
    return (
        txn is not None
        and txn.is_active
        and any(entry[0].engine is engine for entry in txn._connections.values())
    )


def _forget_connection(session: Session, replica: Engine) -> None:
    """Drop a dead replica connection from the session's transaction.

    Only reads ran on it, so there is nothing to commit there; leaving it would
    make the session's commit fail on the invalidated connection.
    """
    root = session.get_transaction()  # the outermost transaction
    if root is None:
        return
    for key, entry in list(root._connections.items()):
        conn = entry[0]
        if conn.engine is replica:
            del root._connections[key]
            conn.close()


def _commit_token(primary: Engine) -> ConsistencyToken:
    """A token for the commit that just happened on ``primary``."""
    now = time.time()
    if primary.dialect.name != "postgresql":
        return ConsistencyToken(now)
    with primary.connect() as conn:
        autocommit = conn.execution_options(isolation_level="AUTOCOMMIT")
        lsn = autocommit.exec_driver_sql("SELECT pg_current_wal_lsn()::text").scalar_one()
    return ConsistencyToken(now, _parse_lsn(lsn))
