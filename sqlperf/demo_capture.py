"""The query-capture part of ``sqlperf demo``: the whole run recorded, then summarised.

:func:`start_capture` attaches a :class:`~sqlperf.capture.QueryRecorder` to the
demo's engines before the schema is built, with three sinks: memory, a JSON
Lines file (when an output folder is given) and the ``sqlperf_query_log`` table
in the demo's own database (created by sqlperf's migrations). :func:`finish_capture`
closes it and prints the top fingerprints by total time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, func, select

from sqlperf.capture import DatabaseSink, JsonlSink, MemorySink, QueryRecorder, Sink
from sqlperf.migrate import upgrade
from sqlperf.schema import query_log_table, query_stats_table

__all__ = ["CaptureDemoReport", "DemoCapture", "TopFingerprint", "finish_capture", "start_capture"]

#: Statements at least this slow become records in the demo (its queries are fast).
DEMO_SLOW_MS = 20.0
LOG_NAME = "query_log.jsonl"


@dataclass(frozen=True, kw_only=True)
class TopFingerprint:
    """One line of the demo's top-fingerprints table."""

    fingerprint: str
    calls: int
    total_ms: float
    p95_ms: float


@dataclass(frozen=True, kw_only=True)
class CaptureDemoReport:
    """What the capture part of the demo recorded.

    Attributes:
        statements: statements measured over the whole run.
        fingerprints: distinct (fingerprint, engine) pairs.
        records: records by kind (``"slow"``, ``"error"``, ``"n_plus_one"``).
        dropped: records dropped by a full queue (0 unless a sink stalled).
        top: the five fingerprints with the largest total time.
        log_path: the JSON Lines log, if an output folder was given.
        table_records / table_stats: rows the database sink wrote in this run.
    """

    statements: int
    fingerprints: int
    records: dict[str, int]
    dropped: int
    top: tuple[TopFingerprint, ...]
    log_path: Path | None
    table_records: int
    table_stats: int


def _table_counts(engine: Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        return (
            conn.execute(select(func.count()).select_from(query_log_table)).scalar_one(),
            conn.execute(select(func.count()).select_from(query_stats_table)).scalar_one(),
        )


@dataclass(frozen=True)
class DemoCapture:
    """The demo's recorder and the log tables' row counts before it started."""

    recorder: QueryRecorder
    records_before: int
    stats_before: int


def start_capture(engine: Engine, *others: Engine, out_dir: Path | None) -> DemoCapture:
    """Create sqlperf's log tables in the demo's database and start recording ``engine``.

    On a server database the tables keep earlier runs' rows; the report counts this run's.
    """
    upgrade(engine.url)
    records_before, stats_before = _table_counts(engine)
    sinks: list[Sink] = [MemorySink(capacity=100_000), DatabaseSink(engine)]
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        log = out_dir / LOG_NAME
        log.unlink(missing_ok=True)
        sinks.append(JsonlSink(log))
    # Windows of a second give the report's timeline a point per second of the run.
    recorder = QueryRecorder(slow_ms=DEMO_SLOW_MS, sinks=sinks, stats_interval_s=1.0, explain=True)
    return DemoCapture(recorder.attach(engine, *others), records_before, stats_before)


def finish_capture(
    capture: DemoCapture, engine: Engine, *, out_dir: Path | None, emit: Callable[[str], None]
) -> CaptureDemoReport:
    """Write everything recorded, close the recorder and print the summary."""
    recorder = capture.recorder
    stats = recorder.stats()
    records = recorder.records()
    recorder.close()
    by_kind: dict[str, int] = {}
    for record in records:
        by_kind[record.kind] = by_kind.get(record.kind, 0) + 1
    top = tuple(
        TopFingerprint(
            fingerprint=row.fingerprint, calls=row.calls, total_ms=row.total_ms, p95_ms=row.p95_ms
        )
        for row in stats.top(5)
    )
    records_after, stats_after = _table_counts(engine)
    table_records = records_after - capture.records_before
    table_stats = stats_after - capture.stats_before
    log_path = out_dir / LOG_NAME if out_dir is not None else None

    emit(
        f"capture: {stats.statements:,} statements in {len(stats.fingerprints)} fingerprints; "
        f"records: {', '.join(f'{n} {k}' for k, n in sorted(by_kind.items())) or 'none'} "
        f"(slow_ms={DEMO_SLOW_MS:g}), {stats.dropped} dropped"
    )
    emit(f"{'total ms':>10} {'calls':>8} {'p95 ms':>8}  top fingerprints by total time")
    for row in top:
        shape = row.fingerprint if len(row.fingerprint) <= 90 else row.fingerprint[:87] + "..."
        emit(f"{row.total_ms:>10,.1f} {row.calls:>8,} {row.p95_ms:>8.2f}  {shape}")
    where = f"{log_path} and " if log_path is not None else ""
    emit(
        f"query log: {where}table {query_log_table.name} ({table_records:,} records and "
        f"{table_stats:,} statistics rows from this run)"
    )
    return CaptureDemoReport(
        statements=stats.statements,
        fingerprints=len(stats.fingerprints),
        records=by_kind,
        dropped=stats.dropped,
        top=top,
        log_path=log_path,
        table_records=table_records,
        table_stats=table_stats,
    )
