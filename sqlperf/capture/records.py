"""What the query recorder writes: query records and per-fingerprint statistics.

Two kinds of rows leave the recorder, through its sinks:

* :class:`QueryRecord`: one statement worth keeping, of ``kind``
  ``"slow"`` (over ``slow_ms``), ``"error"`` (it raised) or ``"n_plus_one"``
  (one fingerprint repeated from one call site within one scope; ``count`` says
  how often, ``duration_ms`` is their sum).
* :class:`StatsRow`: the aggregates of one fingerprint on one engine over one
  time window, for every statement, slow or not.

:data:`RECORD_COLUMNS` and :data:`STATS_COLUMNS` are the one schema of both: the
pandas dtypes that ``recorder.to_dataframe()``, ``read_query_log()`` and
``read_query_stats()`` return whatever the sink (memory, JSON Lines, Parquet,
the database tables), in this column order. ``docs/capture.md`` shows them as tables.

Values are plain Python objects (``datetime`` in UTC, ``str``, ``int``,
``float``, ``bool``, ``None``), so any sink can write them as they are;
:meth:`QueryRecord.as_dict` gives them with ``ts`` as an ISO 8601 string for JSON.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

__all__ = [
    "RECORD_COLUMNS",
    "RECORD_KINDS",
    "STATS_COLUMNS",
    "QueryRecord",
    "StatsRow",
]

#: The values of :attr:`QueryRecord.kind`.
RECORD_KINDS: Final = ("slow", "error", "n_plus_one")

#: Column name -> pandas dtype of a query-log DataFrame, in column order.
RECORD_COLUMNS: Final[Mapping[str, str]] = {
    "ts": "datetime64[us, UTC]",
    "kind": "string",
    "duration_ms": "float64",
    "fingerprint_id": "string",
    "fingerprint": "string",
    "sql": "string",
    "params": "string",
    "rowcount": "Int64",
    "executemany": "boolean",
    "count": "Int64",
    "engine": "string",
    "url": "string",
    "dialect": "string",
    "route": "string",
    "pool_wait_ms": "float64",
    "compiled_cache": "string",
    "result_cache": "string",
    "call_site": "string",
    "thread": "string",
    "request_id": "string",
    "tags": "string",
    "error_class": "string",
    "error_message": "string",
    "explain": "string",
    "host": "string",
    "pid": "Int64",
}

#: Column name -> pandas dtype of a statistics DataFrame, in column order.
STATS_COLUMNS: Final[Mapping[str, str]] = {
    "window_start": "datetime64[us, UTC]",
    "window_end": "datetime64[us, UTC]",
    "engine": "string",
    "url": "string",
    "dialect": "string",
    "route": "string",
    "fingerprint_id": "string",
    "fingerprint": "string",
    "sql": "string",
    "calls": "Int64",
    "errors": "Int64",
    "rows": "Int64",
    "n_plus_one": "Int64",
    "cache_hits": "Int64",
    "cache_misses": "Int64",
    "total_ms": "float64",
    "mean_ms": "float64",
    "p50_ms": "float64",
    "p95_ms": "float64",
    "p99_ms": "float64",
    "max_ms": "float64",
    "sample": "float64",
    "histogram": "string",
    "host": "string",
    "pid": "Int64",
}


def _jsonable(row: object) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field in dataclasses.fields(row):  # type: ignore[arg-type]
        value = getattr(row, field.name)
        out[field.name] = value.isoformat() if isinstance(value, datetime) else value
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryRecord:
    """One captured statement; the fields are the columns of the query log.

    Attributes:
        ts: when the statement started, timezone-aware UTC.
        kind: ``"slow"``, ``"error"`` or ``"n_plus_one"``.
        duration_ms: how long the DB-API call took (for ``n_plus_one``: the sum).
        fingerprint_id / fingerprint: the query shape (see ``fingerprint.py``).
        sql: the statement as sent to the driver.
        params: the parameters as JSON: types only (``"redact"``, the default),
            values (``"keep"``), or ``None`` (``"drop"``).
        rowcount: the cursor's rowcount where the driver reports one.
        executemany: whether the DB-API ``executemany`` ran it.
        count: how many executions this record stands for (1 unless ``n_plus_one``).
        engine / url / dialect: which database; the URL never has a password.
        route: ``"primary"`` or ``"replica"`` under a routing session, else ``None``.
        pool_wait_ms: how long the checkout of the connection it ran on waited
            (engines with sqlperf's monitored pool), else ``None``.
        compiled_cache: SQLAlchemy's compiled-statement cache: ``"hit"``,
            ``"miss"``, ``"disabled"``, ``"no_key"``, ``"unsupported"`` or ``None``.
        result_cache: what a query-result cache did: ``"hit"``, ``"miss"``,
            ``"bypass:<reason>"`` or ``None``.
        call_site: the first application frame, ``"path/to/file.py:12 func"``.
        thread: the thread's name.
        request_id / tags: from the recorder's scope (``tags`` as JSON).
        error_class / error_message: for ``kind="error"``.
        explain: the query plan, when ``explain=True`` and the statement was a slow SELECT.
        host / pid: where the recorder ran, so logs of many hosts can be joined.
    """

    ts: datetime
    kind: str
    duration_ms: float
    fingerprint_id: str
    fingerprint: str
    sql: str
    params: str | None = None
    rowcount: int | None = None
    executemany: bool = False
    count: int = 1
    engine: str | None = None
    url: str | None = None
    dialect: str | None = None
    route: str | None = None
    pool_wait_ms: float | None = None
    compiled_cache: str | None = None
    result_cache: str | None = None
    call_site: str | None = None
    thread: str | None = None
    request_id: str | None = None
    tags: str | None = None
    error_class: str | None = None
    error_message: str | None = None
    explain: str | None = None
    host: str | None = None
    pid: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready dict (``ts`` as an ISO 8601 string)."""
        return _jsonable(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class StatsRow:
    """The aggregates of one fingerprint on one engine over one window.

    Attributes:
        window_start / window_end: the window, timezone-aware UTC.
        engine / url / dialect / route: as in :class:`QueryRecord`.
        fingerprint_id / fingerprint: the query shape; ``sql``: one example of it.
        calls: statements measured (with ``sample < 1`` only the sampled ones).
        errors: of those, how many raised.
        rows: the sum of the rowcounts the driver reported.
        n_plus_one: N+1 suspects reported for this fingerprint.
        cache_hits / cache_misses: the result cache's answers, at the cursor level.
        total_ms / mean_ms / max_ms: exact; p50_ms / p95_ms / p99_ms: from
            ``histogram``, within 3.2% of the true value.
        sample: the recorder's sampling rate; ``calls / sample`` estimates all calls.
        histogram: the latency histogram as JSON (see ``histogram.py``), so that
            windows can be merged exactly.
        host / pid: where the recorder ran.
    """

    window_start: datetime
    window_end: datetime
    engine: str | None
    url: str | None
    dialect: str | None
    route: str | None
    fingerprint_id: str
    fingerprint: str
    sql: str
    calls: int
    errors: int
    rows: int
    n_plus_one: int
    cache_hits: int
    cache_misses: int
    total_ms: float
    mean_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    sample: float
    histogram: str
    host: str | None = None
    pid: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """The row as a JSON-ready dict (the window as ISO 8601 strings)."""
        return _jsonable(self)
