"""The query-log analysis (``sqlperf.analysis``) on a hand-built log with known answers.

The log below is made of :class:`QueryRecord` and :class:`StatsRow` objects whose
figures are chosen so that every answer can be worked out by hand (the numbers
in the comments); it is written through a real :class:`JsonlSink`, through
:func:`write_parquet` (one file per half) and through :class:`DatabaseSink` into
a SQLite file, and each analysis function must give the same answers from all
three.

The shapes:

* ``ORDERS`` (a read): 100 calls of 1, 2, ..., 100 ms, split over two windows
  (1-60 ms in the first, of 60 s, 61-100 ms in the second, of 40 s) and two
  routes. Total
  5050 ms; merged p95 = 95 ms, whereas the per-window p95s are 57 and 98 ms
  (mean 77.5) and the per-row ones 29, 59, 79, 99 ms (mean 66.5).
* ``EVENTS`` (a write): 300 calls of 2 ms on the primary, 600 ms, one error.
* ``CATALOG`` (a read joining ``shop.products`` and ``categories``): 3 calls of
  300 ms on the primary, 900 ms.
* ``CATEGORY`` (a read of ``categories``): 5 calls of 1 ms, unrouted, 5 ms.

All in all 408 statements and 6555 ms.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, NamedTuple

import click
import pandas as pd
import pytest
from click.testing import CliRunner
from pandas.testing import assert_frame_equal
from rich.console import Console

from sqlperf import ConfigurationError
from sqlperf.analysis import (
    DIFF_COLUMNS,
    FINGERPRINT_COLUMNS,
    QueryLog,
    Suggestion,
    build_report,
    cache_ratios,
    diff_logs,
    fingerprint_table,
    latency_histograms,
    load_log,
    n_plus_one_suspects,
    pool_waits,
    route_split,
    slowest_queries,
    suggestions,
    tables_in_sql,
    timeline,
    top_fingerprints,
    totals,
)
from sqlperf.analysis.diff import render_diff
from sqlperf.capture.histogram import LatencyHistogram
from sqlperf.capture.log import records_frame, stats_frame, write_parquet
from sqlperf.capture.records import QueryRecord, StatsRow
from sqlperf.capture.sinks import DatabaseSink, JsonlSink
from sqlperf.cli import make_cli
from sqlperf.migrate import upgrade

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)
MINUTE = timedelta(minutes=1)
W1 = (T0, T0 + MINUTE)
#: The last window was cut short (the recorder stopped): 40 s.
W2 = (T0 + MINUTE, T0 + MINUTE + timedelta(seconds=40))
#: The histogram's promise: a percentile within 1/32 of the true value.
TOLERANCE = 1 / 32
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class Shape(NamedTuple):
    """A fingerprint: its id and its text."""

    id: str
    text: str


ORDERS = Shape("f0000000000000aa", "SELECT * FROM orders WHERE customer_id = ?")
EVENTS = Shape("f0000000000000bb", "INSERT INTO order_events (order_id, status) VALUES (?, ?)")
CATALOG = Shape(
    "f0000000000000cc",
    'SELECT p.name FROM "shop"."products" AS p JOIN categories AS c '
    "ON c.id = p.category_id WHERE c.slug = ?",
)
CATEGORY = Shape("f0000000000000dd", "SELECT * FROM categories WHERE id = ?")
COUPONS = Shape("f0000000000000ee", "SELECT * FROM coupons WHERE code = ?")

LOOP_SITE = "app/views.py:12 product_list"
CUSTOMER_SITE = "app/customers.py:88 customer_page"
PG_SEQ_SCAN = (
    "Seq Scan on orders  (cost=0.00..1693.00 rows=10 width=40)\n  Filter: (customer_id = 42)"
)
SQLITE_SCAN = "SCAN categories\nSEARCH p USING INDEX ix_products_category (category_id=?)"


def _histogram(durations_ms: Sequence[float]) -> LatencyHistogram:
    histogram = LatencyHistogram()
    for ms in durations_ms:
        histogram.add(round(ms * 1_000_000))
    return histogram


def _stats(
    window: tuple[datetime, datetime],
    shape: Shape,
    durations_ms: Sequence[float],
    *,
    route: str | None,
    engine: str = "app",
    errors: int = 0,
    n_plus_one: int = 0,
    cache_hits: int = 0,
    cache_misses: int = 0,
) -> StatsRow:
    """A statistics row as the recorder writes it for these durations."""
    histogram = _histogram(durations_ms)
    total = float(sum(durations_ms))
    return StatsRow(
        window_start=window[0],
        window_end=window[1],
        engine=engine,
        url="sqlite:///app.db",
        dialect="sqlite",
        route=route,
        fingerprint_id=shape.id,
        fingerprint=shape.text,
        sql=shape.text.replace("?", "1"),
        calls=len(durations_ms),
        errors=errors,
        rows=len(durations_ms),
        n_plus_one=n_plus_one,
        cache_hits=cache_hits,
        cache_misses=cache_misses,
        total_ms=total,
        mean_ms=total / len(durations_ms),
        p50_ms=histogram.percentile(0.5) / 1e6,
        p95_ms=histogram.percentile(0.95) / 1e6,
        p99_ms=histogram.percentile(0.99) / 1e6,
        max_ms=float(max(durations_ms)),
        sample=1.0,
        histogram=histogram.to_json(),
        host="web-1",
        pid=4242,
    )


def _record(
    seconds: float, kind: str, shape: Shape, duration_ms: float, **fields: Any
) -> QueryRecord:
    """A record ``seconds`` after ``T0``."""
    return QueryRecord(
        ts=T0 + timedelta(seconds=seconds),
        kind=kind,
        duration_ms=duration_ms,
        fingerprint_id=shape.id,
        fingerprint=shape.text,
        sql=shape.text.replace("?", "1"),
        host="web-1",
        pid=4242,
        **fields,
    )


def _main_stats() -> list[StatsRow]:
    ms = list(range(1, 101))
    return [
        # ORDERS: 1..30 and 31..60 in the first window, 61..80 and 81..100 in the second.
        _stats(W1, ORDERS, ms[0:30], route="primary", cache_hits=10, cache_misses=20),
        _stats(W1, ORDERS, ms[30:60], route="replica", cache_hits=10, cache_misses=20),
        _stats(W1, EVENTS, [2.0] * 200, route="primary", errors=1),
        _stats(W1, CATEGORY, [1.0] * 5, route=None, cache_hits=5, n_plus_one=2),
        _stats(W2, ORDERS, ms[60:80], route="primary", cache_hits=5, cache_misses=15),
        _stats(W2, ORDERS, ms[80:100], route="replica", cache_hits=5, cache_misses=15),
        _stats(W2, EVENTS, [2.0] * 100, route="primary"),
        _stats(W2, CATALOG, [300.0] * 3, route="primary", cache_hits=2, cache_misses=1),
    ]


def _main_records() -> list[QueryRecord]:
    return [
        # Written first, though its loop took less time: suspects are ordered by total_ms.
        _record(
            15,
            "n_plus_one",
            ORDERS,
            240.0,
            count=12,
            call_site=CUSTOMER_SITE,
            request_id="req-3",
            engine="app",
        ),
        _record(
            10,
            "slow",
            ORDERS,
            100.0,
            engine="app",
            route="replica",
            pool_wait_ms=0.5,
            call_site="app/orders.py:40 list_orders",
            request_id="req-10",
            explain=PG_SEQ_SCAN,
        ),
        _record(
            20,
            "error",
            EVENTS,
            150.0,
            engine="app",
            route="primary",
            pool_wait_ms=3.0,
            call_site="app/orders.py:70 add_event",
            error_class="IntegrityError",
            error_message="UNIQUE constraint failed: order_events.id",
        ),
        _record(
            30,
            "slow",
            CATEGORY,
            50.0,
            engine="reports",
            pool_wait_ms=0.1,
            explain="SEARCH categories USING INDEX ix_categories_id (id=?)",
        ),
        _record(
            40,
            "n_plus_one",
            CATEGORY,
            500.0,
            count=20,
            call_site=LOOP_SITE,
            request_id="req-1",
            engine="app",
            pool_wait_ms=20.0,
        ),
        _record(
            70,
            "slow",
            CATALOG,
            300.0,
            engine="app",
            route="primary",
            pool_wait_ms=12.0,
            call_site="app/catalog.py:25 by_category",
            explain=SQLITE_SCAN,
        ),
        _record(
            80,
            "slow",
            CATEGORY,
            40.0,
            engine="reports",
            pool_wait_ms=0.2,
            explain="SCAN categories USING COVERING INDEX ix_categories_slug",
        ),
        # After the last window closed: the log's span reaches it.
        _record(
            125,
            "n_plus_one",
            CATEGORY,
            700.0,
            count=35,
            call_site=LOOP_SITE,
            request_id="req-2",
            engine="app",
        ),
    ]


def _after_stats() -> list[StatsRow]:
    """The log after a deploy: ORDERS faster, EVENTS gone, CATALOG doubled, COUPONS new."""
    return [
        _stats(W1, ORDERS, [10.0] * 100, route="replica"),  # 1000 ms, p95 10 ms
        _stats(W1, CATALOG, [300.0] * 6, route="primary"),  # 1800 ms
        _stats(W1, CATEGORY, [1.0] * 5, route=None),  # 5 ms, unchanged
        _stats(W2, COUPONS, [4.0] * 50, route="replica"),  # 200 ms
    ]


def _jsonl(path: Path, items: Sequence[QueryRecord | StatsRow]) -> Path:
    sink = JsonlSink(path)
    sink.write(items)
    sink.flush()
    sink.close()
    return path


def _log(tmp_path: Path, items: Sequence[QueryRecord | StatsRow], name: str = "log") -> QueryLog:
    """A small log for one rule, through a JSON Lines file."""
    return load_log(_jsonl(tmp_path / f"{name}.jsonl", items))


@pytest.fixture(scope="module")
def main_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The main log as a JsonlSink wrote it: records and statistics interleaved."""
    records, stats = _main_records(), _main_stats()
    items: list[QueryRecord | StatsRow] = [*records[:4], *stats[:4], *records[4:], *stats[4:]]
    return _jsonl(tmp_path_factory.mktemp("jsonl") / "query_log.jsonl", items)


