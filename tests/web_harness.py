"""What the Flask and ASGI integration tests share: a recorder and a Redis cache on the
replica cluster, a statement counter, and a ``Server-Timing`` parser."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import Engine, event

from sqlperf import QueryCache, RedisBackend
from sqlperf.capture import QueryRecord, QueryRecorder
from tests.replica_cluster import Cluster

TOKEN = re.compile(r"v1:\d+\.\d{6}:[0-9A-F]+/[0-9A-F]+")  # a PostgreSQL token: with an LSN
SERVER_TIMING = re.compile(
    r'(?:^|, )db;dur=(?P<dur>\d+\.\d{3});desc="(?P<queries>\d+) queries", '
    r'cache;desc="(?P<hits>\d+) hits"$'
)


@dataclass
class Timing:
    """The ``db`` and ``cache`` metrics of a ``Server-Timing`` header."""

    dur_ms: float
    queries: int
    hits: int


def parse_timing(header: str | None) -> Timing:
    """The sqlperf metrics of a ``Server-Timing`` header (the last ones in it)."""
    assert header is not None, "no Server-Timing header"
    match = SERVER_TIMING.search(header)
    assert match is not None, header
    return Timing(float(match["dur"]), int(match["queries"]), int(match["hits"]))


@contextmanager
def counting(*engines: Engine) -> Iterator[list[str]]:
    """Every statement sent to ``engines`` in the block, seen by a listener of the test's own."""
    seen: list[str] = []

    def before(*args: Any) -> None:  # conn, cursor, statement, parameters, context, many
        seen.append(args[2])

    for engine in engines:
        event.listen(engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", before)


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    """``call()`` and its wall time in milliseconds."""
    start = time.perf_counter()
    result = call()
    return result, (time.perf_counter() - start) * 1000


def records_of(recorder: QueryRecorder, request_id: str, kind: str) -> list[QueryRecord]:
    """The recorder's records of one request and kind (``"slow"``, ``"n_plus_one"``...)."""
    return [r for r in recorder.records() if r.request_id == request_id and r.kind == kind]


@pytest.fixture
def recorder(pg: Cluster) -> Iterator[QueryRecorder]:
    """A recorder on both engines that records every statement (``slow_ms=0``)."""
    rec = QueryRecorder(slow_ms=0, stats_interval_s=None).attach(pg.primary, pg.replica)
    yield rec
    rec.close()


@pytest.fixture
def query_cache(redis_url: str) -> Iterator[QueryCache]:
    """A QueryCache on Redis, in a namespace of its own that is cleared afterwards."""
    backend = RedisBackend(redis_url, namespace=f"sqlperf-test-{uuid.uuid4().hex[:8]}")
    cache = QueryCache(backend, ttl=60)
    yield cache
    cache.close()
    backend.clear()
    backend.close()
