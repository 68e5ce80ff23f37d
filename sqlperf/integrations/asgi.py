"""sqlperf in a FastAPI or Starlette app: ``app.add_middleware(SqlperfMiddleware, ...)``.

:class:`SqlperfMiddleware` is a plain ASGI middleware (no ``BaseHTTPMiddleware``):
for each ``http`` request it opens the recorder's scope before the application
runs, so that sync endpoints and dependencies, which FastAPI runs in a thread pool
with a copy of the context, count in it too. At the start of the response it adds
``X-Request-ID``, ``Server-Timing`` and, when the request's session committed a
write, the new read-your-writes token (header and cookie). ``lifespan`` and
``websocket`` scopes pass through untouched.

:func:`routing_session` is the FastAPI dependency that hands an endpoint the
request's :class:`~sqlperf.RoutingSession`::

    app = FastAPI()
    app.add_middleware(SqlperfMiddleware, primary=primary, replicas=[replica], recorder=recorder)

    @app.get("/items/{item_id}")
    def read_item(item_id: int, session: RoutingSession = Depends(routing_session)):
        return {"name": session.get(Item, item_id).name}

In plain Starlette, call it: ``session = await routing_session(request)``.

See ``docs/integrations.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

try:
    import anyio
    from starlette.requests import Request
    from starlette.types import ASGIApp, Message, Receive, Send
    from starlette.types import Scope as ASGIScope
except ImportError as err:  # pragma: no cover - exercised only without the extra
    from sqlperf.exceptions import MissingDependency

    raise MissingDependency(
        "starlette", extra="fastapi", purpose="sqlperf.integrations.asgi"
    ) from err

from sqlalchemy import Engine
from sqlalchemy.orm import sessionmaker

from sqlperf.cache.query_cache import QueryCache
from sqlperf.capture.recorder import QueryRecorder
from sqlperf.exceptions import ConfigurationError
from sqlperf.integrations import _threads
from sqlperf.integrations._request import (
    REQUEST_ID_HEADER,
    SERVER_TIMING_HEADER,
    Integration,
    RequestState,
)
from sqlperf.integrations._threads import WorkerThreads, run_in_thread, to_thread
from sqlperf.routing import RoutingSession

__all__ = ["SqlperfMiddleware", "routing_session", "run_in_thread"]

_SERVER_TIMING = SERVER_TIMING_HEADER.lower().encode("latin-1")

#: Where the middleware leaves the request's state: ``scope["state"][STATE_KEY]``
#: (``request.state.sqlperf_request`` in Starlette).
STATE_KEY = "sqlperf_request"


class SqlperfMiddleware:
    """ASGI middleware: request ids, N+1 warnings, ``Server-Timing``, read-your-writes.

    Args:
        app: the ASGI application it wraps (``add_middleware`` passes it).
        primary: the engine that takes writes.
        replicas: engines serving reads (see :class:`~sqlperf.RoutingSession`).
        recorder: a :class:`~sqlperf.capture.QueryRecorder` attached to the engines;
            without one there is no scope, no N+1 report and no ``Server-Timing``
            (request ids and tokens still work).
        cache: a :class:`~sqlperf.QueryCache` to install on the request sessions;
            with a recorder, its hits (those answered in the session too) count in
            ``Server-Timing``. :meth:`close` uninstalls it.
        session_options: more ``RoutingSession`` arguments (``mode``, ``max_lag``,
            ``class_`` for a subclass, any ``Session`` option).
        token_header: the header that carries the consistency token, in and out.
        token_cookie: the cookie that carries it.
        token_max_age: the cookie's ``Max-Age`` in seconds.
        yield_to_threads: after each response, while a worker-thread call of its
            requests is running (:func:`run_in_thread`, or the middleware closing a
            session), give up CPython's GIL once. An event loop busy with requests it
            answers itself (cache hits) otherwise keeps the GIL for whole turns, and
            the worker waits for it after each blocking call: on the example shop,
            cache misses' p99 fell from about 70 ms to about 20 ms. Off: ``False``.
        thread_wait_s: how long :func:`run_in_thread` first waits for its call on the
            event loop, GIL released, before letting the loop go on: a call done by
            then ran without taking turns on the GIL with the loop (a cache miss of the
            example shop on SQLite: about twenty thread switches became five to nine).
            Waiting pauses for a second after three calls in a row that were not done
            in time. ``0``: never wait.
        threads: the size of the pool :func:`run_in_thread` runs calls on (default
            asyncio's, ``min(32, CPUs + 4)``); more threads than connections in the
            pool only wait for one.

    Attributes:
        sessionmaker: the factory of the request sessions.

    Raises:
        ConfigurationError: a bad option (when Starlette builds the middleware stack).

    Example::

        app.add_middleware(SqlperfMiddleware, primary=primary, replicas=[replica],
                           recorder=recorder)
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        primary: Engine,
        replicas: Sequence[Engine] = (),
        recorder: QueryRecorder | None = None,
        cache: QueryCache | None = None,
        session_options: Mapping[str, Any] | None = None,
        token_header: str = "X-Sqlperf-Token",
        token_cookie: str = "sqlperf_token",
        token_max_age: int = 300,
        yield_to_threads: bool = True,
        thread_wait_s: float = 0.003,
        threads: int | None = None,
    ) -> None:
        if not (isinstance(thread_wait_s, (int, float)) and 0 <= thread_wait_s < math.inf):
            raise ConfigurationError(
                f"thread_wait_s must be a number of seconds >= 0, not {thread_wait_s!r}"
            )
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ConfigurationError(f"threads must be a whole number >= 1, not {threads!r}")
        self.app = app
        self._yield_to_threads = yield_to_threads
        self._threads = WorkerThreads(float(thread_wait_s), threads)
        self._integration = Integration(
            primary,
            replicas,
            recorder,
            cache,
            session_options,
            token_header,
            token_cookie,
            token_max_age,
        )
        self.sessionmaker: sessionmaker[RoutingSession] = self._integration.sessionmaker
        self._wanted = {
            REQUEST_ID_HEADER.lower().encode(): "request_id",
            token_header.lower().encode(): "token_header",
            b"cookie": "cookie_header",
        }

    def __repr__(self) -> str:
        return f"SqlperfMiddleware({self._integration!r})"

    def close(self) -> None:
        """Uninstall the ``cache`` from the request sessions, stop counting its hits, and
        let the worker threads end once their calls return."""
        self._integration.close()
        self._threads.close()

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection; only ``http`` scopes are looked at."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        found: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            key = self._wanted.get(raw_name.lower())
            if key is None:
                continue
            value = raw_value.decode("latin-1")
            if key not in found:
                found[key] = value
            elif key == "cookie_header":  # HTTP/2 may split cookies over several lines
                found[key] += "; " + value
        state = self._integration.begin(**found, secure=scope.get("scheme") in ("https", "wss"))
        # A state dict of the request's own: the server's may be shared lifespan state.
        scope = {**scope, "state": {**scope.get("state", {}), STATE_KEY: state}}
        # The path until the router has matched a route; then the route's template.
        state.open_scope(endpoint=scope["path"], method=scope["method"])

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                _name_endpoint(state, scope)  # for the records still to come (N+1)
                message = await _add_headers(state, message)
            await send(message)

        threads = self._threads
        current = _threads.CURRENT.set(threads)
        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            if state.sessions_need_io():  # a rollback, or a token's WAL position: round trips
                with anyio.CancelScope(shield=True):
                    await to_thread(state.close_sessions)
            state.finish()  # here, in the context that opened the scope
            _threads.CURRENT.reset(current)
            if self._yield_to_threads and threads.running:
                _threads.give_way()