@pytest.fixture(scope="module")
def after_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _jsonl(tmp_path_factory.mktemp("after") / "after.jsonl", _after_stats())


@pytest.fixture(scope="module")
def parquet_paths(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The main log as two Parquet files: the records and the statistics."""
    folder = tmp_path_factory.mktemp("parquet")
    return (
        write_parquet(records_frame(_main_records()), folder / "records.parquet"),
        write_parquet(stats_frame(_main_stats()), folder / "stats.parquet"),
    )


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The main log in sqlperf's tables of a SQLite file, written by DatabaseSink."""
    url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'log.db'}"
    upgrade(url)
    sink = DatabaseSink(url, batch_size=3)
    sink.write([*_main_records(), *_main_stats()])
    sink.close()
    return url


@pytest.fixture(scope="module", params=["jsonl", "parquet", "sqlite"])
def main_log(
    request: pytest.FixtureRequest,
    main_jsonl: Path,
    parquet_paths: tuple[Path, Path],
    sqlite_url: str,
) -> QueryLog:
    """The main log, read back from each kind of sink."""
    if request.param == "jsonl":
        return load_log(main_jsonl)
    if request.param == "parquet":
        records_path, stats_path = parquet_paths
        return QueryLog(
            records=load_log(records_path).records,
            stats=load_log(stats_path).stats,
            source="parquet",
        )
    return load_log(sqlite_url)


@pytest.fixture(params=["empty file", "empty frames", "no frames"])
def empty_log(request: pytest.FixtureRequest, tmp_path: Path) -> QueryLog:
    if request.param == "empty file":
        path = tmp_path / "empty.jsonl"
        path.write_bytes(b"")
        return load_log(path)
    if request.param == "empty frames":
        return QueryLog.from_rows(records=records_frame([]), stats=stats_frame([]))
    return QueryLog.from_rows()


def _close(actual: float, expected: float) -> bool:
    """Whether a histogram percentile is within its 1/32 of ``expected``."""
    return abs(actual - expected) <= TOLERANCE * expected


def _row(frame: pd.DataFrame, column: str, value: str) -> dict[str, Any]:
    """The one row of ``frame`` whose ``column`` is ``value``, as a dict."""
    matches: list[dict[str, Any]] = frame.loc[frame[column] == value].to_dict(orient="records")
    assert len(matches) == 1, f"{column}={value!r}: {len(matches)} rows"
    return matches[0]


# -- loading --------------------------------------------------------------------------------


