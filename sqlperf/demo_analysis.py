"""The analysis part of ``sqlperf demo``: the captured log turned into a report and notebooks.

After the recorder is closed, :func:`run_analysis_demo` reads the demo's
``query_log.jsonl`` back, writes ``report.html`` (what ``sqlperf report --format
html`` writes) and executes the notebooks of ``notebooks/`` on the log with
nbclient, writing the executed copies next to it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlperf.analysis import build_report
from sqlperf.exceptions import ConfigurationError, MissingDependency

__all__ = ["AnalysisDemoReport", "run_analysis_demo"]

REPORT_NAME = "report.html"


@dataclass(frozen=True, kw_only=True)
class AnalysisDemoReport:
    """What the analysis part of the demo wrote and found.

    Attributes:
        report_path: the HTML report.
        notebooks: the executed notebooks (empty when they were not run).
        skipped: why the notebooks were not run, if they were not.
        top_fingerprint: the fingerprint with the largest total time.
        n_plus_one: the call site of the first N+1 suspect, if any.
        suggestions: the report's suggestions, one line each.
        seconds: how long the analysis took.
    """

    report_path: Path
    notebooks: tuple[Path, ...]
    skipped: str | None
    top_fingerprint: str | None
    n_plus_one: str | None
    suggestions: tuple[str, ...]
    seconds: float


def run_analysis_demo(
    log_path: Path, out_dir: Path, *, notebooks: bool, emit: Callable[[str], None]
) -> AnalysisDemoReport:
    """Write the HTML report of ``log_path`` and, if asked, execute the notebooks on it."""
    began = time.perf_counter()
    report = build_report(log_path)
    report_path = out_dir / REPORT_NAME
    report_path.write_text(report.to_html(), encoding="utf-8")
    top = str(report.top["fingerprint"].iloc[0]) if not report.top.empty else None
    suspect = str(report.n_plus_one["call_site"].iloc[0]) if not report.n_plus_one.empty else None
    executed: list[Path] = []
    skipped: str | None = "not asked (--no-notebooks)"
    if notebooks:
        try:
            from sqlperf.analysis.notebooks import run_notebooks

            executed = run_notebooks(log_path.resolve(), out_dir)
            skipped = None
        except (MissingDependency, ConfigurationError) as err:
            skipped = str(err)
    result = AnalysisDemoReport(
        report_path=report_path,
        notebooks=tuple(executed),
        skipped=skipped,
        top_fingerprint=top,
        n_plus_one=suspect,
        suggestions=tuple(f"{s.action}: {s.message}" for s in report.suggestions),
        seconds=time.perf_counter() - began,
    )
    emit(f"analysis: {report.headline()}")
    if top is not None:
        emit(f"  top fingerprint by total time: {_short(top)}")
    if suspect is not None:
        emit(f"  N+1 suspect: {suspect}")
    for line in result.suggestions[:3]:
        emit(f"  suggestion: {_short(line, 160)}")
    emit(f"  report: {report_path}")
    for path in executed:
        emit(f"  notebook: {path}")
    if skipped is not None:
        emit(f"  notebooks not run: {skipped}")
    emit(f"  analysed in {result.seconds:.1f} s")
    return result


def _short(text: str, width: int = 100) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."
