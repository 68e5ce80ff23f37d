"""Routing benchmark: what ``RoutingSession`` costs per statement, and what a replica buys.

Measured in one process, interleaved round by round, reported as ratios:

* per-statement overhead (median of per-round paired differences): a one-row
  primary-key read through ``RoutingSession`` (routed to a replica) against
  the same read through a plain ``Session`` bound to that replica engine, on
  SQLite (a read-only engine on the same file stands in as the replica, so the
  database work is identical and small); also with a pending read-your-writes
  token whose pin window has passed, and ``get_bind`` alone;
* read throughput on PostgreSQL from many threads: ``RoutingSession`` with the
  primary only against primary plus the streaming replica, with the number of
  lag/replay-position checks those reads caused (the common path must not pay
  a round trip).

Run: ``python -m benchmarks.bench_routing`` (``make bench`` runs all).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from benchmarks._common import create_rows_table, drop_table, run_threads
from sqlperf import ConsistencyToken, RoutingSession, create_optimized_engine, routing_stats

RESULTS = Path(__file__).parent / "results"
TABLE = "sqlperf_bench_routing"
PG_PRIMARY = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
PG_REPLICA = "postgresql+psycopg2://postgres@127.0.0.1:5433/test"
READ = text(f"SELECT name FROM {TABLE} WHERE id = :id")


def _per_statement_us(session: Session, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        session.execute(READ, {"id": i % 1000 + 1}).first()
    return (time.perf_counter() - start) / n * 1e6


def overhead(statements: int, rounds: int) -> dict[str, Any]:
    """Per-statement cost of routing on SQLite, in microseconds, medians of ``rounds``."""
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/routing.db"
        create_rows_table(url, TABLE)
        primary = create_optimized_engine(url)
        replica = create_optimized_engine(url, read_only=True)
        routed = sessionmaker(class_=RoutingSession, primary=primary, replicas=[replica])
        old_token = str(ConsistencyToken(time.time() - 60))
        variants: dict[str, Callable[[], Session]] = {
            "plain Session on the replica engine": lambda: Session(replica),
            "RoutingSession (read to replica)": routed,
            "RoutingSession with a passed token": lambda: routed(consistency_token=old_token),
        }
        samples: dict[str, list[float]] = {name: [] for name in variants}
        try:
            names = list(variants)
            for i in range(rounds):
                # Rotate the order each round so no variant always runs first.
                for name in names[i % len(names) :] + names[: i % len(names)]:
                    with variants[name]() as s:
                        _per_statement_us(s, 200)  # warm caches and the connection
                        samples[name].append(_per_statement_us(s, statements))
            with routed() as s:
                start = time.perf_counter()
                for _ in range(statements):
                    s.get_bind(clause=READ)
                get_bind_us = (time.perf_counter() - start) / statements * 1e6
            checks = routing_stats(replica).health_checks
        finally:
            primary.dispose()
            replica.dispose()
    med = {k: statistics.median(v) for k, v in samples.items()}
    base_name = "plain Session on the replica engine"
    base = med[base_name]
    # Overhead: the median of per-round differences against the plain session of
    # the same round, which cancels the machine's drift between rounds.
    paired = {
        k: statistics.median(a - b for a, b in zip(v, samples[base_name], strict=True))
        for k, v in samples.items()
    }
    return {
        "database": "sqlite file (read-only engine as replica)",
        "statements_per_round": statements,
        "rounds": rounds,
        "us_per_statement": med,
        "overhead_us": paired,
        "ratio": {k: v / base for k, v in med.items()},
        "get_bind_us": get_bind_us,
        "replica_health_checks": checks,
    }


def _read_throughput(factory: Any, threads: int, seconds: float) -> tuple[float, int]:
    def op(n: int) -> None:
        with factory() as s:
            s.execute(READ, {"id": n % 1000 + 1}).first()

    return run_threads(op, threads, seconds)


def throughput(threads: int, seconds: float, rounds: int) -> dict[str, Any]:
    """Read throughput on PostgreSQL: primary only against primary plus replica."""
    create_rows_table(PG_PRIMARY, TABLE)
    primary = create_optimized_engine(PG_PRIMARY)
    replica = create_optimized_engine(PG_REPLICA, read_only=True)
    try:
        deadline = time.monotonic() + 30
        while True:  # wait until the table has replayed
            with replica.connect() as conn:
                if conn.execute(text("SELECT to_regclass(:t)"), {"t": TABLE}).scalar():
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the benchmark table never reached the replica")
            time.sleep(0.05)
        variants = {
            "primary only": sessionmaker(class_=RoutingSession, primary=primary, replicas=[]),
            "primary + replica": sessionmaker(
                class_=RoutingSession, primary=primary, replicas=[replica]
            ),
        }
        samples: dict[str, list[float]] = {name: [] for name in variants}
        checks_before = routing_stats(replica).health_checks
        replica_reads = 0
        for _ in range(rounds):
            for name, factory in variants.items():
                qps, n = _read_throughput(factory, threads, seconds)
                samples[name].append(qps)
                if name == "primary + replica":
                    replica_reads += n
        checks = routing_stats(replica).health_checks - checks_before
    finally:
        primary.dispose()
        replica.dispose()
        drop_table(PG_PRIMARY, TABLE)
    med = {k: statistics.median(v) for k, v in samples.items()}
    return {
        "database": "postgresql primary 5432 + streaming replica 5433, same machine",
        "threads": threads,
        "seconds_per_run": seconds,
        "rounds": rounds,
        "reads_per_s": med,
        "ratio_vs_primary_only": {k: v / med["primary only"] for k, v in med.items()},
        "replica_reads": replica_reads,
        "lag_checks": checks,
        "lag_checks_per_1000_reads": checks / replica_reads * 1000 if replica_reads else None,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write ``benchmarks/results/bench_routing.json``."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--statements", type=int, default=10000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_routing.json")
    args = parser.parse_args(argv)
    over = overhead(args.statements, args.rounds)
    tput = throughput(args.threads, args.seconds, args.rounds)

    print(f"\nper-statement cost, {over['database']} (median of {over['rounds']} rounds)")
    print(f"{'variant':<38}{'us/stmt':>10}{'overhead us':>13}{'ratio':>8}")
    for name, us in over["us_per_statement"].items():
        print(
            f"{name:<38}{us:>10.1f}{over['overhead_us'][name]:>13.1f}{over['ratio'][name]:>7.2f}x"
        )
    print(
        f"get_bind alone: {over['get_bind_us']:.2f} us; replica lag checks during it: "
        f"{over['replica_health_checks']}"
    )
    print(f"\nread throughput, {tput['database']} ({tput['threads']} threads)")
    for name, qps in tput["reads_per_s"].items():
        print(f"{name:<38}{qps:>10.0f} reads/s{tput['ratio_vs_primary_only'][name]:>8.2f}x")
    print(f"lag/replay checks: {tput['lag_checks']} for {tput['replica_reads']:,} replica reads")
    target = over["overhead_us"]["RoutingSession (read to replica)"] <= 5.0
    print(f"target (routing adds <= 5 us per statement): {'met' if target else 'NOT met'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"benchmark": "routing", "overhead": over, "throughput": tput, "target_met": target},
            indent=2,
        )
    )
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
