"""sqlperf.integrations.asgi in a FastAPI app against the real primary, replica and Redis.

The harness (recorder, statement counter, Server-Timing parser, Redis cache) is
``tests/web_harness.py``; the cluster and the replay pause are
``tests/replica_cluster.py``'s. Every behaviour is checked through ``def`` and
``async def`` endpoints: FastAPI runs the first in a thread pool with a copy of the
context, and the middleware closes the session only after the response has been
sent.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import re
import threading
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any

import anyio
import httpx
import pytest
from fastapi import Depends, FastAPI, Response, WebSocket
from pydantic import BaseModel
from sqlalchemy import Engine, create_engine, select, text
from starlette.exceptions import StarletteDeprecationWarning

from sqlperf import ConfigurationError, QueryCache, RoutingSession, cached
from sqlperf.capture import QueryRecorder
from sqlperf.integrations import _threads
from sqlperf.integrations.asgi import SqlperfMiddleware, routing_session, run_in_thread
from tests.replica_cluster import (
    PORT,
    Cluster,
    pause_replay,
    resume_replay,
)
from tests.web_harness import (
    TOKEN,
    counting,
    parse_timing,
    records_of,
    timed,
)

with warnings.catch_warnings():
    # Starlette 1.x prefers httpx2 for its TestClient; httpx is what the project installs.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

SessionDep = Annotated[RoutingSession, Depends(routing_session)]


class NewItem(BaseModel):
    id: int
    name: str


# -- the app: each route as a sync and an async endpoint ----------------------------------


def make_app(
    pg: Cluster,
    recorder: QueryRecorder | None,
    **options: Any,
) -> FastAPI:
    app = FastAPI()
    app.add_middleware(
        SqlperfMiddleware,
        primary=pg.primary,
        replicas=[pg.replica],
        recorder=recorder,
        **options,
    )
    Item: Any = pg.model
    table = Item.__table__

    def read(session: RoutingSession, item_id: int) -> dict[str, Any]:
        name = session.scalar(select(Item.name).where(Item.id == item_id))
        return {"name": name, "port": session.scalar(PORT)}

    def add(session: RoutingSession, item: NewItem) -> dict[str, Any]:
        session.add(Item(id=item.id, name=item.name))
        session.commit()
        return {"id": item.id}

    def loop(session: RoutingSession, n: int) -> dict[str, Any]:
        names = [session.scalar(select(Item.name).where(Item.id == i)) for i in range(n)]
        return {"n": len(names)}

    @app.get("/sync/items/{item_id}")
    def read_sync(item_id: int, session: SessionDep) -> dict[str, Any]:
        return read(session, item_id)

    @app.get("/async/items/{item_id}")
    async def read_async(item_id: int, session: SessionDep) -> dict[str, Any]:
        return read(session, item_id)

    @app.post("/sync/items", status_code=201)
    def add_sync(item: NewItem, session: SessionDep) -> dict[str, Any]:
        return add(session, item)

    @app.post("/async/items", status_code=201)
    async def add_async(item: NewItem, session: SessionDep) -> dict[str, Any]:
        return add(session, item)

    @app.post("/early/items", status_code=201)  # the endpoint closes its session itself
    def add_early(item: NewItem, session: SessionDep) -> dict[str, Any]:
        try:
            return add(session, item)
        finally:
            session.close()

    @app.get("/sync/loop/{n}")
    def loop_sync(n: int, session: SessionDep) -> dict[str, Any]:
        return loop(session, n)

    @app.get("/async/loop/{n}")
    async def loop_async(n: int, session: SessionDep) -> dict[str, Any]:
        return loop(session, n)

    @app.get("/cached")
    def cached_read(session: SessionDep) -> dict[str, Any]:
        stmt = select(table.c.name).where(table.c.id == 1).options(cached())
        return {"names": session.scalars(stmt).all()}

    @app.get("/own-timing")
    async def own_timing(response: Response, session: SessionDep) -> str:
        session.scalar(PORT)
        response.headers["Server-Timing"] = 'app;dur=1.5;desc="render"'
        return "ok"

    @app.websocket("/ws")
    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(await websocket.receive_text())
        await websocket.close()

    return app


@pytest.fixture
def client_for() -> Iterator[Callable[[FastAPI], TestClient]]:
    """TestClients (lifespan started) that are all closed at teardown."""
    opened: list[TestClient] = []

    def make(app: FastAPI) -> TestClient:
        client = TestClient(app)
        client.__enter__()
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)


KINDS = ["sync", "async"]


# -- request ids ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_request_id_reaches_the_records_and_is_echoed(
    pg: Cluster,
    recorder: QueryRecorder,
    client_for: Callable[[FastAPI], TestClient],
    kind: str,
):
    client = client_for(make_app(pg, recorder))
    with counting(pg.primary, pg.replica) as seen:
        response = client.get(f"/{kind}/items/1", headers={"X-Request-ID": f"abc-{kind}"})
    assert response.status_code == 200
    assert response.headers["X-Request-ID"] == f"abc-{kind}"
    slow = records_of(recorder, f"abc-{kind}", "slow")
    assert len(slow) == len(seen) >= 2
    # The route's template, set before the endpoint's first statement: every record has it.
    for record in slow:
        tags = json.loads(record.tags or "{}")
        assert tags == {"endpoint": f"/{kind}/items/{{item_id}}", "method": "GET"}
    # Without the header: a new id, echoed, on the records.
    generated = client.get(f"/{kind}/items/1").headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    assert records_of(recorder, generated, "slow")


# -- Server-Timing ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/sync/items/1", None),
        ("GET", "/async/items/1", None),
        ("GET", "/sync/loop/3", None),
        ("GET", "/async/loop/3", None),
        ("POST", "/sync/items", {"id": 7, "name": "seven"}),  # the token's LSN query counts
        ("POST", "/async/items", {"id": 8, "name": "eight"}),
        ("POST", "/early/items", {"id": 9, "name": "nine"}),
    ],
)
def test_server_timing_counts_the_requests_statements(  # noqa: PLR0917 - fixtures, parameters
    pg: Cluster,
    recorder: QueryRecorder,
    client_for: Callable[[FastAPI], TestClient],
    method: str,
    path: str,
    body: dict[str, Any] | None,
):
    client = client_for(make_app(pg, recorder))
    with counting(pg.primary, pg.replica) as seen:
        response, wall_ms = timed(lambda: client.request(method, path, json=body))
    assert response.status_code in (200, 201)
    timing = parse_timing(response.headers.get("Server-Timing"))
    assert timing.queries == len(seen) > 0, seen
    assert 0 < timing.dur_ms <= wall_ms
    assert timing.hits == 0


def test_server_timing_is_appended_to_the_apps_own(
    pg: Cluster,
    recorder: QueryRecorder,
    client_for: Callable[[FastAPI], TestClient],
):
    response = client_for(make_app(pg, recorder)).get("/own-timing")
    header = response.headers["Server-Timing"]
    assert header.startswith('app;dur=1.5;desc="render", db;dur=')
    assert parse_timing(header).queries >= 1
    assert len(response.headers.get_list("Server-Timing")) == 1


def test_server_timing_counts_result_cache_hits(
    pg: Cluster,
    recorder: QueryRecorder,
    query_cache: QueryCache,
    client_for: Callable[[FastAPI], TestClient],
):
    client = client_for(make_app(pg, recorder, cache=query_cache))
    first = parse_timing(client.get("/cached").headers.get("Server-Timing"))
    with counting(pg.primary, pg.replica) as seen:
        second = parse_timing(client.get("/cached").headers.get("Server-Timing"))
    assert (first.queries, first.hits) == (1, 0)
    assert (second.queries, second.hits) == (len(seen), 1) == (0, 1)
    assert query_cache.stats().hits == 1


def test_a_cache_installed_on_a_session_class_hits_from_the_second_request(
    pg: Cluster,
    recorder: QueryRecorder,
    query_cache: QueryCache,
    client_for: Callable[[FastAPI], TestClient],
):
    """A cache installed on a session class meets the engines only in a request: the
    first query attaches them and its entry serves the second request."""

    class CachedSession(RoutingSession):
        pass

    query_cache.install(CachedSession)
    client = client_for(make_app(pg, recorder, session_options={"class_": CachedSession}))
    for _ in range(2):
        client.get("/cached")
    stats = query_cache.stats()
    assert (stats.misses, stats.stores, stats.hits) == (1, 1, 1)


def test_sessions_close_on_the_event_loop_unless_closing_does_io(
    pg: Cluster,
    query_cache: QueryCache,
    client_for: Callable[[FastAPI], TestClient],
):
    """The middleware closes a session holding no connection on the event loop: a cache
    hit, and on PostgreSQL a miss too (read in autocommit on a connection of its own);
    one in a transaction (an uncached read) on a worker thread: its rollback is I/O."""
    closed: list[tuple[str, str]] = []

    class Watched(RoutingSession):
        def close(self) -> None:
            if "label" in self.info:
                closed.append((self.info["label"], threading.current_thread().name))
            super().close()

    app = FastAPI()
    app.add_middleware(
        SqlperfMiddleware,
        primary=pg.primary,
        replicas=[pg.replica],
        cache=query_cache,
        session_options={"class_": Watched},
    )
    model: Any = pg.model
    table = model.__table__
    loop_thread: list[str] = []

    @app.get("/read/{label}")
    async def read(label: str, session: SessionDep) -> list[str]:
        loop_thread.append(threading.current_thread().name)
        session.info["label"] = label
        stmt = select(table.c.name).where(table.c.id == 1)
        if label != "uncached":
            stmt = stmt.options(cached())
        return list(session.scalars(stmt))

    client = client_for(app)
    for label in ("miss", "hit", "uncached"):
        assert client.get(f"/read/{label}").status_code == 200
    stats = query_cache.stats()
    assert (stats.misses, stats.hits) == (1, 1)
    assert len(set(loop_thread)) == 1
    threads = dict(closed)
    assert list(threads) == ["miss", "hit", "uncached"]
    assert threads["miss"] == threads["hit"] == loop_thread[0]  # nothing to do but forget
    assert threads["uncached"] != loop_thread[0]  # a transaction to roll back


# -- read-your-writes -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("write", "read"),
    [("sync", "sync"), ("async", "async"), ("early", "sync"), ("sync", "async")],
)
def test_read_your_writes_across_requests_while_replay_is_paused(
    pg: Cluster,
    recorder: QueryRecorder,
    client_for: Callable[[FastAPI], TestClient],
    write: str,
    read: str,
):
    app = make_app(pg, recorder)
    writer = client_for(app)
    assert writer.get(f"/{read}/items/10").json() == {"name": None, "port": 5433}  # warm
    pause_replay(pg.replica)
    try:
        posted = writer.post(f"/{write}/items", json={"id": 10, "name": "fresh"})
        assert posted.status_code == 201
        token = posted.headers["X-Sqlperf-Token"]
        assert TOKEN.fullmatch(token)
        assert posted.headers.get_list("Set-Cookie") == [
            f"sqlperf_token={token}; Max-Age=300; Path=/; HttpOnly; SameSite=Lax"
        ]
        assert writer.cookies.get("sqlperf_token") == token
        # The same client (its cookie): the new row, from the primary (the replica is paused).
        again = writer.get(f"/{read}/items/10")
        assert again.json() == {"name": "fresh", "port": 5432}
        assert "Set-Cookie" not in again.headers  # no write: nothing new to send
        # Another client without the cookie reads the paused replica: the token is what matters.
        other = client_for(app)
        assert other.get(f"/{read}/items/10").json() == {"name": None, "port": 5433}
        with_header = other.get(f"/{read}/items/10", headers={"X-Sqlperf-Token": token})
        assert with_header.json() == {"name": "fresh", "port": 5432}
        # A broken token is ignored, not an error.
        broken = client_for(app)
        broken.cookies.set("sqlperf_token", "v1:nonsense")
        response = broken.get(f"/{read}/items/10", headers={"X-Sqlperf-Token": "garbage"})
        assert response.status_code == 200
        assert response.json() == {"name": None, "port": 5433}
    finally:
        resume_replay(pg.replica)


# -- N+1 --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_n_plus_one_is_recorded_and_logged(
    pg: Cluster,
    recorder: QueryRecorder,
    client_for: Callable[[FastAPI], TestClient],
    caplog: pytest.LogCaptureFixture,
    kind: str,
):
    client = client_for(make_app(pg, recorder))
    caplog.set_level(logging.WARNING, logger="sqlperf.integrations")
    response = client.get(f"/{kind}/loop/6", headers={"X-Request-ID": f"n1-{kind}"})
    assert response.status_code == 200
    (suspect,) = records_of(recorder, f"n1-{kind}", "n_plus_one")
    assert suspect.count == 6
    assert suspect.call_site is not None
    assert "test_integrations_asgi.py" in suspect.call_site
    assert json.loads(suspect.tags or "{}")["endpoint"] == f"/{kind}/loop/{{n}}"
    logged = [r for r in caplog.records if r.name == "sqlperf.integrations"]
    assert len(logged) == 1
    assert logged[0].levelno == logging.WARNING
    message = logged[0].getMessage()
    for part in (f"n1-{kind}", suspect.fingerprint, suspect.call_site, "6 times"):
        assert part in message


# -- without servers --------------------------------------------------------------------


def test_without_a_recorder_lifespan_websockets_and_misuse(
    sqlite_file_url: str,
    make_engine: Callable[..., Engine],
    client_for: Callable[[FastAPI], TestClient],
    caplog: pytest.LogCaptureFixture,
):
    engine = make_engine(sqlite_file_url)
    started: list[bool] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        started.append(True)
        yield

    app = FastAPI(lifespan=lifespan)
    app.add_middleware(SqlperfMiddleware, primary=engine)

    @app.get("/")
    def index(session: SessionDep) -> int:
        return int(session.scalar(text("SELECT 1")))

    @app.websocket("/ws")
    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(await websocket.receive_text())
        await websocket.close()

    caplog.set_level(logging.DEBUG, logger="sqlperf.integrations")
    client = client_for(app)
    assert started == [True]  # the lifespan scope went through
    response = client.get("/", headers={"X-Request-ID": "r-1", "X-Sqlperf-Token": "v1:x:y"})
    assert response.json() == 1
    assert response.headers["X-Request-ID"] == "r-1"
    assert "Server-Timing" not in response.headers  # no recorder: no figures
    assert "Set-Cookie" not in response.headers
    assert [r.getMessage() for r in caplog.records if r.name == "sqlperf.integrations"] == [
        "ignoring an invalid consistency token in the header: 'v1:x:y'"
    ]
    with client.websocket_connect("/ws") as ws:
        ws.send_text("hi")
        assert ws.receive_text() == "hi"

    bare = FastAPI()  # the dependency without the middleware

    @bare.get("/")
    def no_middleware(session: SessionDep) -> str:
        return "unreachable"

    with pytest.raises(ConfigurationError, match="needs SqlperfMiddleware"):
        client_for(bare).get("/")
    with pytest.raises(ConfigurationError, match="token_header"):
        SqlperfMiddleware(app, primary=engine, token_header="")
    for bad in (-0.001, float("inf"), "1ms"):
        with pytest.raises(ConfigurationError, match="thread_wait_s"):
            SqlperfMiddleware(app, primary=engine, thread_wait_s=bad)  # type: ignore[arg-type]
    for bad_size in (0, 2.5):
        with pytest.raises(ConfigurationError, match="threads must"):
            SqlperfMiddleware(app, primary=engine, threads=bad_size)  # type: ignore[arg-type]


# -- run_in_thread ------------------------------------------------------------------------

_REQUEST_CONTEXT: contextvars.ContextVar[str] = contextvars.ContextVar("request_context")


def _fail_in_worker() -> None:
    raise ValueError("from the worker")


def test_run_in_thread_runs_on_a_worker_with_the_callers_context():
    def work(a: int, b: int) -> tuple[int, str, str]:
        return a + b, threading.current_thread().name, _REQUEST_CONTEXT.get()

    async def main() -> tuple[tuple[int, str, str], str]:
        _REQUEST_CONTEXT.set("request-7")
        with pytest.raises(ValueError, match="from the worker"):
            await run_in_thread(_fail_in_worker)
        return await run_in_thread(work, 2, 3), threading.current_thread().name

    (total, worker, seen), loop_thread = anyio.run(main)
    assert (total, seen) == (5, "request-7")
    assert worker != loop_thread


def test_cancelling_run_in_thread_waits_for_the_call_to_return():
    """A cancelled caller (a client gone) returns only once the call has: the
    middleware may close the session the call uses only after that."""
    started, release = threading.Event(), threading.Event()
    events: list[str] = []

    def work() -> None:
        started.set()
        release.wait(10)
        events.append("call returned")

    async def caller(scope: anyio.CancelScope) -> None:
        with scope:
            try:
                await run_in_thread(work)
            finally:
                events.append("caller left")

    async def main() -> None:
        scope = anyio.CancelScope()
        async with anyio.create_task_group() as tg:
            tg.start_soon(caller, scope)
            await anyio.to_thread.run_sync(started.wait)
            scope.cancel()
            await anyio.sleep(0.1)  # shielded: the caller still waits
            events.append("released")
            release.set()

    anyio.run(main)
    assert events == ["released", "call returned", "caller left"]


@pytest.mark.parametrize("yield_to_threads", [True, False])
def test_responses_give_way_to_running_worker_calls(
    yield_to_threads: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """While a ``run_in_thread`` call of one request runs, each other response ends with
    the event loop giving up the GIL once (``yield_to_threads``); not once the call has
    returned, also by raising, nor with the option off."""
    gave_way: list[str] = []
    monkeypatch.setattr(_threads, "give_way", lambda: gave_way.append("gave way"))
    started, release = threading.Event(), threading.Event()

    def blocking() -> None:
        started.set()
        release.wait(10)

    engine = create_engine(f"sqlite:///{tmp_path / 'give_way.db'}")
    app = FastAPI()
    app.add_middleware(SqlperfMiddleware, primary=engine, yield_to_threads=yield_to_threads)

    @app.get("/slow")
    async def slow() -> str:
        await run_in_thread(blocking)
        return "slow"

    @app.get("/fail")
    async def failing() -> str:
        with pytest.raises(ValueError, match="from the worker"):
            await run_in_thread(_fail_in_worker)
        return "failed"

    @app.get("/fast")
    async def fast() -> str:
        return "fast"

    async def main() -> list[int]:
        given = []
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
            await client.get("/fail")
            await client.get("/fast")
            given.append(len(gave_way))  # nothing running
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.get, "/slow")
                await anyio.to_thread.run_sync(started.wait)
                for _ in range(3):
                    assert (await client.get("/fast")).text == '"fast"'
                given.append(len(gave_way))  # the blocked call runs
                release.set()
            await client.get("/fast")
            given.append(len(gave_way))  # it has returned
        return given

    try:
        given = anyio.run(main)
    finally:
        release.set()
        engine.dispose()
    assert given == ([0, 3, 3] if yield_to_threads else [0, 0, 0])


@pytest.mark.parametrize("thread_wait_s", [0.5, 0.0])
def test_the_event_loop_waits_briefly_for_a_worker_call(
    thread_wait_s: float, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Under the middleware, ``run_in_thread`` runs its call on the middleware's pool and
    waits for it on the event loop up to ``thread_wait_s``: a call done by then returns
    without going back through the loop; one that is not (or with ``0``) is awaited,
    the loop serving other requests meanwhile. A call's exception reaches the caller
    either way."""
    awaited: list[str] = []
    real_wrap = asyncio.wrap_future

    def wrap_future(future: Any) -> Any:
        awaited.append("awaited")
        return real_wrap(future)

    monkeypatch.setattr(asyncio, "wrap_future", wrap_future)
    started, release = threading.Event(), threading.Event()

    def blocking() -> str:
        started.set()
        release.wait(10)
        return threading.current_thread().name

    engine = create_engine(f"sqlite:///{tmp_path / 'wait.db'}")
    app = FastAPI()
    app.add_middleware(SqlperfMiddleware, primary=engine, thread_wait_s=thread_wait_s)

    @app.get("/quick")
    async def quick() -> str:
        with pytest.raises(ValueError, match="from the worker"):
            await run_in_thread(_fail_in_worker)
        return await run_in_thread(lambda: threading.current_thread().name)

    @app.get("/blocked")
    async def blocked() -> str:
        return await run_in_thread(blocking)

    @app.get("/fast")
    async def fast() -> str:
        return "fast"

    async def main() -> tuple[list[str], list[str]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
            names = [(await client.get("/quick")).json()]
            quick_awaits = list(awaited)
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.get, "/blocked")
                await anyio.to_thread.run_sync(started.wait)
                assert (await client.get("/fast")).json() == "fast"  # the loop is free
                release.set()
            return names, quick_awaits

    try:
        names, quick_awaits = anyio.run(main)
    finally:
        release.set()
        engine.dispose()
    assert names[0].startswith("sqlperf-worker")
    if thread_wait_s:
        assert quick_awaits == []  # both quick calls were done within the wait
        assert awaited == ["awaited"]  # the blocked one was not
    else:
        assert awaited == ["awaited"] * 3