def test_every_sink_gives_the_same_log(
    main_jsonl: Path, parquet_paths: tuple[Path, Path], sqlite_url: str
) -> None:
    from_jsonl = load_log(main_jsonl)
    from_database = load_log(sqlite_url)
    records_only, stats_only = (load_log(path) for path in parquet_paths)

    assert len(from_jsonl.records) == 8
    assert len(from_jsonl.stats) == 8
    assert_frame_equal(from_database.records, from_jsonl.records, check_exact=True)
    assert_frame_equal(from_database.stats, from_jsonl.stats, check_exact=True)
    assert_frame_equal(records_only.records, from_jsonl.records, check_exact=True)
    assert_frame_equal(stats_only.stats, from_jsonl.stats, check_exact=True)
    # A Parquet file holds one half; the other comes back empty.
    assert records_only.stats.empty
    assert stats_only.records.empty
    assert from_jsonl.source == str(main_jsonl)
    assert from_database.source == sqlite_url


def test_load_log_keeps_a_time_range_and_passes_a_log_through(main_jsonl: Path) -> None:
    log = load_log(main_jsonl, since=T0 + MINUTE, until=T0 + 2 * MINUTE)

    assert set(log.stats["window_start"]) == {pd.Timestamp(W2[0])}
    assert len(log.stats) == 4
    assert sorted(log.records["duration_ms"]) == [40.0, 300.0]  # at 70 s and 80 s
    assert load_log(log) is log
    with pytest.raises(ConfigurationError, match="cannot read a query log"):
        load_log(main_jsonl.with_suffix(".txt"))


# -- fingerprints ---------------------------------------------------------------------------


def test_fingerprint_table_merges_windows_and_routes(main_log: QueryLog) -> None:
    table = fingerprint_table(main_log)

    assert list(table.columns) == list(FINGERPRINT_COLUMNS)
    assert list(table["fingerprint_id"]) == [ORDERS.id, CATALOG.id, EVENTS.id, CATEGORY.id]
    orders = _row(table, "fingerprint_id", ORDERS.id)
    assert orders["fingerprint"] == ORDERS.text
    assert orders["calls"] == 100
    assert orders["errors"] == 0
    assert orders["rows"] == 100
    assert orders["total_ms"] == 5050.0
    assert orders["mean_ms"] == 50.5
    assert orders["max_ms"] == 100.0
    assert (orders["cache_hits"], orders["cache_misses"]) == (30, 70)
    assert _close(orders["p50_ms"], 50.0)
    assert _close(orders["p99_ms"], 99.0)
    assert _close(orders["p95_ms"], 95.0)
    # Not the worst window's p95 (98 ms, or 99 per row) nor an average of them.
    for wrong in (98.0, 99.0, 77.5, 66.5):
        assert not _close(orders["p95_ms"], wrong), wrong
    events = _row(table, "fingerprint_id", EVENTS.id)
    assert (events["calls"], events["errors"], events["total_ms"]) == (300, 1, 600.0)
    assert _close(events["p95_ms"], 2.0)
    category = _row(table, "fingerprint_id", CATEGORY.id)
    assert (category["n_plus_one"], category["cache_hits"]) == (2, 5)
    assert list(table["total_ms"]) == [5050.0, 900.0, 600.0, 5.0]
    assert list(table["share"]) == pytest.approx([x / 6555 for x in (5050, 900, 600, 5)])
    assert table["share"].sum() == pytest.approx(1.0)


def test_fingerprint_table_without_histograms_takes_the_worst_window(tmp_path: Path) -> None:
    rows = [
        replace(_stats(W1, ORDERS, [5.0] * 10, route=None), histogram="", p95_ms=5.0),
        replace(_stats(W2, ORDERS, [9.0] * 10, route=None), histogram="", p95_ms=9.0),
    ]

    table = fingerprint_table(_log(tmp_path, rows))

    assert list(table["p95_ms"]) == [9.0]
    assert list(table["calls"]) == [20]


