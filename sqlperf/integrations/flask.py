"""sqlperf in a Flask app, in one line: ``Sqlperf(app, primary=engine, ...)``.

Per request the extension

* opens a :meth:`QueryRecorder.scope <sqlperf.capture.QueryRecorder.scope>` whose
  request id is the ``X-Request-ID`` header (or a new one), echoed in the response;
* hands out one :class:`~sqlperf.RoutingSession` as :attr:`Sqlperf.session`, made on
  first use and closed when the request is torn down;
* carries the session's read-your-writes token between the requests of one client
  (``X-Sqlperf-Token`` header or ``sqlperf_token`` cookie, in and out);
* adds ``Server-Timing: db;dur=...;desc="<n> queries", cache;desc="<n> hits"``;
* logs a WARNING per N+1 suspect on the ``sqlperf.integrations`` logger.

See ``docs/integrations.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

try:
    import flask
except ImportError as err:  # pragma: no cover - exercised only without the extra
    from sqlperf.exceptions import MissingDependency

    raise MissingDependency("flask", extra="flask", purpose="sqlperf.integrations.flask") from err

from sqlalchemy import Engine
from sqlalchemy.orm import sessionmaker

from sqlperf.cache.query_cache import QueryCache
from sqlperf.capture.recorder import QueryRecorder
from sqlperf.exceptions import ConfigurationError
from sqlperf.integrations._request import (
    REQUEST_ID_HEADER,
    Integration,
    RequestState,
)
from sqlperf.routing import RoutingSession

__all__ = ["Sqlperf"]

_ENVIRON_KEY = "sqlperf.request"
_FINISHED_KEY = "sqlperf.finished"


class Sqlperf:
    """The Flask extension: request ids, N+1 warnings, ``Server-Timing``, read-your-writes.

    Args:
        app: the app to set up now; or call :meth:`init_app` later (app factories).
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

    Attributes:
        sessionmaker: the factory of the request sessions (for example for
            ``QueryCache.install``).

    Raises:
        ConfigurationError: a bad option.

    Example::

        app = Flask(__name__)
        sqlperf = Sqlperf(app, primary=primary, replicas=[replica], recorder=recorder)

        @app.post("/items")
        def add_item():
            sqlperf.session.add(Item(name=request.form["name"]))
            sqlperf.session.commit()  # the response carries the new token
            return "", 201
    """

    def __init__(
        self,
        app: flask.Flask | None = None,
        *,
        primary: Engine,
        replicas: Sequence[Engine] = (),
        recorder: QueryRecorder | None = None,
        cache: QueryCache | None = None,
        session_options: Mapping[str, Any] | None = None,
        token_header: str = "X-Sqlperf-Token",
        token_cookie: str = "sqlperf_token",
        token_max_age: int = 300,
    ) -> None:
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
        if app is not None:
            self.init_app(app)

    def __repr__(self) -> str:
        return f"Sqlperf({self._integration!r})"

    def close(self) -> None:
        """Uninstall the ``cache`` from the request sessions and stop counting its hits."""
        self._integration.close()

    def init_app(self, app: flask.Flask) -> None:
        """Register the request hooks on ``app``; ``app.extensions["sqlperf"]`` is this object.

        Raises:
            ConfigurationError: ``app`` already has another ``Sqlperf``.
        """
        other = app.extensions.get("sqlperf")
        if other is self:
            return
        if other is not None:
            raise ConfigurationError(f"{app!r} already has a Sqlperf extension")
        app.before_request(self._before_request)
        app.after_request(self._after_request)
        app.teardown_request(self._teardown_request)
        app.extensions["sqlperf"] = self

    @property
    def session(self) -> RoutingSession:
        """The current request's :class:`~sqlperf.RoutingSession`, made on first use.

        Its reads see the commit named by the request's token; it is closed when
        the request is torn down (uncommitted work is rolled back).

        Raises:
            ConfigurationError: outside a request of an app this extension set up.
        """
        return self._state().session()

    # -- the hooks ----------------------------------------------------------------------

    def _state(self) -> RequestState:
        """The request's state, begun now if no hook has yet (a before_request
        function registered ahead of ours may already use the session)."""
        if not flask.has_request_context():
            raise ConfigurationError(
                "Sqlperf.session is only available while a Flask request is handled"
            )
        request = flask.request
        state: RequestState | None = request.environ.get(_ENVIRON_KEY)
        if state is not None and state.integration is self._integration:
            return state
        if request.environ.get(_FINISHED_KEY) is self._integration:
            raise ConfigurationError("Sqlperf.session is closed: the request was torn down")
        if flask.current_app.extensions.get("sqlperf") is not self:
            raise ConfigurationError(
                "this Sqlperf was not set up on the current app: call init_app(app)"
            )
        headers = request.headers
        state = self._integration.begin(
            request_id=headers.get(REQUEST_ID_HEADER),
            token_header=headers.get(self._integration.token_header),
            cookie_header=headers.get("Cookie"),
            secure=request.is_secure,
        )
        request.environ[_ENVIRON_KEY] = state
        rule = request.url_rule
        state.open_scope(
            endpoint=rule.rule if rule is not None else request.path, method=request.method
        )
        return state

    def _before_request(self) -> None:
        self._state()

    def _after_request(self, response: flask.Response) -> flask.Response:
        state: RequestState | None = flask.request.environ.get(_ENVIRON_KEY)
        if state is None or state.integration is not self._integration:
            return response
        token = state.outgoing_token()  # before Server-Timing: its round trip counts
        state.write_headers(response.headers, token, add=response.headers.add)
        return response

    def _teardown_request(self, exc: BaseException | None) -> None:
        state: RequestState | None = flask.request.environ.get(_ENVIRON_KEY)
        if state is not None and state.integration is self._integration:
            environ = flask.request.environ
            del environ[_ENVIRON_KEY]
            environ[_FINISHED_KEY] = self._integration
            state.finish()
