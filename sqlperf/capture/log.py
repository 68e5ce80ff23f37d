"""Read the query log back as pandas DataFrames, whatever the sink wrote it.

:func:`read_query_log` and :func:`read_query_stats` take a JSON Lines file of
:class:`~sqlperf.capture.sinks.JsonlSink` (with its rotated backups), a Parquet
file of :func:`write_parquet`, the database of
:class:`~sqlperf.capture.sinks.DatabaseSink` (a URL or an ``Engine``), or a
DataFrame; :func:`records_frame` and :func:`stats_frame` take rows in memory
(:class:`~sqlperf.capture.sinks.MemorySink`, the recorder). Every one of them
returns exactly the columns of :data:`~sqlperf.capture.records.RECORD_COLUMNS`
or :data:`~sqlperf.capture.records.STATS_COLUMNS`, in that order and with those
dtypes, so the same rows give equal frames from any sink: timestamps are
``datetime64[us, UTC]`` (naive ones are taken as UTC), text is ``string``,
integers that may be missing are ``Int64``.

pandas (and pyarrow, for Parquet) are optional: ``pip install 'sqlperf[pandas]'``.

Example::

    from datetime import datetime, timedelta, timezone

    from sqlperf.capture.log import read_query_log, read_query_stats, write_parquet

    day = datetime.now(timezone.utc) - timedelta(days=1)
    log = read_query_log("logs/queries.jsonl", since=day)
    stats = read_query_stats("postgresql+psycopg2://app@db/app", since=day)
    write_parquet(log, "archive/queries.parquet")
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import URL, Engine, Table, select
from sqlalchemy.pool import NullPool

from sqlperf.capture.records import RECORD_COLUMNS, STATS_COLUMNS, QueryRecord, StatsRow
from sqlperf.capture.sinks import (
    _NAIVE_TIMESTAMP_DIALECTS,
    NO_CAPTURE,
    _require_tables,
    _utc,
    _utf8_safe,
)
from sqlperf.engine import create_optimized_engine
from sqlperf.exceptions import ConfigurationError, MissingDependency
from sqlperf.schema import query_log_table, query_stats_table

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["read_query_log", "read_query_stats", "records_frame", "stats_frame", "write_parquet"]

#: What the readers accept, for error messages.
_SOURCES = (
    "a .jsonl file written by JsonlSink, a .parquet file written by write_parquet, "
    "a database URL (str or sqlalchemy.URL) or sqlalchemy.Engine with sqlperf's tables, "
    "or a pandas DataFrame"
)

#: Parquet schema metadata key that says which kind of rows a file holds.
_PARQUET_KIND_KEY = b"sqlperf.kind"


@dataclass(frozen=True)
class _Kind:
    """One of the two row kinds: its JSON ``type``, schema, table and time column."""

    name: str  # the "type" of its JSON lines
    columns: Mapping[str, str]
    table: Table
    time_column: str
    reader: str


_RECORDS = _Kind("record", RECORD_COLUMNS, query_log_table, "ts", "read_query_log")
_STATS = _Kind("stats", STATS_COLUMNS, query_stats_table, "window_start", "read_query_stats")


def _pandas() -> Any:
    # Imported here, not at the top: pandas is an optional dependency.
    try:
        return importlib.import_module("pandas")
    except ImportError:
        raise MissingDependency("pandas", extra="pandas", purpose="query-log DataFrames") from None


def _parquet() -> tuple[Any, Any]:
    try:
        return importlib.import_module("pyarrow"), importlib.import_module("pyarrow.parquet")
    except ImportError:
        raise MissingDependency("pyarrow", extra="pandas", purpose="Parquet query logs") from None


def _column(pd: Any, values: Any, dtype: str) -> Any:
    """Convert one column's values to ``dtype`` (an entry of the schema)."""
    if isinstance(values, pd.Series):
        if str(values.dtype) == dtype:
            return values.array
        values = values.to_numpy(dtype=object)
    if dtype.startswith("datetime64"):
        # ISO 8601 strings with or without offset, datetimes, Timestamps; naive = UTC.
        stamps = pd.to_datetime(pd.Series(values, dtype=object), utc=True, format="ISO8601")
        return stamps.astype(dtype).array
    if dtype == "float64":
        # Through the nullable dtype: None, NaN and pd.NA all become NaN.
        return pd.array(values, dtype="Float64").to_numpy(dtype="float64", na_value=float("nan"))
    if dtype == "string":
        try:
            return pd.array(values, dtype=dtype)
        except UnicodeEncodeError:
            # Arrow strings are UTF-8: a lone surrogate becomes "\udXXX" text,
            # as DatabaseSink stores it.
            safe = [_utf8_safe(v) if isinstance(v, str) else v for v in values]
            return pd.array(safe, dtype=dtype)
    # "Int64" (exact for every int64, no detour through float), "boolean".
    return pd.array(values, dtype=dtype)