def _name_endpoint(state: RequestState, scope: ASGIScope) -> None:
    """Tag the request's scope with its route's path template (``/items/{item_id}``),
    once the router has matched one."""
    path = getattr(scope.get("route"), "path", None)
    if isinstance(path, str):
        state.name_endpoint(path)


async def _add_headers(state: RequestState, message: Message) -> Message:
    """``message`` (an ``http.response.start``) with the request's headers added."""
    if state.token_needs_io:
        # A session ended a transaction: if it wrote, its token needs the commit's
        # WAL position from the primary. Not on the event loop.
        token = await to_thread(state.outgoing_token)
    else:
        token = state.outgoing_token()  # in memory
    raw: list[tuple[bytes, bytes]] = list(message.get("headers", ()))
    # ASGI header names are lower case. One pass over the raw list, rather than
    # Starlette's MutableHeaders (one pass per header set): this runs per response.
    app_timing = [v.decode("latin-1") for k, v in raw if k == _SERVER_TIMING]
    extra = state.response_headers(app_timing, token)
    ours = [(_encode_name(name), value.encode("latin-1")) for name, value in extra.replace]
    replaced = {name for name, _ in ours}
    headers = [item for item in raw if item[0] not in replaced]
    headers += ours
    headers += [(_encode_name(name), value.encode("latin-1")) for name, value in extra.append]
    return {**message, "headers": headers}


def _encode_name(name: str) -> bytes:
    return name.lower().encode("latin-1")


async def routing_session(request: Request) -> RoutingSession:
    """FastAPI dependency: the request's :class:`~sqlperf.RoutingSession`.

    ``session: RoutingSession = Depends(routing_session)``. Its reads see the
    commit named by the request's token; :class:`SqlperfMiddleware` closes it once
    the response is sent (uncommitted work is rolled back), and a commit that wrote
    makes the response carry the new token. FastAPI caches it per request: every
    dependency of one request gets the same session.

    It is an ``async`` function, not a generator, because making a session does
    no I/O and the middleware already ends every request: FastAPI runs it on the
    event loop, with no trip to its thread pool and no exit step. The middleware
    closes the session on a worker thread only when closing may do I/O (it holds a
    connection, or must ask the primary for a new token); a request answered from
    the cache, or never using its session, stays on the loop.

    In plain Starlette, call it: ``session = await routing_session(request)``.

    Raises:
        ConfigurationError: the app has no :class:`SqlperfMiddleware`.

    Example::

        @app.post("/items")
        def add_item(name: str, session: RoutingSession = Depends(routing_session)):
            session.add(Item(name=name))
            session.commit()
    """
    state = request.scope.get("state", {}).get(STATE_KEY)
    if not isinstance(state, RequestState):
        raise ConfigurationError(
            "routing_session needs SqlperfMiddleware: "
            "app.add_middleware(SqlperfMiddleware, primary=engine, ...)"
        )
    _name_endpoint(state, request.scope)  # routed by now: before the endpoint's statements
    return state.open_session()
