"""The shop API on Flask, with sqlperf's Flask extension.

Run it with one command (Flask's development server on http://127.0.0.1:5000,
SQLite ``shop.db`` in the current folder, created and seeded on first start)::

    python examples/flask_app.py [--host 127.0.0.1] [--port 5000]

The environment chooses the databases and the mode (see ``examples/shop.py``),
for instance PostgreSQL with a replica and a Redis cache::

    SQLPERF_DATABASE_URL=postgresql+psycopg2://app@127.0.0.1:5432/shop \\
    SQLPERF_REPLICA_URL=postgresql+psycopg2://app@127.0.0.1:5433/shop \\
    SQLPERF_REDIS_URL=redis://127.0.0.1:6379/0 python examples/flask_app.py

Or with the ``flask`` command: ``flask --app examples.flask_app:create_app run``.
The endpoints and headers are those of ``examples/fastapi_app.py``.
"""

from __future__ import annotations

import argparse
import atexit
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: python examples/flask_app.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flask import Blueprint, Flask, current_app, g, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy.orm import Session

from examples.shop import InvalidInput, Settings, Shop
from sqlperf.integrations.flask import Sqlperf

__all__ = ["create_app", "current_session", "current_shop", "main", "shop_api"]

#: The shop's routes; :func:`create_app` registers them.
shop_api = Blueprint("shop", __name__)


def current_shop() -> Shop:
    """The current app's :class:`~examples.shop.Shop`."""
    shop: Shop = current_app.extensions["shop"]
    return shop


def current_session() -> Session:
    """The request's session, closed when the request ends.

    sqlperf mode: the extension's :class:`~sqlperf.RoutingSession`. Plain mode: a
    plain ``Session`` on the one engine.
    """
    extension: Sqlperf | None = current_app.extensions.get("sqlperf")
    if extension is not None:
        return extension.session
    if "shop_session" not in g:
        g.shop_session = current_shop().sessions()
    session: Session = g.shop_session
    return session


def _close_plain_session(exc: BaseException | None) -> None:
    session: Session | None = g.pop("shop_session", None)
    if session is not None:
        session.close()


@shop_api.errorhandler(InvalidInput)
def bad_request(exc: InvalidInput) -> ResponseReturnValue:
    """A request the shop refused: 400 with the reason."""
    return jsonify(detail=str(exc)), 400


@shop_api.get("/customers/<int:customer_id>/orders")
def customer_orders(customer_id: int) -> ResponseReturnValue:
    """A page of a customer's orders, newest first; ``next_cursor`` asks for the next."""
    return dict(
        current_shop().customer_orders(current_session(), customer_id, request.args.get("cursor"))
    )


@shop_api.get("/customers/<int:customer_id>/orders-naive")
def customer_orders_naive(customer_id: int) -> ResponseReturnValue:
    """The same page, loaded with one query per order: an N+1 for the recorder to find."""
    return dict(
        current_shop().customer_orders_naive(
            current_session(), customer_id, request.args.get("cursor")
        )
    )


@shop_api.get("/orders/<int:order_id>")
def order_detail(order_id: int) -> ResponseReturnValue:
    """One order with its customer and lines (served by the query cache when it can)."""
    detail = current_shop().order_detail(current_session(), order_id)
    if detail is None:
        return jsonify(detail=f"no order {order_id}"), 404
    return dict(detail)


def _json_body() -> Any:
    body = request.get_json(silent=True)
    if body is None:
        raise InvalidInput("the body must be JSON (Content-Type: application/json)")
    return body


@shop_api.post("/orders")
def create_order() -> ResponseReturnValue:
    """Place an order; the response carries the token that lets the next read see it."""
    created = current_shop().create_order(current_session(), _json_body())
    return dict(created), 201, {"Location": f"/orders/{created['id']}"}


@shop_api.post("/orders/import")
def import_orders() -> ResponseReturnValue:
    """Write a JSON list of orders in one bulk insert (all or none)."""
    return dict(current_shop().import_orders(current_session(), _json_body())), 201


@shop_api.get("/health")
def health() -> ResponseReturnValue:
    """The database answers; how the app is set up, and the cache's hits and misses."""
    return dict(current_shop().health(current_session()))


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app: the shop (engines, schema, seed, cache, recorder) and its routes.

    Args:
        settings: how to run; default :meth:`Settings.from_env() <examples.shop.Settings.from_env>`.

    Returns:
        The Flask app. Its shop is ``app.extensions["shop"]``; call its ``close()``
        when the app is done (:func:`main` does at exit).

    Example::

        app = create_app(Settings(database_url="sqlite:///tmp/shop.db"))
        app.test_client().get("/orders/1").get_json()
    """
    shop = Shop(settings or Settings.from_env())
    app = Flask(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]  # keep the shop's field order
    app.extensions["shop"] = shop
    if shop.settings.mode == "sqlperf":
        Sqlperf(
            app,
            primary=shop.primary,
            replicas=shop.replicas,
            recorder=shop.recorder,
            session_options=shop.session_options,
        )
    else:
        app.teardown_appcontext(_close_plain_session)
    app.register_blueprint(shop_api)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the app with Flask's development server (``--host``, ``--port``)."""
    parser = argparse.ArgumentParser(description="The sqlperf shop API on Flask.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    app = create_app()
    atexit.register(app.extensions["shop"].close)
    app.run(host=args.host, port=args.port, threaded=True)


if __name__ == "__main__":
    main()
