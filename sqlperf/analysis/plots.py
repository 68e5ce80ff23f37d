"""Matplotlib figures of a query log, for the notebooks and the HTML report.

Each function returns a :class:`matplotlib.figure.Figure` made without pyplot,
so nothing global (backends, the current figure) is touched: a notebook shows
the returned figure, :func:`figure_png` turns it into PNG bytes for a report.
matplotlib is optional: ``pip install 'sqlperf[notebooks]'``.
"""

from __future__ import annotations

import io
import textwrap
from typing import TYPE_CHECKING, Any

from sqlperf.exceptions import MissingDependency

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

__all__ = [
    "figure_png",
    "plot_cache",
    "plot_latency",
    "plot_pareto",
    "plot_routes",
    "plot_timeline",
    "plot_top",
]

_LABEL_WIDTH = 60


def _figure(width: float = 9.0, height: float = 4.5) -> Figure:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - matplotlib is in the dev extras
        raise MissingDependency("matplotlib", extra="notebooks", purpose="plots") from exc
    return Figure(figsize=(width, height), layout="constrained")


def _label(text: Any) -> str:
    return textwrap.shorten(str(text), width=_LABEL_WIDTH, placeholder="...")


def _empty(fig: Figure, what: str) -> Figure:
    ax = fig.subplots()
    ax.text(0.5, 0.5, f"no {what} in this log", ha="center", va="center")
    ax.set_axis_off()
    return fig


def _ranked_bars(fig: Figure, labels: list[Any], values: list[float], notes: list[str]) -> Any:
    """Horizontal bars, the first row on top, each labelled with its rank and a note."""
    ax = fig.subplots()
    positions = list(range(len(labels)))[::-1]
    bars = ax.barh(positions, values)
    # The rank keeps two shapes apart when their shortened labels are the same.
    ax.set_yticks(positions, [f"{i}. {_label(text)}" for i, text in enumerate(labels, 1)])
    ax.bar_label(bars, labels=notes, padding=3, fontsize=8)
    ax.tick_params(axis="y", labelsize=8)
    return ax


def plot_top(top: pd.DataFrame, *, title: str = "Top fingerprints by total time") -> Figure:
    """Horizontal bars of total time per fingerprint, with calls and p95 as labels.

    Args:
        top: rows of :func:`~sqlperf.analysis.top_fingerprints`.
        title: the figure's title.
    """
    fig = _figure(height=max(2.5, 0.45 * len(top) + 1.2))
    if top.empty:
        return _empty(fig, "statistics")
    pairs = zip(top["calls"], top["p95_ms"], strict=True)
    notes = [f"{calls:,} calls, p95 {p95:.1f} ms" for calls, p95 in pairs]
    ax = _ranked_bars(fig, list(top["fingerprint"]), list(top["total_ms"]), notes)
    ax.set_xlabel("total time (ms)")
    ax.set_title(title)
    ax.margins(x=0.35)
    return fig


