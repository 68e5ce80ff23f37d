"""Run every benchmark: ``python -m benchmarks [--quick]``."""

from __future__ import annotations

import sys

from benchmarks import bench_engine


def main(argv: list[str]) -> int:
    """Run each benchmark module's ``main``; ``--quick`` uses tiny sizes."""
    quick = ["--seconds", "0.2", "--rounds", "1", "--checkouts", "200"] if "--quick" in argv else []
    return bench_engine.main(quick)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
