"""The example shop apps (``examples/``), in process through their test clients, on SQLite files.

Every test runs against both apps (Flask and FastAPI); most in both modes
(``sqlperf`` and ``plain``). The scripts themselves are started once each, as a
user would start them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
import warnings
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, func, select
from sqlalchemy.pool import NullPool

from examples import fastapi_app, flask_app
from examples.shop import PAGE_SIZE, Order, OrderItem, Settings, Shop
from sqlperf.cache import RedisBackend
from sqlperf.demo import metadata
from tests.replica_cluster import pause_replay, resume_replay
from tests.web_harness import parse_timing

ROOT = Path(__file__).resolve().parent.parent
SEED_ORDERS = 600  # customer 1 has a few pages of orders


@dataclass
class Reply:
    """A response, the same whichever framework's test client made it."""

    status: int
    body: Any
    headers: dict[str, str]


class AppClient:
    """One app and its framework's test client behind one small interface."""

    def __init__(self, framework: str, settings: Settings, stack: ExitStack) -> None:
        self.framework = framework
        if framework == "flask":
            app = flask_app.create_app(settings)
            self.shop: Shop = app.extensions["shop"]
            stack.callback(self.shop.close)
            self._flask = app.test_client()
        else:
            with warnings.catch_warnings():
                # Starlette 1.x asks for httpx2 (a UserWarning); the httpx it still
                # accepts is what the dev extra installs.
                warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
                from starlette.testclient import TestClient
            api = fastapi_app.create_app(settings)
            self.shop = api.state.shop
            self._starlette = stack.enter_context(TestClient(api))  # shuts the shop down

    def request(
        self, method: str, path: str, *, json: Any = None, headers: dict[str, str] | None = None
    ) -> Reply:
        """Send one request; a JSON body if ``json`` is given."""
        if self.framework == "flask":
            r = self._flask.open(path, method=method, json=json, headers=headers or {})
            return Reply(r.status_code, r.get_json(silent=True), dict(r.headers))
        s = self._starlette.request(method, path, json=json, headers=headers)
        return Reply(s.status_code, s.json(), dict(s.headers))

    def get(self, path: str, **kw: Any) -> Reply:
        """``GET path``."""
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Reply:
        """``POST path``."""
        return self.request("POST", path, **kw)


def _header(reply: Reply, name: str) -> str | None:
    return next((v for k, v in reply.headers.items() if k.lower() == name.lower()), None)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(database_url=f"sqlite:///{tmp_path / 'shop.db'}", seed_orders=SEED_ORDERS)


@pytest.fixture(params=["flask", "fastapi"])
def framework(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["sqlperf", "plain"])
def client(
    request: pytest.FixtureRequest, framework: str, settings: Settings
) -> Iterator[AppClient]:
    with ExitStack() as stack:
        yield AppClient(framework, replace(settings, mode=request.param), stack)


def _orders_of(shop: Shop, customer_id: int) -> list[int]:
    """The customer's order ids, newest first, straight from the database."""
    with shop.sessions() as session:
        stmt = (
            select(Order.id)
            .where(Order.customer_id == customer_id)
            .order_by(Order.created_at.desc(), Order.id.desc())
        )
        return list(session.scalars(stmt))


def test_keyset_pages_round_trip(client: AppClient):
    seen: list[int] = []
    cursor: str | None = None
    pages = 0
    while True:
        path = "/customers/1/orders" + (f"?cursor={cursor}" if cursor else "")
        reply = client.get(path)
        assert reply.status == 200
        page = reply.body
        assert page["customer_id"] == 1
        assert len(page["orders"]) <= PAGE_SIZE
        seen += [o["id"] for o in page["orders"]]
        assert all(o["lines"] for o in page["orders"])
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert len(page["orders"]) == PAGE_SIZE
    assert pages >= 2
    assert seen == _orders_of(client.shop, 1)  # every order once, newest first


