"""Where the query recorder's rows go: memory, a JSON Lines file, or database tables.

A sink receives batches of :class:`~sqlperf.capture.records.QueryRecord` and
:class:`~sqlperf.capture.records.StatsRow` from the recorder's one writer
thread, never from the application's threads (see :class:`Sink`). Three ship
with sqlperf:

* :class:`MemorySink`: two bounded ring buffers, read from any thread;
* :class:`JsonlSink`: one JSON object per line, rotated by size like
  :class:`logging.handlers.RotatingFileHandler` (``log.jsonl``,
  ``log.jsonl.1``, ... with the oldest deleted);
* :class:`DatabaseSink`: the tables ``sqlperf_query_log`` and
  ``sqlperf_query_stats`` created by ``sqlperf db upgrade``.

:func:`sqlperf.capture.log.read_query_log` and
:func:`~sqlperf.capture.log.read_query_stats` read the output of any of them
back as DataFrames of one schema.

Every statement a sink (or anything else of sqlperf's) runs on an application's
engine carries the execution options :data:`NO_CAPTURE`, so that a recorder
attached to that engine does not record the log's own writes.
"""

from __future__ import annotations

import collections
import json
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from logging.handlers import RotatingFileHandler
from pathlib import Path
from types import MappingProxyType
from typing import Any, BinaryIO, Final, Protocol, runtime_checkable

from sqlalchemy import URL, Connection, Engine, String, Table, insert, inspect

from sqlperf.capture.records import RECORD_COLUMNS, STATS_COLUMNS, QueryRecord, StatsRow
from sqlperf.engine import create_optimized_engine, safe_url
from sqlperf.exceptions import ConfigurationError
from sqlperf.schema import query_log_table, query_stats_table

__all__ = ["NO_CAPTURE", "DatabaseSink", "JsonlSink", "MemorySink", "Sink"]

#: Execution options of every statement a sink runs: a recorder attached to the
#: same engine checks ``context.execution_options.get("sqlperf_capture", True)``
#: and does not record statements that carry ``False``. Read-only; use it as
#: ``conn.execution_options(**NO_CAPTURE)``.
NO_CAPTURE: Final[Mapping[str, Any]] = MappingProxyType({"sqlperf_capture": False})

#: Dialects whose timestamp columns keep no time zone: the sink stores naive UTC there.
_NAIVE_TIMESTAMP_DIALECTS = frozenset({"mysql", "mariadb", "sqlite"})


@runtime_checkable
class Sink(Protocol):
    """What the recorder writes to; implementations need not inherit from it.

    ``write``, ``flush`` and ``close`` are called by the recorder's writer
    thread, or by a thread calling ``recorder.flush()``, but never
    concurrently (the writer holds a lock), so a sink needs no lock for them
    (a sink whose contents are also read from other threads, like
    :class:`MemorySink`, guards those reads). ``close()`` is called once, after
    the last ``write``. An exception a method raises costs that sink the batch;
    the recorder counts and logs it and carries on with the other sinks.

    Example::

        class PrintSink:
            def write(self, items):
                for item in items:
                    print(item.as_dict())

            def flush(self):
                pass

            def close(self):
                pass
    """

    def write(self, items: Sequence[QueryRecord | StatsRow]) -> None:
        """Store a batch of records and statistics rows, in order."""

    def flush(self) -> None:
        """Make what was written so far visible to readers (and durable, where it applies)."""

    def close(self) -> None:
        """Flush and release the sink's resources."""