def _frame(columns: Mapping[str, Any], schema: Mapping[str, str], length: int) -> pd.DataFrame:
    """Build the DataFrame of ``schema`` from column values: the one coercion of every reader.

    Args:
        columns: column name -> a sequence or Series of ``length`` values; names
            outside the schema are ignored, missing ones are filled with NA.
        schema: :data:`RECORD_COLUMNS` or :data:`STATS_COLUMNS`.
        length: the number of rows.
    """
    pandas = _pandas()
    data = {}
    for name, dtype in schema.items():
        values = columns.get(name)
        try:
            data[name] = _column(pandas, [None] * length if values is None else values, dtype)
        except (TypeError, ValueError) as err:
            raise ConfigurationError(f"column {name!r} cannot be read as {dtype}: {err}") from None
    return cast("pd.DataFrame", pandas.DataFrame(data, columns=list(schema)))


def _from_rows(items: Iterable[Any], kind: _Kind, row_type: type[Any]) -> pd.DataFrame:
    rows: list[Mapping[str, Any]] = []
    for item in items:
        if isinstance(item, row_type):
            rows.append({name: getattr(item, name) for name in kind.columns})
        elif isinstance(item, Mapping):
            rows.append(item)
        else:
            raise ConfigurationError(
                f"expected {row_type.__name__} objects or mappings of its fields, "
                f"got {type(item).__name__}"
            )
    columns = {name: [row.get(name) for row in rows] for name in kind.columns}
    return _frame(columns, kind.columns, len(rows))


def records_frame(items: Iterable[QueryRecord | Mapping[str, Any]]) -> pd.DataFrame:
    """Build a query-log DataFrame from records or dicts (``QueryRecord.as_dict()``, JSON).

    Args:
        items: :class:`QueryRecord` objects, or mappings of their fields (extra
            keys such as ``"type"`` are ignored, missing ones become NA).

    Returns:
        The columns of :data:`RECORD_COLUMNS`, in order, with those dtypes.

    Raises:
        ConfigurationError: an item of another type, or a value that does not
            fit its column (a timestamp that is not ISO 8601, say).
        MissingDependency: pandas is not installed.

    Example::

        >>> from sqlperf.capture.sinks import MemorySink
        >>> records_frame(MemorySink().records()).shape
        (0, 26)
    """
    return _from_rows(items, _RECORDS, QueryRecord)


def stats_frame(items: Iterable[StatsRow | Mapping[str, Any]]) -> pd.DataFrame:
    """Build a statistics DataFrame from :class:`StatsRow` objects or dicts of their fields.

    Args:
        items: :class:`StatsRow` objects, or mappings of their fields.

    Returns:
        The columns of :data:`STATS_COLUMNS`, in order, with those dtypes.

    Raises:
        ConfigurationError: an item of another type, or a value that does not fit its column.
        MissingDependency: pandas is not installed.

    Example::

        >>> stats_frame([]).columns[0]
        'window_start'
    """
    return _from_rows(items, _STATS, StatsRow)


