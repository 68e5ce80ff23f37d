"""The sqlperf demo (``sqlperf demo``, ``make demo``): a small shop under load.

:func:`run_demo` builds an engine with :func:`sqlperf.create_optimized_engine`,
(re)creates a shop schema (customers, products, orders, order items), seeds it
with deterministic data (100,000 orders by default), runs a mixed read/write
workload from several threads for a few seconds, and prints what happened:
latency per operation, throughput, errors, the pool's state
(:func:`sqlperf.pool_status`) and whether the pool settings fit the server
(:func:`sqlperf.check_pool_budget`).

Its tables are named ``demo_*`` and described by this module's own
:data:`metadata`, so pointing the demo at an application database
(``sqlperf demo --url ...``) only ever drops and recreates those four tables.
On a server database they are left in place afterwards for inspection; the
temporary SQLite file used when no URL is given is deleted.

Example::

    >>> import io
    >>> from sqlperf.demo import run_demo
    >>> report = run_demo(orders=200, seconds=0.2, threads=2, out=io.StringIO())
    >>> report.errors
    0
"""

from __future__ import annotations

import itertools
import math
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal, TextIO

import sqlalchemy.exc
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    Engine,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    func,
    select,
    text,
    update,
)
from sqlalchemy.orm import sessionmaker

from sqlperf.budget import PoolBudget, check_pool_budget
from sqlperf.bulk import bulk_insert
from sqlperf.capture import QueryRecorder
from sqlperf.demo_analysis import AnalysisDemoReport, run_analysis_demo
from sqlperf.demo_cache import CacheDemoReport, run_cache_demo
from sqlperf.demo_capture import CaptureDemoReport, DemoCapture, finish_capture, start_capture
from sqlperf.demo_nplusone import NPlusOneDemoReport, run_n_plus_one_demo
from sqlperf.demo_pages import PagesDemoReport, run_pages_demo
from sqlperf.engine import create_optimized_engine, safe_url
from sqlperf.exceptions import ConfigurationError, SqlperfError
from sqlperf.pool import PoolStatus, pool_status
from sqlperf.routing import RouteStats, RoutingSession, routing_stats
from sqlperf.schema import NAMING_CONVENTION

__all__ = [
    "DemoReport",
    "OperationStats",
    "customers",
    "metadata",
    "order_items",
    "orders",
    "products",
    "run_demo",
]

# -- schema ----------------------------------------------------------------------

#: The demo's tables, apart from sqlperf's own (:data:`sqlperf.schema.metadata`).
#: Money is in integer cents: exact, and the same on every dialect (SQLite has no
#: native DECIMAL). Timestamps are naive UTC.
metadata = MetaData(naming_convention=dict(NAMING_CONVENTION))

#: Shoppers; about one per ten orders, a few of them loyal (low ids order more).
customers = Table(
    "demo_customers",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("email", String(255), nullable=False, unique=True),
    Column("name", String(100), nullable=False),
    Column("country", String(2), nullable=False),
    Column("created_at", DateTime, nullable=False),
)

#: The catalogue; about one product per hundred orders, low ids selling best.
products = Table(
    "demo_products",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("sku", String(32), nullable=False, unique=True),
    Column("name", String(100), nullable=False),
    Column("category", String(50), nullable=False),
    Column("price_cents", Integer, nullable=False),
    Column("stock", Integer, nullable=False),
    Index("ix_demo_products_category", "category"),
)

