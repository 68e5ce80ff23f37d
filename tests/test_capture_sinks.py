"""The query recorder's sinks and the readers of their output.

The same hand-built records and statistics rows go through every sink (memory,
JSON Lines, Parquet, the database tables on SQLite, PostgreSQL and MariaDB) and
must come back as the identical DataFrame, with exactly the dtypes of
``RECORD_COLUMNS`` / ``STATS_COLUMNS``. Server tests run in a scratch database
of their own, created and dropped around the test.
"""

from __future__ import annotations

import itertools
import json
import threading
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from pandas.testing import assert_frame_equal
from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.pool import NullPool

from sqlperf import ConfigurationError, create_optimized_engine
from sqlperf.capture.log import (
    read_query_log,
    read_query_stats,
    records_frame,
    stats_frame,
    write_parquet,
)
from sqlperf.capture.records import RECORD_COLUMNS, STATS_COLUMNS, QueryRecord, StatsRow
from sqlperf.capture.sinks import NO_CAPTURE, DatabaseSink, JsonlSink, MemorySink, Sink
from sqlperf.migrate import upgrade
from tests.conftest import scratch_database

T0 = datetime(2025, 3, 1, 12, 30, 15, 123456, tzinfo=timezone.utc)
#: Quotes, newlines, tabs, backslashes, non-ASCII, astral and line-separator characters.
NASTY = 'it\'s "quoted"\nnext line\ttab \\ backslash \\n naïve ☃ 🚀 \u2028 end'
BIG = 2**53 + 1  # not representable as a float64


def _records() -> list[QueryRecord]:
    return [
        QueryRecord(
            ts=T0,
            kind="slow",
            duration_ms=123.456789012345,
            fingerprint_id="a1b2c3d4e5f60718",
            fingerprint="SELECT * FROM t WHERE name = ?",
            sql=f"SELECT * FROM t WHERE name = '{NASTY}'",
            params=json.dumps({"name": NASTY}, ensure_ascii=False),
            rowcount=BIG,
            executemany=False,
            count=1,
            engine="primary",
            url="postgresql+psycopg2://app:***@db/app",
            dialect="postgresql",
            route="primary",
            pool_wait_ms=0.125,
            compiled_cache="hit",
            result_cache="bypass:no_key",
            call_site="app/views.py:12 index",
            thread="MainThread",
            request_id="req-1",
            tags=json.dumps({"user": "ü"}, ensure_ascii=False),
            explain="Seq Scan on t\n  Filter: (name = 'x'::text)",
            host="web-1",
            pid=4242,
        ),
        QueryRecord(
            # Another zone: stored and read back as the same instant in UTC.
            ts=datetime(2025, 3, 1, 14, 30, 16, 1, tzinfo=timezone(timedelta(hours=2))),
            kind="error",
            duration_ms=0.5,
            fingerprint_id="0000000000000001",
            fingerprint="INSERT INTO t (id) VALUES (?)",
            sql="INSERT INTO t (id) VALUES (%(id)s)",
            error_class="IntegrityError",
            error_message=f"duplicate key value violates unique constraint\n\t{NASTY}",
            thread="worker-2",
            call_site="app/\udcff.py:7 save",  # a file name decoded with surrogateescape
        ),
        QueryRecord(
            ts=T0 + timedelta(seconds=2, microseconds=999_999),
            kind="n_plus_one",
            duration_ms=42.0,
            fingerprint_id="ffffffffffffffff",
            fingerprint="SELECT * FROM items WHERE order_id = ?",
            sql="SELECT * FROM items WHERE order_id = ?",
            params='["int"]',
            rowcount=0,
            count=25,
            route="replica",
            host="web-2",
            pid=1,
        ),
        QueryRecord(
            ts=T0 + timedelta(minutes=1),
            kind="slow",
            duration_ms=1e-3,
            fingerprint_id="1234567890abcdef",
            fingerprint="INSERT INTO t VALUES (?)",
            sql="INSERT INTO t VALUES (?)",
            executemany=True,
            rowcount=-1,
        ),
    ]


