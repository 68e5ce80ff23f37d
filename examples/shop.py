"""The shop both example apps serve: settings, engines, schema, seed data, cache, recorder, queries.

``examples/flask_app.py`` and ``examples/fastapi_app.py`` are thin web layers over
this module: they turn HTTP into calls of :class:`Shop`'s query methods and back.

Configuration comes from the environment (:meth:`Settings.from_env`):

==========================  ==============================================================
``SQLPERF_DATABASE_URL``    the primary; default ``sqlite:///shop.db`` (a file in the
                            current folder, created and seeded on first start)
``SQLPERF_REPLICA_URL``     a read replica (optional): reads go there, writes to the primary
``SQLPERF_REDIS_URL``       the query cache's Redis (optional; the cache is in memory without)
``SQLPERF_CACHE_LOCAL_TTL`` with Redis: seconds an entry may live in the process's own memory
                            level (``LayeredBackend``, kept correct by Redis pub/sub); default
                            5, ``0`` asks Redis on every lookup
``SQLPERF_APP_MODE``        ``sqlperf`` (default) or ``plain``: plain SQLAlchemy
                            (``create_engine``, a plain ``Session``, no cache, no recorder,
                            no middleware), the baseline of ``benchmarks/bench_app.py``
``SQLPERF_CAPTURE``         ``1`` (default) or ``0``: the query recorder in sqlperf mode
``SQLPERF_CACHE``           ``1`` (default) or ``0``: the query cache in sqlperf mode
``SQLPERF_QUERY_LOG``       a JSON Lines file for the recorder's records (slow, failed and
                            N+1 statements), e.g. ``query_log.jsonl``; none by default
``SQLPERF_SEED_ORDERS``     orders seeded into an empty database (default 3000)
``SQLPERF_CACHE_NAMESPACE`` the prefix of the cache's Redis keys (default ``sqlperf-shop``):
                            processes that share it share the cache
==========================  ==============================================================

Example::

    >>> import tempfile
    >>> from examples.shop import Settings, Shop
    >>> folder = tempfile.mkdtemp()
    >>> shop = Shop(Settings(database_url=f"sqlite:///{folder}/shop.db", seed_orders=200))
    >>> with shop.sessions() as session:
    ...     shop.order_detail(session, 1)["id"]
    1
    >>> shop.close()
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Literal, TypedDict, cast

from sqlalchemy import Engine, Row, Select, bindparam, create_engine, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, sessionmaker
from typing_extensions import Unpack

from sqlperf import (
    InvalidCursor,
    MemoryBackend,
    QueryCache,
    QueryRecorder,
    RedisBackend,
    RoutingSession,
    bulk_insert,
    cached,
    create_optimized_engine,
    keyset_page,
    safe_url,
)
from sqlperf.cache import CacheBackend, LayeredBackend
from sqlperf.capture import JsonlSink, MemorySink, Sink
from sqlperf.demo import customers, metadata, order_items, orders, products

__all__ = [
    "PAGE_SIZE",
    "AppMode",
    "Base",
    "CreatedOrder",
    "Customer",
    "CustomerRef",
    "Health",
    "ImportResult",
    "InvalidInput",
    "Line",
    "Order",
    "OrderDetail",
    "OrderItem",
    "OrderSummary",
    "OrdersPage",
    "Product",
    "Settings",
    "Shop",
    "make_cache",
    "make_engine",
    "make_recorder",
    "prepare_database",
    "seed",
]

AppMode = Literal["sqlperf", "plain"]

#: Orders per page of ``GET /customers/{id}/orders``.
PAGE_SIZE = 20
#: Lines one order may have, the largest quantity of a line, orders one import may hold.
MAX_LINES = 50
MAX_QUANTITY = 1000
MAX_IMPORT = 10_000


# -- settings --------------------------------------------------------------------


def _flag(environ: Mapping[str, str], name: str, default: bool) -> bool:
    value = environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be 0 or 1, not {value!r}")


@dataclass(frozen=True, kw_only=True, repr=False)
class Settings:
    """How the shop runs; :meth:`from_env` reads it from the environment.

    Attributes:
        database_url: the primary database.
        replica_url: a read replica, or ``None`` (sqlperf mode only).
        redis_url: the query cache's Redis; ``None`` keeps the cache in memory.
        mode: ``"sqlperf"`` or ``"plain"`` (plain SQLAlchemy, nothing of sqlperf's
            engine, routing, cache, recorder or middleware).
        capture: attach a :class:`~sqlperf.QueryRecorder` (sqlperf mode only).
        cache: use a :class:`~sqlperf.QueryCache` for order details (sqlperf mode only).
        query_log: a JSON Lines file for the recorder's records, or ``None``.
        seed_orders: orders seeded into an empty database.
        cache_namespace: the prefix of the cache's keys in Redis.
        cache_local_ttl: with Redis, the ``local_ttl`` of a
            :class:`~sqlperf.cache.LayeredBackend` in front of it; ``0``: Redis alone.
    """

    database_url: str = "sqlite:///shop.db"
    replica_url: str | None = None
    redis_url: str | None = None
    mode: AppMode = "sqlperf"
    capture: bool = True
    cache: bool = True
    query_log: str | None = None
    seed_orders: int = 3000
    cache_namespace: str = "sqlperf-shop"
    cache_local_ttl: float = 5.0

    def __repr__(self) -> str:
        def url(value: str | None) -> str | None:
            return None if value is None else safe_url(value)

        return (
            f"Settings(database_url={url(self.database_url)!r}, "
            f"replica_url={url(self.replica_url)!r}, redis_url={url(self.redis_url)!r}, "
            f"mode={self.mode!r}, capture={self.capture}, cache={self.cache}, "
            f"query_log={self.query_log!r}, seed_orders={self.seed_orders}, "
            f"cache_namespace={self.cache_namespace!r}, cache_local_ttl={self.cache_local_ttl})"
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from ``environ`` (default ``os.environ``); see the module.

        Raises:
            ValueError: an unknown mode, a flag that is not 0/1, or a bad order count.
        """
        env = os.environ if environ is None else environ
        mode = env.get("SQLPERF_APP_MODE", "").strip().lower() or "sqlperf"
        if mode not in ("sqlperf", "plain"):
            raise ValueError(f"SQLPERF_APP_MODE must be 'sqlperf' or 'plain', not {mode!r}")
        local_ttl_text = env.get("SQLPERF_CACHE_LOCAL_TTL", "").strip() or "5"
        try:
            local_ttl = float(local_ttl_text)
        except ValueError:
            local_ttl = -1.0
        if not 0 <= local_ttl < float("inf"):
            raise ValueError(
                f"SQLPERF_CACHE_LOCAL_TTL must be a number of seconds >= 0, not {local_ttl_text!r}"
            )
        orders_text = env.get("SQLPERF_SEED_ORDERS", "").strip() or "3000"
        if not orders_text.isdigit() or int(orders_text) < 1:
            raise ValueError(f"SQLPERF_SEED_ORDERS must be a positive number, not {orders_text!r}")
        return cls(
            database_url=env.get("SQLPERF_DATABASE_URL", "").strip() or "sqlite:///shop.db",
            replica_url=env.get("SQLPERF_REPLICA_URL", "").strip() or None,
            redis_url=env.get("SQLPERF_REDIS_URL", "").strip() or None,
            mode=cast(AppMode, mode),
            capture=_flag(env, "SQLPERF_CAPTURE", True),
            cache=_flag(env, "SQLPERF_CACHE", True),
            query_log=env.get("SQLPERF_QUERY_LOG", "").strip() or None,
            seed_orders=int(orders_text),
            cache_namespace=env.get("SQLPERF_CACHE_NAMESPACE", "").strip() or "sqlperf-shop",
            cache_local_ttl=local_ttl,
        )