#: Orders, seeded over the year before 2025-01-01 with ids in time order.
orders = Table(
    "demo_orders",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("customer_id", Integer, ForeignKey("demo_customers.id"), nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("total_cents", BigInteger, nullable=False),
    # "A customer's recent orders": equality on customer_id, then newest first.
    Index("ix_demo_orders_customer_id_created_at", "customer_id", "created_at"),
    # Date-window reports, and keyset pages by (created_at DESC, id DESC).
    Index("ix_demo_orders_created_at", "created_at", "id"),
)

#: Order lines, 1 to 4 per order; ``total_cents`` of an order is their sum.
order_items = Table(
    "demo_order_items",
    metadata,
    # (order_id, line_no) keeps an order's lines together (InnoDB clusters on it).
    Column(
        "order_id",
        Integer,
        ForeignKey("demo_orders.id", ondelete="CASCADE"),
        primary_key=True,
        autoincrement=False,
    ),
    Column("line_no", Integer, primary_key=True, autoincrement=False),
    Column("product_id", Integer, ForeignKey("demo_products.id"), nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("unit_price_cents", Integer, nullable=False),
    Index("ix_demo_order_items_product_id", "product_id"),
)

# -- report ----------------------------------------------------------------------

OperationKind = Literal["read", "write"]


@dataclass(frozen=True, kw_only=True)
class OperationStats:
    """What one kind of operation did during the workload.

    Attributes:
        name: the operation, e.g. ``"place_order"``.
        kind: ``"read"`` or ``"write"``.
        count: operations that succeeded.
        errors: operations that raised a database or sqlperf error.
        mean_ms: mean latency of the successful operations.
        p95_ms: 95th percentile (nearest rank) of the same.
        max_ms: the slowest successful operation.
    """

    name: str
    kind: OperationKind
    count: int
    errors: int
    mean_ms: float
    p95_ms: float
    max_ms: float


@dataclass(frozen=True, kw_only=True)
class DemoReport:
    """The numbers of one :func:`run_demo` run.

    Attributes:
        url: the database, password hidden.
        dialect: SQLAlchemy's dialect name (``"sqlite"``, ``"postgresql"``, ``"mysql"``).
        database_kept: ``False`` when the demo used (and then deleted) a temporary SQLite file.
        customers: customers seeded.
        products: products seeded.
        orders: orders seeded (the workload adds ``place_order`` ones).
        order_items: order lines seeded.
        seed_rows: all rows seeded.
        seed_seconds: time to generate and insert them, in one transaction.
        seed_rows_per_s: ``seed_rows / seed_seconds``.
        threads: workload threads.
        workload_seconds: measured duration of the workload.
        operations: per-operation statistics, in a fixed order.
        total_operations: successful operations of every kind.
        errors: failed operations of every kind.
        throughput: ``total_operations / workload_seconds``.
        first_error: the first error's one-line description, if any.
        orders_placed: orders written by the workload.
        items_placed: order lines written by the workload.
        pool: the engine's pool after the workload.
        budget: the verdict of :func:`sqlperf.check_pool_budget` for ``workers`` processes.
        primary_writes: statements and flushes the routing session sent to the primary.
        primary_reads: reads the primary served (no replica, after a write, or a fallback).
        replica_reads: reads the replica served.
        total_seconds: the whole run, schema and clean-up included.
        cache: what the query-cache part measured (hit ratio, speed-up, invalidation).
        pages: what the pagination part did (cursor round trip, OFFSET versus keyset).
        n_plus_one: the N+1 part: a page loaded with a loop of queries, then batched.
        capture: what the query recorder captured over the whole run.
        analysis: the report and notebooks written from the log (``None`` without
            an output folder).
    """

    url: str
    dialect: str
    database_kept: bool
    customers: int
    products: int
    orders: int
    order_items: int
    seed_rows: int
    seed_seconds: float
    seed_rows_per_s: float
    threads: int
    workload_seconds: float
    operations: tuple[OperationStats, ...]
    total_operations: int
    errors: int
    throughput: float
    first_error: str | None
    orders_placed: int
    items_placed: int
    pool: PoolStatus
    budget: PoolBudget
    primary_writes: int
    primary_reads: int
    replica_reads: int
    total_seconds: float
    cache: CacheDemoReport
    pages: PagesDemoReport
    n_plus_one: NPlusOneDemoReport
    capture: CaptureDemoReport
    analysis: AnalysisDemoReport | None

    def operation(self, name: str) -> OperationStats:
        """Return the statistics of operation ``name``.

        Raises:
            KeyError: no operation has that name.
        """
        for op in self.operations:
            if op.name == name:
                return op
        raise KeyError(name)


# -- data generation -------------------------------------------------------------

_CHUNK = 10_000
_HISTORY_END = datetime(2025, 1, 1)  # seeded orders span the year before this
_HISTORY = timedelta(days=365)
_FIRST = ("Ada", "Alan", "Barbara", "Claude", "Donald", "Edsger", "Frances", "Grace", "Guido",
          "Hedy", "Ivan", "Jean", "John", "Katherine", "Ken", "Linus", "Margaret", "Niklaus",
          "Radia", "Tim")  # fmt: skip
_LAST = ("Lovelace", "Turing", "Liskov", "Shannon", "Knuth", "Dijkstra", "Allen", "Hopper",
         "van Rossum", "Lamarr", "Sutherland", "Sammet", "McCarthy", "Johnson", "Thompson",
         "Torvalds", "Hamilton", "Wirth", "Perlman", "Berners-Lee")  # fmt: skip
_COUNTRIES = ("US", "DE", "FR", "GB", "JP", "BR", "IN", "CA", "ES", "IT", "NL", "SE", "PL", "AU")
_CATEGORIES = ("books", "games", "garden", "kitchen", "music", "office", "outdoor", "pets",
               "shoes", "sports", "tools", "toys")  # fmt: skip
_ADJECTIVES = ("Classic", "Compact", "Deluxe", "Eco", "Ergonomic", "Mini", "Pro", "Rugged",
               "Smart", "Vintage")  # fmt: skip
_STATUSES = ("delivered", "delivered", "delivered", "delivered", "shipped", "cancelled")


@dataclass(frozen=True)
class _Sizes:
    customers: int
    products: int
    orders: int


def _skewed(rng: random.Random, n: int, power: float) -> int:
    """An id in 1..n where low ids are more popular (a few best sellers, loyal customers)."""
    return min(n, int(n * rng.random() ** power) + 1)


def _customer_rows(sizes: _Sizes, rng: random.Random) -> Iterator[list[dict[str, Any]]]:
    start = _HISTORY_END - 3 * _HISTORY
    span_s = int((2 * _HISTORY).total_seconds())
    chunk: list[dict[str, Any]] = []
    for cid in range(1, sizes.customers + 1):
        chunk.append(
            {
                "id": cid,
                "email": f"customer{cid}@example.com",
                "name": f"{rng.choice(_FIRST)} {rng.choice(_LAST)}",
                "country": rng.choice(_COUNTRIES),
                "created_at": start + timedelta(seconds=rng.randrange(span_s)),
            }
        )
        if len(chunk) == _CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _product_rows(sizes: _Sizes, rng: random.Random) -> list[dict[str, Any]]:
    rows = []
    for pid in range(1, sizes.products + 1):
        category = rng.choice(_CATEGORIES)
        rows.append(
            {
                "id": pid,
                "sku": f"SKU-{pid:07d}",
                "name": f"{rng.choice(_ADJECTIVES)} {category[:-1]} #{pid}",
                "category": category,
                # Prices from 1.99 to ~500, most of them cheap.
                "price_cents": 199 + int(49_800 * rng.random() ** 3),
                "stock": 1_000_000,
            }
        )
    return rows


def _order_rows(
    sizes: _Sizes, prices: Sequence[int], rng: random.Random
) -> Iterator[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """Yield (orders, their items) in chunks; orders are in time order, ids ascending."""
    start = _HISTORY_END - _HISTORY
    step_s = _HISTORY.total_seconds() / sizes.orders
    order_chunk: list[dict[str, Any]] = []
    item_chunk: list[dict[str, Any]] = []
    rand = rng.random
    for oid in range(1, sizes.orders + 1):
        total = 0
        for line_no in range(1, rng.randint(1, 4) + 1):  # 2.5 lines on average
            pid = _skewed(rng, sizes.products, 2.0)
            quantity = 1 if rand() < 0.7 else rng.randint(2, 5)
            price = prices[pid]
            total += quantity * price
            item_chunk.append(
                {
                    "order_id": oid,
                    "line_no": line_no,
                    "product_id": pid,
                    "quantity": quantity,
                    "unit_price_cents": price,
                }
            )
        order_chunk.append(
            {
                "id": oid,
                "customer_id": _skewed(rng, sizes.customers, 1.5),
                "status": _STATUSES[int(rand() * len(_STATUSES))],
                "created_at": start + timedelta(seconds=(oid - 1 + rand()) * step_s),
                "total_cents": total,
            }
        )
        if len(order_chunk) == _CHUNK:
            yield order_chunk, item_chunk
            order_chunk, item_chunk = [], []
    if order_chunk:
        yield order_chunk, item_chunk


@dataclass(frozen=True)
class _Seeded:
    customers: int
    products: int
    orders: int
    order_items: int
    prices: tuple[int, ...]  # index = product id; [0] unused
    seconds: float
    method: str  # bulk_insert's path

    @property
    def rows(self) -> int:
        return self.customers + self.products + self.orders + self.order_items


def _seed(engine: Engine, sizes: _Sizes, seed: int) -> _Seeded:
    """Insert the whole data set in one transaction, with ``bulk_insert`` in chunks."""
    rng = random.Random(seed)
    started = time.perf_counter()
    n_items = 0
    method = ""
    sqlite = engine.dialect.name == "sqlite"
    with engine.begin() as conn:
        if sqlite:
            # A bulk load touches index pages all over the file; a 64 MiB page
            # cache (default 2 MiB) keeps them in memory until the commit.
            conn.exec_driver_sql("PRAGMA cache_size = -65536")
        for chunk in _customer_rows(sizes, rng):
            method = bulk_insert(conn, customers, chunk).method
        product_rows = _product_rows(sizes, rng)
        bulk_insert(conn, products, product_rows)
        prices = (0, *(row["price_cents"] for row in product_rows))
        for order_chunk, item_chunk in _order_rows(sizes, prices, rng):
            bulk_insert(conn, orders, order_chunk)
            bulk_insert(conn, order_items, item_chunk)
            n_items += len(item_chunk)
        if engine.dialect.name == "postgresql":
            # Explicit ids do not advance a SERIAL's sequence; new orders need it to.
            for table in (customers, products, orders):
                conn.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                        f"(SELECT max(id) FROM {table.name}))"
                    )
                )
        if sqlite:
            # Back to the default (the dirty pages go to the WAL now rather than
            # at the commit), so the connection returns to the pool as it was.
            conn.exec_driver_sql("PRAGMA cache_size = -2000")
    return _Seeded(
        customers=sizes.customers,
        products=sizes.products,
        orders=sizes.orders,
        order_items=n_items,
        prices=prices,
        seconds=time.perf_counter() - started,
        method=method,
    )


def _analyze(engine: Engine) -> None:
    """Give the planner statistics for the fresh tables, as a DBA would after a load."""
    names = ", ".join(t.name for t in metadata.sorted_tables)
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql("ANALYZE")
        elif engine.dialect.name == "postgresql":
            conn.exec_driver_sql(f"ANALYZE {names}")
        else:
            conn.exec_driver_sql(f"ANALYZE TABLE {names}").all()


# -- workload --------------------------------------------------------------------


class _Workload:
    """The operations the threads run; statements are built once and reused."""

    def __init__(self, engine: Engine, seeded: _Seeded, replica: Engine | None) -> None:
        self.engine = engine
        self.seeded = seeded
        # Reads go to the replica (if any), writes to the primary.
        self.session = sessionmaker(
            class_=RoutingSession, primary=engine, replicas=[replica] if replica else []
        )
        self.recent_orders = (
            select(orders.c.id, orders.c.status, orders.c.created_at, orders.c.total_cents)
            .where(orders.c.customer_id == bindparam("customer_id"))
            .order_by(orders.c.created_at.desc())
            .limit(10)
        )
        # Loaded for a set of orders in one query, like selectinload() does.
        self.items_of_orders = (
            select(
                order_items.c.order_id,
                order_items.c.line_no,
                order_items.c.quantity,
                order_items.c.unit_price_cents,
                products.c.name,
            )
            .join(products, products.c.id == order_items.c.product_id)
            .where(order_items.c.order_id.in_(bindparam("order_ids", expanding=True)))
            .order_by(order_items.c.order_id, order_items.c.line_no)
        )
        revenue = func.sum(order_items.c.quantity * order_items.c.unit_price_cents).label(
            "revenue_cents"
        )
        self.revenue_by_product = (
            select(products.c.id, products.c.name, revenue)
            .select_from(orders)
            .join(order_items, order_items.c.order_id == orders.c.id)
            .join(products, products.c.id == order_items.c.product_id)
            .where(
                orders.c.created_at >= bindparam("start"), orders.c.created_at < bindparam("end")
            )
            .group_by(products.c.id, products.c.name)
            .order_by(revenue.desc(), products.c.id)
            .limit(10)
        )
        self.order_detail = (
            select(
                orders.c.id,
                orders.c.status,
                orders.c.created_at,
                orders.c.total_cents,
                customers.c.name.label("customer"),
                customers.c.email,
                order_items.c.line_no,
                order_items.c.quantity,
                order_items.c.unit_price_cents,
                products.c.name.label("product"),
            )
            .join(customers, customers.c.id == orders.c.customer_id)
            .join(order_items, order_items.c.order_id == orders.c.id)
            .join(products, products.c.id == order_items.c.product_id)
            .where(orders.c.id == bindparam("order_id"))
            .order_by(order_items.c.line_no)
        )
        self.take_stock = (
            update(products)
            .where(products.c.id == bindparam("product"))
            .values(stock=products.c.stock - bindparam("taken"))
        )
        self.insert_order = orders.insert()
        self.insert_items = order_items.insert()

    def customer_orders(self, rng: random.Random) -> int:
        """A customer's ten most recent orders, then their lines."""
        customer_id = _skewed(rng, self.seeded.customers, 1.5)
        with self.session() as conn:
            recent = conn.execute(self.recent_orders, {"customer_id": customer_id}).all()
            if recent:
                conn.execute(self.items_of_orders, {"order_ids": [r.id for r in recent]}).all()
        return 0

    def top_products(self, rng: random.Random) -> int:
        """Best sellers by revenue over a random week of the order history."""
        start = _HISTORY_END - _HISTORY + timedelta(days=rng.randrange(358))
        with self.session() as conn:
            conn.execute(
                self.revenue_by_product, {"start": start, "end": start + timedelta(days=7)}
            ).all()
        return 0

    def order_by_id(self, rng: random.Random) -> int:
        """One order with its customer and lines."""
        order_id = rng.randint(1, self.seeded.orders)
        with self.session() as conn:
            conn.execute(self.order_detail, {"order_id": order_id}).all()
        return 0

    def place_order(self, rng: random.Random) -> int:
        """Take stock, insert an order and its lines, in one transaction.

        Returns the number of lines written.
        """
        seeded = self.seeded
        lines: dict[int, int] = {}
        for _ in range(rng.randint(1, 4)):
            pid = _skewed(rng, seeded.products, 2.0)
            lines[pid] = lines.get(pid, 0) + rng.randint(1, 3)
        # Stock rows are locked in product-id order, so two orders that share
        # products cannot deadlock; they are locked before the inserts, whose
        # foreign-key checks would otherwise take shared locks on them first.
        taken = [{"product": pid, "taken": qty} for pid, qty in sorted(lines.items())]
        total = sum(qty * seeded.prices[pid] for pid, qty in lines.items())
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        with self.session.begin() as conn:
            conn.execute(self.take_stock, taken)
            result = conn.execute(
                self.insert_order,
                {
                    "customer_id": _skewed(rng, seeded.customers, 1.5),
                    "status": "paid",
                    "created_at": now,
                    "total_cents": total,
                },
            )
            key = result.inserted_primary_key
            assert key is not None  # an INSERT of one row always has one
            order_id = key[0]
            conn.execute(
                self.insert_items,
                [
                    {
                        "order_id": order_id,
                        "line_no": n,
                        "product_id": row["product"],
                        "quantity": row["taken"],
                        "unit_price_cents": seeded.prices[row["product"]],
                    }
                    for n, row in enumerate(taken, start=1)
                ],
            )
        return len(taken)


@dataclass(frozen=True)
class _Op:
    name: str
    kind: OperationKind
    weight: float
    run: Callable[[_Workload, random.Random], int]


#: The mix: mostly reads, 15% writes, like a shop's web tier.
_OPERATIONS = (
    _Op("customer_orders", "read", 0.40, _Workload.customer_orders),
    _Op("order_by_id", "read", 0.35, _Workload.order_by_id),
    _Op("top_products", "read", 0.10, _Workload.top_products),
    _Op("place_order", "write", 0.15, _Workload.place_order),
)


@dataclass
class _ThreadLog:
    """What one thread measured; merged after the threads finish."""

    latencies: dict[str, list[float]] = field(
        default_factory=lambda: {op.name: [] for op in _OPERATIONS}
    )
    errors: dict[str, int] = field(default_factory=lambda: {op.name: 0 for op in _OPERATIONS})
    first_error: str | None = None
    items_placed: int = 0


def _run_thread(
    workload: _Workload,
    recorder: QueryRecorder,
    seed: int,
    seconds: float,
    start: threading.Barrier,
) -> _ThreadLog:
    rng = random.Random(seed)
    log = _ThreadLog()
    cumulative = list(itertools.accumulate(op.weight for op in _OPERATIONS))
    clock = time.perf_counter
    start.wait()
    deadline = clock() + seconds
    while clock() < deadline:
        pick = rng.random() * cumulative[-1]
        op = next(o for o, c in zip(_OPERATIONS, cumulative, strict=True) if pick < c)
        began = clock()
        try:
            with recorder.scope(operation=op.name):  # one scope per operation, like a request
                written = op.run(workload, rng)
        except (sqlalchemy.exc.SQLAlchemyError, SqlperfError) as err:
            log.errors[op.name] += 1
            if log.first_error is None:
                log.first_error = f"{op.name}: {type(err).__name__}: {_first_line(err)}"
            continue
        log.latencies[op.name].append(clock() - began)
        log.items_placed += written
    return log


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _stats(op: _Op, samples: list[float], errors: int) -> OperationStats:
    if not samples:
        return OperationStats(
            name=op.name, kind=op.kind, count=0, errors=errors, mean_ms=0.0, p95_ms=0.0, max_ms=0.0
        )
    ordered = sorted(samples)
    p95 = ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]
    return OperationStats(
        name=op.name,
        kind=op.kind,
        count=len(ordered),
        errors=errors,
        mean_ms=sum(ordered) / len(ordered) * 1000.0,
        p95_ms=p95 * 1000.0,
        max_ms=ordered[-1] * 1000.0,
    )