def _stats() -> list[StatsRow]:
    full = StatsRow(
        window_start=T0,
        window_end=T0 + timedelta(minutes=1),
        engine="primary",
        url="mysql+pymysql://root@db/app",
        dialect="mysql",
        route="primary",
        fingerprint_id="a1b2c3d4e5f60718",
        fingerprint="SELECT * FROM t WHERE name = ?",
        sql=f"SELECT '{NASTY}'",
        calls=2**40,
        errors=3,
        rows=BIG,
        n_plus_one=2,
        cache_hits=10,
        cache_misses=4,
        total_ms=0.1 + 0.2,
        mean_ms=1 / 3,
        p50_ms=0.25,
        p95_ms=12.5,
        p99_ms=99.999999,
        max_ms=1234.5678,
        sample=0.25,
        histogram='{"32": 5, "100": 1}',
        host="web-1",
        pid=4242,
    )
    bare = replace(
        full,
        window_start=T0 + timedelta(minutes=1),
        window_end=T0 + timedelta(minutes=2, microseconds=7),
        engine=None,
        url=None,
        dialect=None,
        route=None,
        calls=0,
        errors=0,
        rows=0,
        host=None,
        pid=None,
    )
    return [full, bare]


def _interleaved() -> list[QueryRecord | StatsRow]:
    records, stats = _records(), _stats()
    return [records[0], stats[0], *records[1:3], stats[1], records[3]]


def _expected_records() -> pd.DataFrame:
    return records_frame(_records())


def _expected_stats() -> pd.DataFrame:
    return stats_frame(_stats())