# -- what the API returns --------------------------------------------------------


class Line(TypedDict):
    """One line of an order."""

    line_no: int
    product_id: int
    product: str
    quantity: int
    unit_price_cents: int


class OrderSummary(TypedDict):
    """An order with its lines."""

    id: int
    customer_id: int
    status: str
    created_at: str
    total_cents: int
    lines: list[Line]


#: What ``POST /orders`` answers: the order as stored.
CreatedOrder = OrderSummary


class CustomerRef(TypedDict):
    """The customer of an order detail."""

    id: int
    name: str
    email: str


class OrderDetail(OrderSummary):
    """``GET /orders/{id}``: the order, its lines and its customer."""

    customer: CustomerRef


class OrdersPage(TypedDict):
    """One keyset page of a customer's orders, newest first."""

    customer_id: int
    orders: list[OrderSummary]
    next_cursor: str | None


class ImportResult(TypedDict):
    """``POST /orders/import``: how many orders were written and their ids, in input order."""

    imported: int
    order_ids: list[int]


class Health(TypedDict):
    """``GET /health``."""

    status: str
    mode: AppMode
    database: str
    replicas: int
    cache: str | None
    capture: bool
    cache_hits: int | None
    cache_misses: int | None


class InvalidInput(ValueError):
    """A request the shop refuses; the message is fit for a 400 response."""


