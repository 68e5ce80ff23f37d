"""``benchmarks/bench_app.py`` runs at a tiny size, so it cannot rot. No timing is asserted here."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import bench_app


def test_bench_app_runs(tmp_path: Path):
    out = tmp_path / "bench_app.json"
    argv = ["--requests", "40", "--rounds", "1", "--warmup", "10", "--clients", "2"]
    assert bench_app.main([*argv, "--orders", "200", "--out", str(out)]) == 0  # 0: no errors
    data = json.loads(out.read_text())
    configs = data["results"]["configs"]
    assert set(configs) == {"plain", "sqlperf", "sqlperf+capture"}
    for name, config in configs.items():
        for workload in ("read-heavy", "read-hot", "mixed"):
            result = config[workload]
            assert result["rps"] > 0, (name, workload)
            assert result["requests"] == 40
            assert result["errors"] == 0
    assert configs["plain"]["read-heavy"]["cache_hit_ratio"] is None
    assert configs["sqlperf"]["read-heavy"]["cache_hit_ratio"] > 0
    assert configs["sqlperf+capture"]["mixed"]["db_ms_mean"] is not None  # Server-Timing read
    assert data["results"]["health"]["plain"]["mode"] == "plain"
    assert all("met" in t for t in data["targets"].values())