def _assert_same(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert_frame_equal(actual, expected, check_exact=True)


@pytest.fixture
def bare_url(empty_url: str) -> str:
    """An empty database on each dialect (``empty_url`` of conftest)."""
    return empty_url


@pytest.fixture
def log_url(bare_url: str) -> str:
    """A database with sqlperf's tables (``sqlperf db upgrade``)."""
    upgrade(bare_url)
    return bare_url


# -- the schema ----------------------------------------------------------------------------


def test_frames_have_exactly_the_schema_dtypes() -> None:
    records, stats = _expected_records(), _expected_stats()

    assert {name: str(dtype) for name, dtype in records.dtypes.items()} == dict(RECORD_COLUMNS)
    assert list(records.columns) == list(RECORD_COLUMNS)
    assert {name: str(dtype) for name, dtype in stats.dtypes.items()} == dict(STATS_COLUMNS)
    assert list(stats.columns) == list(STATS_COLUMNS)
    assert isinstance(records.index, pd.RangeIndex)
    assert len(records) == 4
    assert len(stats) == 2


def test_frame_values() -> None:
    records, stats = _expected_records(), _expected_stats()

    assert records["ts"].tolist()[:2] == [
        pd.Timestamp(T0),
        pd.Timestamp("2025-03-01 12:30:16.000001", tz="UTC"),
    ]
    assert records["rowcount"].tolist() == [BIG, pd.NA, 0, -1]
    assert records["pid"].tolist() == [4242, pd.NA, 1, pd.NA]
    assert records["executemany"].tolist() == [False, False, False, True]
    assert records.loc[0, "sql"] == f"SELECT * FROM t WHERE name = '{NASTY}'"
    assert records["params"].isna().tolist() == [False, True, False, True]
    assert pd.isna(records["pool_wait_ms"].iloc[1])
    # Arrow strings are UTF-8: a lone surrogate is shown escaped, by every reader.
    assert records.loc[1, "call_site"] == "app/\\udcff.py:7 save"
    assert stats["rows"].tolist() == [BIG, 0]
    assert stats.loc[0, "total_ms"] == 0.1 + 0.2
    assert stats["engine"].isna().tolist() == [False, True]


def test_frames_from_dicts_fill_missing_columns_with_na() -> None:
    dicts = [{"type": "record", **record.as_dict()} for record in _records()]
    _assert_same(records_frame(dicts), _expected_records())

    partial = records_frame([{"ts": "2025-03-01T12:00:00", "kind": "slow", "duration_ms": 1}])
    assert partial.loc[0, "ts"] == pd.Timestamp("2025-03-01 12:00:00", tz="UTC")  # naive = UTC
    assert partial["sql"].isna().all()
    assert partial["count"].isna().all()
    assert {name: str(dtype) for name, dtype in partial.dtypes.items()} == dict(RECORD_COLUMNS)

    empty = stats_frame([])
    assert empty.empty
    assert {name: str(dtype) for name, dtype in empty.dtypes.items()} == dict(STATS_COLUMNS)


def test_frames_reject_other_items() -> None:
    with pytest.raises(ConfigurationError, match="QueryRecord"):
        records_frame([_stats()[0]])  # type: ignore[list-item]
    with pytest.raises(ConfigurationError, match="ts"):
        records_frame([{"ts": "not a time"}])


# -- MemorySink ----------------------------------------------------------------------------


def test_memory_sink_round_trip() -> None:
    sink = MemorySink()
    sink.write(_interleaved())
    sink.flush()
    sink.close()

    assert isinstance(sink, Sink)
    assert sink.records() == _records()
    assert sink.stats_rows() == _stats()
    _assert_same(records_frame(sink.records()), _expected_records())
    _assert_same(stats_frame(sink.stats_rows()), _expected_stats())


def _numbered(n: int) -> list[QueryRecord]:
    base = _records()[2]
    return [
        replace(base, ts=T0 + timedelta(seconds=i), duration_ms=float(i), count=i + 1)
        for i in range(n)
    ]


def test_memory_sink_rings_evict_the_oldest() -> None:
    sink = MemorySink(capacity=3, stats_capacity=1)
    records = _numbered(5)
    sink.write(records[:2])
    assert sink.evicted == 0
    sink.write(records[2:])
    sink.write(_stats())

    assert sink.records() == records[2:]
    assert sink.evicted == 2
    assert sink.stats_rows() == _stats()[1:]
    assert sink.stats_evicted == 1

    sink.clear()
    assert sink.records() == []
    assert sink.stats_rows() == []
    assert sink.evicted == 0


def test_memory_sink_reads_while_the_writer_writes() -> None:
    sink = MemorySink(capacity=50)
    records = _numbered(20)
    errors: list[BaseException] = []

    def writer() -> None:
        for _ in range(2000):
            sink.write(records)

    def reader() -> None:
        try:
            for _ in range(2000):
                held = [int(r.duration_ms) for r in sink.records()]
                assert len(held) <= 50
                # A batch is appended under the lock: a reader never sees half of one.
                assert not held or held[-1] == 19
                assert all((b - a) % 20 == 1 for a, b in itertools.pairwise(held))
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(sink.records()) == 50
    assert sink.evicted == 2000 * 20 - 50


@pytest.mark.parametrize("kwargs", [{"capacity": 0}, {"stats_capacity": -1}, {"capacity": True}])
def test_memory_sink_rejects_bad_capacities(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match="capacity must be an int >= 1"):
        MemorySink(**kwargs)


def test_sinks_reject_other_items(tmp_path: Path) -> None:
    jsonl = JsonlSink(tmp_path / "log.jsonl")
    for sink in (MemorySink(), jsonl):
        with pytest.raises(ConfigurationError, match="QueryRecord and StatsRow"):
            sink.write(["SELECT 1"])  # type: ignore[list-item]
    jsonl.close()


# -- JsonlSink -----------------------------------------------------------------------------


def test_jsonl_sink_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "deeper" / "queries.jsonl"  # parent directories are created
    sink = JsonlSink(path)
    assert isinstance(sink, Sink)
    items = _interleaved()
    sink.write(items[:3])
    sink.write(items[3:])
    sink.flush()
    sink.close()

    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""  # every line ends with a newline
    objects = [json.loads(line) for line in lines[:-1]]
    kinds = ["record", "stats", "record", "record", "stats", "record"]
    assert [obj["type"] for obj in objects] == kinds
    assert objects[0] == {"type": "record", **items[0].as_dict()}
    assert "🚀" in path.read_text(encoding="utf-8")  # UTF-8, not \\u escapes

    _assert_same(read_query_log(path), _expected_records())
    _assert_same(read_query_stats(str(path)), _expected_stats())


def _files(path: Path) -> list[Path]:
    """The log and its backups, oldest first."""
    backups = sorted(path.parent.glob(path.name + ".*"), key=lambda p: -int(p.suffix[1:]))
    return [*backups, path]


def _durations(path: Path) -> list[float]:
    out = []
    for file in _files(path):
        data = file.read_bytes()
        assert data.endswith(b"\n")
        out += [json.loads(line)["duration_ms"] for line in data.splitlines()]
    return out


def test_jsonl_rotation_keeps_every_line_in_exactly_one_file(tmp_path: Path) -> None:
    path = tmp_path / "queries.jsonl"
    records = _numbered(60)
    sink = JsonlSink(path, max_bytes=2000, backups=100)
    for start in range(0, 60, 7):
        sink.write(records[start : start + 7])
    sink.close()

    files = _files(path)
    assert len(files) > 5
    for file in files:
        assert 0 < file.stat().st_size <= 2000
    # Oldest first, each line once: the files concatenated are the lines written.
    assert _durations(path) == [float(i) for i in range(60)]
    _assert_same(read_query_log(path), records_frame(records))


def test_jsonl_rotation_deletes_the_oldest_beyond_backups(tmp_path: Path) -> None:
    path = tmp_path / "queries.jsonl"
    records = _numbered(100)
    sink = JsonlSink(path, max_bytes=1500, backups=2)
    for record in records:
        sink.write([record])
    sink.close()

    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "queries.jsonl",
        "queries.jsonl.1",
        "queries.jsonl.2",
    ]
    kept = _durations(path)
    assert 0 < len(kept) < 100
    assert kept == [float(i) for i in range(100 - len(kept), 100)]  # the newest, in order
    _assert_same(read_query_log(path), records_frame(records[-len(kept) :]))