def plot_latency(histograms: pd.DataFrame, names: dict[str, str] | None = None) -> Figure:
    """Latency distribution per fingerprint: the cumulative share of calls, log scale.

    Args:
        histograms: rows of :func:`~sqlperf.analysis.latency_histograms`.
        names: fingerprint id -> label for the legend (default: the id).
    """
    fig = _figure()
    if histograms.empty:
        return _empty(fig, "latency histograms")
    ax = fig.subplots()
    for fingerprint_id, group in histograms.groupby("fingerprint_id", sort=False):
        share = group["count"].cumsum() / group["count"].sum()
        label = _label((names or {}).get(str(fingerprint_id), fingerprint_id))
        ax.step(group["high_ms"], share, where="post", label=label)
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.axhline(0.95, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("share of calls at most this slow")
    ax.set_title("Latency distribution per fingerprint (dotted: p95)")
    ax.legend(fontsize=7, loc="lower right")
    return fig


def plot_timeline(timeline: pd.DataFrame) -> Figure:
    """Queries per second and p95 latency per statistics window, on two axes.

    Args:
        timeline: rows of :func:`~sqlperf.analysis.timeline`.
    """
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    fig = _figure(height=4.0)
    if timeline.empty:
        return _empty(fig, "statistics windows")
    rate_ax = fig.subplots()
    starts = timeline["window_start"].dt.tz_localize(None)
    rate_ax.plot(starts, timeline["queries_per_s"], marker="o", color="tab:blue")
    rate_ax.set_ylabel("queries per second", color="tab:blue")
    latency_ax = rate_ax.twinx()
    latency_ax.plot(starts, timeline["p95_ms"], marker="s", color="tab:red")
    latency_ax.set_ylabel("p95 latency (ms)", color="tab:red")
    rate_ax.set_xlabel("window start (UTC)")
    rate_ax.set_title("Query rate and latency over time")
    locator = AutoDateLocator()  # type: ignore[no-untyped-call]
    rate_ax.xaxis.set_major_locator(locator)
    rate_ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
    return fig


def plot_routes(routes: pd.DataFrame) -> Figure:
    """Reads and writes per route (primary, replica, unrouted), stacked bars.

    Args:
        routes: rows of :func:`~sqlperf.analysis.route_split`.
    """
    fig = _figure(width=6.0, height=3.5)
    if routes.empty:
        return _empty(fig, "statistics")
    ax = fig.subplots()
    ax.bar(routes["route"], routes["reads"], label="reads")
    ax.bar(routes["route"], routes["writes"], bottom=routes["reads"], label="writes")
    ax.set_ylabel("statements")
    ax.set_title("Primary versus replica")
    ax.legend()
    return fig


def plot_cache(ratios: pd.DataFrame, *, key: str = "table") -> Figure:
    """The result cache's hit ratio per table or fingerprint, with lookups as labels.

    Args:
        ratios: rows of :func:`~sqlperf.analysis.cache_ratios`.
        key: the column naming each row: ``"table"`` or ``"fingerprint"``.
    """
    fig = _figure(height=max(2.5, 0.45 * len(ratios) + 1.2))
    if ratios.empty:
        return _empty(fig, "result-cache lookups")
    notes = [f"{n:,} lookups" for n in ratios["lookups"]]
    ax = _ranked_bars(fig, list(ratios[key]), list(ratios["hit_ratio"]), notes)
    ax.set_xlim(0, 1.3)
    ax.set_xlabel("hit ratio")
    ax.set_title(f"Result cache hit ratio per {key}")
    return fig


def plot_pareto(diff: pd.DataFrame, *, top: int = 15) -> Figure:
    """Where time moved between two logs: change per fingerprint and the cumulative share.

    Args:
        diff: rows of :func:`~sqlperf.analysis.diff_logs`.
        top: how many fingerprints to show.
    """
    fig = _figure(height=4.5)
    if diff.empty:
        return _empty(fig, "fingerprints")
    ax = fig.subplots()
    shown = diff.head(top)
    colors = ["tab:red" if c > 0 else "tab:green" for c in shown["total_ms_change"]]
    positions = range(len(shown))
    ax.bar(positions, shown["total_ms_change"].abs(), color=colors)
    ax.set_xticks(list(positions), [f"{i + 1}" for i in positions])
    ax.set_xlabel("fingerprint (rank by change; red slower, green faster)")
    ax.set_ylabel("|change in total time| (ms)")
    share_ax = ax.twinx()
    share_ax.plot(list(positions), shown["cumulative_share"], color="black", marker="o")
    share_ax.set_ylim(0, 1.05)
    share_ax.set_ylabel("cumulative share of the change")
    ax.set_title("Where the time moved (Pareto)")
    return fig


def figure_png(fig: Figure, *, dpi: int = 100) -> bytes:
    """The figure as PNG bytes (Agg, no display needed)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
