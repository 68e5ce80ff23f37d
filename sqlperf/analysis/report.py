"""``sqlperf report``: one log's summary as terminal tables, JSON, Markdown or HTML.

:func:`build_report` runs the analysis once; the :class:`Report` then renders
itself. The HTML form is one file with its plots embedded as PNG data URIs, so
it can be mailed or attached to a ticket as it is.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlperf.analysis.diagnosis import (
    Suggestion,
    cache_ratios,
    n_plus_one_suspects,
    pool_waits,
    route_split,
    suggestions,
)
from sqlperf.analysis.log import LogSource, QueryLog, load_log
from sqlperf.analysis.summary import (
    Totals,
    latency_histograms,
    rows_of,
    slowest_queries,
    timeline,
    top_fingerprints,
    totals,
)

if TYPE_CHECKING:
    import pandas as pd
    from rich.console import Console

__all__ = ["Report", "build_report", "frame_markdown", "records"]

#: Sections of the report: attribute, title, columns shown in text and Markdown.
_SECTIONS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "top",
        "Top fingerprints by total time",
        ("fingerprint", "calls", "total_ms", "share", "p95_ms", "max_ms"),
    ),
    (
        "n_plus_one",
        "N+1 suspects",
        ("fingerprint", "call_site", "scopes", "max_per_scope", "total_ms"),
    ),
    (
        "slowest",
        "Slowest statements",
        ("ts", "duration_ms", "kind", "fingerprint", "call_site", "route"),
    ),
    ("cache_tables", "Result cache per table", ("table", "hits", "misses", "hit_ratio")),
    ("routes", "Primary versus replica", ("route", "reads", "writes", "calls", "share_time")),
    ("pool", "Pool checkout waits", ("engine", "records", "waited", "p95_ms", "max_ms")),
)


@dataclass(frozen=True)
class Report:
    """The analysis of one log, ready to render.

    Attributes:
        source: where the log came from.
        totals: headline numbers.
        top: :func:`~sqlperf.analysis.top_fingerprints`.
        slowest: :func:`~sqlperf.analysis.slowest_queries`.
        n_plus_one: :func:`~sqlperf.analysis.n_plus_one_suspects`.
        cache_tables / cache_fingerprints: :func:`~sqlperf.analysis.cache_ratios`.
        routes: :func:`~sqlperf.analysis.route_split`.
        pool: :func:`~sqlperf.analysis.pool_waits`.
        suggestions: :func:`~sqlperf.analysis.suggestions`.
        timeline: :func:`~sqlperf.analysis.timeline`, for the plot.
        latency: :func:`~sqlperf.analysis.latency_histograms` of the top five.
    """

    source: str
    totals: Totals
    top: pd.DataFrame
    slowest: pd.DataFrame
    n_plus_one: pd.DataFrame
    cache_tables: pd.DataFrame
    cache_fingerprints: pd.DataFrame
    routes: pd.DataFrame
    pool: pd.DataFrame
    suggestions: list[Suggestion]
    timeline: pd.DataFrame
    latency: pd.DataFrame

    def headline(self) -> str:
        """One line: statements, time, fingerprints, records and span."""
        t = self.totals
        kinds = ", ".join(f"{n:,} {k}" for k, n in sorted(t.records.items())) or "no records"
        return (
            f"{t.statements:,} statements, {t.total_ms:,.1f} ms in the database, "
            f"{t.fingerprints:,} fingerprints, {kinds}, over {t.seconds:,.0f} s"
        )

    def to_json(self) -> str:
        """The report as JSON: the headline numbers, every table as a list of rows."""
        payload: dict[str, Any] = {
            "source": self.source,
            "totals": {**asdict(self.totals), "seconds": self.totals.seconds},
            "suggestions": [asdict(s) for s in self.suggestions],
        }
        for name in (
            "top",
            "slowest",
            "n_plus_one",
            "cache_tables",
            "cache_fingerprints",
            "routes",
            "pool",
            "timeline",
        ):
            payload[name] = records(getattr(self, name))
        return json.dumps(payload, indent=2, default=_json_default, allow_nan=False)

    def to_markdown(self) -> str:
        """The report as GitHub Markdown: headline, suggestions and one table per section."""
        lines = [f"# sqlperf report: {self.source}", "", self.headline(), ""]
        lines += ["## Suggestions", ""]
        lines += [f"{i}. **{s.action}**: {s.message}" for i, s in enumerate(self.suggestions, 1)]
        if not self.suggestions:
            lines.append("Nothing stands out.")
        for attribute, title, columns in _SECTIONS:
            lines += ["", f"## {title}", "", frame_markdown(getattr(self, attribute), columns)]
        return "\n".join(lines) + "\n"

    def to_html(self) -> str:
        """One self-contained HTML page: the tables and the plots, embedded as PNG."""
        from sqlperf.analysis import plots

        names = dict(zip(self.top["fingerprint_id"], self.top["fingerprint"], strict=True))
        figures = [
            ("Top fingerprints", plots.plot_top(self.top)),
            ("Latency distribution", plots.plot_latency(self.latency, names)),
            ("Timeline", plots.plot_timeline(self.timeline)),
            ("Primary versus replica", plots.plot_routes(self.routes)),
            ("Result cache", plots.plot_cache(self.cache_tables)),
        ]
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>sqlperf report: {html.escape(self.source)}</title>",
            f"<style>{_CSS}</style></head><body>",
            f"<h1>sqlperf report</h1><p class=source>{html.escape(self.source)}</p>",
            f"<p>{html.escape(self.headline())}</p>",
            "<h2>Suggestions</h2>",
        ]
        if self.suggestions:
            items = "".join(
                f"<li><b>{html.escape(s.action)}</b>: {html.escape(s.message)}</li>"
                for s in self.suggestions
            )
            parts.append(f"<ol>{items}</ol>")
        else:
            parts.append("<p>Nothing stands out.</p>")
        for title, figure in figures:
            encoded = base64.b64encode(plots.figure_png(figure)).decode("ascii")
            parts.append(
                f"<h2>{html.escape(title)}</h2>"
                f'<img alt="{html.escape(title)}" src="data:image/png;base64,{encoded}">'
            )
        for attribute, title, columns in _SECTIONS:
            frame = getattr(self, attribute)
            parts.append(f"<h2>{html.escape(title)}</h2>")
            parts.append(_frame_html(frame, columns))
        parts.append("</body></html>")
        return "\n".join(parts) + "\n"

    def print(self, console: Console | None = None) -> None:
        """Print the report as tables with rich (``pip install 'sqlperf[cli]'``)."""
        from rich.console import Console
        from rich.table import Table

        console = console or Console()
        console.print(f"[bold]sqlperf report[/bold]: {self.source}")
        console.print(self.headline())
        console.print()
        console.print("[bold]Suggestions[/bold]")
        for i, s in enumerate(self.suggestions, 1):
            console.print(f"{i}. [bold]{s.action}[/bold]: {s.message}", highlight=False)
        if not self.suggestions:
            console.print("Nothing stands out.")
        for attribute, title, columns in _SECTIONS:
            frame = getattr(self, attribute)
            table = Table(title=title, title_justify="left", show_lines=False)
            shown = [c for c in columns if c in frame.columns]
            for column in shown:
                numeric = frame[column].dtype.kind in "iuf"
                if column == "fingerprint":  # the whole shape is in --format json
                    table.add_column(column, overflow="ellipsis", no_wrap=True, max_width=70)
                elif numeric:  # never squeezed away by a long text column
                    table.add_column(column, justify="right", no_wrap=True, min_width=len(column))
                else:
                    table.add_column(column, overflow="fold")
            for row in frame.loc[:, shown].itertuples(index=False):
                table.add_row(*(_cell(v, column) for v, column in zip(row, shown, strict=True)))
            if frame.empty:
                console.print(f"\n{title}: none")
            else:
                console.print()
                console.print(table)


def build_report(source: LogSource | QueryLog, *, top: int = 10) -> Report:
    """Analyse a log once for :class:`Report`'s renderers.

    Args:
        source: the log (anything :func:`~sqlperf.analysis.load_log` reads).
        top: how many fingerprints and slow statements to list.
    """
    log = load_log(source)
    top_rows = top_fingerprints(log, n=top)
    return Report(
        source=log.source,
        totals=totals(log),
        top=top_rows,
        slowest=slowest_queries(log, n=top),
        n_plus_one=n_plus_one_suspects(log),
        cache_tables=cache_ratios(log, by="table"),
        cache_fingerprints=cache_ratios(log, by="fingerprint"),
        routes=route_split(log),
        pool=pool_waits(log),
        suggestions=suggestions(log),
        timeline=timeline(log),
        latency=latency_histograms(log, list(top_rows["fingerprint_id"].head(5))),
    )


# -- cells ------------------------------------------------------------------------------


def _cell(value: Any, column: str) -> str:
    """A value as text for a table: ratios as percentages, times to 0.01 ms."""
    if _is_missing(value):
        text = ""
    elif column in ("share", "share_time", "share_calls", "hit_ratio"):
        text = f"{float(value):.0%}"
    elif column == "p95_change":
        text = f"{float(value):+.0%}"
    elif column in ("total_ms_change", "calls_change"):
        text = f"{value:+,.2f}" if isinstance(value, float) else f"{value:+,}"
    elif isinstance(value, float):
        text = f"{value:,.2f}"
    elif isinstance(value, int):
        text = f"{value:,}"
    elif isinstance(value, datetime):
        text = value.strftime("%Y-%m-%d %H:%M:%S")
    else:
        text = str(value)
    return text


def _is_missing(value: Any) -> bool:
    try:
        import pandas as pd

        return bool(pd.isna(value)) if not isinstance(value, (list, tuple)) else False
    except (TypeError, ValueError):
        return False


def frame_markdown(frame: pd.DataFrame, columns: Sequence[str]) -> str:
    """``columns`` of ``frame`` as a GitHub Markdown table (``_none_`` when empty)."""
    shown = [c for c in columns if c in frame.columns]
    if frame.empty:
        return "_none_"
    escape: Callable[[str], str] = lambda text: text.replace("|", "\\|").replace("\n", " ")  # noqa: E731
    head = "| " + " | ".join(shown) + " |"
    rule = "|" + "|".join("---:" if frame[c].dtype.kind in "iuf" else "---" for c in shown) + "|"
    body = [
        "| " + " | ".join(escape(_cell(v, c)) for v, c in zip(row, shown, strict=True)) + " |"
        for row in frame.loc[:, shown].itertuples(index=False)
    ]
    return "\n".join([head, rule, *body])


def _frame_html(frame: pd.DataFrame, columns: Sequence[str]) -> str:
    shown = [c for c in columns if c in frame.columns]
    if frame.empty:
        return "<p>none</p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in shown)
    rows = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape(_cell(v, c))}</td>" for v, c in zip(row, shown, strict=True))
        + "</tr>"
        for row in frame.loc[:, shown].itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows of ``frame`` as JSON-ready dicts (missing values ``None``, times ISO 8601)."""
    return [{str(k): _plain(v) for k, v in row.items()} for row in rows_of(frame)]


def _plain(value: Any) -> Any:
    if _is_missing(value):
        return None
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0; } .source { color: #666; margin-top: 0.2em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } img { max-width: 100%; }
"""