def test_jsonl_without_backups_starts_afresh_when_full(tmp_path: Path) -> None:
    path = tmp_path / "queries.jsonl"
    sink = JsonlSink(path, max_bytes=1500, backups=0)
    records = _numbered(30)
    sink.write(records)
    sink.close()

    assert [p.name for p in tmp_path.iterdir()] == ["queries.jsonl"]
    assert path.stat().st_size <= 1500
    kept = _durations(path)
    assert kept == [float(i) for i in range(30 - len(kept), 30)]


def test_jsonl_line_longer_than_max_bytes_gets_a_file_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "queries.jsonl"
    small, big = _numbered(2)
    big = replace(big, sql="SELECT " + "x" * 5000)
    sink = JsonlSink(path, max_bytes=1000, backups=3)
    sink.write([small, big, small])
    sink.close()

    assert [len(file.read_bytes().splitlines()) for file in _files(path)] == [1, 1, 1]
    _assert_same(read_query_log(path), records_frame([small, big, small]))


def test_jsonl_reopen_appends_and_cuts_a_line_left_by_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "queries.jsonl"
    records = _numbered(3)
    sink = JsonlSink(path)
    sink.write(records[:2])
    sink.close()
    with path.open("ab") as file:  # a crash in the middle of a line
        file.write(b'{"type": "record", "ts": "2025-03-01T12:')

    # A reader skips the unfinished last line...
    _assert_same(read_query_log(path), records_frame(records[:2]))
    # ...and the next sink cuts it before appending.
    sink = JsonlSink(path)
    sink.write(records[2:])
    sink.close()
    _assert_same(read_query_log(path), records_frame(records))


