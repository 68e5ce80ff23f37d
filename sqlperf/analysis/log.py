"""One captured query log, both of its halves, from any sink.

A sink writes two kinds of rows (see :mod:`sqlperf.capture.records`): *records*
(slow, failed and N+1 statements, one row each) and *statistics* (every
statement, aggregated per fingerprint, engine and route over a time window).
The analysis needs both, so :func:`load_log` reads both from one source into a
:class:`QueryLog`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import URL, Engine

from sqlperf.capture.log import read_query_log, read_query_stats, records_frame, stats_frame
from sqlperf.exceptions import ConfigurationError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["LogSource", "QueryLog", "load_log"]

#: Where a log can be read from: a ``.jsonl`` or ``.parquet`` path, a URL or an Engine.
LogSource = str | os.PathLike[str] | URL | Engine


@dataclass(frozen=True)
class QueryLog:
    """A captured query log: its records and its statistics rows.

    Attributes:
        records: one row per recorded statement, columns :data:`~sqlperf.capture.RECORD_COLUMNS`.
        stats: one row per fingerprint, engine, route and window, columns
            :data:`~sqlperf.capture.STATS_COLUMNS`.
        source: where it was read from, for titles (a URL without its password).
    """

    records: pd.DataFrame
    stats: pd.DataFrame
    source: str = "memory"

    @classmethod
    def from_rows(
        cls, records: pd.DataFrame | None = None, stats: pd.DataFrame | None = None
    ) -> QueryLog:
        """A log from frames in memory (``recorder.records()`` / ``recorder.stats()`` as frames)."""
        return cls(
            records=records_frame([]) if records is None else read_query_log(records),
            stats=stats_frame([]) if stats is None else read_query_stats(stats),
        )

    @property
    def empty(self) -> bool:
        """Whether the log has neither records nor statistics."""
        return self.records.empty and self.stats.empty


def load_log(
    source: LogSource | QueryLog,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> QueryLog:
    """Read both halves of a query log.

    Args:
        source: a JSON Lines file of :class:`~sqlperf.capture.JsonlSink` (with its
            rotated backups), a Parquet file of :func:`~sqlperf.capture.write_parquet`
            (it holds one half; the other is empty), a database URL or ``Engine``
            with sqlperf's tables, or a :class:`QueryLog` (returned as it is).
        since / until: keep rows from ``since`` (inclusive) to ``until`` (exclusive).

    Returns:
        The log.

    Raises:
        ConfigurationError: the source is not a log (see
            :func:`~sqlperf.capture.read_query_log`).
        MissingDependency: pandas (or pyarrow, for Parquet) is not installed.

    Example::

        log = load_log("out/query_log.jsonl")
        print(len(log.records), "records,", len(log.stats), "statistics rows")
    """
    if isinstance(source, QueryLog):
        return source
    label = _label(source)
    if isinstance(source, (str, os.PathLike)) and Path(source).suffix == ".parquet":
        return _parquet(source, label, since, until)
    return QueryLog(
        records=read_query_log(source, since=since, until=until),
        stats=read_query_stats(source, since=since, until=until),
        source=label,
    )


def _parquet(
    path: str | os.PathLike[str], label: str, since: datetime | None, until: datetime | None
) -> QueryLog:
    """A Parquet file holds records or statistics: read the half it has."""
    try:
        records = read_query_log(path, since=since, until=until)
    except ConfigurationError as records_error:
        if "holds stats rows" not in str(records_error):
            raise
        stats = read_query_stats(path, since=since, until=until)
        return QueryLog(records=records_frame([]), stats=stats, source=label)
    return QueryLog(records=records, stats=stats_frame([]), source=label)


def _label(source: LogSource) -> str:
    if isinstance(source, Engine):
        return source.url.render_as_string(hide_password=True)
    if isinstance(source, URL):
        return source.render_as_string(hide_password=True)
    if isinstance(source, str) and "://" in source:
        from sqlalchemy import make_url

        return make_url(source).render_as_string(hide_password=True)
    return os.fspath(source)