def test_top_fingerprints_orders_by_the_key_asked(main_log: QueryLog) -> None:
    by_time = top_fingerprints(main_log)
    by_calls = top_fingerprints(main_log, by="calls")
    by_p95 = top_fingerprints(main_log, n=2, by="p95_ms")

    assert list(by_time["fingerprint_id"]) == [ORDERS.id, CATALOG.id, EVENTS.id, CATEGORY.id]
    assert list(by_calls["fingerprint_id"]) == [EVENTS.id, ORDERS.id, CATEGORY.id, CATALOG.id]
    assert list(by_calls["calls"]) == [300, 100, 5, 3]
    assert list(by_p95["fingerprint_id"]) == [CATALOG.id, ORDERS.id]
    assert list(top_fingerprints(main_log, n=1)["fingerprint"]) == [ORDERS.text]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"by": "rows"}, "by must be one of"),
        ({"n": 0}, "n must be at least 1"),
        ({"n": -3}, "n must be at least 1"),
    ],
)
def test_top_fingerprints_rejects_a_bad_key_or_count(
    main_jsonl: Path, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        top_fingerprints(main_jsonl, **kwargs)


def test_latency_histograms_are_the_merged_buckets(main_log: QueryLog) -> None:
    buckets = latency_histograms(main_log, [CATALOG.id, ORDERS.id, "no-such-id"])

    assert list(buckets.columns) == ["fingerprint_id", "low_ms", "high_ms", "count"]
    assert list(buckets["fingerprint_id"].drop_duplicates()) == [CATALOG.id, ORDERS.id]
    catalog = buckets.loc[buckets["fingerprint_id"] == CATALOG.id]
    assert list(catalog["count"]) == [3]
    assert catalog["low_ms"].iloc[0] <= 300.0 < catalog["high_ms"].iloc[0]
    orders = buckets.loc[buckets["fingerprint_id"] == ORDERS.id]
    assert orders["count"].sum() == 100
    assert orders["low_ms"].is_monotonic_increasing
    assert orders["low_ms"].iloc[0] <= 1.0
    assert orders["high_ms"].iloc[-1] > 100.0


# -- time -----------------------------------------------------------------------------------


def test_timeline_has_one_row_per_window(main_log: QueryLog) -> None:
    rows = timeline(main_log)

    assert list(rows["window_start"]) == [pd.Timestamp(W1[0]), pd.Timestamp(W2[0])]
    assert list(rows["window_end"]) == [pd.Timestamp(W1[1]), pd.Timestamp(W2[1])]
    # W1: 30 + 30 ORDERS, 200 EVENTS, 5 CATEGORY; W2: 20 + 20 ORDERS, 100 EVENTS, 3 CATALOG.
    assert list(rows["calls"]) == [265, 143]
    assert list(rows["total_ms"]) == [2235.0, 4320.0]
    assert list(rows["queries_per_s"]) == pytest.approx([265 / 60, 143 / 40])
    assert list(rows["mean_ms"]) == pytest.approx([2235 / 265, 4320 / 143])
    # The 252nd of W1's 265 durations is 47 ms; the 136th of W2's 143 is 96 ms.
    assert _close(rows["p95_ms"].iloc[0], 47.0)
    assert _close(rows["p95_ms"].iloc[1], 96.0)


def test_slowest_queries_are_slow_and_failed_statements_only(main_log: QueryLog) -> None:
    slowest = slowest_queries(main_log)
    top3 = slowest_queries(main_log, n=3)

    # The N+1 records (700, 500 and 240 ms in all) are not single statements.
    assert list(slowest["duration_ms"]) == [300.0, 150.0, 100.0, 50.0, 40.0]
    assert list(slowest["kind"]) == ["slow", "error", "slow", "slow", "slow"]
    assert list(top3["fingerprint_id"]) == [CATALOG.id, EVENTS.id, ORDERS.id]
    assert top3["error_class"].iloc[1] == "IntegrityError"
    assert top3["explain"].iloc[0] == SQLITE_SCAN
    with pytest.raises(ConfigurationError, match="n must be at least 1"):
        slowest_queries(main_log, n=0)
    assert list(top3.columns) == [
        "ts",
        "kind",
        "duration_ms",
        "fingerprint_id",
        "fingerprint",
        "sql",
        "call_site",
        "route",
        "engine",
        "request_id",
        "error_class",
        "explain",
    ]


def test_totals_are_the_headline_numbers(main_log: QueryLog) -> None:
    result = totals(main_log)

    assert result.statements == 408
    assert result.total_ms == 6555.0
    assert result.fingerprints == 4
    assert result.engines == ("app", "reports")
    assert result.records == {"slow": 4, "error": 1, "n_plus_one": 3}
    assert result.first == T0
    assert result.last == T0 + timedelta(seconds=125)  # the last record, after the windows
    assert result.seconds == 125.0


# -- diagnosis ------------------------------------------------------------------------------


def test_n_plus_one_suspects_group_by_fingerprint_and_call_site(main_log: QueryLog) -> None:
    suspects = n_plus_one_suspects(main_log)

    assert list(suspects.columns) == [
        "fingerprint_id",
        "fingerprint",
        "call_site",
        "scopes",
        "executions",
        "max_per_scope",
        "total_ms",
        "example_request_id",
    ]
    rows = [tuple(row) for row in suspects.drop(columns=["fingerprint"]).itertuples(index=False)]
    assert rows == [
        (CATEGORY.id, LOOP_SITE, 2, 55, 35, 1200.0, "req-1"),
        (ORDERS.id, CUSTOMER_SITE, 1, 12, 12, 240.0, "req-3"),
    ]
    assert list(suspects["fingerprint"]) == [CATEGORY.text, ORDERS.text]


def test_cache_ratios_per_fingerprint(main_log: QueryLog) -> None:
    ratios = cache_ratios(main_log)

    assert list(ratios.columns) == [
        "fingerprint_id",
        "fingerprint",
        "hits",
        "misses",
        "lookups",
        "hit_ratio",
    ]
    # EVENTS never went through the cache: absent.
    assert list(ratios["fingerprint_id"]) == [ORDERS.id, CATEGORY.id, CATALOG.id]
    assert list(ratios["hits"]) == [30, 5, 2]
    assert list(ratios["misses"]) == [70, 0, 1]
    assert list(ratios["lookups"]) == [100, 5, 3]
    assert list(ratios["hit_ratio"]) == pytest.approx([0.3, 1.0, 2 / 3])


def test_cache_ratios_per_table_count_a_join_for_both_tables(main_log: QueryLog) -> None:
    ratios = cache_ratios(main_log, by="table")

    assert list(ratios.columns) == ["table", "hits", "misses", "lookups", "hit_ratio"]
    # categories: CATALOG's 2 hits and 1 miss plus CATEGORY's 5 hits.
    assert list(ratios["table"]) == ["orders", "categories", "shop.products"]
    assert list(ratios["hits"]) == [30, 7, 2]
    assert list(ratios["misses"]) == [70, 1, 1]
    assert list(ratios["lookups"]) == [100, 8, 3]
    assert list(ratios["hit_ratio"]) == pytest.approx([0.3, 7 / 8, 2 / 3])
    assert "order_events" not in set(ratios["table"])
    with pytest.raises(ConfigurationError, match="by must be"):
        cache_ratios(main_log, by="engine")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("sql", "tables"),
    [
        ('SELECT a.x FROM a JOIN "B" ON a.id = "B".id', ("a", "B")),
        (
            'SELECT * FROM "Order Items" JOIN `logs` ON 1 = 1 JOIN [dbo] ON 1 = 1',
            ("Order Items", "logs", "dbo"),
        ),
        (
            'SELECT p.name FROM "shop"."products" AS p JOIN categories AS c ON 1 = 1',
            ("shop.products", "categories"),
        ),
        (
            "SELECT * FROM sales.orders, sales.customers WHERE 1 = 1",
            ("sales.orders", "sales.customers"),
        ),
        (
            "select o.id from orders o join customers c on c.id = o.customer_id",
            ("orders", "customers"),
        ),
        (
            "SELECT * FROM (SELECT id FROM orders) AS sub JOIN customers ON 1 = 1",
            ("orders", "customers"),
        ),
        (
            "SELECT * FROM orders AS o, customers AS c WHERE o.customer_id = c.id",
            ("orders", "customers"),
        ),
        (
            "SELECT * FROM orders o, customers c WHERE o.customer_id = c.id",
            ("orders", "customers"),
        ),
        ("SELECT * FROM orders WHERE id IN (1, 2) ORDER BY a, b", ("orders",)),
        ("SELECT * FROM t JOIN LATERAL (SELECT 1) AS x ON true", ("t",)),
        ("INSERT INTO t (a) VALUES (?)", ()),
    ],
    ids=[
        "join",
        "quoted",
        "schema-qualified",
        "comma-joined-schemas",
        "lower-case",
        "subquery",
        "comma-joined-aliases",
        "comma-joined-bare-aliases",
        "order-by-list",
        "lateral",
        "insert",
    ],
)
def test_tables_in_sql(sql: str, tables: tuple[str, ...]) -> None:
    assert tables_in_sql(sql) == tables


