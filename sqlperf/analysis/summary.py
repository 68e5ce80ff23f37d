"""Where the database time of a query log went: fingerprints, latencies, timeline.

Every function takes a :class:`~sqlperf.analysis.QueryLog` (or anything
:func:`~sqlperf.analysis.load_log` reads) and returns a pandas DataFrame, ready
to print or plot. Percentiles over many windows come from merging the windows'
latency histograms, not from averaging their percentiles, so they are exact to
the histogram's 3.2%.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, cast

from sqlperf.analysis.log import LogSource, QueryLog, load_log
from sqlperf.capture.histogram import LatencyHistogram
from sqlperf.exceptions import ConfigurationError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "FINGERPRINT_COLUMNS",
    "Totals",
    "fingerprint_table",
    "latency_histograms",
    "merged_histogram",
    "slowest_queries",
    "timeline",
    "top_fingerprints",
    "totals",
]

#: The columns of :func:`fingerprint_table` and :func:`top_fingerprints`, in order.
FINGERPRINT_COLUMNS = (
    "fingerprint_id",
    "fingerprint",
    "sql",
    "calls",
    "errors",
    "rows",
    "total_ms",
    "share",
    "mean_ms",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "max_ms",
    "n_plus_one",
    "cache_hits",
    "cache_misses",
)

SortKey = Literal["total_ms", "calls", "p95_ms", "p99_ms", "mean_ms", "max_ms"]
_SORT_KEYS: tuple[str, ...] = ("total_ms", "calls", "p95_ms", "p99_ms", "mean_ms", "max_ms")

#: Columns of :func:`slowest_queries`.
_SLOW_COLUMNS = (
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
)


def merged_histogram(histograms: Iterable[Any]) -> LatencyHistogram:
    """One histogram from the JSON histograms of statistics rows (missing ones skipped)."""
    merged = LatencyHistogram()
    for text in histograms:
        if isinstance(text, str) and text:
            merged.merge(LatencyHistogram.from_json(text))
    return merged


def rows_of(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows of ``frame`` as dicts of column name to value."""
    return cast("list[dict[str, Any]]", frame.to_dict(orient="records"))


def fingerprint_table(source: LogSource | QueryLog) -> pd.DataFrame:
    """Every fingerprint of the log's statistics, across windows, engines and routes.

    Returns:
        One row per fingerprint with :data:`FINGERPRINT_COLUMNS`, by total time,
        largest first. ``share`` is its part of the log's total time (0 to 1);
        ``p50_ms``/``p95_ms``/``p99_ms`` come from the merged histograms. With a
        recorder's ``sample < 1``, ``calls`` counts the sampled statements.
    """
    log = load_log(source)
    import pandas as pd

    stats = log.stats
    if stats.empty:
        return cast("pd.DataFrame", pd.DataFrame({name: [] for name in FINGERPRINT_COLUMNS}))
    rows = []
    for fingerprint_id, group in stats.groupby("fingerprint_id", sort=False):
        calls = int(group["calls"].sum())
        total = float(group["total_ms"].sum())
        histogram = merged_histogram(group["histogram"])
        if histogram.total:
            p50, p95, p99 = (histogram.percentile(q) / 1e6 for q in (0.5, 0.95, 0.99))
        else:  # rows written without a histogram: the worst window's figures
            p50, p95, p99 = (float(group[c].max()) for c in ("p50_ms", "p95_ms", "p99_ms"))
        rows.append(
            {
                "fingerprint_id": fingerprint_id,
                "fingerprint": group["fingerprint"].iloc[0],
                "sql": group["sql"].iloc[0],
                "calls": calls,
                "errors": int(group["errors"].sum()),
                "rows": int(group["rows"].sum()),
                "total_ms": total,
                "share": 0.0,
                "mean_ms": total / calls if calls else 0.0,
                "p50_ms": p50,
                "p95_ms": p95,
                "p99_ms": p99,
                "max_ms": float(group["max_ms"].max()),
                "n_plus_one": int(group["n_plus_one"].sum()),
                "cache_hits": int(group["cache_hits"].sum()),
                "cache_misses": int(group["cache_misses"].sum()),
            }
        )
    table = pd.DataFrame(rows, columns=list(FINGERPRINT_COLUMNS))
    everything = table["total_ms"].sum()
    table["share"] = table["total_ms"] / everything if everything else 0.0
    return cast(
        "pd.DataFrame",
        table.sort_values(
            ["total_ms", "fingerprint_id"], ascending=[False, True], ignore_index=True
        ),
    )


def top_fingerprints(
    source: LogSource | QueryLog, *, n: int = 10, by: SortKey = "total_ms"
) -> pd.DataFrame:
    """The ``n`` fingerprints with the largest ``by`` (total time, calls, p95, ...).

    Args:
        source: the log.
        n: how many rows (at least 1).
        by: ``"total_ms"``, ``"calls"``, ``"p95_ms"``, ``"p99_ms"``, ``"mean_ms"`` or
            ``"max_ms"``.

    Returns:
        Rows of :func:`fingerprint_table`, largest first.

    Raises:
        ConfigurationError: ``n`` below 1 or an unknown ``by``.

    Example::

        top_fingerprints("out/query_log.jsonl", n=5, by="p95_ms")[["fingerprint", "p95_ms"]]
    """
    if by not in _SORT_KEYS:
        raise ConfigurationError(f"by must be one of {', '.join(_SORT_KEYS)}, not {by!r}")
    if n < 1:
        raise ConfigurationError(f"n must be at least 1, not {n}")
    table = fingerprint_table(source)
    ordered = table.sort_values([by, "fingerprint_id"], ascending=[False, True], kind="stable")
    return cast("pd.DataFrame", ordered.head(n).reset_index(drop=True))