def test_jsonl_reopen_keeps_a_complete_last_line_without_newline(tmp_path: Path) -> None:
    path = tmp_path / "queries.jsonl"
    first, second = _numbered(2)
    path.write_text(json.dumps({"type": "record", **first.as_dict()}), encoding="utf-8")
    _assert_same(read_query_log(path), records_frame([first]))

    sink = JsonlSink(path)
    sink.write([second])
    sink.close()
    assert len(path.read_bytes().splitlines()) == 2
    _assert_same(read_query_log(path), records_frame([first, second]))


def test_jsonl_corrupt_line_in_the_middle_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "queries.jsonl"
    sink = JsonlSink(path)
    sink.write(_numbered(1))
    sink.close()
    with path.open("ab") as file:
        file.write(b"not json\n")
        file.write(path.read_bytes().splitlines()[0] + b"\n")

    with pytest.raises(ConfigurationError, match=r"queries.jsonl:2 is not a line"):
        read_query_log(path)

    path.write_bytes(b'["a list"]\n')
    with pytest.raises(ConfigurationError, match=r'no "type" key'):
        read_query_log(path)


def test_jsonl_keeps_a_lone_surrogate_that_frames_show_escaped(tmp_path: Path) -> None:
    path = tmp_path / "queries.jsonl"
    sink = JsonlSink(path)
    sink.write(_records()[:2])
    sink.close()

    line = path.read_bytes().splitlines()[1]
    line.decode("utf-8")  # valid UTF-8 all the same
    assert json.loads(line)["call_site"] == "app/\udcff.py:7 save"
    assert json.loads(path.read_bytes().splitlines()[0])["sql"].endswith(f"'{NASTY}'")
    assert read_query_log(path).loc[1, "call_site"] == "app/\\udcff.py:7 save"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_bytes": 0}, "max_bytes must be an int >= 1"),
        ({"max_bytes": True}, "max_bytes must be an int >= 1"),
        ({"max_bytes": 1.5}, "max_bytes must be an int >= 1"),
        ({"backups": -1}, "backups must be an int >= 0"),
    ],
)
def test_jsonl_sink_rejects_bad_arguments(
    tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        JsonlSink(tmp_path / "queries.jsonl", **kwargs)


def test_jsonl_sink_rejects_a_directory_and_writes_after_close(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="is a directory: pass a file path"):
        JsonlSink(tmp_path)

    sink = JsonlSink(tmp_path / "queries.jsonl")
    sink.close()
    sink.close()  # a second close does nothing
    with pytest.raises(ConfigurationError, match="is closed"):
        sink.write(_records())


# -- Parquet and DataFrames ----------------------------------------------------------------


def test_parquet_round_trip(tmp_path: Path) -> None:
    records_path = write_parquet(_expected_records(), tmp_path / "out" / "log.parquet")
    stats_path = write_parquet(_expected_stats(), str(tmp_path / "stats.parquet"))

    assert records_path == tmp_path / "out" / "log.parquet"
    _assert_same(read_query_log(records_path), _expected_records())
    _assert_same(read_query_stats(stats_path), _expected_stats())
    with pytest.raises(ConfigurationError, match="holds record rows: read it with read_query_log"):
        read_query_stats(records_path)


def test_write_parquet_checks_columns_and_suffix(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"missing: \['sql'\], unexpected: \['extra'\]"):
        write_parquet(
            _expected_records().drop(columns=["sql"]).assign(extra=1), tmp_path / "x.parquet"
        )
    with pytest.raises(ConfigurationError, match=r"ending in \.parquet"):
        write_parquet(_expected_records(), tmp_path / "x.pq")


def test_dataframe_source_is_coerced() -> None:
    loose = _expected_records().astype(object)  # e.g. a frame assembled by hand
    loose.index = pd.Index(range(10, 14))
    _assert_same(read_query_log(loose), _expected_records())
    shuffled = _expected_stats()[list(STATS_COLUMNS)[::-1]]  # columns in another order
    _assert_same(read_query_stats(shuffled), _expected_stats())


# -- DatabaseSink --------------------------------------------------------------------------


def test_database_sink_round_trip(log_url: str) -> None:
    sink = DatabaseSink(log_url, batch_size=2)
    assert isinstance(sink, Sink)
    items = _interleaved()
    sink.write(items[:4])
    sink.write(items[4:])
    sink.write([])
    sink.flush()
    sink.close()

    _assert_same(read_query_log(log_url), _expected_records())
    _assert_same(read_query_stats(make_url(log_url)), _expected_stats())
    engine = create_optimized_engine(log_url)
    try:
        _assert_same(read_query_log(engine), _expected_records())
        _assert_same(read_query_stats(engine), _expected_stats())
    finally:
        engine.dispose()


def test_database_sink_with_an_engine_marks_its_statements_and_keeps_the_engine(
    log_url: str,
) -> None:
    engine = create_optimized_engine(log_url)
    seen: list[tuple[str, dict[str, Any]]] = []
    disposed: list[Engine] = []

    # What a recorder attached to the same engine would look at.
    @event.listens_for(engine, "before_cursor_execute")
    def collect(*args: Any) -> None:
        statement, context = args[2], args[4]
        seen.append((statement, dict(context.execution_options)))

    event.listen(engine, "engine_disposed", disposed.append)
    try:
        sink = DatabaseSink(engine)
        sink.write(_interleaved())
        sink.close()
        read_query_log(engine)

        assert disposed == []  # a given engine is the caller's
        inserts = [s for s, _ in seen if s.lstrip().upper().startswith("INSERT")]
        assert len(inserts) >= 2
        assert all(options.get("sqlperf_capture", True) is False for _, options in seen), seen
        assert dict(NO_CAPTURE) == {"sqlperf_capture": False}
    finally:
        engine.dispose()


def test_database_sink_stores_utc(log_url: str) -> None:
    sink = DatabaseSink(log_url)
    sink.write(_records()[1:2])  # written at 14:30:16+02:00
    sink.close()
    engine = create_engine(log_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            stored = conn.exec_driver_sql("SELECT ts FROM sqlperf_query_log").scalar_one()
    finally:
        engine.dispose()
    if isinstance(stored, str):  # SQLite keeps text
        stored = datetime.fromisoformat(stored)
    if stored.tzinfo is None:  # MariaDB, SQLite: naive UTC
        assert stored == datetime(2025, 3, 1, 12, 30, 16, 1)
    else:
        assert stored == datetime(2025, 3, 1, 12, 30, 16, 1, tzinfo=timezone.utc)


def test_database_sink_cuts_strings_longer_than_their_column(log_url: str) -> None:
    record = replace(_records()[0], thread="t" * 300, result_cache="bypass:" + "r" * 100)
    sink = DatabaseSink(log_url)
    sink.write([record])
    sink.close()

    frame = read_query_log(log_url)
    assert frame.loc[0, "thread"] == "t" * 255
    assert frame.loc[0, "result_cache"] == ("bypass:" + "r" * 100)[:64]
    assert frame.loc[0, "sql"] == record.sql  # long texts are kept whole


def test_database_sink_without_tables_says_to_upgrade(bare_url: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        DatabaseSink(bare_url)
    message = str(raised.value)
    assert "sqlperf_query_log and sqlperf_query_stats do not exist" in message
    assert "sqlperf db upgrade --url " in message

    with pytest.raises(ConfigurationError, match="sqlperf db upgrade --url"):
        read_query_stats(bare_url)


def test_missing_tables_message_hides_the_password(postgres_url: str) -> None:
    with scratch_database(postgres_url) as url:
        with_password = make_url(url)
        if with_password.password is None:
            # The local test server trusts loopback connections: any password gets in.
            with_password = with_password.set(password="s3cretPW")
        with pytest.raises(ConfigurationError) as raised:
            DatabaseSink(with_password)
    message = str(raised.value)
    assert str(with_password.password) not in message
    assert f"sqlperf db upgrade --url {with_password.render_as_string()}" in message
    assert ":***@" in message


def test_database_sink_rejects_bad_arguments() -> None:
    with pytest.raises(ConfigurationError, match="batch_size must be an int >= 1"):
        DatabaseSink("sqlite://", batch_size=0)
    with pytest.raises(ConfigurationError, match="target must be a database URL"):
        DatabaseSink(42)  # type: ignore[arg-type]


# -- since / until, bad sources ------------------------------------------------------------


def _timeline() -> tuple[list[QueryRecord], list[StatsRow]]:
    records = [replace(_records()[0], ts=T0 + timedelta(minutes=i)) for i in range(5)]
    stats = [
        replace(_stats()[0], window_start=T0 + timedelta(minutes=i), window_end=T0)
        for i in range(5)
    ]
    return records, stats


def _check_window(
    log: Any, stats_source: Any, records: list[QueryRecord], stats: list[StatsRow]
) -> None:
    since, until = T0 + timedelta(minutes=1), T0 + timedelta(minutes=3)
    _assert_same(read_query_log(log, since=since, until=until), records_frame(records[1:3]))
    # Naive bounds are UTC; aware ones in any zone are the same instant.
    _assert_same(read_query_log(log, since=since.replace(tzinfo=None)), records_frame(records[1:]))
    _assert_same(read_query_stats(stats_source, until=until), stats_frame(stats[:3]))
    other_zone = until.astimezone(timezone(timedelta(hours=-5)))
    _assert_same(read_query_stats(stats_source, until=other_zone), stats_frame(stats[:3]))
    assert read_query_log(log, since=T0 + timedelta(hours=1)).empty


def test_since_until_on_files_and_frames(tmp_path: Path) -> None:
    records, stats = _timeline()
    path = tmp_path / "queries.jsonl"
    sink = JsonlSink(path)
    sink.write([*records, *stats])
    sink.close()

    _check_window(path, path, records, stats)
    _check_window(records_frame(records), stats_frame(stats), records, stats)
    parquet = write_parquet(records_frame(records), tmp_path / "log.parquet")
    _check_window(parquet, stats_frame(stats), records, stats)


def test_since_until_on_the_database(log_url: str) -> None:
    records, stats = _timeline()
    sink = DatabaseSink(log_url)
    sink.write([*records, *stats])
    sink.close()

    _check_window(log_url, log_url, records, stats)


@pytest.mark.parametrize(
    "source",
    [42, {"ts": []}, b"queries.jsonl", "queries.csv", Path("queries.txt")],
)
def test_bad_sources_name_what_is_accepted(source: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"pass a \.jsonl file .* or a pandas DataFrame"):
        read_query_log(source)


def test_missing_files_and_bad_bounds_are_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="no query log at"):
        read_query_log(tmp_path / "missing.jsonl")
    with pytest.raises(ConfigurationError, match="no Parquet file at"):
        read_query_stats(tmp_path / "missing.parquet")
    with pytest.raises(ConfigurationError, match="since must be a datetime"):
        read_query_log(_expected_records(), since="yesterday")  # type: ignore[arg-type]


# -- docs ----------------------------------------------------------------------------------


def _doc_table(markdown: str, heading: str) -> list[tuple[str, str]]:
    """The (column, dtype) pairs of the Markdown table under ``heading``."""
    section = markdown.split(heading, 1)[1]
    rows = []
    for line in section.splitlines()[1:]:
        if line.startswith("#"):
            break
        cells = [cell.strip().strip("`") for cell in line.strip().strip("|").split("|")]
        if line.startswith("| `"):
            rows.append((cells[0], cells[1]))
    return rows


def test_docs_show_the_schema() -> None:
    markdown = (Path(__file__).resolve().parent.parent / "docs" / "capture.md").read_text()
    assert _doc_table(markdown, "### Query records") == list(RECORD_COLUMNS.items())
    assert _doc_table(markdown, "### Statistics rows") == list(STATS_COLUMNS.items())