def test_cache_ratios_of_a_statement_without_a_table(tmp_path: Path) -> None:
    now = Shape("f000000000000055", "SELECT now()")
    log = _log(tmp_path, [_stats(W1, now, [1.0] * 4, route=None, cache_hits=3, cache_misses=1)])

    ratios = cache_ratios(log, by="table")

    assert [tuple(row) for row in ratios.itertuples(index=False)] == [("(no table)", 3, 1, 4, 0.75)]


def test_route_split_counts_reads_and_writes_per_route(main_log: QueryLog) -> None:
    split = route_split(main_log)

    assert list(split.columns) == [
        "route",
        "reads",
        "writes",
        "calls",
        "total_ms",
        "share_calls",
        "share_time",
    ]
    # primary: ORDERS 30 + 20 and CATALOG 3 reads, EVENTS 300 writes; replica: ORDERS
    # 30 + 20; unrouted: CATEGORY 5.
    rows = [tuple(row)[:5] for row in split.itertuples(index=False)]
    assert rows == [
        ("primary", 53, 300, 353, 465.0 + 1410.0 + 600.0 + 900.0),
        ("replica", 50, 0, 50, 1365.0 + 1810.0),
        ("unrouted", 5, 0, 5, 5.0),
    ]
    assert list(split["share_calls"]) == pytest.approx([353 / 408, 50 / 408, 5 / 408])
    assert list(split["share_time"]) == pytest.approx([3375 / 6555, 3175 / 6555, 5 / 6555])


def test_pool_waits_per_engine_ignore_records_without_a_wait(main_log: QueryLog) -> None:
    waits = pool_waits(main_log)

    assert list(waits.columns) == ["engine", "records", "waited", "mean_ms", "p95_ms", "max_ms"]
    # app: 0.5, 3, 12 and 20 ms (two N+1 records of app have none); reports: 0.1 and 0.2 ms.
    assert list(waits["engine"]) == ["app", "reports"]
    assert list(waits["records"]) == [4, 2]
    assert list(waits["waited"]) == [3, 0]
    assert list(waits["mean_ms"]) == pytest.approx([35.5 / 4, 0.15])
    # Linear interpolation between the 3rd and 4th of 4 values: 12 + 0.85 * 8.
    assert list(waits["p95_ms"]) == pytest.approx([18.8, 0.195])
    assert list(waits["max_ms"]) == [20.0, 0.2]


# -- suggestions ----------------------------------------------------------------------------


def test_suggestions_of_the_main_log_by_impact(main_log: QueryLog) -> None:
    found = suggestions(main_log)

    assert all(isinstance(s, Suggestion) for s in found)
    assert [(s.action, s.target, s.fingerprint) for s in found] == [
        ("index", "orders", ORDERS.text),
        ("cache", ORDERS.id, ORDERS.text),
        ("route", "primary", None),
        ("batch", LOOP_SITE, CATEGORY.text),
        ("index", "categories", CATALOG.text),
        ("batch", CUSTOMER_SITE, ORDERS.text),
        ("pool", "app", None),
    ]
    assert [s.impact_ms for s in found] == pytest.approx(
        [
            5050.0,  # ORDERS' time, whose plan scans orders
            5050.0 * 0.7,  # ORDERS' time the cache did not answer (30 of 100 hits)
            1875.0 + 900.0,  # the reads' time on the primary: ORDERS and CATALOG
            1200.0,  # the N+1 loop's time
            900.0,  # CATALOG's time, whose plan scans categories
            240.0,
            35.5,  # app's total wait
        ]
    )
    batch, cache, route, pool = found[3], found[1], found[2], found[6]
    assert "up to 35 times" in batch.message
    assert "55 statements" in batch.message
    assert "2 scopes" in batch.message
    assert "30% of 100 lookups" in cache.message
    assert "53 reads (51% of all reads) against 50 on the replica" in route.message
    assert "p95 18.8 ms" in pool.message
    assert [s.action for s in suggestions(main_log, limit=3)] == ["index", "cache", "route"]
    with pytest.raises(ConfigurationError, match="limit must be at least 1"):
        suggestions(main_log, limit=0)


def test_batch_suggestions_come_from_n_plus_one_records_only(tmp_path: Path) -> None:
    slow_only = _log(tmp_path, [_record(1, "slow", CATEGORY, 900.0, call_site=LOOP_SITE)])
    loop = _log(
        tmp_path,
        [_record(1, "n_plus_one", CATEGORY, 90.0, count=30, call_site=LOOP_SITE)],
        "loop",
    )

    assert suggestions(slow_only) == []
    found = suggestions(loop)
    assert [(s.action, s.target, s.impact_ms) for s in found] == [("batch", LOOP_SITE, 90.0)]


MYSQL_HEADER = (
    "id | select_type | table  | partitions | type | possible_keys | key  "
    "| key_len | ref  | rows | filtered | Extra"
)
MARIADB_HEADER = (
    "id | select_type | table  | type | possible_keys | key  | key_len | ref  | rows | Extra"
)