def test_a_bad_cursor_is_a_400(client: AppClient):
    reply = client.get("/customers/1/orders?cursor=not-a-cursor")
    assert reply.status == 400
    assert "cursor" in reply.body["detail"]


def test_order_detail(client: AppClient):
    first = client.get("/orders/7")
    assert first.status == 200
    detail = first.body
    assert detail["id"] == 7
    assert detail["customer"]["email"] == f"shopper{detail['customer_id']}@example.com"
    assert [line["line_no"] for line in detail["lines"]] == list(range(1, len(detail["lines"]) + 1))
    assert detail["total_cents"] == sum(
        line["quantity"] * line["unit_price_cents"] for line in detail["lines"]
    )
    assert client.get("/orders/7").body == detail  # the second time from the cache (sqlperf)
    assert client.get("/orders/999999").status == 404


def test_create_then_read_back(client: AppClient):
    order = {
        "customer_id": 3,
        "lines": [{"product_id": 2, "quantity": 2}, {"product_id": 5, "quantity": 1}],
    }
    client.get("/orders/1")  # something in the cache before the write
    created = client.post("/orders", json=order)
    assert created.status == 201
    body = created.body
    assert body["customer_id"] == 3
    assert [(line["product_id"], line["quantity"]) for line in body["lines"]] == [(2, 2), (5, 1)]
    location = _header(created, "Location")
    assert location == f"/orders/{body['id']}"
    token = _header(created, "X-Sqlperf-Token")
    detail = client.get(location, headers={"X-Sqlperf-Token": token} if token else None)
    assert detail.status == 200
    assert {k: v for k, v in detail.body.items() if k != "customer"} == body
    assert detail.body["customer"]["id"] == 3
    newest = client.get("/customers/3/orders").body["orders"][0]
    assert newest["id"] == body["id"]  # the page is not stale either


@pytest.mark.parametrize(
    ("order", "message"),
    [
        ({"customer_id": 3}, "lines"),
        ({"customer_id": 3, "lines": [{"product_id": 2, "quantity": 0}]}, "quantity"),
        ({"customer_id": 3, "lines": [{"product_id": 10**6, "quantity": 1}]}, "no such product"),
        ({"customer_id": 10**6, "lines": [{"product_id": 2, "quantity": 1}]}, "no such customer"),
        ([1, 2], "JSON object"),
    ],
)
def test_create_refuses_bad_orders(client: AppClient, order: Any, message: str):
    before = _count_orders(client.shop)
    reply = client.post("/orders", json=order)
    assert reply.status == 400
    assert message in reply.body["detail"]
    assert _count_orders(client.shop) == before


def _count_orders(shop: Shop) -> int:
    with shop.sessions() as session:
        return session.execute(select(func.count()).select_from(Order)).scalar_one()


def test_bulk_import(client: AppClient):
    before = _count_orders(client.shop)
    orders: list[dict[str, Any]] = [
        {
            "customer_id": 1 + i % 7,
            "status": "imported",
            "created_at": f"2023-05-{1 + i % 28:02d}T12:00:00+02:00",
            "lines": [{"product_id": 1 + (i + k) % 9, "quantity": 1 + k} for k in range(1 + i % 3)],
        }
        for i in range(250)
    ]
    reply = client.post("/orders/import", json=orders)
    assert reply.status == 201
    assert reply.body["imported"] == 250
    ids = reply.body["order_ids"]
    assert len(set(ids)) == 250
    assert _count_orders(client.shop) == before + 250
    with client.shop.sessions() as session:
        lines = session.execute(
            select(func.count()).select_from(OrderItem).where(OrderItem.order_id.in_(ids))
        ).scalar_one()
    assert lines == sum(len(o["lines"]) for o in orders)
    last = client.get(f"/orders/{ids[-1]}").body
    assert last["status"] == "imported"
    assert last["created_at"] == "2023-05-26T10:00:00"  # stored as naive UTC
    assert len(last["lines"]) == len(orders[-1]["lines"])