# -- engines, cache, recorder ----------------------------------------------------


def make_engine(settings: Settings, url: str, *, replica: bool = False) -> Engine:
    """An engine tuned by sqlperf (``workload="web"``), or plain ``create_engine`` in plain mode.

    A replica's engine is read-only (on SQLite: opened read-only, so the file must exist).
    """
    if settings.mode == "plain":
        return create_engine(url)
    name = "sqlperf-shop-replica" if replica else "sqlperf-shop"
    return create_optimized_engine(url, workload="web", read_only=replica, application_name=name)


def make_cache(settings: Settings) -> QueryCache | None:
    """The query cache (on Redis with ``redis_url``, else in memory), if enabled.

    Entries live 5 minutes at most; a commit that writes a table they read
    invalidates them at once, in every process that shares the Redis. With Redis
    and ``cache_local_ttl`` > 0, a :class:`~sqlperf.cache.LayeredBackend` answers
    repeated reads from this process's memory without a round trip; another
    process's commit reaches that memory by pub/sub (see ``docs/cache.md`` for the
    bound on how long it may lag).
    """
    if settings.mode == "plain" or not settings.cache:
        return None
    backend: CacheBackend
    if settings.redis_url:
        backend = RedisBackend(settings.redis_url, namespace=settings.cache_namespace)
        if settings.cache_local_ttl > 0:
            backend = LayeredBackend(backend, local_ttl=settings.cache_local_ttl)
    else:
        backend = MemoryBackend()
    return QueryCache(backend, ttl=300)


def make_recorder(settings: Settings, engines: Sequence[Engine]) -> QueryRecorder | None:
    """A query recorder attached to ``engines``, if enabled.

    It aggregates every statement per query shape, and records slow (100 ms),
    failed and N+1 statements: in memory, and in ``settings.query_log`` if set.
    """
    if settings.mode == "plain" or not settings.capture:
        return None
    sinks: list[Sink] = [MemorySink(capacity=1000)]
    if settings.query_log:
        sinks.append(JsonlSink(settings.query_log))
    return QueryRecorder(slow_ms=100, sinks=sinks).attach(*engines)


# -- seed data -------------------------------------------------------------------

_SEED = 9
_HISTORY_END = datetime(2025, 1, 1)
_NAMES = ("Ada", "Alan", "Barbara", "Edsger", "Grace", "Guido", "Hedy", "Ken", "Radia", "Tim")
_COUNTRIES = ("US", "DE", "FR", "GB", "JP", "BR", "IN")
_CATEGORIES = ("books", "games", "garden", "kitchen", "music", "tools", "toys")


def _popular(rng: random.Random, n: int, power: float) -> int:
    """An id in 1..n, low ids more likely (loyal customers, best sellers)."""
    return min(n, int(n * rng.random() ** power) + 1)