def _bound(name: str, value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise ConfigurationError(
            f"{name} must be a datetime (naive ones are taken as UTC) or None, got {value!r}"
        )
    return _utc(value, naive=False)


def _read_database(
    engine: Engine, kind: _Kind, since: datetime | None, until: datetime | None
) -> pd.DataFrame:
    table = kind.table
    naive = engine.dialect.name in _NAIVE_TIMESTAMP_DIALECTS
    stmt = select(*(table.c[name] for name in kind.columns)).order_by(table.c.id)
    time_column = table.c[kind.time_column]
    if since is not None:
        stmt = stmt.where(time_column >= _utc(since, naive=naive))
    if until is not None:
        stmt = stmt.where(time_column < _utc(until, naive=naive))
    with engine.connect() as conn:
        conn.execution_options(**NO_CAPTURE)
        _require_tables(conn, engine.url)
        rows = conn.execute(stmt).all()
    values = list(zip(*rows, strict=True)) if rows else [() for _ in kind.columns]
    return _frame(dict(zip(kind.columns, values, strict=True)), kind.columns, len(rows))


def _log_files(path: Path) -> list[Path]:
    """The file and its rotated backups (``path.1``, ``path.2``...), oldest first."""
    backups: list[tuple[int, Path]] = []
    prefix = path.name + "."
    if path.parent.is_dir():
        for entry in path.parent.iterdir():
            suffix = entry.name[len(prefix) :]
            if entry.name.startswith(prefix) and suffix.isdigit() and entry.is_file():
                backups.append((int(suffix), entry))
    files = [entry for _, entry in sorted(backups, reverse=True)]
    if path.is_file():
        files.append(path)
    if not files:
        raise ConfigurationError(f"no query log at {str(path)!r} (nor rotated backups of it)")
    return files


def _read_jsonl(path: Path, kind: _Kind) -> pd.DataFrame:
    rows: list[Mapping[str, Any]] = []
    for file in _log_files(path):
        try:
            handle = file.open("rb")
        except FileNotFoundError:  # rotated away since it was listed
            continue
        with handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except ValueError:
                    if not line.endswith(b"\n"):
                        continue  # the last line, still being written (or cut by a crash)
                    raise ConfigurationError(
                        f"{file}:{number} is not a line of a sqlperf query log (invalid JSON): "
                        "pass a file written by JsonlSink"
                    ) from None
                if not isinstance(obj, dict) or "type" not in obj:
                    raise ConfigurationError(
                        f"{file}:{number} is not a line of a sqlperf query log "
                        '(no "type" key): pass a file written by JsonlSink'
                    )
                if obj["type"] == kind.name:
                    rows.append(obj)
    columns = {name: [row.get(name) for row in rows] for name in kind.columns}
    return _frame(columns, kind.columns, len(rows))


def _read_parquet(path: Path, kind: _Kind) -> pd.DataFrame:
    if not path.is_file():
        raise ConfigurationError(f"no Parquet file at {str(path)!r}")
    _, pq = _parquet()
    table = pq.read_table(path)
    written = (table.schema.metadata or {}).get(_PARQUET_KIND_KEY)
    if written is not None and written.decode() != kind.name:
        other = _STATS if kind is _RECORDS else _RECORDS
        raise ConfigurationError(
            f"{str(path)!r} holds {written.decode()} rows: read it with {other.reader}()"
        )
    df = table.to_pandas()
    return _frame({name: df[name] for name in df.columns}, kind.columns, len(df))


def _read(
    source: object, kind: _Kind, since: datetime | None, until: datetime | None
) -> pd.DataFrame:
    pandas = _pandas()
    since, until = _bound("since", since), _bound("until", until)
    if isinstance(source, pandas.DataFrame):
        frame = _frame({name: source[name] for name in source.columns}, kind.columns, len(source))
    elif isinstance(source, Engine):
        frame = _read_database(source, kind, since, until)
    elif isinstance(source, URL) or (isinstance(source, str) and "://" in source):
        engine = create_optimized_engine(source, workload="batch", poolclass=NullPool)
        try:
            frame = _read_database(engine, kind, since, until)
        finally:
            engine.dispose()
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.suffix == ".jsonl":
            frame = _read_jsonl(path, kind)
        elif path.suffix == ".parquet":
            frame = _read_parquet(path, kind)
        else:
            raise ConfigurationError(f"cannot read a query log from {str(path)!r}: pass {_SOURCES}")
    else:
        raise ConfigurationError(
            f"cannot read a query log from a {type(source).__name__}: pass {_SOURCES}"
        )
    if since is None and until is None:
        return frame
    times = frame[kind.time_column]
    keep = pandas.Series(True, index=frame.index)
    if since is not None:
        keep &= times >= pandas.Timestamp(since)
    if until is not None:
        keep &= times < pandas.Timestamp(until)
    return cast("pd.DataFrame", frame.loc[keep.to_numpy()].reset_index(drop=True))


def read_query_log(
    source: str | os.PathLike[str] | URL | Engine | pd.DataFrame,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> pd.DataFrame:
    """Read the query records a sink wrote, as a DataFrame of :data:`RECORD_COLUMNS`.

    Args:
        source: where the records are:

            * a ``.jsonl`` path (:class:`~sqlperf.capture.sinks.JsonlSink`): the
              file and its rotated backups ``.1``, ``.2``, ..., oldest first; a
              last line that is still being written is skipped;
            * a ``.parquet`` path written by :func:`write_parquet`;
            * a database URL (``str`` with ``://`` or ``sqlalchemy.URL``) or an
              ``Engine``: the table ``sqlperf_query_log``, in the order the rows
              were written;
            * a DataFrame: its columns are coerced to the schema.
        since: keep records with ``ts >= since`` (naive datetimes are UTC).
        until: keep records with ``ts < until``.

    Returns:
        The columns of :data:`RECORD_COLUMNS` in order, with those dtypes, and
        a fresh ``RangeIndex``.

    Raises:
        ConfigurationError: a source of another kind, a missing file, a corrupt
            line in the middle of a JSON Lines file, a database without
            sqlperf's tables (run ``sqlperf db upgrade --url URL``), or a bad
            ``since``/``until``.
        MissingDependency: pandas (or pyarrow, for Parquet) is not installed.
        sqlalchemy.exc.DBAPIError: the database refused the query.

    Example::

        from datetime import datetime, timedelta, timezone

        hour_ago = datetime.now(timezone.utc) - timedelta(hours=1)
        log = read_query_log("logs/queries.jsonl", since=hour_ago)
        log.groupby("fingerprint_id")["duration_ms"].sum().nlargest(10)
    """
    return _read(source, _RECORDS, since, until)


def read_query_stats(
    source: str | os.PathLike[str] | URL | Engine | pd.DataFrame,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> pd.DataFrame:
    """Read the statistics rows a sink wrote, as a DataFrame of :data:`STATS_COLUMNS`.

    Args:
        source: as for :func:`read_query_log` (the table is ``sqlperf_query_stats``,
            the JSON lines those of ``"type": "stats"``).
        since: keep windows with ``window_start >= since`` (naive datetimes are UTC).
        until: keep windows with ``window_start < until``.

    Returns:
        The columns of :data:`STATS_COLUMNS` in order, with those dtypes.

    Raises:
        ConfigurationError: as for :func:`read_query_log`.
        MissingDependency: pandas (or pyarrow, for Parquet) is not installed.
        sqlalchemy.exc.DBAPIError: the database refused the query.

    Example::

        stats = read_query_stats("sqlite:///app.db")
        stats.groupby("fingerprint")["total_ms"].sum().nlargest(10)
    """
    return _read(source, _STATS, since, until)


def _kind_of(columns: Sequence[str]) -> _Kind:
    names = set(columns)
    for kind in (_RECORDS, _STATS):
        if names == set(kind.columns):
            return kind
    closest = _STATS if "window_start" in names else _RECORDS
    missing = [name for name in closest.columns if name not in names]
    extra = sorted(names - set(closest.columns))
    raise ConfigurationError(
        "write_parquet takes a frame with exactly the columns of RECORD_COLUMNS or "
        f"STATS_COLUMNS (from {closest.reader}, records_frame or stats_frame); "
        f"missing: {missing or 'none'}, unexpected: {extra or 'none'}"
    )


def write_parquet(df: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write a query-log or statistics frame to a Parquet file, with pyarrow.

    :func:`read_query_log` (or :func:`read_query_stats`) of the file returns a
    frame equal to ``df`` coerced to its schema: same columns, dtypes and
    values. The file records which kind of rows it holds, so reading it with
    the other function is an error rather than a frame of NAs.

    Args:
        df: a frame with exactly the columns of :data:`RECORD_COLUMNS` or
            :data:`STATS_COLUMNS` (any order; they are written in schema order).
        path: the file to create or replace; must end in ``.parquet``. Parent
            directories are created.

    Returns:
        The path written.

    Raises:
        ConfigurationError: other columns, or a path not ending in ``.parquet``.
        MissingDependency: pandas or pyarrow is not installed.

    Example::

        write_parquet(read_query_log("logs/queries.jsonl"), "archive/2025-01.parquet")
    """
    target = Path(path)
    if target.suffix != ".parquet":
        raise ConfigurationError(
            f"write_parquet needs a path ending in .parquet (read_query_log goes by it), "
            f"got {str(target)!r}"
        )
    kind = _kind_of([str(name) for name in df.columns])
    frame = _frame({name: df[name] for name in df.columns}, kind.columns, len(df))
    pa, pq = _parquet()
    table = pa.Table.from_pandas(frame, preserve_index=False)
    metadata = dict(table.schema.metadata or {})
    metadata[_PARQUET_KIND_KEY] = kind.name.encode()
    target.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.replace_schema_metadata(metadata), target)
    return target