def test_bulk_import_is_all_or_nothing(client: AppClient):
    before = _count_orders(client.shop)
    good = {"customer_id": 1, "lines": [{"product_id": 1, "quantity": 1}]}
    bad = {"customer_id": 1, "lines": [{"product_id": 10**6, "quantity": 1}]}
    reply = client.post("/orders/import", json=[good, bad])
    assert reply.status == 400
    assert client.post("/orders/import", json={"not": "a list"}).status == 400
    assert _count_orders(client.shop) == before


def test_the_naive_page_returns_the_same_data(client: AppClient):
    first = client.get("/customers/1/orders").body
    assert client.get("/customers/1/orders-naive").body == first
    cursor = first["next_cursor"]
    assert (
        client.get(f"/customers/1/orders-naive?cursor={cursor}").body
        == client.get(f"/customers/1/orders?cursor={cursor}").body
    )


def test_health(client: AppClient):
    reply = client.get("/health")
    assert reply.status == 200
    health = reply.body
    assert health["status"] == "ok"
    assert health["database"] == "sqlite"
    sqlperf = client.shop.settings.mode == "sqlperf"
    assert health["mode"] == ("sqlperf" if sqlperf else "plain")
    assert health["capture"] is sqlperf
    assert health["cache"] == ("MemoryBackend" if sqlperf else None)


def _timing(reply: Reply) -> tuple[float, int, int]:
    """(db ms, queries, cache hits) of a ``Server-Timing`` header."""
    timing = parse_timing(_header(reply, "Server-Timing"))
    return timing.dur_ms, timing.queries, timing.hits


def test_sqlperf_mode_adds_server_timing_and_request_ids(framework: str, settings: Settings):
    with ExitStack() as stack:
        client = AppClient(framework, settings, stack)
        reply = client.get("/orders/11", headers={"X-Request-ID": "req-42"})
        assert _header(reply, "X-Request-ID") == "req-42"
        _, queries, hits = _timing(reply)
        assert (queries, hits) == (1, 0)
        hits_before = client.get("/health").body["cache_hits"]
        _, queries, hits = _timing(client.get("/orders/11"))
        # The cache answered in the session: no statement reached the database,
        # and the recorder counted the hit (QueryRecorder.count_cache_hits).
        assert (queries, hits) == (0, 1)
        assert client.get("/health").body["cache_hits"] == hits_before + 1
        _, queries, _ = _timing(client.get("/customers/1/orders-naive"))
        assert queries == 1 + PAGE_SIZE  # the page, then one query per order
        _, queries, _ = _timing(client.get("/customers/1/orders"))
        assert queries == 2  # the page, then one IN query


def test_the_recorder_reports_the_naive_page(framework: str, settings: Settings):
    with ExitStack() as stack:
        client = AppClient(framework, settings, stack)
        recorder = client.shop.recorder
        assert recorder is not None
        client.get("/customers/1/orders")
        client.get("/customers/1/orders-naive", headers={"X-Request-ID": "naive-1"})
        recorder.flush()
        suspects = [r for r in recorder.records() if r.kind == "n_plus_one"]
        assert len(suspects) == 1
        (suspect,) = suspects
        assert suspect.request_id == "naive-1"
        assert suspect.count == PAGE_SIZE
        assert suspect.call_site is not None
        assert "examples/shop.py" in suspect.call_site


def test_plain_mode_has_no_sqlperf_headers(framework: str, settings: Settings):
    with ExitStack() as stack:
        client = AppClient(framework, replace(settings, mode="plain"), stack)
        assert client.shop.cache is None
        assert client.shop.recorder is None
        created = client.post(
            "/orders", json={"customer_id": 1, "lines": [{"product_id": 1, "quantity": 1}]}
        )
        for reply in (client.get("/orders/1"), created):
            assert _header(reply, "Server-Timing") is None
            assert _header(reply, "X-Request-ID") is None
            assert _header(reply, "X-Sqlperf-Token") is None


