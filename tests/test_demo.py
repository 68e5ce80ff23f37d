"""The demo: schema, seeded data, workload and summary, on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import FromClause, create_engine, func, inspect, make_url, select
from sqlalchemy.pool import NullPool

from sqlperf import ConfigurationError
from sqlperf.capture import read_query_log, read_query_stats
from sqlperf.demo import (
    DemoReport,
    customers,
    metadata,
    order_items,
    orders,
    products,
    run_demo,
)

OPERATIONS = ["customer_orders", "order_by_id", "top_products", "place_order"]


def _check_report(report: DemoReport, summary: str) -> None:
    assert report.errors == 0, report.first_error
    assert report.first_error is None
    assert [op.name for op in report.operations] == OPERATIONS
    for op in report.operations:
        assert op.count > 0, op
        assert op.errors == 0
        assert 0 < op.mean_ms <= op.max_ms
        assert op.p95_ms <= op.max_ms
        assert op.name in summary
    assert report.operation("place_order").kind == "write"
    assert report.total_operations == sum(op.count for op in report.operations)
    assert report.orders_placed == report.operation("place_order").count
    assert report.orders_placed <= report.items_placed <= 4 * report.orders_placed
    assert report.seed_rows == (
        report.customers + report.products + report.orders + report.order_items
    )
    assert report.orders <= report.order_items <= 4 * report.orders
    assert report.pool.checked_out == 0  # every connection went back
    assert report.pool.waits is not None
    assert report.pool.waits.timeouts == 0
    for text in ("rows/s", "throughput", "operations/s", "pool:", "pool budget", "p95 ms"):
        assert text in summary
    assert report.budget.advice in summary
    capture = report.capture
    # Every operation's statements were measured; the top of the table is what took longest.
    assert capture.statements > report.total_operations
    assert capture.dropped == 0
    assert len(capture.top) == 5
    assert [t.total_ms for t in capture.top] == sorted(
        (t.total_ms for t in capture.top), reverse=True
    )
    assert "top fingerprints by total time" in summary
    assert capture.top[0].fingerprint[:60] in summary
    assert capture.table_stats > 0  # the database sink wrote the statistics windows
    assert capture.table_records == sum(capture.records.values())
    cache = report.cache
    assert cache.hits + cache.misses == cache.requests  # each repeated read looked up once
    assert cache.hits > 0
    assert cache.misses > 0
    assert cache.invalidated  # the committed write showed at once
    assert "hit ratio" in summary
    assert "invalidation: order" in summary
    pages = report.pages
    assert pages.round_trip_ok  # back with prev_cursor gave the pages seen going forward
    assert pages.same_rows  # the deep page by keyset is the deep page by OFFSET
    assert pages.pages_walked >= 1
    assert "OFFSET" in summary
    n_plus_one = report.n_plus_one
    assert n_plus_one.loop_queries > n_plus_one.batched_queries == 2  # the page, then one IN
    assert n_plus_one.suspects >= 1  # the recorder caught the loop
    assert capture.records.get("n_plus_one", 0) == n_plus_one.suspects
    assert "N+1 suspects reported" in summary


def _check_database(url: str, report: DemoReport) -> None:
    engine = create_engine(url, poolclass=NullPool)
    try:
        insp = inspect(engine)
        assert set(metadata.tables) <= set(insp.get_table_names())
        order_indexes = {ix["name"]: ix["column_names"] for ix in insp.get_indexes("demo_orders")}
        assert order_indexes["ix_demo_orders_customer_id_created_at"] == [
            "customer_id",
            "created_at",
        ]
        assert {fk["referred_table"] for fk in insp.get_foreign_keys("demo_order_items")} == {
            "demo_orders",
            "demo_products",
        }
        with engine.connect() as conn:

            def count(table: FromClause) -> int:
                return int(conn.scalar(select(func.count()).select_from(table)) or 0)

            assert count(customers) == report.customers
            assert count(products) == report.products
            assert count(orders) == report.orders + report.orders_placed
            assert count(order_items) == report.order_items + report.items_placed
            # Every order, seeded or placed, has lines that add up to its total:
            # the writes were transactional.
            lines = (
                select(
                    order_items.c.order_id,
                    func.sum(order_items.c.quantity * order_items.c.unit_price_cents).label("sum"),
                )
                .group_by(order_items.c.order_id)
                .subquery()
            )
            mismatched = conn.scalar(
                select(func.count())
                .select_from(orders.outerjoin(lines, lines.c.order_id == orders.c.id))
                .where((lines.c.order_id.is_(None)) | (lines.c["sum"] != orders.c.total_cents))
            )
            assert mismatched == 0
    finally:
        engine.dispose()


def test_demo_on_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "shop.db"
    out = io.StringIO()

    report = run_demo(
        f"sqlite:///{path}",
        orders=300,
        seconds=1.0,
        threads=2,
        out=out,
        out_dir=tmp_path / "out",
        notebooks=False,
    )

    assert report.dialect == "sqlite"
    assert report.database_kept
    assert (report.customers, report.products, report.orders) == (30, 20, 300)
    _check_report(report, out.getvalue())
    assert "SQLite has no connection limit" in report.budget.advice
    # Reads went to the read-only stand-in replica, writes to the primary.
    assert report.replica_reads > 0
    assert report.primary_writes >= report.orders_placed
    assert "split: primary" in out.getvalue()
    assert path.exists()
    _check_database(f"sqlite:///{path}", report)
    # The JSON Lines log holds what the database table holds.
    assert report.capture.log_path == tmp_path / "out" / "query_log.jsonl"
    stats = read_query_stats(report.capture.log_path)
    assert int(stats["calls"].sum()) == report.capture.statements
    assert len(read_query_log(report.capture.log_path)) == report.capture.table_records
    assert int(read_query_stats(f"sqlite:///{path}")["calls"].sum()) >= report.capture.statements
    # The HTML report was written from that log; the notebooks were not asked for.
    analysis = report.analysis
    assert analysis is not None
    assert analysis.report_path.read_text(encoding="utf-8").count("data:image/png;base64,") >= 4
    assert analysis.notebooks == ()
    assert analysis.n_plus_one is not None
    assert "demo_nplusone.py" in analysis.n_plus_one


def test_demo_reseeds_from_scratch_on_rerun(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    run_demo(url, orders=400, seconds=0.2, threads=1, out=io.StringIO())

    report = run_demo(url, orders=150, seconds=0.2, threads=1, out=io.StringIO())

    assert report.orders == 150
    _check_database(url, report)


def test_demo_without_url_removes_its_temporary_database() -> None:
    out = io.StringIO()
    report = run_demo(orders=100, seconds=0.2, threads=2, out=out)

    assert not report.database_kept
    assert report.url.startswith("sqlite:///")
    path = Path(report.url.removeprefix("sqlite:///"))
    assert path.name == "demo.db"
    assert not path.parent.exists()
    assert "temporary database removed" in out.getvalue()


@pytest.mark.parametrize(
    ("option", "value"),
    [("orders", 0), ("seconds", 0.0), ("threads", 0), ("workers", -1), ("orders", 1.5)],
)
def test_demo_rejects_bad_sizes(option: str, value: float) -> None:
    out = io.StringIO()
    with pytest.raises(ConfigurationError, match=option):
        run_demo(**{option: value}, out=out)  # type: ignore[arg-type]
    assert out.getvalue() == ""


@pytest.fixture(params=["postgresql", "mysql"])
def server_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A server URL; the demo_* tables the test leaves there are dropped afterwards."""
    url: str = request.getfixturevalue(
        "postgres_url" if request.param == "postgresql" else "mysql_url"
    )
    yield url
    engine = create_engine(url, poolclass=NullPool)
    try:
        metadata.drop_all(engine)
    finally:
        engine.dispose()


def test_demo_on_server(server_url: str) -> None:
    out = io.StringIO()

    report = run_demo(server_url, orders=300, seconds=1.0, threads=3, workers=2, out=out)

    assert report.database_kept
    assert report.dialect == make_url(server_url).get_dialect().name
    _check_report(report, out.getvalue())
    assert report.budget.max_connections is not None
    assert report.budget.workers == 2
    assert "demo_* tables kept" in out.getvalue()
    assert report.replica_reads == 0  # no replica given: everything on the primary
    _check_database(server_url, report)


def test_demo_with_the_postgres_replica_and_redis(
    postgres_url: str, replica_url: str, redis_url: str
) -> None:
    out = io.StringIO()
    report = run_demo(
        postgres_url,
        replica_url=replica_url,
        redis_url=redis_url,
        orders=300,
        seconds=1.0,
        threads=2,
        out=out,
    )
    assert report.errors == 0
    assert report.cache.backend == "redis"
    assert report.cache.hits > 0
    assert report.cache.invalidated
    assert report.replica_reads > 0
    assert report.primary_writes > 0
    assert "reads to postgresql+psycopg2://postgres@127.0.0.1:5433" in out.getvalue()