@pytest.mark.parametrize(
    ("plan", "scanned"),
    [
        (PG_SEQ_SCAN, "orders"),
        (
            "Hash Join  (cost=1.09..2.20 rows=4 width=8)\n"
            "  Hash Cond: (o.customer_id = c.id)\n"
            "  ->  Seq Scan on orders o  (cost=0.00..1.04 rows=4 width=8)\n"
            "  ->  Hash  (cost=1.04..1.04 rows=4 width=4)\n"
            "        ->  Index Scan using customers_pkey on customers c",
            "orders",
        ),
        ("Gather\n  Workers Planned: 2\n  ->  Parallel Seq Scan on orders", "orders"),
        ("SCAN orders", "orders"),
        ("SCAN TABLE orders", "orders"),
        ("QUERY PLAN\n|--SCAN orders\n`--SEARCH c USING INTEGER PRIMARY KEY (rowid=?)", "orders"),
        (
            "| id | select_type | table  | partitions | type | possible_keys |\n"
            "| 1  | SIMPLE      | orders | NULL       | ALL  | NULL          |",
            "orders",
        ),
        # As sqlperf's recorder writes MySQL's and MariaDB's EXPLAIN tables.
        (
            f"{MYSQL_HEADER}\n1  | SIMPLE      | orders | NULL       | ALL  | NULL          "
            "| NULL | NULL    | NULL | 1000 | 10.0     | Using where",
            "orders",
        ),
        (
            f"{MARIADB_HEADER}\n1  | SIMPLE      | orders | ALL  | NULL          | NULL | NULL "
            "   | NULL | 1000 | Using where",
            "orders",
        ),
        ("SEARCH orders USING INDEX ix_orders_customer (customer_id=?)", None),
        ("SEARCH orders USING INTEGER PRIMARY KEY (rowid=?)", None),
        ("SCAN orders USING COVERING INDEX ix_orders_customer", None),
        ("SCAN CONSTANT ROW", None),
        (
            "Index Scan using orders_customer_idx on orders  (cost=0.29..8.31 rows=1 width=40)\n"
            "  Index Cond: (customer_id = 42)",
            None,
        ),
        ("Index Only Scan using orders_customer_idx on orders", None),
        (
            f"{MYSQL_HEADER}\n1  | SIMPLE      | orders | NULL       | ref  | ix_customer   "
            "| ix_customer | 5 | const | 10 | 100.0 | NULL",
            None,
        ),
    ],
    ids=[
        "pg-seq-scan",
        "pg-seq-scan-in-a-join",
        "pg-parallel-seq-scan",
        "sqlite-scan",
        "sqlite-scan-table",
        "sqlite-shell-tree",
        "mysql-client-table",
        "mysql-recorder-table",
        "mariadb-recorder-table",
        "sqlite-search-index",
        "sqlite-search-rowid",
        "sqlite-covering-index",
        "sqlite-constant-row",
        "pg-index-scan",
        "pg-index-only-scan",
        "mysql-ref",
    ],
)
def test_index_suggestion_only_for_a_full_scan(
    tmp_path: Path, plan: str, scanned: str | None
) -> None:
    log = _log(
        tmp_path,
        [
            _record(1, "slow", ORDERS, 80.0, explain=plan),
            _record(2, "slow", ORDERS, 70.0, explain=plan),  # the same scan: one suggestion
            _stats(W1, ORDERS, [80.0, 70.0, 10.0], route=None),
        ],
    )

    found = suggestions(log)

    assert [(s.action, s.target, s.impact_ms) for s in found] == (
        [("index", scanned, 160.0)] if scanned else []
    )
    if scanned:  # the evidence is the first record's
        assert "80.0 ms when recorded, 160.0 ms in all" in found[0].message


def test_index_suggestion_without_statistics_weighs_the_record(tmp_path: Path) -> None:
    log = _log(tmp_path, [_record(1, "slow", ORDERS, 80.0, explain="SCAN orders")])

    assert [(s.target, s.impact_ms) for s in suggestions(log)] == [("orders", 80.0)]


FILLER = Shape("f000000000000099", "UPDATE stock SET qty = qty - ? WHERE id = ?")
CTE = Shape(
    "f000000000000077",
    "WITH recent AS (SELECT * FROM orders WHERE ts > ?) SELECT count(*) FROM recent",
)
INSERT = Shape("f000000000000066", "INSERT INTO orders (customer_id) VALUES (?)")


class CacheCase(NamedTuple):
    """One read (or write) beside 1000 ms of writes, and the cache suggestion it should get."""

    shape: Shape
    calls: int
    ms: float
    hits: int
    misses: int
    impact: float | None  # None: no suggestion


@pytest.mark.parametrize(
    "case",
    [
        CacheCase(ORDERS, 50, 10.0, 0, 0, 500.0),  # never looked up: all of its time
        CacheCase(ORDERS, 60, 10.0, 20, 30, 600.0 * 0.6),  # answered 40% of the time
        CacheCase(CTE, 50, 10.0, 0, 0, 500.0),  # a WITH query reads too
        CacheCase(ORDERS, 50, 10.0, 25, 25, None),  # answered half the time
        CacheCase(INSERT, 50, 10.0, 0, 0, None),  # a write
        CacheCase(ORDERS, 49, 10.0, 0, 0, None),  # too rare
        CacheCase(ORDERS, 50, 0.2, 0, 0, None),  # 10 ms of 1010: under 2% of the time
    ],
    ids=["uncached", "low-hit-ratio", "cte", "half-answered", "insert", "rare", "small-share"],
)
def test_cache_suggestion_for_frequent_uncached_reads_only(tmp_path: Path, case: CacheCase) -> None:
    durations = [case.ms] * case.calls
    log = _log(
        tmp_path,
        [
            _stats(
                W1,
                case.shape,
                durations,
                route=None,
                cache_hits=case.hits,
                cache_misses=case.misses,
            ),
            _stats(W1, FILLER, [10.0] * 100, route=None),  # 1000 ms of writes
        ],
    )

    found = suggestions(log)

    if case.impact is None:
        assert found == []
    else:
        assert [(s.action, s.target, s.fingerprint) for s in found] == [
            ("cache", case.shape.id, case.shape.text)
        ]
        assert found[0].impact_ms == pytest.approx(case.impact)
        never = case.hits + case.misses == 0
        assert ("the result cache never saw it" in found[0].message) is never
    assert suggestions(log, cache_min_calls=case.calls + 1) == []
    assert suggestions(log, cache_min_share=0.99) == []


@pytest.mark.parametrize(
    ("primary_reads", "replica_reads", "fires"),
    [(80, 20, True), (20, 80, False), (100, 0, False), (0, 100, False)],
    ids=["reads-on-primary", "reads-on-replica", "no-replica", "all-on-replica"],
)
def test_route_suggestion_when_most_reads_hit_the_primary_beside_a_replica(
    tmp_path: Path, primary_reads: int, replica_reads: int, fires: bool
) -> None:
    items: list[QueryRecord | StatsRow] = [_stats(W1, EVENTS, [1.0] * 40, route="primary")]
    if primary_reads:
        items.append(_stats(W1, CATEGORY, [3.0] * primary_reads, route="primary", cache_hits=9))
    if replica_reads:
        items.append(_stats(W1, CATEGORY, [3.0] * replica_reads, route="replica", cache_hits=9))
    log = _log(tmp_path, items)

    found = [(s.action, s.target, s.impact_ms) for s in suggestions(log)]

    assert found == ([("route", "primary", 3.0 * primary_reads)] if fires else [])