def test_a_worker_call_that_needs_the_event_loop_is_not_stuck_by_the_wait(tmp_path: Path):
    """A call that runs a coroutine on the event loop and waits for it cannot finish while
    the loop waits for the call: the wait ends after ``thread_wait_s`` and the call then
    completes."""
    engine = create_engine(f"sqlite:///{tmp_path / 'back.db'}")
    app = FastAPI()
    app.add_middleware(SqlperfMiddleware, primary=engine, thread_wait_s=0.05)

    @app.get("/back")
    async def back() -> str:
        loop = asyncio.get_running_loop()

        def call_back() -> str:
            return asyncio.run_coroutine_threadsafe(asyncio.sleep(0, "back"), loop).result(5)

        return await run_in_thread(call_back)

    try:
        with TestClient(app) as client:
            assert client.get("/back").json() == "back"
    finally:
        engine.dispose()


def test_waiting_for_worker_calls_pauses_after_three_strikes(monkeypatch: pytest.MonkeyPatch):
    """A call not done within the wait is a strike; three in a row pause the waiting,
    which resumes after the pause. A call done in time clears the strikes, whether it
    kept the CPU busy or waited (on I/O, say) meanwhile."""
    monkeypatch.setattr(_threads, "PAUSE_S", 0.3)
    threads = _threads.WorkerThreads(wait_s=0.1, max_workers=2)

    def busy() -> None:
        end = time.thread_time() + 0.005
        while time.thread_time() < end:
            pass

    def idle() -> None:
        time.sleep(0.005)

    def late() -> None:
        time.sleep(0.3)

    def done_soon(func: Callable[[], None]) -> bool:
        future = threads.submit(func)
        done = threads.done_soon(future)
        future.result()
        return done

    try:
        assert [done_soon(f) for f in (busy, late, late, idle)] == [True, False, False, True]
        assert [done_soon(f) for f in (late, late, busy)] == [False, False, True]
        assert [done_soon(f) for f in (late, late, late)] == [False, False, False]  # 3 strikes
        assert not done_soon(busy)  # paused: not waited for, though done in 5 ms
        time.sleep(0.3)
        assert done_soon(idle)
    finally:
        threads.close()


