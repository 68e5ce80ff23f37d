"""Analyse a captured query log: where the time went, and what to fix.

Load a log with :func:`load_log` (a JSON Lines or Parquet file, or the
database tables), then ask it questions; each answer is a pandas DataFrame:

* :func:`top_fingerprints`, :func:`fingerprint_table`, :func:`latency_histograms`,
  :func:`timeline`, :func:`slowest_queries`, :func:`totals` (``summary.py``);
* :func:`n_plus_one_suspects`, :func:`cache_ratios`, :func:`route_split`,
  :func:`pool_waits`, :func:`suggestions` (``diagnosis.py``);
* :func:`diff_logs` between two logs (``diff.py``);
* :func:`build_report` gathers them for ``sqlperf report`` (``report.py``), and
  ``plots.py`` draws them with matplotlib.

The notebooks in ``notebooks/`` call these functions and plot the results.
pandas is needed (``pip install 'sqlperf[pandas]'``); matplotlib for plots
(``sqlperf[notebooks]``).

Example::

    from sqlperf.analysis import load_log, suggestions, top_fingerprints

    log = load_log("out/query_log.jsonl")
    print(top_fingerprints(log, n=5)[["fingerprint", "calls", "total_ms", "p95_ms"]])
    for s in suggestions(log):
        print(s.action, s.message)
"""

from sqlperf.analysis.diagnosis import (
    Suggestion,
    cache_ratios,
    n_plus_one_suspects,
    pool_waits,
    route_split,
    suggestions,
    tables_in_sql,
)
from sqlperf.analysis.diff import DIFF_COLUMNS, diff_logs
from sqlperf.analysis.log import LogSource, QueryLog, load_log
from sqlperf.analysis.report import Report, build_report
from sqlperf.analysis.summary import (
    FINGERPRINT_COLUMNS,
    Totals,
    fingerprint_table,
    latency_histograms,
    merged_histogram,
    slowest_queries,
    timeline,
    top_fingerprints,
    totals,
)

__all__ = [
    "DIFF_COLUMNS",
    "FINGERPRINT_COLUMNS",
    "LogSource",
    "QueryLog",
    "Report",
    "Suggestion",
    "Totals",
    "build_report",
    "cache_ratios",
    "diff_logs",
    "fingerprint_table",
    "latency_histograms",
    "load_log",
    "merged_histogram",
    "n_plus_one_suspects",
    "pool_waits",
    "route_split",
    "slowest_queries",
    "suggestions",
    "tables_in_sql",
    "timeline",
    "top_fingerprints",
    "totals",
]