@pytest.mark.parametrize(
    ("waits", "threshold", "fires"),
    [
        ([5.0, 5.0], 5.0, True),
        ([4.9, 4.9], 5.0, False),
        ([4.9, 4.9], 4.0, True),
        ([0.0] * 19 + [100.0], 5.0, True),  # p95 interpolated: 0 + 0.05 * 100
        ([0.0] * 20 + [100.0], 5.0, False),
    ],
)
def test_pool_suggestion_when_the_p95_wait_reaches_the_threshold(
    tmp_path: Path, waits: list[float], threshold: float, fires: bool
) -> None:
    records = [
        _record(i, "slow", ORDERS, 100.0, engine="web", pool_wait_ms=wait)
        for i, wait in enumerate(waits)
    ]
    records.append(_record(99, "slow", ORDERS, 100.0, engine="web"))  # no wait measured
    log = _log(tmp_path, records)

    found = [(s.action, s.target) for s in suggestions(log, pool_wait_ms=threshold)]

    assert found == ([("pool", "web")] if fires else [])
    assert pool_waits(log)["records"].tolist() == [len(waits)]


# -- diff -----------------------------------------------------------------------------------


def test_diff_logs_compares_fingerprint_by_fingerprint(main_jsonl: Path, after_jsonl: Path) -> None:
    moved = diff_logs(main_jsonl, after_jsonl)

    assert list(moved.columns) == list(DIFF_COLUMNS)
    # |total_ms_change|: ORDERS 4050, CATALOG 900, EVENTS 600, COUPONS 200, CATEGORY 0.
    assert list(moved["fingerprint_id"]) == [
        ORDERS.id,
        CATALOG.id,
        EVENTS.id,
        COUPONS.id,
        CATEGORY.id,
    ]
    assert list(moved["fingerprint"]) == [
        ORDERS.text,
        CATALOG.text,
        EVENTS.text,
        COUPONS.text,
        CATEGORY.text,
    ]
    assert list(moved["status"]) == ["changed", "changed", "gone", "new", "changed"]
    assert list(moved["calls_before"]) == [100, 3, 300, 0, 5]
    assert list(moved["calls_after"]) == [100, 6, 0, 50, 5]
    assert list(moved["calls_change"]) == [0, 3, -300, 50, 0]
    assert list(moved["total_ms_before"]) == [5050.0, 900.0, 600.0, 0.0, 5.0]
    assert list(moved["total_ms_after"]) == [1000.0, 1800.0, 0.0, 200.0, 5.0]
    assert list(moved["total_ms_change"]) == [-4050.0, 900.0, -600.0, 200.0, 0.0]
    assert list(moved["cumulative_share"]) == pytest.approx(
        [4050 / 5750, 4950 / 5750, 5550 / 5750, 1.0, 1.0]
    )
    assert moved["cumulative_share"].is_monotonic_increasing
    assert moved["cumulative_share"].iloc[-1] == 1.0

    orders, catalog, events, coupons = (moved.iloc[i] for i in range(4))
    assert _close(orders["p95_ms_before"], 95.0)
    assert _close(orders["p95_ms_after"], 10.0)
    assert orders["p95_change"] == pytest.approx(
        orders["p95_ms_after"] / orders["p95_ms_before"] - 1
    )
    assert orders["p95_change"] == pytest.approx(10 / 95 - 1, abs=0.01)  # 89% faster
    assert catalog["p95_change"] == 0.0
    assert _close(events["p95_ms_before"], 2.0)
    assert math.isnan(events["p95_ms_after"])
    assert math.isnan(events["p95_change"])
    assert math.isnan(coupons["p95_ms_before"])
    assert _close(coupons["p95_ms_after"], 4.0)
    assert math.isnan(coupons["p95_change"])


def test_render_diff_as_text_and_json(main_jsonl: Path, after_jsonl: Path) -> None:
    moved = diff_logs(main_jsonl, after_jsonl)

    text = render_diff(moved, top=2)
    assert text.splitlines()[0] == (
        "total time 6,555.0 ms -> 3,005.0 ms (-3,550.0 ms); 1 new, 1 gone, 3 in both"
    )
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 2  # the header, its rule and the top two rows
    assert ORDERS.text in table[2]
    assert CATALOG.text in table[3]

    rows = json.loads(render_diff(moved, fmt="json"))
    assert [row["fingerprint_id"] for row in rows] == list(moved["fingerprint_id"])
    for row, expected in zip(rows, moved.to_dict(orient="records"), strict=True):
        assert list(row) == list(DIFF_COLUMNS)
        for name, value in expected.items():
            if isinstance(value, float) and math.isnan(value):
                assert row[name] is None, name
            else:
                assert row[name] == value, name


def test_diff_against_an_empty_log(main_jsonl: Path, empty_log: QueryLog) -> None:
    appeared = diff_logs(empty_log, main_jsonl)
    nothing = diff_logs(empty_log, empty_log)

    assert list(appeared["status"]) == ["new"] * 4
    assert list(appeared["total_ms_after"]) == [5050.0, 900.0, 600.0, 5.0]
    assert list(appeared["calls_before"]) == [0, 0, 0, 0]
    assert appeared["cumulative_share"].iloc[-1] == 1.0
    assert list(diff_logs(main_jsonl, empty_log)["status"]) == ["gone"] * 4
    assert nothing.empty
    assert list(nothing.columns) == list(DIFF_COLUMNS)
    assert render_diff(nothing).startswith(
        "total time 0.0 ms -> 0.0 ms (+0.0 ms); 0 new, 0 gone, 0 in both"
    )
    assert json.loads(render_diff(nothing, fmt="json")) == []


# -- the report -----------------------------------------------------------------------------


def _png_images(page: str) -> list[bytes]:
    encoded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    return [base64.b64decode(data, validate=True) for data in encoded]


def test_report_as_json(main_log: QueryLog) -> None:
    payload = json.loads(build_report(main_log).to_json())

    assert payload["source"] == main_log.source
    assert payload["totals"]["statements"] == 408
    assert payload["totals"]["first"] == T0.isoformat()
    assert payload["totals"]["seconds"] == 125.0
    assert payload["top"][0]["fingerprint"] == ORDERS.text
    assert payload["top"][0]["calls"] == 100
    assert payload["n_plus_one"][0]["call_site"] == LOOP_SITE
    assert payload["n_plus_one"][0]["executions"] == 55
    assert [s["action"] for s in payload["suggestions"]][:2] == ["index", "cache"]
    assert payload["slowest"][0]["duration_ms"] == 300.0
    assert [row["route"] for row in payload["routes"]] == ["primary", "replica", "unrouted"]
    assert [row["table"] for row in payload["cache_tables"]] == [
        "orders",
        "categories",
        "shop.products",
    ]
    assert len(payload["timeline"]) == 2


