"""Helpers shared by the benchmarks."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool


def create_rows_table(url: str, table: str, rows: int = 1000) -> None:
    """(Re)create ``table`` (id, name) on ``url`` with ``rows`` rows."""
    engine = create_engine(url, poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
        conn.execute(text(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, name VARCHAR(40))"))
        conn.execute(
            text(f"INSERT INTO {table} (id, name) VALUES (:id, :name)"),
            [{"id": i, "name": f"row {i}"} for i in range(1, rows + 1)],
        )
    engine.dispose()


def drop_table(url: str, table: str) -> None:
    """Drop ``table`` on ``url`` if it exists."""
    engine = create_engine(url, poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
    engine.dispose()


def run_threads(op: Callable[[int], object], threads: int, seconds: float) -> tuple[float, int]:
    """Call ``op(i)`` in a loop from ``threads`` threads for ``seconds``.

    Returns (operations per second, operations). The first error of any thread
    is raised after all have stopped.
    """
    stop = time.perf_counter() + seconds
    counts = [0] * threads
    errors: list[BaseException] = []

    def work(slot: int) -> None:
        n = 0
        try:
            while time.perf_counter() < stop:
                op(n)
                n += 1
        except BaseException as err:
            errors.append(err)
        counts[slot] = n

    started = time.perf_counter()
    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise errors[0]
    return sum(counts) / (time.perf_counter() - started), sum(counts)


RESULTS = Path(__file__).parent / "results"


def report_targets(
    name: str, results: dict[str, Any], targets: dict[str, tuple[float, float]], out: Path | None
) -> Path:
    """Judge each ``label: (value, at most)`` target, print it, write results and targets as JSON.

    Returns the JSON file: ``out``, or ``results/<name>-<timestamp>.json``.
    """
    judged = {
        label: {"value": round(value, 3), "target": limit, "met": value <= limit}
        for label, (value, limit) in targets.items()
    }
    for label, t in judged.items():
        print(f"  {'met ' if t['met'] else 'MISS'} {label}: {t['value']} (at most {t['target']})")
    path = out or RESULTS / f"{name}-{datetime.now():%Y%m%d-%H%M%S}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"results": results, "targets": judged}, indent=2))
    print(f"\nwrote {path}")
    return path
