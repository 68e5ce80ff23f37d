"""Where database time moved between two query logs (before and after a deploy)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, cast

from sqlperf.analysis.log import LogSource, QueryLog
from sqlperf.analysis.summary import fingerprint_table

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["DIFF_COLUMNS", "diff_logs", "render_diff"]

#: The columns of :func:`diff_logs`, in order.
DIFF_COLUMNS = (
    "fingerprint_id",
    "fingerprint",
    "status",
    "calls_before",
    "calls_after",
    "calls_change",
    "total_ms_before",
    "total_ms_after",
    "total_ms_change",
    "p95_ms_before",
    "p95_ms_after",
    "p95_change",
    "cumulative_share",
)


def diff_logs(before: LogSource | QueryLog, after: LogSource | QueryLog) -> pd.DataFrame:
    """Compare two logs fingerprint by fingerprint.

    Args:
        before: the log of the old version (anything :func:`~sqlperf.analysis.load_log` reads).
        after: the log of the new one.

    Returns:
        One row per fingerprint in either log, with :data:`DIFF_COLUMNS`:

        * ``status``: ``"new"`` (only after), ``"gone"`` (only before) or
          ``"changed"``;
        * ``calls_*``, ``total_ms_*``, ``p95_ms_*``: the figures of each log (0 calls
          and time, NaN p95 where it has none); ``*_change`` is after minus before,
          ``p95_change`` relative (0.25 is 25% slower; NaN for new and gone ones);
        * ``cumulative_share``: the running sum of ``|total_ms_change|`` over the
          rows so far, as a part of all the change: the Pareto curve.

        Rows are ordered by ``|total_ms_change|``, largest first. The logs should
        cover comparable spans of traffic: totals are not scaled to time.

    Example::

        moved = diff_logs("before.jsonl", "after.jsonl")
        moved.loc[moved["status"] == "new", ["fingerprint", "calls_after"]]
    """
    import pandas as pd

    old = fingerprint_table(before).set_index("fingerprint_id")
    new = fingerprint_table(after).set_index("fingerprint_id")
    keep = ["fingerprint", "calls", "total_ms", "p95_ms"]
    # Suffixes added beforehand: join's lsuffix/rsuffix are deprecated in pandas 3.
    joined = (
        old.loc[:, keep]
        .add_suffix("_before")
        .join(new.loc[:, keep].add_suffix("_after"), how="outer")
    )
    if joined.empty:
        return cast("pd.DataFrame", pd.DataFrame({name: [] for name in DIFF_COLUMNS}))
    in_old = joined["calls_before"].notna()
    in_new = joined["calls_after"].notna()
    frame = pd.DataFrame(index=joined.index)
    # where, not fillna: against an empty log one side is all-NaN float64, and pandas 3
    # deprecates filling floats with strings.
    frame["fingerprint"] = joined["fingerprint_after"].where(in_new, joined["fingerprint_before"])
    frame["status"] = "changed"
    frame.loc[~in_old, "status"] = "new"
    frame.loc[~in_new, "status"] = "gone"
    for name in ("calls", "total_ms"):
        frame[f"{name}_before"] = joined[f"{name}_before"].fillna(0)
        frame[f"{name}_after"] = joined[f"{name}_after"].fillna(0)
    frame["calls_before"] = frame["calls_before"].astype("int64")
    frame["calls_after"] = frame["calls_after"].astype("int64")
    frame["calls_change"] = frame["calls_after"] - frame["calls_before"]
    frame["total_ms_change"] = frame["total_ms_after"] - frame["total_ms_before"]
    frame["p95_ms_before"] = joined["p95_ms_before"].astype("float64")
    frame["p95_ms_after"] = joined["p95_ms_after"].astype("float64")
    frame["p95_change"] = (frame["p95_ms_after"] - frame["p95_ms_before"]) / frame[
        "p95_ms_before"
    ].where(frame["p95_ms_before"] > 0)
    frame = frame.reset_index(names="fingerprint_id")
    magnitude = frame["total_ms_change"].abs()
    frame = frame.assign(_magnitude=magnitude).sort_values(
        ["_magnitude", "fingerprint_id"], ascending=[False, True]
    )
    moved = frame["_magnitude"].sum()
    frame["cumulative_share"] = frame["_magnitude"].cumsum() / moved if moved else 0.0
    return cast("pd.DataFrame", frame.loc[:, list(DIFF_COLUMNS)].reset_index(drop=True))


#: Columns :func:`render_diff` shows in text and Markdown.
_SHOWN = (
    "status",
    "calls_before",
    "calls_after",
    "total_ms_before",
    "total_ms_after",
    "total_ms_change",
    "p95_ms_before",
    "p95_ms_after",
    "p95_change",
    "fingerprint",
)


def render_diff(diff: pd.DataFrame, *, fmt: str = "text", top: int = 20) -> str:
    """A :func:`diff_logs` result as text, Markdown or JSON (all rows for JSON).

    Args:
        diff: the rows of :func:`diff_logs`.
        fmt: ``"text"`` or ``"markdown"`` (a table of the ``top`` rows and a line
            of totals), or ``"json"`` (every row).
        top: rows shown in text and Markdown.
    """
    from sqlperf.analysis.report import frame_markdown, records

    if fmt == "json":
        return json.dumps(records(diff), indent=2) + "\n"
    before = float(diff["total_ms_before"].sum()) if not diff.empty else 0.0
    after = float(diff["total_ms_after"].sum()) if not diff.empty else 0.0
    counts: dict[str, int] = (
        {str(k): int(v) for k, v in diff["status"].value_counts().items()} if not diff.empty else {}
    )
    summary = (
        f"total time {before:,.1f} ms -> {after:,.1f} ms ({after - before:+,.1f} ms); "
        f"{counts.get('new', 0)} new, {counts.get('gone', 0)} gone, "
        f"{counts.get('changed', 0)} in both"
    )
    table = frame_markdown(diff.head(top), _SHOWN)
    return f"{summary}\n\n{table}\n"