def test_worker_threads_start_a_pool_of_their_own_in_a_forked_child(
    monkeypatch: pytest.MonkeyPatch,
):
    """A pool made before a fork has no threads in the child: the child makes its own."""
    threads = _threads.WorkerThreads(wait_s=0.0, max_workers=1)
    try:
        assert threads.submit(os.getpid).result(5) == os.getpid()
        parents = threads._executor
        monkeypatch.setattr(_threads, "os", SimpleNamespace(getpid=lambda: -1))
        assert threads.submit(lambda: 42).result(5) == 42
        assert threads._executor is not parents
    finally:
        threads.close()
        if parents is not None:
            parents.shutdown()


def test_a_wrapped_app_puts_the_request_id_on_its_500s(tmp_path: Path):
    """Wrapping the whole app (the documented way to reach Starlette's own 500s, which
    ``add_middleware`` cannot): an unhandled exception's 500 carries the request id,
    and the request's session is still closed."""
    engine = create_engine(f"sqlite:///{tmp_path / 'errors.db'}")
    api = FastAPI()
    sessions: list[RoutingSession] = []

    @api.get("/boom")
    def boom(session: SessionDep) -> None:
        sessions.append(session)
        session.execute(text("SELECT 1"))
        raise RuntimeError("boom")

    app = SqlperfMiddleware(api, primary=engine)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            response = client.get("/boom", headers={"X-Request-ID": "req-500"})
    finally:
        engine.dispose()
    assert response.status_code == 500
    assert response.headers["X-Request-ID"] == "req-500"
    assert sessions[0].get_transaction() is None  # closed by the middleware