def test_a_write_returns_a_token_with_a_replica(framework: str, settings: Settings):
    # A read-only engine on the same SQLite file stands in for a replica.
    with ExitStack() as stack:
        Shop(settings).close()  # create and seed the file the replica opens
        client = AppClient(framework, replace(settings, replica_url=settings.database_url), stack)
        assert client.get("/health").body["replicas"] == 1
        created = client.post(
            "/orders", json={"customer_id": 2, "lines": [{"product_id": 3, "quantity": 1}]}
        )
        token = _header(created, "X-Sqlperf-Token")
        assert token is not None
        assert f"sqlperf_token={token}" in (_header(created, "Set-Cookie") or "")
        detail = client.get(f"/orders/{created.body['id']}", headers={"X-Sqlperf-Token": token})
        assert detail.status == 200


def test_settings_from_the_environment():
    assert Settings.from_env({}) == Settings()
    env = {
        "SQLPERF_DATABASE_URL": "postgresql+psycopg2://app:secret@db/shop",
        "SQLPERF_REPLICA_URL": "postgresql+psycopg2://app:secret@replica/shop",
        "SQLPERF_REDIS_URL": "redis://cache:6379/1",
        "SQLPERF_APP_MODE": "plain",
        "SQLPERF_CAPTURE": "0",
        "SQLPERF_CACHE": "false",
        "SQLPERF_QUERY_LOG": "query_log.jsonl",
        "SQLPERF_SEED_ORDERS": "50",
        "SQLPERF_CACHE_NAMESPACE": "shop-a",
        "SQLPERF_CACHE_LOCAL_TTL": "0.5",
    }
    settings = Settings.from_env(env)
    assert settings == Settings(
        database_url=env["SQLPERF_DATABASE_URL"],
        replica_url=env["SQLPERF_REPLICA_URL"],
        redis_url="redis://cache:6379/1",
        mode="plain",
        capture=False,
        cache=False,
        query_log="query_log.jsonl",
        seed_orders=50,
        cache_namespace="shop-a",
        cache_local_ttl=0.5,
    )
    assert "secret" not in repr(settings)
    for bad in (
        {"SQLPERF_APP_MODE": "fast"},
        {"SQLPERF_CACHE": "maybe"},
        {"SQLPERF_SEED_ORDERS": "-1"},
        {"SQLPERF_CACHE_LOCAL_TTL": "soon"},
        {"SQLPERF_CACHE_LOCAL_TTL": "-1"},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Settings.from_env(bad)


def test_the_query_log_is_written(tmp_path: Path, settings: Settings):
    log = tmp_path / "query_log.jsonl"
    with ExitStack() as stack:
        client = AppClient("flask", replace(settings, query_log=str(log)), stack)
        client.get("/customers/1/orders-naive")
    assert '"n_plus_one"' in log.read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.parametrize("script", ["fastapi_app.py", "flask_app.py"])
def test_each_app_runs_with_one_command(tmp_path: Path, script: str):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SQLPERF_")}
    env["SQLPERF_SEED_ORDERS"] = "100"
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / script), "--port", str(port)],
        cwd=tmp_path,  # the default database is shop.db in the current folder
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.communicate()[1].decode()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/orders/1", timeout=5) as r:
                    assert r.status == 200
                    assert r.headers["Server-Timing"].startswith("db;dur=")
                    break
            except OSError:
                assert time.monotonic() < deadline, "the app never answered"
                time.sleep(0.2)
    finally:
        process.terminate()
        process.communicate(timeout=30)
    assert (tmp_path / "shop.db").exists()