def latency_histograms(
    source: LogSource | QueryLog, fingerprint_ids: Sequence[str]
) -> pd.DataFrame:
    """The merged latency histogram of each fingerprint, bucket by bucket, for plotting.

    Returns:
        Columns ``fingerprint_id``, ``low_ms``, ``high_ms``, ``count``: one row per
        non-empty bucket, in the order of ``fingerprint_ids`` then of latency.
    """
    log = load_log(source)
    import pandas as pd

    rows = []
    stats = log.stats
    for fingerprint_id in fingerprint_ids:
        group = stats.loc[stats["fingerprint_id"] == fingerprint_id, "histogram"]
        for low, high, count in merged_histogram(group).buckets():
            rows.append((fingerprint_id, low / 1e6, high / 1e6, count))
    return cast(
        "pd.DataFrame", pd.DataFrame(rows, columns=["fingerprint_id", "low_ms", "high_ms", "count"])
    )


def timeline(source: LogSource | QueryLog) -> pd.DataFrame:
    """Query rate and latency over time, one row per statistics window.

    Returns:
        Columns ``window_start``, ``window_end``, ``calls``, ``total_ms``,
        ``queries_per_s``, ``mean_ms``, ``p95_ms`` (merged over the window's
        fingerprints), in time order. Windows of several engines or processes
        starting at the same moment are added together.
    """
    log = load_log(source)
    import pandas as pd

    columns = [
        "window_start",
        "window_end",
        "calls",
        "total_ms",
        "queries_per_s",
        "mean_ms",
        "p95_ms",
    ]
    stats = log.stats
    if stats.empty:
        return cast("pd.DataFrame", pd.DataFrame({name: [] for name in columns}))
    rows = []
    for start, group in stats.groupby("window_start", sort=True):
        end = group["window_end"].max()
        seconds = max((end - start).total_seconds(), 1e-3)
        calls = int(group["calls"].sum())
        total = float(group["total_ms"].sum())
        histogram = merged_histogram(group["histogram"])
        rows.append(
            (
                start,
                end,
                calls,
                total,
                calls / seconds,
                total / calls if calls else 0.0,
                histogram.percentile(0.95) / 1e6 if histogram.total else float("nan"),
            )
        )
    return cast("pd.DataFrame", pd.DataFrame(rows, columns=columns))


def slowest_queries(source: LogSource | QueryLog, *, n: int = 10) -> pd.DataFrame:
    """The ``n`` slowest recorded statements (kinds ``slow`` and ``error``), slowest first.

    Returns:
        Columns ``ts``, ``kind``, ``duration_ms``, ``fingerprint_id``, ``fingerprint``,
        ``sql``, ``call_site``, ``route``, ``engine``, ``request_id``, ``error_class``
        and ``explain`` (the plan, when the recorder ran with ``explain=True``).

    Raises:
        ConfigurationError: ``n`` below 1.
    """
    if n < 1:
        raise ConfigurationError(f"n must be at least 1, not {n}")
    log = load_log(source)
    records = log.records
    single = records.loc[records["kind"].isin(["slow", "error"])]
    ordered = single.sort_values("duration_ms", ascending=False, kind="stable")
    return cast("pd.DataFrame", ordered.loc[:, list(_SLOW_COLUMNS)].head(n).reset_index(drop=True))


@dataclass(frozen=True)
class Totals:
    """The headline numbers of a log.

    Attributes:
        statements: statements in the statistics (sampled ones with ``sample < 1``).
        total_ms: their total time.
        fingerprints: distinct fingerprints.
        engines: distinct engine names.
        records: records by kind (``slow``, ``error``, ``n_plus_one``).
        first / last: the span the log covers, or ``None`` when it is empty.
    """

    statements: int
    total_ms: float
    fingerprints: int
    engines: tuple[str, ...]
    records: dict[str, int]
    first: datetime | None
    last: datetime | None

    @property
    def seconds(self) -> float:
        """The length of the span, 0 for an empty log."""
        if self.first is None or self.last is None:
            return 0.0
        return (self.last - self.first).total_seconds()


def totals(source: LogSource | QueryLog) -> Totals:
    """The headline numbers of a log: statements, time, fingerprints, records, span."""
    log = load_log(source)
    stats, records = log.stats, log.records
    times = [t for t in (stats["window_start"].min(), stats["window_end"].max()) if _present(t)]
    times += [t for t in (records["ts"].min(), records["ts"].max()) if _present(t)]
    engines = set(stats["engine"].dropna()) | set(records["engine"].dropna())
    kinds = records["kind"].value_counts()
    return Totals(
        statements=int(stats["calls"].sum()),
        total_ms=float(stats["total_ms"].sum()),
        fingerprints=int(stats["fingerprint_id"].nunique()),
        engines=tuple(sorted(str(e) for e in engines)),
        records={str(k): int(v) for k, v in kinds.items()},
        first=min(times).to_pydatetime() if times else None,
        last=max(times).to_pydatetime() if times else None,
    )


def _present(value: Any) -> bool:
    import pandas as pd

    return not pd.isna(value)