def _positive_int(name: str, value: object, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


class MemorySink:
    """Keep the latest records and statistics rows in two bounded ring buffers.

    When a buffer is full, each new row pushes the oldest out; :attr:`evicted`
    counts the records lost that way (:attr:`stats_evicted` the statistics rows).
    The recorder's writer thread writes while application threads read, so every
    method takes the sink's lock.

    Args:
        capacity: how many records to keep.
        stats_capacity: how many statistics rows to keep.

    Raises:
        ConfigurationError: a capacity that is not a positive int.

    Example::

        >>> from datetime import datetime, timezone
        >>> from sqlperf.capture.records import QueryRecord
        >>> sink = MemorySink(capacity=2)
        >>> slow = QueryRecord(
        ...     ts=datetime.now(timezone.utc), kind="slow", duration_ms=120.0,
        ...     fingerprint_id="f", fingerprint="select ?", sql="SELECT 1",
        ... )
        >>> sink.write([slow, slow, slow])
        >>> len(sink.records()), sink.evicted
        (2, 1)
    """

    def __init__(self, capacity: int = 10_000, stats_capacity: int = 10_000) -> None:
        self.capacity = _positive_int("capacity", capacity)
        self.stats_capacity = _positive_int("stats_capacity", stats_capacity)
        self._records: collections.deque[QueryRecord] = collections.deque(maxlen=capacity)
        self._stats: collections.deque[StatsRow] = collections.deque(maxlen=stats_capacity)
        self._evicted = 0
        self._stats_evicted = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        with self._lock:
            return (
                f"MemorySink(records={len(self._records)}/{self.capacity}, "
                f"stats={len(self._stats)}/{self.stats_capacity}, evicted={self._evicted})"
            )

    def write(self, items: Sequence[QueryRecord | StatsRow]) -> None:
        """Append a batch; the oldest rows make room when a buffer is full.

        Raises:
            ConfigurationError: an item that is neither a ``QueryRecord`` nor a ``StatsRow``.
        """
        records, stats = _split(items)
        with self._lock:
            self._evicted += max(0, len(self._records) + len(records) - self.capacity)
            self._stats_evicted += max(0, len(self._stats) + len(stats) - self.stats_capacity)
            self._records.extend(records)
            self._stats.extend(stats)

    def flush(self) -> None:
        """Nothing to do: a written row is visible at once."""

    def close(self) -> None:
        """Nothing to release: the rows stay readable after close."""

    def records(self) -> list[QueryRecord]:
        """Return the records held, oldest first (a copy)."""
        with self._lock:
            return list(self._records)

    def stats_rows(self) -> list[StatsRow]:
        """Return the statistics rows held, oldest first (a copy)."""
        with self._lock:
            return list(self._stats)

    @property
    def evicted(self) -> int:
        """Records pushed out of the ring by newer ones since creation or :meth:`clear`."""
        with self._lock:
            return self._evicted

    @property
    def stats_evicted(self) -> int:
        """Statistics rows pushed out of the ring since creation or :meth:`clear`."""
        with self._lock:
            return self._stats_evicted

    def clear(self) -> None:
        """Drop every row held and reset the eviction counters."""
        with self._lock:
            self._records.clear()
            self._stats.clear()
            self._evicted = 0
            self._stats_evicted = 0


def _split(items: Sequence[QueryRecord | StatsRow]) -> tuple[list[QueryRecord], list[StatsRow]]:
    records: list[QueryRecord] = []
    stats: list[StatsRow] = []
    for item in items:
        if isinstance(item, QueryRecord):
            records.append(item)
        elif isinstance(item, StatsRow):
            stats.append(item)
        else:
            raise ConfigurationError(
                f"a sink takes QueryRecord and StatsRow items, not {type(item).__name__}"
            )
    return records, stats


def _json_line(item: QueryRecord | StatsRow) -> bytes:
    kind = "record" if isinstance(item, QueryRecord) else "stats"
    obj = {"type": kind, **item.as_dict()}
    try:
        return (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (say, from a filename decoded with surrogateescape)
        # cannot be UTF-8; as a \udXXX escape it still reads back the same.
        return (json.dumps(obj, ensure_ascii=True) + "\n").encode("ascii")


def _end_with_newline(path: str) -> None:
    """Finish or cut a last line left without its newline, so that appending starts afresh.

    A complete JSON object only lacks its newline (another tool wrote it): the
    newline is added. Anything else is a line a crash cut short: it is removed.
    """
    try:
        file = open(path, "r+b")  # noqa: SIM115 - closed by the with block below
    except FileNotFoundError:
        return
    with file:
        end = file.seek(0, os.SEEK_END)
        if end == 0:
            return
        file.seek(end - 1)
        if file.read(1) == b"\n":
            return
        # Find where the last line starts, reading backwards in chunks.
        start = end
        while start > 0:
            chunk_start = max(0, start - 65536)
            file.seek(chunk_start)
            newline = file.read(start - chunk_start).rfind(b"\n")
            if newline >= 0:
                start = chunk_start + newline + 1
                break
            start = chunk_start
        file.seek(start)
        try:
            complete = isinstance(json.loads(file.read()), dict)
        except ValueError:
            complete = False
        if complete:
            file.seek(end)
            file.write(b"\n")
        else:
            file.truncate(start)


class JsonlSink:
    """Append each row as one JSON object per line to a UTF-8 file, rotated by size.

    A record is written as ``{"type": "record", **record.as_dict()}``, a
    statistics row as ``{"type": "stats", **row.as_dict()}``. Before a line
    would take the file past ``max_bytes``, the file is rotated the way
    :class:`logging.handlers.RotatingFileHandler` does it (its rollover is what
    runs): ``path`` becomes ``path.1``, ``path.1`` becomes ``path.2``, and so on
    up to ``path.<backups>``; the oldest is deleted. With ``backups=0`` the full
    file is emptied instead. A line is never split across two files (a single
    line longer than ``max_bytes`` gets a file of its own).

    Each :meth:`write` hands its lines to the operating system before it
    returns, so a reader sees whole batches; :meth:`flush` also ``fsync``-s the
    file. A line that a crash left unfinished is cut when the file is opened
    again. One sink per file: two processes must not append to the same path.

    Args:
        path: the file, e.g. ``"logs/queries.jsonl"``; parent directories are created.
        max_bytes: the size at which the file is rotated (default 64 MiB).
        backups: how many rotated files to keep (default 5).

    Raises:
        ConfigurationError: ``max_bytes`` < 1, ``backups`` < 0, or ``path`` is a directory.
        OSError: the file cannot be created or opened.

    Example::

        sink = JsonlSink("logs/queries.jsonl", max_bytes=16 * 2**20, backups=3)
        # QueryRecorder(..., sinks=[sink]); later:
        # read_query_log("logs/queries.jsonl") reads the backups too, oldest first
    """

    def __init__(
        self, path: str | os.PathLike[str], *, max_bytes: int = 64 * 2**20, backups: int = 5
    ) -> None:
        if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
            raise ConfigurationError(f"path must be a file path (str or Path), got {path!r}")
        self.path = Path(path)
        self.max_bytes = _positive_int("max_bytes", max_bytes)
        self.backups = _positive_int("backups", backups, minimum=0)
        if self.path.is_dir():
            raise ConfigurationError(
                f"path {str(self.path)!r} is a directory: pass a file path such as "
                f"{str(self.path / 'queries.jsonl')!r}"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Only its rollover (naming, renames, deletion of the oldest) is used;
        # with delay=True it never opens the file itself.
        self._rotator = RotatingFileHandler(
            self.path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8", delay=True
        )
        _end_with_newline(self._rotator.baseFilename)
        self._file: BinaryIO | None = self._open()
        self._size = self._file.seek(0, os.SEEK_END)

    def __repr__(self) -> str:
        return f"JsonlSink({str(self.path)!r}, max_bytes={self.max_bytes}, backups={self.backups})"

    def _open(self, *, truncate: bool = False) -> BinaryIO:
        if truncate:
            return open(self._rotator.baseFilename, "wb")
        return open(self._rotator.baseFilename, "ab")

    def _rollover(self, file: BinaryIO) -> BinaryIO:
        file.close()
        self._file = None
        try:
            if self.backups:
                self._rotator.doRollover()
            else:
                self._open(truncate=True).close()
        finally:
            # Should the rollover fail (say, a permission error), go on appending.
            self._file = file = self._open()
            self._size = file.seek(0, os.SEEK_END)
        return file

    def write(self, items: Sequence[QueryRecord | StatsRow]) -> None:
        """Append one line per item, rotating between lines when the file is full.

        Raises:
            ConfigurationError: the sink was closed, or an item is neither a
                ``QueryRecord`` nor a ``StatsRow``.
            OSError: the file cannot be written or rotated.
        """
        file = self._require_open()
        lines = [_json_line(item) for item in _checked(items)]
        for line in lines:
            if self._size and self._size + len(line) > self.max_bytes:
                file.flush()
                file = self._rollover(file)
            file.write(line)
            self._size += len(line)
        file.flush()

    def flush(self) -> None:
        """Hand buffered lines to the operating system and ``fsync`` the file."""
        file = self._require_open()
        file.flush()
        os.fsync(file.fileno())

    def close(self) -> None:
        """Flush and close the file. Further writes raise ``ConfigurationError``."""
        if self._file is not None:
            try:
                self._file.flush()
            finally:
                self._file.close()
                self._file = None
                self._rotator.close()

    def _require_open(self) -> BinaryIO:
        if self._file is None:
            raise ConfigurationError(
                f"the JsonlSink for {str(self.path)!r} is closed: create a new one to write again"
            )
        return self._file


def _checked(items: Sequence[QueryRecord | StatsRow]) -> Iterator[QueryRecord | StatsRow]:
    for item in items:
        if not isinstance(item, (QueryRecord, StatsRow)):
            raise ConfigurationError(
                f"a sink takes QueryRecord and StatsRow items, not {type(item).__name__}"
            )
        yield item


def _require_tables(connection: Connection, url: URL) -> None:
    """Raise ``ConfigurationError`` unless sqlperf's query-log tables exist."""
    inspector = inspect(connection)
    missing = [
        t.name for t in (query_log_table, query_stats_table) if not inspector.has_table(t.name)
    ]
    if missing:
        shown = safe_url(url)
        raise ConfigurationError(
            f"{' and '.join(missing)} {'does' if len(missing) == 1 else 'do'} not exist in "
            f"{shown}: create sqlperf's tables with `sqlperf db upgrade --url {shown}`"
        )


def _utf8_safe(value: str) -> str:
    """``value``, with lone surrogates (which UTF-8 cannot carry) as ``\\udXXX`` text."""
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def _utc(value: datetime, *, naive: bool) -> datetime:
    aware = value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value
    utc = aware.astimezone(timezone.utc)
    return utc.replace(tzinfo=None) if naive else utc


def _string_limits(table: Table) -> dict[str, int]:
    return {
        column.name: column.type.length
        for column in table.columns
        if isinstance(column.type, String) and column.type.length is not None
    }


class DatabaseSink:
    """Insert records into ``sqlperf_query_log`` and statistics into ``sqlperf_query_stats``.

    Each :meth:`write` runs in one transaction: Core ``insert()`` executemany in
    batches of ``batch_size`` rows, with the execution options
    :data:`NO_CAPTURE`. Timestamps are stored in UTC; on MySQL/MariaDB and
    SQLite, whose columns keep no zone, as naive UTC. A string longer than its
    ``VARCHAR`` column (``thread``, ``request_id``, ...) is cut to fit rather
    than failing the batch, and a lone surrogate (a file name decoded with
    ``surrogateescape``, say), which no database driver can encode, is stored
    as ``\\udXXX`` text, as the DataFrame readers show it.

    Args:
        target: the database: a URL (the sink makes a small engine of its own
            and disposes it on :meth:`close`) or an ``Engine`` (used as it is,
            never disposed by the sink).
        batch_size: rows per ``executemany``.

    Raises:
        ConfigurationError: a bad URL or ``batch_size``, or the tables do not
            exist (the message says to run ``sqlperf db upgrade --url URL``).
        MissingDependency: the database driver is not installed.
        sqlalchemy.exc.DBAPIError: the database cannot be reached.

    Example::

        # once: sqlperf db upgrade --url postgresql+psycopg2://app@db/app
        sink = DatabaseSink("postgresql+psycopg2://app@db/app")
        # QueryRecorder(..., sinks=[sink]); later:
        # read_query_log("postgresql+psycopg2://app@db/app", since=yesterday)
    """

    def __init__(self, target: str | URL | Engine, *, batch_size: int = 500) -> None:
        self.batch_size = _positive_int("batch_size", batch_size)
        if isinstance(target, Engine):
            engine, self._owned = target, False
        elif isinstance(target, (str, URL)):
            # One writer thread: a pool of one connection is all it needs.
            engine = create_optimized_engine(
                target,
                workload="worker",
                application_name="sqlperf query log",
                pool_size=1,
                max_overflow=0,
            )
            self._owned = True
        else:
            raise ConfigurationError(
                "target must be a database URL (str or sqlalchemy.URL) or a sqlalchemy.Engine, "
                f"not {type(target).__name__}"
            )
        self._base = engine
        self._engine = engine.execution_options(**NO_CAPTURE)
        self._naive = engine.dialect.name in _NAIVE_TIMESTAMP_DIALECTS
        self._limits = {
            query_log_table.name: _string_limits(query_log_table),
            query_stats_table.name: _string_limits(query_stats_table),
        }
        self._closed = False
        try:
            with self._engine.connect() as conn:
                _require_tables(conn, engine.url)
        except BaseException:
            if self._owned:
                engine.dispose()
            raise

    def __repr__(self) -> str:
        return f"DatabaseSink({safe_url(self._base.url)!r}, batch_size={self.batch_size})"

    def _rows(self, items: Sequence[QueryRecord | StatsRow], table: Table) -> list[dict[str, Any]]:
        names = RECORD_COLUMNS if table is query_log_table else STATS_COLUMNS
        limits = self._limits[table.name]
        rows = []
        for item in items:
            row: dict[str, Any] = {}
            for name in names:
                value = getattr(item, name)
                if isinstance(value, datetime):
                    value = _utc(value, naive=self._naive)
                elif isinstance(value, str):
                    value = _utf8_safe(value)
                    if name in limits and len(value) > limits[name]:
                        value = value[: limits[name]]
                row[name] = value
            rows.append(row)
        return rows

    def write(self, items: Sequence[QueryRecord | StatsRow]) -> None:
        """Insert a batch in one transaction (all of it, or nothing on error).

        Raises:
            ConfigurationError: the sink was closed, or an item is neither a
                ``QueryRecord`` nor a ``StatsRow``.
            sqlalchemy.exc.DBAPIError: the database refused the rows.
        """
        if self._closed:
            raise ConfigurationError(
                f"the DatabaseSink for {safe_url(self._base.url)} is closed: "
                "create a new one to write again"
            )
        records, stats = _split(items)
        if not records and not stats:
            return
        with self._engine.begin() as conn:
            for table, batch in ((query_log_table, records), (query_stats_table, stats)):
                for start in range(0, len(batch), self.batch_size):
                    chunk = batch[start : start + self.batch_size]
                    conn.execute(insert(table), self._rows(chunk, table))

    def flush(self) -> None:
        """Nothing to do: each :meth:`write` has committed."""

    def close(self) -> None:
        """Dispose the engine if the sink made it; a given engine is left as it is."""
        if not self._closed:
            self._closed = True
            if self._owned:
                self._base.dispose()
