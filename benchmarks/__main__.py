"""Run every benchmark: ``python -m benchmarks [--quick]``."""

from __future__ import annotations

import sys

from benchmarks import (
    bench_bulk,
    bench_cache,
    bench_capture,
    bench_engine,
    bench_pagination,
    bench_routing,
)


def main(argv: list[str]) -> int:
    """Run each benchmark module's ``main``; ``--quick`` uses tiny sizes."""
    quick = "--quick" in argv
    rc = bench_engine.main(
        ["--seconds", "0.2", "--rounds", "1", "--checkouts", "200"] if quick else []
    )
    rc |= bench_routing.main(
        ["--seconds", "0.2", "--rounds", "1", "--statements", "500"] if quick else []
    )
    rc |= bench_cache.main(["--orders", "2000", "--ops", "100", "--rounds", "1"] if quick else [])
    rc |= bench_capture.main(
        ["--queries", "300", "--pg-queries", "50", "--rounds", "2"] if quick else []
    )
    rc |= bench_pagination.main(
        ["--rows", "60000", "--rounds", "3", "--calls", "2"] if quick else []
    )
    rc |= bench_bulk.main(["--rows", "5000", "--rounds", "1"] if quick else [])
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