# -- the demo --------------------------------------------------------------------


def _settings(conn: Connection) -> str:
    """A few of the session settings sqlperf tuned, read back from the database."""
    name = conn.dialect.name
    if name == "sqlite":
        pragmas = ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
        values = [f"{p}={conn.exec_driver_sql(f'PRAGMA {p}').scalar()}" for p in pragmas]
    elif name == "postgresql":
        values = [
            f"{s}={conn.exec_driver_sql(f'SHOW {s}').scalar()}"
            for s in ("application_name", "statement_timeout")
        ]
    else:
        charset = conn.exec_driver_sql("SELECT @@character_set_connection").scalar()
        cipher = conn.exec_driver_sql("SHOW SESSION STATUS LIKE 'Ssl_cipher'").one()[1]
        values = [f"charset={charset}", f"tls={cipher or 'off'}"]
    version = ".".join(map(str, conn.dialect.server_version_info or ()))
    return f"{conn.dialect.name}+{conn.dialect.driver} {version}: {', '.join(values)}"


def _check(orders: int, seconds: float, threads: int, workers: int) -> None:
    for name, value in (("orders", orders), ("threads", threads), ("workers", workers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")
    if not seconds > 0:
        raise ConfigurationError(f"seconds must be > 0, got {seconds!r}")


def run_demo(
    url: str | None = None,
    *,
    replica_url: str | None = None,
    redis_url: str | None = None,
    orders: int = 100_000,
    seconds: float = 5.0,
    threads: int = 4,
    workers: int = 4,
    seed: int = 42,
    out: TextIO | None = None,
    out_dir: str | Path | None = None,
    notebooks: bool = True,
) -> DemoReport:
    """Seed a shop database and run a mixed read/write workload against it.

    The four ``demo_*`` tables are dropped and recreated first; nothing else in
    the database is touched. Sizes follow ``orders``: one customer per ten
    orders (at least 10), one product per hundred (at least 20), 1 to 4 lines
    per order.

    Args:
        url: the database; ``None`` for a temporary SQLite file, deleted at
            the end. On any other URL the tables are kept for inspection.
        replica_url: a read replica of ``url``; reads go there through
            :class:`sqlperf.RoutingSession`, writes to ``url``. On SQLite a
            read-only engine on the same file stands in when this is ``None``.
        redis_url: Redis for the query-cache part; an in-process cache when ``None``.
        orders: orders to seed.
        seconds: how long the workload runs.
        threads: threads running the workload, each checking a connection
            out of the engine's pool per operation (like web requests).
        workers: processes to assume for :func:`sqlperf.check_pool_budget`.
        seed: seed of the data and the workload's choices.
        out: where to print the progress and summary; ``sys.stdout`` at the
            time of the call when ``None``.
        out_dir: a folder for the captured query log (``query_log.jsonl``), the
            HTML report of it (``report.html``) and the executed notebooks;
            ``None`` keeps the log in memory and in the database only.
        notebooks: execute the notebooks on the log (with an ``out_dir``; needs
            ``sqlperf[notebooks]`` and the source tree's ``notebooks/`` folder).

    Returns:
        A :class:`DemoReport` with the numbers that were printed.

    Raises:
        ConfigurationError: a bad URL or size.
        MissingDependency: the database driver is not installed.
        sqlalchemy.exc.DBAPIError: the database failed (connecting, creating
            the schema or seeding; errors during the workload are counted).

    Example::

        >>> import io
        >>> run_demo(orders=100, seconds=0.1, threads=1, out=io.StringIO()).orders
        100
    """
    _check(orders, seconds, threads, workers)
    stream = out if out is not None else sys.stdout

    def emit(line: str = "") -> None:
        stream.write(line + "\n")
        stream.flush()

    began = time.perf_counter()
    tmpdir = None
    if url is None:
        tmpdir = Path(tempfile.mkdtemp(prefix="sqlperf-demo-"))
        url = f"sqlite:///{tmpdir / 'demo.db'}"
    try:
        engine = create_optimized_engine(url, workload="web", application_name="sqlperf-demo")
        log_dir = Path(out_dir) if out_dir is not None else None
        capture = start_capture(engine, out_dir=log_dir)
        try:
            report = _run(
                engine,
                capture,
                replica_url=replica_url,
                redis_url=redis_url,
                n_orders=orders,
                seconds=seconds,
                threads=threads,
                workers=workers,
                seed=seed,
                emit=emit,
                out_dir=log_dir,
                notebooks=notebooks,
            )
        finally:
            capture.recorder.close()  # a second close (after finish_capture) does nothing
            engine.dispose()
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
    total = time.perf_counter() - began
    emit(
        f"done in {total:.1f} s"
        + (" (temporary database removed)" if tmpdir is not None else " (demo_* tables kept)")
    )
    return replace(report, database_kept=tmpdir is None, total_seconds=total)


def _replica(engine: Engine, replica_url: str | None) -> Engine | None:
    """The demo's replica: ``replica_url``, or a read-only engine on a SQLite file."""
    if replica_url is not None:
        return create_optimized_engine(replica_url, read_only=True, application_name="sqlperf-demo")
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        return create_optimized_engine(engine.url, read_only=True)
    return None


def _emit_table(
    emit: Callable[..., None], operations: Sequence[OperationStats], elapsed: float
) -> None:
    total_ops = sum(op.count for op in operations)
    emit()
    emit(f"{'operation':<16} {'kind':<5} {'count':>8} {'errors':>6} {'mean ms':>9} {'p95 ms':>9}")
    for op in operations:
        emit(
            f"{op.name:<16} {op.kind:<5} {op.count:>8,} {op.errors:>6,} "
            f"{op.mean_ms:>9.2f} {op.p95_ms:>9.2f}"
        )
    emit(f"{'total':<16} {'':<5} {total_ops:>8,} {sum(op.errors for op in operations):>6,}")
    emit(f"throughput: {total_ops / elapsed:,.0f} operations/s over {elapsed:.2f} s")


def _split(on_primary: RouteStats, replica_reads: int) -> str:
    all_reads = on_primary.reads + replica_reads
    share = replica_reads / all_reads * 100 if all_reads else 0.0
    return (
        f"split: primary {on_primary.writes:,} writes and {on_primary.reads:,} reads; "
        f"replica {replica_reads:,} reads ({share:.0f}% of reads)"
    )


def _run(  # noqa: PLR0915 - the demo's one story, told in order
    engine: Engine,
    capture: DemoCapture,
    *,
    replica_url: str | None,
    redis_url: str | None,
    n_orders: int,
    seconds: float,
    threads: int,
    workers: int,
    seed: int,
    emit: Callable[..., None],
    out_dir: Path | None,
    notebooks: bool,
) -> DemoReport:
    recorder = capture.recorder
    sizes = _Sizes(
        customers=max(10, n_orders // 10), products=max(20, n_orders // 100), orders=n_orders
    )
    emit(f"sqlperf demo on {safe_url(engine.url)}")
    with engine.connect() as conn:
        emit(f"engine: {_settings(conn)}")

    metadata.drop_all(engine)
    metadata.create_all(engine)
    emit(f"schema: {', '.join(t.name for t in metadata.sorted_tables)} (dropped and recreated)")

    emit(
        f"seeding {sizes.customers:,} customers, {sizes.products:,} products, "
        f"{sizes.orders:,} orders with their lines, in one transaction ..."
    )
    seeded = _seed(engine, sizes, seed)
    rate = seeded.rows / seeded.seconds if seeded.seconds > 0 else 0.0
    emit(
        f"seeded {seeded.rows:,} rows ({seeded.order_items:,} order lines) with bulk_insert "
        f"({seeded.method}) in {seeded.seconds:.2f} s: {rate:,.0f} rows/s"
    )
    analyzed = time.perf_counter()
    _analyze(engine)
    emit(f"analyzed the tables in {time.perf_counter() - analyzed:.2f} s")

    replica = _replica(engine, replica_url)
    if replica is not None:
        recorder.attach(replica)
    if replica is None:
        emit("routing: no replica (pass --replica-url); everything on the primary")
    elif replica_url is None:
        emit("routing: writes to the primary, reads to a read-only engine on the same file")
    else:
        emit(f"routing: writes to the primary, reads to {safe_url(replica.url)}")
    emit(f"workload: {threads} thread(s) for {seconds:g} s ...")
    workload = _Workload(engine, seeded, replica)
    barrier = threading.Barrier(threads)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sqlperf-demo") as pool:
        futures = [
            pool.submit(_run_thread, workload, recorder, seed * 1000 + i, seconds, barrier)
            for i in range(threads)
        ]
        logs = [f.result() for f in futures]
    elapsed = time.perf_counter() - started

    operations = tuple(
        _stats(
            op,
            [x for log in logs for x in log.latencies[op.name]],
            sum(log.errors[op.name] for log in logs),
        )
        for op in _OPERATIONS
    )
    total_ops = sum(op.count for op in operations)
    errors = sum(op.errors for op in operations)
    first_error = next((log.first_error for log in logs if log.first_error), None)
    # The recorder's writer borrows a connection of this engine for its database sink
    # and its EXPLAINs: let it finish what the workload queued, so that the pool's
    # status shows the workload's own connections (all of them back).
    recorder.flush()
    status = pool_status(engine)
    budget = check_pool_budget(engine, workers=workers)
    on_primary = routing_stats(engine)
    on_replica = routing_stats(replica) if replica is not None else None

    _emit_table(emit, operations, elapsed)
    if first_error:
        emit(f"first error: {first_error}")
    replica_reads = on_replica.reads if on_replica is not None else 0
    emit(_split(on_primary, replica_reads))
    emit(f"pool: {status}")
    emit(f"pool budget for {workers} worker process(es): {budget.advice}")
    emit()
    cache = run_cache_demo(
        workload.session,
        revenue_by_product=workload.revenue_by_product,
        order_detail=workload.order_detail,
        orders=orders,
        n_orders=seeded.orders,
        history_end=_HISTORY_END,
        redis_url=redis_url,
        requests=300,
        seed=seed,
        emit=emit,
    )
    emit()
    pages = run_pages_demo(workload.session, orders=orders, n_orders=seeded.orders, emit=emit)
    emit()
    n_plus_one = run_n_plus_one_demo(
        workload.session,
        recorder,
        orders=orders,
        order_items=order_items,
        n_customers=seeded.customers,
        emit=emit,
        seed=seed,
    )
    emit()
    captured = finish_capture(capture, engine, out_dir=out_dir, emit=emit)
    analysis = None
    if out_dir is not None and captured.log_path is not None:
        emit()
        analysis = run_analysis_demo(captured.log_path, out_dir, notebooks=notebooks, emit=emit)
    if replica is not None:
        replica.dispose()
    return DemoReport(
        url=safe_url(engine.url),
        dialect=engine.dialect.name,
        database_kept=True,  # the caller knows better
        customers=seeded.customers,
        products=seeded.products,
        orders=seeded.orders,
        order_items=seeded.order_items,
        seed_rows=seeded.rows,
        seed_seconds=seeded.seconds,
        seed_rows_per_s=rate,
        threads=threads,
        workload_seconds=elapsed,
        operations=operations,
        total_operations=total_ops,
        errors=errors,
        throughput=total_ops / elapsed,
        first_error=first_error,
        orders_placed=next(op.count for op in operations if op.name == "place_order"),
        items_placed=sum(log.items_placed for log in logs),
        pool=status,
        budget=budget,
        primary_writes=on_primary.writes,
        primary_reads=on_primary.reads,
        replica_reads=replica_reads,
        total_seconds=0.0,  # likewise
        cache=cache,
        pages=pages,
        n_plus_one=n_plus_one,
        capture=captured,
        analysis=analysis,
    )
