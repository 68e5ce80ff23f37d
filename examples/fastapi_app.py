"""The shop API on FastAPI, with sqlperf's ASGI middleware.

Run it with one command (uvicorn on http://127.0.0.1:8000, SQLite ``shop.db`` in
the current folder, created and seeded on first start)::

    python examples/fastapi_app.py [--host 127.0.0.1] [--port 8000]

The environment chooses the databases and the mode (see ``examples/shop.py``),
for instance PostgreSQL with a replica and a Redis cache::

    SQLPERF_DATABASE_URL=postgresql+psycopg2://app@127.0.0.1:5432/shop \\
    SQLPERF_REPLICA_URL=postgresql+psycopg2://app@127.0.0.1:5433/shop \\
    SQLPERF_REDIS_URL=redis://127.0.0.1:6379/0 python examples/fastapi_app.py

Or under uvicorn directly: ``uvicorn examples.fastapi_app:create_app --factory``.

Endpoints (the same as ``examples/flask_app.py``'s):

* ``GET /customers/{id}/orders?cursor=...``: a keyset page of 20 orders with their lines;
* ``GET /customers/{id}/orders-naive?cursor=...``: the same page by an N+1 loop, on purpose;
* ``GET /orders/{id}``: one order, its customer and lines (cached);
* ``POST /orders``: ``{"customer_id": 1, "lines": [{"product_id": 2, "quantity": 1}]}``;
* ``POST /orders/import``: a JSON list of such orders, written with ``bulk_insert``;
* ``GET /health``.

In sqlperf mode every response carries ``X-Request-ID`` and, with the recorder,
``Server-Timing: db;dur=..;desc="N queries", cache;desc="N hits"``; a write's
response carries the read-your-writes token (``X-Sqlperf-Token`` header and
``sqlperf_token`` cookie) that the next request sends back.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

if not __package__:  # run as a script: python examples/fastapi_app.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fastapi import APIRouter, Body, Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from examples.shop import InvalidInput, OrderDetail, Settings, Shop
from sqlperf.integrations.asgi import SqlperfMiddleware, routing_session, run_in_thread

__all__ = ["create_app", "main", "router"]

#: The shop's routes; :func:`create_app` mounts them.
router = APIRouter()


async def get_shop(request: Request) -> Shop:
    """Dependency: the app's :class:`~examples.shop.Shop` (async: no thread pool hop)."""
    shop: Shop = request.app.state.shop
    return shop


def plain_session(request: Request) -> Iterator[Session]:
    """Plain mode's stand-in for :func:`~sqlperf.integrations.asgi.routing_session`: the
    usual sync ``get_db`` dependency, a plain ``Session`` on the one engine, closed after
    the response (FastAPI enters and leaves it on its thread pool)."""
    shop: Shop = request.app.state.shop
    with shop.sessions() as session:
        yield session


ShopDep = Annotated[Shop, Depends(get_shop)]
SessionDep = Annotated[Session, Depends(routing_session)]


def _bad_request(exc: InvalidInput) -> HTTPException:
    return HTTPException(status_code=400, detail=str(exc))


@router.get("/customers/{customer_id}/orders")
def customer_orders(
    customer_id: int, shop: ShopDep, session: SessionDep, cursor: str | None = None
) -> JSONResponse:
    """A page of a customer's orders, newest first; ``next_cursor`` asks for the next."""
    try:
        return JSONResponse(shop.customer_orders(session, customer_id, cursor))
    except InvalidInput as exc:
        raise _bad_request(exc) from None


@router.get("/customers/{customer_id}/orders-naive")
def customer_orders_naive(
    customer_id: int, shop: ShopDep, session: SessionDep, cursor: str | None = None
) -> JSONResponse:
    """The same page, loaded with one query per order: an N+1 for the recorder to find."""
    try:
        return JSONResponse(shop.customer_orders_naive(session, customer_id, cursor))
    except InvalidInput as exc:
        raise _bad_request(exc) from None


@router.get("/orders/{order_id}")
async def order_detail(order_id: int, shop: ShopDep, session: SessionDep) -> JSONResponse:
    """One order with its customer and lines (served by the query cache when it can).

    A cache hit held in this process's memory is answered here, on the event loop
    (``QueryCache.answer_locally`` does no I/O); anything else runs on a worker
    thread: handed over at once by sqlperf's ``run_in_thread``, or in plain mode by
    FastAPI's ``run_in_threadpool``, what a plain app uses.
    """
    found, detail = shop.cached_order_detail(session, order_id)
    if not found:
        offload = run_in_thread if shop.settings.mode == "sqlperf" else run_in_threadpool
        detail = await offload(_order_detail_and_release, shop, session, order_id)
    if detail is None:
        raise HTTPException(status_code=404, detail=f"no order {order_id}")
    return JSONResponse(detail)


def _order_detail_and_release(shop: Shop, session: Session, order_id: int) -> OrderDetail | None:
    """On a worker thread: the detail, then the session's read-only transaction ends
    there too, so that closing the session after the response needs no I/O (and no
    second trip to the thread pool)."""
    try:
        return shop.order_detail(session, order_id)
    finally:
        session.close()


@router.post("/orders", status_code=201)
def create_order(
    shop: ShopDep, session: SessionDep, payload: Annotated[Any, Body()]
) -> JSONResponse:
    """Place an order; the response carries the token that lets the next read see it."""
    try:
        created = shop.create_order(session, payload)
    except InvalidInput as exc:
        raise _bad_request(exc) from None
    return JSONResponse(created, status_code=201, headers={"Location": f"/orders/{created['id']}"})


@router.post("/orders/import", status_code=201)
def import_orders(
    shop: ShopDep, session: SessionDep, payload: Annotated[Any, Body()]
) -> JSONResponse:
    """Write a JSON list of orders in one bulk insert (all or none)."""
    try:
        return JSONResponse(shop.import_orders(session, payload), status_code=201)
    except InvalidInput as exc:
        raise _bad_request(exc) from None


@router.get("/health")
def health(shop: ShopDep, session: SessionDep) -> JSONResponse:
    """The database answers; how the app is set up, and the cache's hits and misses."""
    return JSONResponse(shop.health(session))


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app: the shop (engines, schema, seed, cache, recorder) and its routes.

    Args:
        settings: how to run; default :meth:`Settings.from_env() <examples.shop.Settings.from_env>`.

    Returns:
        The FastAPI app. Its shop is ``app.state.shop``, closed at shutdown.

    Example::

        from fastapi.testclient import TestClient

        with TestClient(create_app(Settings(database_url="sqlite:///tmp/shop.db"))) as client:
            client.get("/orders/1").json()
    """
    shop = Shop(settings or Settings.from_env())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        shop.close()

    app = FastAPI(title="sqlperf shop", lifespan=lifespan)
    app.state.shop = shop
    if shop.settings.mode == "sqlperf":
        app.add_middleware(
            SqlperfMiddleware,
            primary=shop.primary,
            replicas=shop.replicas,
            recorder=shop.recorder,
            session_options=shop.session_options,
        )
    else:
        app.dependency_overrides[routing_session] = plain_session
    app.include_router(router)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the app with uvicorn (``--host``, ``--port``), configured from the environment."""
    import uvicorn

    parser = argparse.ArgumentParser(description="The sqlperf shop API on FastAPI.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    uvicorn.run(create_app(), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
