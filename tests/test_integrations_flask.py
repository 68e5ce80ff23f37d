"""sqlperf.integrations.flask against the real PostgreSQL primary, its replica and Redis.

The harness (recorder, statement counter, Server-Timing parser, Redis cache) is
``tests/web_harness.py``, shared with ``test_integrations_asgi.py``; the cluster
fixture (a fresh table on the primary, replayed on the replica) and the replay
pause are ``tests/replica_cluster.py``'s.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import flask
import pytest
from sqlalchemy import Engine, select, text

from sqlperf import ConfigurationError, ConsistencyToken, QueryCache, cached
from sqlperf.capture import QueryRecorder
from sqlperf.integrations._request import (
    choose_request_id,
    cookie_value,
    format_cookie,
    incoming_token,
    merge_server_timing,
)
from sqlperf.integrations.flask import Sqlperf
from tests.replica_cluster import PORT, Cluster, pause_replay, resume_replay
from tests.web_harness import (
    TOKEN,
    counting,
    parse_timing,
    records_of,
    timed,
)

# -- the app --------------------------------------------------------------------------


def make_app(
    pg: Cluster,
    recorder: QueryRecorder | None,
    **options: Any,
) -> tuple[flask.Flask, Sqlperf]:
    app = flask.Flask(__name__)
    ext = Sqlperf(app, primary=pg.primary, replicas=[pg.replica], recorder=recorder, **options)
    Item: Any = pg.model
    table = Item.__table__

    @app.get("/items/<int:item_id>")
    def read_item(item_id: int) -> dict[str, Any]:
        session = ext.session
        name = session.scalar(select(Item.name).where(Item.id == item_id))
        return {"name": name, "port": session.scalar(PORT)}

    @app.post("/items")
    def add_item() -> tuple[dict[str, Any], int]:
        body = flask.request.get_json()
        ext.session.add(Item(id=body["id"], name=body["name"]))
        ext.session.commit()
        return {"id": body["id"]}, 201

    @app.get("/loop/<int:n>")
    def loop(n: int) -> dict[str, Any]:
        names = [ext.session.scalar(select(Item.name).where(Item.id == i)) for i in range(n)]
        return {"n": len(names)}

    @app.get("/cached")
    def cached_read() -> dict[str, Any]:
        stmt = select(table.c.name).where(table.c.id == 1).options(cached())
        return {"names": ext.session.scalars(stmt).all()}

    @app.get("/own-timing")
    def own_timing() -> flask.Response:
        ext.session.scalar(PORT)
        response = flask.make_response("ok")
        response.headers["Server-Timing"] = 'app;dur=1.5;desc="render"'
        return response

    return app, ext


# -- request ids ------------------------------------------------------------------------


def test_request_id_reaches_the_records_and_is_echoed(pg: Cluster, recorder: QueryRecorder):
    app, _ = make_app(pg, recorder)
    client = app.test_client()
    with counting(pg.primary, pg.replica) as seen:
        response = client.get("/items/1", headers={"X-Request-ID": "abc"})
    assert response.status_code == 200
    assert response.headers["X-Request-ID"] == "abc"
    # slow_ms=0: each statement of the request is a record carrying its id.
    slow = records_of(recorder, "abc", "slow")
    assert len(slow) == len(seen) >= 2
    assert json.loads(slow[0].tags or "{}") == {"endpoint": "/items/<int:item_id>", "method": "GET"}


def test_request_id_is_generated_when_missing_or_unusable(
    pg: Cluster,
    recorder: QueryRecorder,
):
    app, _ = make_app(pg, recorder)
    client = app.test_client()
    ids = []
    for headers in ({}, {"X-Request-ID": "two words"}, {"X-Request-ID": "x" * 201}):
        response = client.get("/items/1", headers=headers)
        request_id = response.headers["X-Request-ID"]
        assert re.fullmatch(r"[0-9a-f]{32}", request_id)
        assert records_of(recorder, request_id, "slow")
        ids.append(request_id)
    assert len(set(ids)) == 3


# -- Server-Timing ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/items/1", None),
        ("GET", "/loop/3", None),
        ("POST", "/items", {"id": 7, "name": "seven"}),  # the token's LSN query counts too
    ],
)
def test_server_timing_counts_the_requests_statements(
    pg: Cluster,
    recorder: QueryRecorder,
    method: str,
    path: str,
    body: dict[str, Any] | None,
):
    app, _ = make_app(pg, recorder)
    client = app.test_client()
    with counting(pg.primary, pg.replica) as seen:
        response, wall_ms = timed(lambda: client.open(path, method=method, json=body))
    assert response.status_code in (200, 201)
    timing = parse_timing(response.headers.get("Server-Timing"))
    assert timing.queries == len(seen) > 0, seen
    assert 0 < timing.dur_ms <= wall_ms
    assert timing.hits == 0


def test_server_timing_is_appended_to_the_apps_own(pg: Cluster, recorder: QueryRecorder):
    app, _ = make_app(pg, recorder)
    response = app.test_client().get("/own-timing")
    header = response.headers["Server-Timing"]
    assert header.startswith('app;dur=1.5;desc="render", db;dur=')
    assert parse_timing(header).queries >= 1
    assert len(response.headers.getlist("Server-Timing")) == 1


def test_server_timing_counts_result_cache_hits(
    pg: Cluster,
    recorder: QueryRecorder,
    query_cache: QueryCache,
):
    app, ext = make_app(pg, recorder, cache=query_cache)
    client = app.test_client()
    first = parse_timing(client.get("/cached").headers.get("Server-Timing"))
    with counting(pg.primary, pg.replica) as seen:
        second = parse_timing(client.get("/cached").headers.get("Server-Timing"))
    assert (first.queries, first.hits) == (1, 0)
    # Answered in the session, before any connection: no statement, one hit.
    assert (second.queries, second.hits) == (len(seen), 1) == (0, 1)
    assert query_cache.stats().hits == 1
    ext.close()  # uninstalled: the session runs the query (the engine's entry is its own)
    with counting(pg.primary, pg.replica) as seen:
        third = parse_timing(client.get("/cached").headers.get("Server-Timing"))
    assert (third.queries, third.hits) == (len(seen), 0)
    assert any(pg.table in sql for sql in seen)
    assert query_cache.stats().hits == 1


# -- read-your-writes -------------------------------------------------------------------


def test_read_your_writes_across_requests_while_replay_is_paused(
    pg: Cluster,
    recorder: QueryRecorder,
):
    app, _ = make_app(pg, recorder)
    writer = app.test_client()
    assert writer.get("/items/10").json == {"name": None, "port": 5433}  # warm
    pause_replay(pg.replica)
    try:
        posted = writer.post("/items", json={"id": 10, "name": "fresh"})
        assert posted.status_code == 201
        token = posted.headers["X-Sqlperf-Token"]
        assert TOKEN.fullmatch(token)
        (set_cookie,) = posted.headers.getlist("Set-Cookie")
        assert set_cookie == f"sqlperf_token={token}; Max-Age=300; Path=/; HttpOnly; SameSite=Lax"
        cookie = writer.get_cookie("sqlperf_token")
        assert cookie is not None
        assert cookie.value == token
        # The same client (its cookie): the new row, from the primary (the replica is paused).
        again = writer.get("/items/10")
        assert again.json == {"name": "fresh", "port": 5432}
        assert "Set-Cookie" not in again.headers  # no write: nothing new to send
        assert "X-Sqlperf-Token" not in again.headers
        # Another client without the cookie reads the paused replica: the token is what matters.
        other = app.test_client()
        assert other.get("/items/10").json == {"name": None, "port": 5433}
        # The header works as well as the cookie.
        with_header = other.get("/items/10", headers={"X-Sqlperf-Token": token})
        assert with_header.json == {"name": "fresh", "port": 5432}
        # A broken token is ignored, not an error.
        broken = app.test_client()
        broken.set_cookie("sqlperf_token", "v1:nonsense")
        response = broken.get("/items/10", headers={"X-Sqlperf-Token": "garbage"})
        assert response.status_code == 200
        assert response.json == {"name": None, "port": 5433}
    finally:
        resume_replay(pg.replica)


# -- N+1 --------------------------------------------------------------------------------


def test_n_plus_one_is_recorded_and_logged(
    pg: Cluster,
    recorder: QueryRecorder,
    caplog: pytest.LogCaptureFixture,
):
    app, _ = make_app(pg, recorder)
    caplog.set_level(logging.WARNING, logger="sqlperf.integrations")
    response = app.test_client().get("/loop/6", headers={"X-Request-ID": "n1-flask"})
    assert response.status_code == 200
    (suspect,) = records_of(recorder, "n1-flask", "n_plus_one")
    assert suspect.count == 6
    assert suspect.call_site is not None
    assert "test_integrations_flask.py" in suspect.call_site
    warnings = [r for r in caplog.records if r.name == "sqlperf.integrations"]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert warnings[0].levelno == logging.WARNING
    for part in ("n1-flask", suspect.fingerprint, suspect.call_site, "6 times"):
        assert part in message
    # Fewer repeats than the threshold: nothing.
    caplog.clear()
    app.test_client().get("/loop/2", headers={"X-Request-ID": "few"})
    assert not records_of(recorder, "few", "n_plus_one")
    assert not [r for r in caplog.records if r.name == "sqlperf.integrations"]


# -- without servers --------------------------------------------------------------------


@pytest.fixture
def sqlite_app(
    sqlite_file_url: str, make_engine: Callable[..., Engine]
) -> tuple[flask.Flask, Sqlperf]:
    """An app on one SQLite engine and no recorder."""
    app = flask.Flask(__name__)
    ext = Sqlperf(app, primary=make_engine(sqlite_file_url))

    @app.get("/")
    def index() -> str:
        return str(ext.session.scalar(text("SELECT 1")))

    return app, ext


def test_without_a_recorder_ids_are_echoed_and_server_timing_is_left_alone(
    sqlite_app: tuple[flask.Flask, Sqlperf], caplog: pytest.LogCaptureFixture
):
    app, ext = sqlite_app
    caplog.set_level(logging.DEBUG, logger="sqlperf.integrations")
    client = app.test_client()
    client.set_cookie("sqlperf_token", "garbage")
    response = client.get("/", headers={"X-Request-ID": "r-1", "X-Sqlperf-Token": "v1:x:y"})
    assert response.status_code == 200
    assert response.text == "1"
    assert response.headers["X-Request-ID"] == "r-1"
    assert "Server-Timing" not in response.headers
    assert "Set-Cookie" not in response.headers
    ignored = [r.getMessage() for r in caplog.records if r.name == "sqlperf.integrations"]
    assert ignored == [
        "ignoring an invalid consistency token in the header: 'v1:x:y'",
        "ignoring an invalid consistency token in the cookie: 'garbage'",
    ]
    assert app.extensions["sqlperf"] is ext


def test_session_outside_a_request_and_bad_options(
    sqlite_app: tuple[flask.Flask, Sqlperf], sqlite_memory_url: str
):
    app, ext = sqlite_app
    with pytest.raises(ConfigurationError, match="only available while a Flask request"):
        _ = ext.session
    with app.app_context(), pytest.raises(ConfigurationError, match="only available"):
        _ = ext.session
    engine = ext.sessionmaker.kw["primary"]
    with pytest.raises(ConfigurationError, match="already has a Sqlperf"):
        Sqlperf(app, primary=engine)
    with pytest.raises(ConfigurationError, match="token_max_age"):
        Sqlperf(primary=engine, token_max_age=0)
    with pytest.raises(ConfigurationError, match="token_cookie"):
        Sqlperf(primary=engine, token_cookie="bad name")
    with pytest.raises(ConfigurationError, match="cannot set replicas"):
        Sqlperf(primary=engine, session_options={"replicas": []})
    with pytest.raises(ConfigurationError, match="primary must be an Engine"):
        Sqlperf(primary=sqlite_memory_url)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="RoutingSession subclass"):
        Sqlperf(primary=engine, session_options={"class_": dict})
    with pytest.raises(ConfigurationError, match="cache must be a QueryCache"):
        Sqlperf(primary=engine, cache=object())  # type: ignore[arg-type]


def test_app_factory_and_the_session_lifecycle(sqlite_file_url: str, make_engine: Any):
    ext = Sqlperf(primary=make_engine(sqlite_file_url))
    app = flask.Flask(__name__)
    ext.init_app(app)
    ext.init_app(app)  # again: nothing changes
    seen: list[Any] = []

    @app.get("/")
    def index() -> str:
        session = ext.session
        assert ext.session is session  # one session per request
        seen.append(session)
        return "ok"

    @app.teardown_request
    def after_ours(exc: BaseException | None) -> None:
        # Registered after init_app, so it runs before the extension's teardown.
        seen.append(ext.session)

    client = app.test_client()
    client.get("/")
    client.get("/")
    assert seen[0] is seen[1]
    assert seen[2] is not seen[0]  # the next request has its own
    assert seen[0].get_transaction() is None  # closed at teardown


# -- the shared helpers -----------------------------------------------------------------


def test_request_helpers():
    assert choose_request_id("  abc-1:2/3  ") == "abc-1:2/3"
    assert choose_request_id("a\nb") != "a\nb"
    assert cookie_value("a=1; sqlperf_token=v1:2.0:-; b=2", "sqlperf_token") == "v1:2.0:-"
    assert cookie_value("xsqlperf_token=1", "sqlperf_token") is None
    assert cookie_value(None, "sqlperf_token") is None
    older = ConsistencyToken(100.0, 0x10)
    newer = ConsistencyToken(200.0, 0x20)
    assert incoming_token(str(older), f"sqlperf_token={newer}", "sqlperf_token") == newer
    assert incoming_token("v1:" + "9" * 200 + ":-", None, "sqlperf_token") is None
    assert incoming_token("", "", "sqlperf_token") is None
    assert format_cookie("t", "v", max_age=60, secure=True) == (
        "t=v; Max-Age=60; Path=/; HttpOnly; SameSite=Lax; Secure"
    )
    assert merge_server_timing(["a;dur=1", " ", "b"], "db;dur=2") == "a;dur=1, b, db;dur=2"


def test_importing_sqlperf_imports_no_web_framework():
    code = (
        "import sys, sqlperf, sqlperf.integrations; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'flask', 'werkzeug', 'fastapi', 'starlette', 'anyio'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