@pytest.fixture
def cluster_settings(postgres_url: str, replica_url: str, redis_url: str) -> Iterator[Settings]:
    """The shop on PostgreSQL, its streaming replica and Redis (a namespace of its own);
    the demo tables and the Redis keys are dropped afterwards."""
    settings = Settings(
        database_url=postgres_url,
        replica_url=replica_url,
        redis_url=redis_url,
        seed_orders=200,
        cache_namespace=f"shop-test-{uuid.uuid4().hex[:8]}",
    )
    yield settings
    engine = create_engine(postgres_url, poolclass=NullPool)
    try:
        metadata.drop_all(engine)
    finally:
        engine.dispose()
    backend = RedisBackend(redis_url, namespace=settings.cache_namespace)
    backend.clear()
    backend.close()


def test_the_shop_on_postgresql_with_its_replica_and_redis(
    framework: str, cluster_settings: Settings
):
    """The README's second command: every capability on real servers. Reads of pages go
    to the replica, so with its replay paused only a client holding the token of its
    write sees the new order; the cached detail is answered from the process's memory
    level after one miss, and a commit invalidates it."""
    replica = create_engine(str(cluster_settings.replica_url), poolclass=NullPool)
    with ExitStack() as stack:
        writer = AppClient(framework, cluster_settings, stack)
        other = AppClient(framework, cluster_settings, stack)
        health = writer.get("/health").body
        assert (health["database"], health["replicas"]) == ("postgresql", 1)
        assert health["cache"] == "LayeredBackend"
        first, second = (_timing(writer.get("/orders/5"))[1:] for _ in range(2))
        assert (first, second) == ((1, 0), (0, 1))
        # A commit the replica has replayed, just before its replay is paused: its lag
        # stays under the session's max_lag, so reads without a token stay on it.
        order = {"customer_id": 3, "lines": [{"product_id": 2, "quantity": 1}]}
        replayed = other.post("/orders", json=order).body["id"]
        _wait_for_order(replica, replayed)
        page = other.get("/customers/3/orders").body
        assert page["orders"][0]["id"] == replayed
        pause_replay(replica)
        stack.callback(resume_replay, replica)
        created = writer.post("/orders", json=order)
        assert created.status == 201
        assert _header(created, "X-Sqlperf-Token") is not None
        mine = [o["id"] for o in writer.get("/customers/3/orders").body["orders"]]
        theirs = [o["id"] for o in other.get("/customers/3/orders").body["orders"]]
        assert mine[0] == created.body["id"]  # the cookie's token: read from the primary
        assert theirs == [o["id"] for o in page["orders"]]  # the paused replica
        # The commit invalidated demo_orders: the detail is read again.
        assert _timing(writer.get("/orders/5"))[1:] == (1, 0)
    replica.dispose()


def _wait_for_order(replica: Engine, order_id: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with replica.connect() as conn:
            if conn.execute(select(Order.id).where(Order.id == order_id)).first() is not None:
                return
        assert time.monotonic() < deadline, f"order {order_id} never reached the replica"
        time.sleep(0.05)


def test_a_cached_detail_is_answered_from_memory_without_io(settings: Settings):
    """What the FastAPI app's async detail endpoint calls on the event loop."""
    shop = Shop(settings)
    try:
        with shop.sessions() as session:
            assert shop.cached_order_detail(session, 11) == (False, None)  # not stored yet
            expected = shop.order_detail(session, 11)
        with shop.sessions() as session:
            assert shop.cached_order_detail(session, 11) == (True, expected)
            assert session.get_transaction() is None  # no connection was asked for
            assert shop.cached_order_detail(session, 10**9) == (False, None)
            assert shop.order_detail(session, 10**9) is None  # stored empty: a 404
            assert shop.cached_order_detail(session, 10**9) == (True, None)
    finally:
        shop.close()
    plain = Shop(replace(settings, mode="plain"))
    try:
        with plain.sessions() as session:
            assert plain.cached_order_detail(session, 11) == (False, None)
    finally:
        plain.close()