def seed(engine: Engine, orders_count: int = 3000) -> int:
    """Insert a deterministic shop into empty tables with ``bulk_insert``; returns the rows.

    One customer per ten orders and one product per thirty; orders span the year
    before 2025-01-01 with ids in time order, 1 to 4 lines each. Low customer ids
    order much more (customer 1 has several pages of orders).
    """
    rng = random.Random(_SEED)
    n_customers = max(10, orders_count // 10)
    n_products = max(10, orders_count // 30)
    customer_rows = [
        {
            "id": cid,
            "email": f"shopper{cid}@example.com",
            "name": f"{rng.choice(_NAMES)} {cid}",
            "country": rng.choice(_COUNTRIES),
            "created_at": _HISTORY_END - timedelta(days=400 + cid % 300),
        }
        for cid in range(1, n_customers + 1)
    ]
    product_rows: list[dict[str, Any]] = [
        {
            "id": pid,
            "sku": f"SHOP-{pid:06d}",
            "name": f"{category.title()} item {pid}",
            "category": category,
            "price_cents": 199 + int(20_000 * rng.random() ** 3),
            "stock": 1_000_000,
        }
        for pid in range(1, n_products + 1)
        for category in [rng.choice(_CATEGORIES)]
    ]
    step = timedelta(days=365) / orders_count
    order_rows: list[dict[str, Any]] = []
    item_rows: list[dict[str, Any]] = []
    for oid in range(1, orders_count + 1):
        total = 0
        for line_no in range(1, rng.randint(1, 4) + 1):
            product = product_rows[_popular(rng, n_products, 2.0) - 1]
            quantity = rng.choice((1, 1, 1, 2, 3))
            total += quantity * product["price_cents"]
            item_rows.append(
                {
                    "order_id": oid,
                    "line_no": line_no,
                    "product_id": product["id"],
                    "quantity": quantity,
                    "unit_price_cents": product["price_cents"],
                }
            )
        order_rows.append(
            {
                "id": oid,
                "customer_id": _popular(rng, n_customers, 1.5),
                "status": rng.choice(("delivered", "delivered", "shipped", "cancelled")),
                "created_at": _HISTORY_END - timedelta(days=365) + step * oid,
                "total_cents": total,
            }
        )
    with engine.begin() as conn:
        for table, rows in (
            (customers, customer_rows),
            (products, product_rows),
            (orders, order_rows),
            (order_items, item_rows),
        ):
            bulk_insert(conn, table, rows)
        if engine.dialect.name == "postgresql":
            # Explicit ids leave the SERIAL sequences behind; new rows need them ahead.
            for table in (customers, products, orders):
                conn.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                        f"(SELECT max(id) FROM {table.name}))"
                    )
                )
    return len(customer_rows) + len(product_rows) + len(order_rows) + len(item_rows)


def prepare_database(engine: Engine, orders_count: int = 3000) -> bool:
    """Create the shop's tables if missing and seed them if empty; ``True`` if it seeded.

    Run it from one process: two processes seeding one empty database at once
    would both insert the same ids and one of them would fail.
    """
    metadata.create_all(engine)
    with engine.connect() as conn:
        empty = conn.execute(select(customers.c.id).limit(1)).first() is None
    if empty:
        seed(engine, orders_count)
    return empty


# -- the shop --------------------------------------------------------------------


