"""What the Flask and ASGI adapters share: one request's id, scope, sessions and token.

Nothing here imports a web framework. An adapter makes one :class:`Integration`
from its options, calls :meth:`Integration.begin` with the request's raw header
values, and drives the :class:`RequestState` it gets back:

1. :meth:`RequestState.open_scope` before the application runs (the recorder's
   scope is a context variable: it must be set in the context the request runs in);
2. :meth:`RequestState.open_session` when the application asks for a session;
3. at the start of the response, :meth:`RequestState.outgoing_token` and
   :meth:`RequestState.response_headers`, whose values the adapter writes;
4. :meth:`RequestState.finish` once the request is over: the sessions are closed,
   the scope is closed (the recorder writes its ``n_plus_one`` records) and each
   suspect is logged on the ``sqlperf.integrations`` logger.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, NamedTuple, Protocol

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import sessionmaker

from sqlperf.cache.query_cache import QueryCache
from sqlperf.capture.recorder import QueryRecorder, Scope
from sqlperf.exceptions import ConfigurationError
from sqlperf.routing import ConsistencyToken, RoutingSession

__all__ = [
    "REQUEST_ID_HEADER",
    "SERVER_TIMING_HEADER",
    "HeadersLike",
    "Integration",
    "RequestState",
    "ResponseHeaders",
    "choose_request_id",
    "cookie_value",
    "format_cookie",
    "incoming_token",
    "log_suspects",
    "merge_server_timing",
    "server_timing",
]

logger = logging.getLogger("sqlperf.integrations")

REQUEST_ID_HEADER = "X-Request-ID"
SERVER_TIMING_HEADER = "Server-Timing"

# A request id from a client is echoed in a header and written to logs: visible
# ASCII only (no spaces, no control characters), and not too long.
_REQUEST_ID = re.compile(r"[!-~]{1,200}")
# RFC 9110 token: what a header or cookie name may be made of.
_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_MAX_TOKEN_CHARS = 100  # "v1:<time>:<lsn>" is about 40


def choose_request_id(incoming: str | None) -> str:
    """The request id: the client's ``X-Request-ID`` if it is sane, else a new one.

    A sane id is 1 to 200 visible ASCII characters (no spaces); anything else is
    replaced by 32 random hex digits, so a header cannot smuggle text into logs.

    Example::

        >>> choose_request_id("abc")
        'abc'
        >>> len(choose_request_id(None))
        32
    """
    if incoming is not None:
        incoming = incoming.strip()
        if _REQUEST_ID.fullmatch(incoming):
            return incoming
        logger.debug("replacing an unusable X-Request-ID header: %r", incoming[:200])
    return os.urandom(16).hex()  # as random as uuid4().hex, without building a UUID


def cookie_value(cookie_header: str | None, name: str) -> str | None:
    """The value of cookie ``name`` in a ``Cookie`` request header, or ``None``.

    Example::

        >>> cookie_value('a=1; sqlperf_token="v1:2.0:-"', "sqlperf_token")
        'v1:2.0:-'
    """
    if not cookie_header:
        return None
    for part in cookie_header.split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip() == name:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            return value
    return None


def incoming_token(
    header_value: str | None, cookie_header: str | None, cookie_name: str
) -> ConsistencyToken | None:
    """The consistency token a request carries in its header or cookie (the newer of both).

    A value that is not a token is ignored with a debug log: a client's garbage
    must never turn into an error response.
    """
    found: ConsistencyToken | None = None
    for source, raw in (
        ("header", header_value),
        ("cookie", cookie_value(cookie_header, cookie_name)),
    ):
        text = (raw or "").strip()
        if not text:
            continue
        try:
            if len(text) > _MAX_TOKEN_CHARS:
                raise ConfigurationError("too long")
            token = ConsistencyToken.parse(text)
        except ConfigurationError:
            logger.debug("ignoring an invalid consistency token in the %s: %r", source, text[:100])
            continue
        found = token.newer(found)
    return found


def format_cookie(name: str, value: str, *, max_age: int, secure: bool) -> str:
    """A ``Set-Cookie`` value: ``HttpOnly``, ``SameSite=Lax``, ``Path=/``, ``Max-Age``.

    Example::

        >>> format_cookie("sqlperf_token", "v1:2.000000:-", max_age=300, secure=False)
        'sqlperf_token=v1:2.000000:-; Max-Age=300; Path=/; HttpOnly; SameSite=Lax'
    """
    cookie = f"{name}={value}; Max-Age={max_age}; Path=/; HttpOnly; SameSite=Lax"
    return cookie + "; Secure" if secure else cookie


def server_timing(scope: Scope) -> str:
    """The ``Server-Timing`` metrics of a recorder scope so far.

    ``db`` carries the database time in milliseconds (3 decimals) and the number
    of statements; ``cache`` the statements the query-result cache answered at
    the DB-API step.

    Example::

        >>> server_timing(Scope("r", {}, queries=3, cache_hits=1, db_ns=2_500_000))
        'db;dur=2.500;desc="3 queries", cache;desc="1 hits"'
    """
    return (
        f'db;dur={scope.db_ns / 1e6:.3f};desc="{scope.queries} queries", '
        f'cache;desc="{scope.cache_hits} hits"'
    )


def merge_server_timing(existing: Sequence[str], ours: str) -> str:
    """``ours`` appended to the ``Server-Timing`` values the application already set."""
    if not existing:
        return ours
    return ", ".join([*(v.strip() for v in existing if v.strip()), ours])


def log_suspects(scope: Scope) -> None:
    """Log one WARNING per N+1 suspect of ``scope`` on the ``sqlperf.integrations`` logger.

    The records themselves reach the recorder's sinks when the scope closes; the
    log line makes them visible where developers look first. The fields are also
    on the log record (``extra``) as ``sqlperf_request_id``, ``sqlperf_fingerprint``,
    ``sqlperf_fingerprint_id``, ``sqlperf_call_site`` and ``sqlperf_count``.
    """
    for record in scope.suspects:
        logger.warning(
            "N+1 suspect in request %s: %s ran %d times (%.3f ms) from %s",
            record.request_id,
            record.fingerprint,
            record.count,
            record.duration_ms,
            record.call_site or "an unknown call site",
            extra={
                "sqlperf_request_id": record.request_id,
                "sqlperf_fingerprint": record.fingerprint,
                "sqlperf_fingerprint_id": record.fingerprint_id,
                "sqlperf_call_site": record.call_site,
                "sqlperf_count": record.count,
            },
        )


class HeadersLike(Protocol):
    """The part of a response's header mapping that :meth:`RequestState.write_headers` uses
    (werkzeug's ``Headers``; the ASGI middleware writes the raw header list itself)."""

    def getlist(self, key: str) -> list[str]: ...

    def __setitem__(self, key: str, value: str) -> None: ...


class ResponseHeaders(NamedTuple):
    """Headers for the response: ``replace`` each one's values, ``append`` these lines."""

    replace: list[tuple[str, str]]
    append: list[tuple[str, str]]


class Integration:
    """The options of one adapter and the session factory its requests share.

    Args: as :class:`sqlperf.integrations.flask.Sqlperf`. ``session_options`` may
    name ``class_``, a :class:`~sqlperf.RoutingSession` subclass (for instance one a
    :class:`~sqlperf.QueryCache` is installed on); ``primary``, ``replicas`` and
    ``consistency_token`` are the integration's to set.

    Raises:
        ConfigurationError: a bad option. A session is made (and closed, without
            any I/O) at once, so that a bad engine or session option fails at
            start-up rather than on the first request.
    """

    def __init__(  # noqa: PLR0917 - the adapters' options, in their order
        self,
        primary: Engine,
        replicas: Sequence[Engine],
        recorder: QueryRecorder | None,
        cache: QueryCache | None,
        session_options: Mapping[str, Any] | None,
        token_header: str,
        token_cookie: str,
        token_max_age: int,
    ) -> None:
        if recorder is not None and not isinstance(recorder, QueryRecorder):
            raise ConfigurationError(f"recorder must be a QueryRecorder, not {recorder!r}")
        if cache is not None and not isinstance(cache, QueryCache):
            raise ConfigurationError(f"cache must be a QueryCache, not {cache!r}")
        for what, name in (("token_header", token_header), ("token_cookie", token_cookie)):
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                raise ConfigurationError(f"{what} must be a header/cookie name, not {name!r}")
        if not isinstance(token_max_age, int) or token_max_age < 1:
            raise ConfigurationError(f"token_max_age must be >= 1 second, not {token_max_age!r}")
        options = dict(session_options or {})
        session_class = options.pop("class_", RoutingSession)
        if not (isinstance(session_class, type) and issubclass(session_class, RoutingSession)):
            raise ConfigurationError(
                "session_options['class_'] must be a RoutingSession subclass, "
                f"not {session_class!r}"
            )
        taken = sorted({"primary", "replicas", "consistency_token"} & options.keys())
        if taken:
            raise ConfigurationError(
                f"session_options cannot set {', '.join(taken)}: the integration sets them"
            )
        self.recorder = recorder
        self.token_header = token_header
        self.token_cookie = token_cookie
        self.token_max_age = token_max_age
        self.sessionmaker: sessionmaker[RoutingSession] = sessionmaker(
            class_=session_class, primary=primary, replicas=list(replicas), **options
        )
        self.sessionmaker().close()  # RoutingSession checks its options; no connection
        self.cache = cache
        self._undo: list[Callable[[], None]] = []
        if cache is not None:
            cache.install(self.sessionmaker)
            self._undo.append(lambda: cache.uninstall(self.sessionmaker))
            if recorder is not None:
                # Hits answered in the session reach no engine event: count them.
                self._undo.append(recorder.count_cache_hits(cache))

    def close(self) -> None:
        """Undo what this integration set up on the cache and recorder (idempotent)."""
        while self._undo:
            self._undo.pop()()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(recorder={self.recorder!r}, cache={self.cache!r}, token_header="
            f"{self.token_header!r}, token_cookie={self.token_cookie!r}, "
            f"token_max_age={self.token_max_age})"
        )

    def begin(
        self,
        *,
        request_id: str | None = None,
        token_header: str | None = None,
        cookie_header: str | None = None,
        secure: bool = False,
    ) -> RequestState:
        """The state of a request with these raw header values (``None`` when absent)."""
        return RequestState(
            self,
            request_id=choose_request_id(request_id),
            incoming=incoming_token(token_header, cookie_header, self.token_cookie),
            secure=secure,
        )


class RequestState:
    """One request: its id, recorder scope, routing sessions and consistency token.

    The sessions may be opened, used and closed on other threads than the one
    that reads the outgoing token at the start of the response (an ASGI server's
    thread pool); a lock keeps those two apart.
    """

    def __init__(
        self,
        integration: Integration,
        *,
        request_id: str,
        incoming: ConsistencyToken | None,
        secure: bool,
    ) -> None:
        self.integration = integration
        self.request_id = request_id
        self.secure = secure
        #: The recorder's scope while the request runs (``None`` without a recorder).
        self.scope: Scope | None = None
        self._incoming = incoming
        self._received = None if incoming is None else str(incoming)
        self._sessions: list[RoutingSession] = []
        self._closed_token: ConsistencyToken | None = None  # of the sessions already closed
        self._lock = threading.Lock()
        self._scope_context: AbstractContextManager[Scope] | None = None

    def __repr__(self) -> str:
        return f"RequestState(request_id={self.request_id!r}, sessions={len(self._sessions)})"

    def open_scope(self, **tags: str) -> None:
        """Open the recorder's scope for this request, in the calling context."""
        recorder = self.integration.recorder
        if recorder is not None and self.scope is None:
            self._scope_context = recorder.scope(request_id=self.request_id, **tags)
            self.scope = self._scope_context.__enter__()

    def name_endpoint(self, endpoint: str) -> None:
        """Set the scope's ``endpoint`` tag (to the route's template once routing is done),
        for the records written from now on."""
        if self.scope is not None:
            self.scope.tags["endpoint"] = endpoint

    def open_session(self) -> RoutingSession:
        """A new routing session whose reads see the request's incoming token."""
        session = self.integration.sessionmaker()
        if self._incoming is not None:
            session.require(self._incoming)
        with self._lock:
            self._sessions.append(session)
        return session

    def session(self) -> RoutingSession:
        """The request's session: the first one still open, or a new one."""
        with self._lock:
            if self._sessions:
                return self._sessions[0]
        return self.open_session()

    @property
    def token_needs_io(self) -> bool:
        """Whether :meth:`outgoing_token` may query the primary: an open session's
        transaction that wrote has ended, and its commit's WAL position is still to
        be read (:attr:`RoutingSession.token_needs_io <sqlperf.RoutingSession.token_needs_io>`)."""
        return any(s.token_needs_io for s in self._sessions)

    def sessions_need_io(self) -> bool:
        """Whether :meth:`close_sessions` may do I/O: a session is in a transaction (its
        connection is rolled back and returned), or its token needs the WAL position of
        a commit that wrote."""
        return any(s.get_transaction() is not None or s.token_needs_io for s in self._sessions)

    def close_session(self, session: RoutingSession) -> None:
        """Keep ``session``'s final token for the response, then close it."""
        with self._lock:
            if session not in self._sessions:
                return
            self._sessions.remove(session)
            self._closed_token = _newer(self._closed_token, _final_token(session))
        session.close()

    def close_sessions(self) -> None:
        """:meth:`close_session` for every open session."""
        for session in list(self._sessions):
            self.close_session(session)

    def outgoing_token(self) -> str | None:
        """The token to send back: the newest of the request's sessions, if a commit
        that wrote made it newer than the one the request came with; else ``None``.

        It may take one round trip to the primary (the commit's WAL position).
        """
        with self._lock:
            token = self._closed_token
            for session in self._sessions:
                token = _newer(token, _final_token(session))
        if token is None:
            return None
        text = str(token)
        return None if text == self._received else text

    def write_headers(
        self, headers: HeadersLike, token: str | None, *, add: Callable[[str, str], None]
    ) -> None:
        """Write :meth:`response_headers` into a framework's mutable ``headers``;
        ``add`` appends one header line (werkzeug's ``Headers.add``)."""
        extra = self.response_headers(headers.getlist(SERVER_TIMING_HEADER), token)
        for name, value in extra.replace:
            headers[name] = value
        for name, value in extra.append:
            add(name, value)

    def response_headers(self, app_timing: Sequence[str], token: str | None) -> ResponseHeaders:
        """The headers to add: the request id, the token (header and cookie), and
        ``Server-Timing`` (after the values in ``app_timing``) when there is a scope.

        Call it after :meth:`outgoing_token`, whose round trip then counts in the
        ``db`` metric.
        """
        integration = self.integration
        replace = [(REQUEST_ID_HEADER, self.request_id)]
        append = []
        if token is not None:
            replace.append((integration.token_header, token))
            cookie = format_cookie(
                integration.token_cookie,
                token,
                max_age=integration.token_max_age,
                secure=self.secure,
            )
            append.append(("Set-Cookie", cookie))
        if self.scope is not None:
            timing = merge_server_timing(app_timing, server_timing(self.scope))
            replace.append((SERVER_TIMING_HEADER, timing))
        return ResponseHeaders(replace, append)

    def finish(self) -> None:
        """Close the sessions, then the scope (in the context that opened it); log suspects."""
        try:
            self.close_sessions()
        finally:
            scope, context = self.scope, self._scope_context
            self._scope_context = None
            if context is not None:
                context.__exit__(None, None, None)
            if scope is not None and scope.suspects:
                log_suspects(scope)


def _newer(a: ConsistencyToken | None, b: ConsistencyToken | None) -> ConsistencyToken | None:
    if a is None:
        return b
    return a.newer(b)


def _final_token(session: RoutingSession) -> ConsistencyToken | None:
    """``session``'s token, or ``None`` with a warning if the primary cannot say its
    WAL position: the request's own work is done and must not fail for this."""
    try:
        text = session.consistency_token()
    except SQLAlchemyError as err:
        logger.warning("no consistency token for the response: %s", err)
        return None
    return None if text is None else ConsistencyToken.parse(text)
