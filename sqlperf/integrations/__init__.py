"""Web framework integrations: sqlperf wired into a request/response cycle in one line.

* :mod:`sqlperf.integrations.flask`: ``Sqlperf(app, primary=engine, replicas=[replica],
  recorder=recorder)``, the request's session as ``sqlperf.session`` (extra ``flask``).
* :mod:`sqlperf.integrations.asgi`: ``app.add_middleware(SqlperfMiddleware,
  primary=engine, ...)`` and the FastAPI dependency ``Depends(routing_session)``
  (extra ``fastapi``).

Each request gets a recorder scope with its ``X-Request-ID``, a ``Server-Timing``
header with its database time, query count and cache hits, a WARNING per N+1 suspect
on the ``sqlperf.integrations`` logger, and read-your-writes across requests through
the ``X-Sqlperf-Token`` header or ``sqlperf_token`` cookie. See ``docs/integrations.md``.

This package imports no web framework; only its submodules do, and each raises
:class:`~sqlperf.exceptions.MissingDependency` when its framework is not installed.
"""

__all__: list[str] = []