def _int(value: object, what: str, *, low: int = 1, high: int = 2**31 - 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(f"{what} must be an integer from {low} to {high}")
    return value


@dataclass(frozen=True)
class _NewOrder:
    customer_id: int
    lines: tuple[tuple[int, int], ...]  # (product id, quantity)
    status: str = "paid"
    created_at: datetime | None = None


def _parse_order(data: object, *, imported: bool = False) -> _NewOrder:
    """Check one order of a request body; ``imported`` orders may carry status and time."""
    if not isinstance(data, dict):
        raise InvalidInput("an order must be a JSON object")
    lines = data.get("lines")
    if not isinstance(lines, list) or not 1 <= len(lines) <= MAX_LINES:
        raise InvalidInput(f"lines must be a list of 1 to {MAX_LINES} lines")
    parsed = []
    for line in lines:
        if not isinstance(line, dict):
            raise InvalidInput("each line must be a JSON object")
        parsed.append(
            (
                _int(line.get("product_id"), "product_id"),
                _int(line.get("quantity"), "quantity", high=MAX_QUANTITY),
            )
        )
    status, created_at = "paid", None
    if imported:
        status = data.get("status", status)
        if not isinstance(status, str) or not 1 <= len(status) <= 16:
            raise InvalidInput("status must be a string of 1 to 16 characters")
        if data.get("created_at") is not None:
            try:
                created_at = datetime.fromisoformat(str(data["created_at"]))
            except ValueError:
                raise InvalidInput("created_at must be an ISO 8601 timestamp") from None
            if created_at.tzinfo is not None:  # stored as naive UTC
                created_at = created_at.astimezone(timezone.utc).replace(tzinfo=None)
    customer_id = _int(data.get("customer_id"), "customer_id")
    return _NewOrder(customer_id, tuple(parsed), status, created_at)


#: A result row of any shape (SQLAlchemy 2.1 types rows by their columns).
_Row = Row[Unpack[tuple[Any, ...]]]


def _line(row: _Row) -> Line:
    return {
        "line_no": row.line_no,
        "product_id": row.product_id,
        "product": row.product,
        "quantity": row.quantity,
        "unit_price_cents": row.unit_price_cents,
    }


def _summary(row: _Row, lines: list[Line]) -> OrderSummary:
    return {
        "id": row.id,
        "customer_id": row.customer_id,
        "status": row.status,
        "created_at": row.created_at.isoformat(),
        "total_cents": row.total_cents,
        "lines": lines,
    }


# -- models and statements -------------------------------------------------------


class Base(DeclarativeBase):
    """The shop's ORM models, mapped onto the tables of :mod:`sqlperf.demo`."""

    metadata = metadata


class Customer(Base):
    """A shopper."""

    __table__ = customers
    id: Mapped[int]
    email: Mapped[str]
    name: Mapped[str]
    country: Mapped[str]
    created_at: Mapped[datetime]


class Product(Base):
    """An article of the catalogue."""

    __table__ = products
    id: Mapped[int]
    sku: Mapped[str]
    name: Mapped[str]
    category: Mapped[str]
    price_cents: Mapped[int]
    stock: Mapped[int]


class Order(Base):
    """An order; its lines are :class:`OrderItem` rows."""

    __table__ = orders
    id: Mapped[int]
    customer_id: Mapped[int]
    status: Mapped[str]
    created_at: Mapped[datetime]
    total_cents: Mapped[int]


class OrderItem(Base):
    """One line of an order."""

    __table__ = order_items
    order_id: Mapped[int]
    line_no: Mapped[int]
    product_id: Mapped[int]
    quantity: Mapped[int]
    unit_price_cents: Mapped[int]


# The reads select model attributes (rows, not objects). The query cache answers
# those before a connection is opened; a select of bare Table columns it answers
# at the DB-API step (a connection checked out, SQLAlchemy's execution run, the
# stored rows played back), which on SQLite costs more than running the query.
_ORDER_COLUMNS = (Order.id, Order.customer_id, Order.status, Order.created_at, Order.total_cents)
_LINE_COLUMNS = (
    OrderItem.line_no,
    OrderItem.product_id,
    Product.name.label("product"),
    OrderItem.quantity,
    OrderItem.unit_price_cents,
)
_LINES = (
    select(OrderItem.order_id, *_LINE_COLUMNS)
    .join(Product, Product.id == OrderItem.product_id)
    .order_by(OrderItem.order_id, OrderItem.line_no)
)
#: Orders newest first: the keyset ordering (``ix_demo_orders_customer_id_created_at``
#: serves it for one customer).
_NEWEST_ORDERS = select(*_ORDER_COLUMNS).order_by(Order.created_at.desc(), Order.id.desc())
#: Lines of several orders in one query, the way ``selectinload`` loads them.
_LINES_OF_ORDERS = _LINES.where(OrderItem.order_id.in_(bindparam("ids", expanding=True)))
#: Lines of one order: what the naive endpoint runs once per order.
_LINES_OF_ORDER = _LINES.where(OrderItem.order_id == bindparam("order_id"))
_DETAIL = (
    select(
        *_ORDER_COLUMNS,
        Customer.name.label("customer_name"),
        Customer.email.label("customer_email"),
        *_LINE_COLUMNS,
    )
    .join(Customer, Customer.id == Order.customer_id)
    .outerjoin(OrderItem, OrderItem.order_id == Order.id)
    .outerjoin(Product, Product.id == OrderItem.product_id)
    .where(Order.id == bindparam("order_id"))
    .order_by(OrderItem.line_no)
)


def _detail_of(rows: Sequence[_Row]) -> OrderDetail | None:
    """An order detail from the rows of ``_DETAIL`` (``None``: no such order)."""
    if not rows:
        return None
    first = rows[0]
    summary = _summary(first, [_line(row) for row in rows if row.line_no is not None])
    customer: CustomerRef = {
        "id": first.customer_id,
        "name": first.customer_name,
        "email": first.customer_email,
    }
    return {**summary, "customer": customer}


def _write_transaction(session: Session) -> AbstractContextManager[object]:
    """A transaction committed at the end of the block, rolled back on an exception.

    In a ``RoutingSession`` it runs wholly on the primary and is declared as writing
    (``begin_write()``), so its reads see what it writes against and its commit
    gives the session a read-your-writes token. The session must not be in a
    transaction yet (a request's session is new).
    """
    return session.begin_write() if isinstance(session, RoutingSession) else session.begin()


class Shop:
    """The shop of one process: engines, sessions, cache and recorder, and the queries.

    Making one prepares the database (:func:`prepare_database`). Query methods take
    the request's session: a :class:`~sqlperf.RoutingSession` in sqlperf mode (reads
    to a replica, writes to the primary), a plain ``Session`` in plain mode.

    Attributes:
        settings: what it was made with.
        primary: the primary engine.
        replicas: the replica engines (none in plain mode or without a replica URL).
        cache: the query cache, or ``None``.
        recorder: the query recorder, or ``None``.
        sessions: a session factory of the right kind, with the cache installed.
        session_options: what the integrations need to make the same sessions
            (``session_options=`` of ``Sqlperf`` and ``SqlperfMiddleware``).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.primary = make_engine(settings, settings.database_url)
        self.cache = make_cache(settings)
        if self.cache is not None:
            # Before seeding, so that the seed's writes invalidate whatever a shared
            # Redis still holds from an earlier database.
            self.cache.attach(self.primary)
        prepare_database(self.primary, settings.seed_orders)
        # Plain mode has no replica: plain SQLAlchemy has nothing to route with.
        self.replicas = [
            make_engine(settings, url, replica=True)
            for url in [settings.replica_url]
            if url and settings.mode == "sqlperf"
        ]
        self.session_options: dict[str, Any] = {}
        self.sessions: sessionmaker[Session]
        if settings.mode == "plain":
            self.sessions = sessionmaker(bind=self.primary)
        else:
            # A subclass of its own: the cache installed on it touches no other
            # session of the process. The integrations make their sessions of it.
            session_class = cast("type[RoutingSession]", type("ShopSession", (RoutingSession,), {}))
            self.session_options["class_"] = session_class
            self.sessions = sessionmaker(
                class_=session_class, primary=self.primary, replicas=self.replicas
            )
            if self.cache is not None:
                self.cache.install(session_class)
        self.recorder = make_recorder(settings, [self.primary, *self.replicas])
        if self.recorder is not None and self.cache is not None:
            # Hits answered in the session count in the request's Server-Timing too.
            self.recorder.count_cache_hits(self.cache)
        self._detail = _DETAIL.options(cached()) if self.cache is not None else _DETAIL

    def __repr__(self) -> str:
        return f"Shop({self.settings!r})"

    def close(self) -> None:
        """Flush the recorder, stop the cache and its backend, dispose of the engines."""
        if self.recorder is not None:
            self.recorder.close()
        if self.cache is not None:
            self.cache.close()
            self.cache.backend.close()
        for engine in (self.primary, *self.replicas):
            engine.dispose()

    # -- reads ----------------------------------------------------------------------

    def health(self, session: Session) -> Health:
        """Check the database answers; say how the shop is set up."""
        session.execute(select(1)).scalar_one()
        stats = self.cache.stats() if self.cache is not None else None
        return {
            "status": "ok",
            "mode": self.settings.mode,
            "database": self.primary.dialect.name,
            "replicas": len(self.replicas),
            "cache": None if self.cache is None else type(self.cache.backend).__name__,
            "capture": self.recorder is not None,
            "cache_hits": None if stats is None else stats.hits,
            "cache_misses": None if stats is None else stats.misses,
        }

    def _orders_page(
        self, session: Session, customer_id: int, cursor: str | None
    ) -> tuple[list[_Row], str | None]:
        # keyset_page is annotated for Select[Any], which SQLAlchemy 2.1 reads as one column.
        stmt = cast("Select[Any]", _NEWEST_ORDERS.where(Order.customer_id == customer_id))
        try:
            page = keyset_page(session, stmt, PAGE_SIZE, after=cursor or None)
        except InvalidCursor as exc:
            raise InvalidInput(str(exc)) from None
        return page.items, page.next_cursor

    def customer_orders(
        self, session: Session, customer_id: int, cursor: str | None = None
    ) -> OrdersPage:
        """One page of a customer's orders, newest first, with their lines (two queries).

        Args:
            session: the request's session.
            customer_id: whose orders.
            cursor: the ``next_cursor`` of the previous page; ``None`` for the first.

        Raises:
            InvalidInput: a malformed or foreign cursor.
        """
        rows, next_cursor = self._orders_page(session, customer_id, cursor)
        lines: dict[int, list[Line]] = {row.id: [] for row in rows}
        if rows:
            for line in session.execute(_LINES_OF_ORDERS, {"ids": list(lines)}):
                lines[line.order_id].append(_line(line))
        return {
            "customer_id": customer_id,
            "orders": [_summary(row, lines[row.id]) for row in rows],
            "next_cursor": next_cursor,
        }

    def customer_orders_naive(
        self, session: Session, customer_id: int, cursor: str | None = None
    ) -> OrdersPage:
        """The same page, written the slow way on purpose: one query per order for its lines.

        This is the N+1 pattern a lazy-loaded relationship produces (21 queries for
        a page of 20); the recorder reports it as an ``n_plus_one`` record with this
        module's line as its call site. :meth:`customer_orders` is the fix.
        """
        rows, next_cursor = self._orders_page(session, customer_id, cursor)
        return {
            "customer_id": customer_id,
            "orders": [_summary(row, self._lines_of_order(session, row.id)) for row in rows],
            "next_cursor": next_cursor,
        }

    def _lines_of_order(self, session: Session, order_id: int) -> list[Line]:
        return [_line(row) for row in session.execute(_LINES_OF_ORDER, {"order_id": order_id})]

    def order_detail(self, session: Session, order_id: int) -> OrderDetail | None:
        """An order with its customer and lines, in one query answered by the cache when it can.

        Returns ``None`` if there is no such order. A commit that writes any of the
        four tables invalidates the cached copies, in every process sharing the cache.
        """
        return _detail_of(session.execute(self._detail, {"order_id": order_id}).all())

    def cached_order_detail(
        self, session: Session, order_id: int
    ) -> tuple[bool, OrderDetail | None]:
        """``(True, detail)`` if the cache answers :meth:`order_detail` from this process's
        memory, without any I/O (so an ``async`` endpoint may call it on the event loop);
        ``(False, None)`` otherwise, and always without a cache."""
        if self.cache is None:
            return False, None
        result = self.cache.answer_locally(session, self._detail, {"order_id": order_id})
        if result is None:
            return False, None
        return True, _detail_of(result.all())

    # -- writes ---------------------------------------------------------------------

    def _check_references(self, session: Session, new: Sequence[_NewOrder]) -> dict[int, Any]:
        """Check customers and products exist; return each product's (name, price)."""
        customer_ids = sorted({o.customer_id for o in new})
        product_ids = sorted({pid for o in new for pid, _ in o.lines})
        found = session.scalars(select(Customer.id).where(Customer.id.in_(customer_ids))).all()
        missing = sorted(set(customer_ids) - set(found))
        if missing:
            raise InvalidInput(f"no such customer: {missing[0]}")
        prices = {
            row.id: row
            for row in session.execute(
                select(Product.id, Product.name, Product.price_cents).where(
                    Product.id.in_(product_ids)
                )
            )
        }
        missing = [pid for pid in product_ids if pid not in prices]
        if missing:
            raise InvalidInput(f"no such product: {missing[0]}")
        return prices

    def create_order(self, session: Session, payload: object) -> CreatedOrder:
        """Write one order and its lines, at today's prices, in one transaction it commits.

        Args:
            session: the request's session; after the commit, a
                :class:`~sqlperf.RoutingSession` holds the read-your-writes token
                the integration sends back to the client.
            payload: ``{"customer_id": int, "lines": [{"product_id": int, "quantity": int}]}``.

        Raises:
            InvalidInput: a malformed order, or an unknown customer or product.
        """
        new = _parse_order(payload)
        # Checked and written on the primary: a lagging replica could miss a new
        # product or show an old price.
        with _write_transaction(session):
            prices = self._check_references(session, [new])
            created_at = datetime.now(timezone.utc).replace(tzinfo=None)
            total = sum(prices[pid].price_cents * quantity for pid, quantity in new.lines)
            order_id = session.execute(
                orders.insert().returning(orders.c.id),
                {
                    "customer_id": new.customer_id,
                    "status": new.status,
                    "created_at": created_at,
                    "total_cents": total,
                },
            ).scalar_one()
            lines: list[Line] = [
                {
                    "line_no": n,
                    "product_id": pid,
                    "product": prices[pid].name,
                    "quantity": quantity,
                    "unit_price_cents": prices[pid].price_cents,
                }
                for n, (pid, quantity) in enumerate(new.lines, start=1)
            ]
            session.execute(
                order_items.insert(),
                [
                    {
                        "order_id": order_id,
                        "line_no": line["line_no"],
                        "product_id": line["product_id"],
                        "quantity": line["quantity"],
                        "unit_price_cents": line["unit_price_cents"],
                    }
                    for line in lines
                ],
            )
        return {
            "id": order_id,
            "customer_id": new.customer_id,
            "status": new.status,
            "created_at": created_at.isoformat(),
            "total_cents": total,
            "lines": lines,
        }

    def import_orders(self, session: Session, payload: object) -> ImportResult:
        """Write a list of orders with ``bulk_insert``, all or none, in one transaction it commits.

        Each order is like :meth:`create_order`'s, and may also carry ``status`` and
        ``created_at`` (ISO 8601). Orders go in with one multi-row ``INSERT ...
        RETURNING`` (their ids), their lines by the driver's fastest path (``COPY``
        on PostgreSQL); the cache forgets both tables at the commit.

        Raises:
            InvalidInput: not a list of 1 to 10,000 valid orders, or unknown references.
        """
        if not isinstance(payload, list) or not 1 <= len(payload) <= MAX_IMPORT:
            raise InvalidInput(f"the body must be a JSON list of 1 to {MAX_IMPORT} orders")
        new = [_parse_order(item, imported=True) for item in payload]
        with _write_transaction(session):
            prices = self._check_references(session, new)
            now = datetime.now(timezone.utc).replace(tzinfo=None)
            order_rows = [
                {
                    "customer_id": o.customer_id,
                    "status": o.status,
                    "created_at": o.created_at or now,
                    "total_cents": sum(prices[pid].price_cents * q for pid, q in o.lines),
                }
                for o in new
            ]
            result = bulk_insert(session, orders, order_rows, returning=["id"])
            ids = [row[0] for row in result.returned]
            item_rows = [
                (order_id, n, pid, quantity, prices[pid].price_cents)
                for order_id, o in zip(ids, new, strict=True)
                for n, (pid, quantity) in enumerate(o.lines, start=1)
            ]
            bulk_insert(session, order_items, item_rows)
        return {"imported": len(ids), "order_ids": ids}