def test_report_as_markdown(main_jsonl: Path) -> None:
    report = build_report(main_jsonl, top=2)
    text = report.to_markdown()

    assert text.startswith(f"# sqlperf report: {main_jsonl}\n")
    assert report.headline() in text
    assert "408 statements, 6,555.0 ms in the database, 4 fingerprints" in report.headline()
    assert ORDERS.text in text
    assert f"4. **batch**: Batch the loop at {LOOP_SITE}" in text
    assert "## N+1 suspects" in text
    assert len(report.top) == 2


def test_report_as_one_html_page_with_png_plots(main_jsonl: Path) -> None:
    page = build_report(main_jsonl).to_html()

    assert page.count("<html") == 1
    assert page.rstrip().endswith("</html>")
    assert ORDERS.text in page
    assert "Batch the loop at" in page
    images = _png_images(page)
    assert len(images) == page.count("<img") == 5
    assert all(image.startswith(PNG_SIGNATURE) for image in images)
    assert "<script" not in page.lower()
    assert 'src="http' not in page
    assert "<link" not in page


def test_report_prints_tables_with_rich(main_jsonl: Path) -> None:
    out = io.StringIO()
    build_report(main_jsonl).print(Console(file=out, width=200))
    text = out.getvalue()

    assert "sqlperf report" in text
    assert "408 statements" in text
    assert ORDERS.text in text
    assert LOOP_SITE in text
    assert "Top fingerprints by total time" in text
    assert "5,050.00" in text  # ORDERS' total time, in the table only
    assert "Pool checkout waits" in text


def test_report_prints_the_numbers_on_an_80_column_terminal(main_jsonl: Path) -> None:
    out = io.StringIO()
    build_report(main_jsonl).print(Console(file=out, width=80))

    assert "5,050.00" in out.getvalue()


@pytest.mark.parametrize("half", ["records", "stats"])
def test_report_of_one_parquet_half(parquet_paths: tuple[Path, Path], half: str) -> None:
    path = parquet_paths[0] if half == "records" else parquet_paths[1]
    report = build_report(path)

    assert len(_png_images(report.to_html())) == 5
    payload = json.loads(report.to_json())
    assert len(payload["n_plus_one"]) == (2 if half == "records" else 0)
    assert len(payload["top"]) == (0 if half == "records" else 4)


# -- the command ----------------------------------------------------------------------------


@pytest.fixture
def cli() -> click.Group:
    return make_cli()


def test_cli_report_prints_the_summary(cli: click.Group, main_jsonl: Path) -> None:
    result = CliRunner().invoke(cli, ["report", str(main_jsonl)])

    assert result.exit_code == 0, result.output
    assert ORDERS.text in result.stdout
    assert LOOP_SITE in result.stdout


def test_cli_report_as_json(cli: click.Group, main_jsonl: Path) -> None:
    result = CliRunner().invoke(cli, ["report", str(main_jsonl), "--format", "json", "--top", "1"])

    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert [row["fingerprint_id"] for row in payload["top"]] == [ORDERS.id]
    assert payload["n_plus_one"][0]["call_site"] == LOOP_SITE


def test_cli_report_as_html_file(cli: click.Group, main_jsonl: Path, tmp_path: Path) -> None:
    target = tmp_path / "out.html"
    result = CliRunner().invoke(
        cli, ["report", str(main_jsonl), "--format", "html", "-o", str(target)]
    )

    assert result.exit_code == 0, result.output
    assert result.stdout == f"wrote {target}\n"
    images = _png_images(target.read_text(encoding="utf-8"))
    assert images
    assert all(image.startswith(PNG_SIGNATURE) for image in images)


def test_cli_diff(cli: click.Group, main_jsonl: Path, after_jsonl: Path) -> None:
    result = CliRunner().invoke(cli, ["diff", str(main_jsonl), str(after_jsonl)])

    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("total time 6,555.0 ms -> 3,005.0 ms")
    assert "1 new, 1 gone, 3 in both" in result.stdout
    assert ORDERS.text in result.stdout


def test_cli_report_of_a_missing_file_fails_in_one_line(cli: click.Group, tmp_path: Path) -> None:
    missing = tmp_path / "missing.jsonl"
    result = CliRunner().invoke(cli, ["report", str(missing)])

    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "no query log at" in lines[0]
    assert "Traceback" not in result.output


# -- an empty log ---------------------------------------------------------------------------


def test_every_function_of_an_empty_log_returns_nothing(empty_log: QueryLog) -> None:
    assert empty_log.empty
    frames = {
        "fingerprint_table": fingerprint_table(empty_log),
        "top_fingerprints": top_fingerprints(empty_log),
        "latency_histograms": latency_histograms(empty_log, [ORDERS.id]),
        "timeline": timeline(empty_log),
        "slowest_queries": slowest_queries(empty_log),
        "n_plus_one_suspects": n_plus_one_suspects(empty_log),
        "cache_ratios": cache_ratios(empty_log),
        "cache_ratios_by_table": cache_ratios(empty_log, by="table"),
        "route_split": route_split(empty_log),
        "pool_waits": pool_waits(empty_log),
        "diff_logs": diff_logs(empty_log, empty_log),
    }
    for name, frame in frames.items():
        assert isinstance(frame, pd.DataFrame), name
        assert frame.empty, name
        assert len(frame.columns) > 0, name
    assert list(frames["fingerprint_table"].columns) == list(FINGERPRINT_COLUMNS)
    assert suggestions(empty_log) == []
    result = totals(empty_log)
    assert (result.statements, result.total_ms, result.fingerprints) == (0, 0.0, 0)
    assert (result.engines, result.records, result.first, result.last) == ((), {}, None, None)
    assert result.seconds == 0.0


def test_report_of_an_empty_log_still_renders(empty_log: QueryLog) -> None:
    report = build_report(empty_log)

    page = report.to_html()
    assert "Nothing stands out." in page
    images = _png_images(page)
    assert len(images) == 5
    assert all(image.startswith(PNG_SIGNATURE) for image in images)
    assert json.loads(report.to_json())["top"] == []
    assert "_none_" in report.to_markdown()
    out = io.StringIO()
    report.print(Console(file=out, width=200))
    assert "Nothing stands out." in out.getvalue()
