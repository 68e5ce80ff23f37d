"""Slow-query capture: every statement timed and aggregated, the slow and failed ones kept.

* :class:`QueryRecorder`: ``attach(*engines)`` / ``detach()``; per-fingerprint
  aggregates (``stats()``), records of slow, failed and N+1 statements
  (``records()``, ``to_dataframe()``), ``scope(request_id=...)`` per unit of work.
* Fingerprints: :func:`fingerprint` / :func:`normalize`, one id per query shape.
* Sinks: :class:`MemorySink`, :class:`JsonlSink`, :class:`DatabaseSink`, or
  anything that satisfies the :class:`Sink` protocol.
* Reading a log back: :func:`read_query_log`, :func:`read_query_stats` (JSON
  Lines, Parquet or the database tables), :func:`write_parquet`; the columns are
  :data:`RECORD_COLUMNS` and :data:`STATS_COLUMNS`.
"""

from sqlperf.capture.fingerprint import Fingerprint, FingerprintCache, fingerprint, normalize
from sqlperf.capture.histogram import LatencyHistogram
from sqlperf.capture.log import (
    read_query_log,
    read_query_stats,
    records_frame,
    stats_frame,
    write_parquet,
)
from sqlperf.capture.recorder import CAPTURE_OPTION, CaptureStats, ParamsMode, QueryRecorder, Scope
from sqlperf.capture.records import (
    RECORD_COLUMNS,
    RECORD_KINDS,
    STATS_COLUMNS,
    QueryRecord,
    StatsRow,
)
from sqlperf.capture.sinks import DatabaseSink, JsonlSink, MemorySink, Sink

__all__ = [
    "CAPTURE_OPTION",
    "RECORD_COLUMNS",
    "RECORD_KINDS",
    "STATS_COLUMNS",
    "CaptureStats",
    "DatabaseSink",
    "Fingerprint",
    "FingerprintCache",
    "JsonlSink",
    "LatencyHistogram",
    "MemorySink",
    "ParamsMode",
    "QueryRecord",
    "QueryRecorder",
    "Scope",
    "Sink",
    "StatsRow",
    "fingerprint",
    "normalize",
    "read_query_log",
    "read_query_stats",
    "records_frame",
    "stats_frame",
    "write_parquet",
]
