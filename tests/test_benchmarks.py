"""Each benchmark runs at a tiny size, so it cannot rot. No timing is asserted here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import bench_engine


def test_bench_engine_runs(server_url: str, tmp_path: Path):
    out = tmp_path / "bench_engine.json"
    argv = ["--url", server_url, "--threads", "2", "--seconds", "0.05", "--rounds", "1"]
    assert bench_engine.main([*argv, "--checkouts", "20", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    (result,) = data["results"]
    assert set(result["throughput_qps"]) == {v.name for v in bench_engine.VARIANTS}
    assert all(q > 0 for q in result["throughput_qps"].values())
    assert result["checkout_vs_no_check"]["sqlalchemy defaults"] == 1.0
    assert result["kill_recovered"] is True


def test_bench_routing_runs(postgres_url: str, replica_url: str, tmp_path: Path):
    from benchmarks import bench_routing

    out = tmp_path / "bench_routing.json"
    argv = ["--statements", "50", "--threads", "2", "--seconds", "0.05", "--rounds", "1"]
    assert bench_routing.main([*argv, "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["overhead"]["ratio"]["plain Session on the replica engine"] == 1.0
    assert set(data["throughput"]["reads_per_s"]) == {"primary only", "primary + replica"}
    assert data["throughput"]["replica_reads"] > 0
    assert data["throughput"]["lag_checks"] < data["throughput"]["replica_reads"]


# The peer (dogpile.cache's Redis backend) calls redis-py's deprecated setex.
@pytest.mark.filterwarnings("ignore:Call to deprecated setex:DeprecationWarning")
def test_bench_cache_runs(postgres_url: str, redis_url: str, tmp_path: Path):
    from benchmarks import bench_cache

    out = tmp_path / "bench_cache.json"
    argv = ["--orders", "300", "--ops", "20", "--rounds", "1", "--out", str(out)]
    argv += ["--postgres-url", postgres_url, "--redis-url", redis_url]
    assert bench_cache.main(argv) == 0
    data = json.loads(out.read_text())
    assert set(data["results"]) == {"sqlite", "postgresql"}
    for scenarios in data["results"].values():
        assert set(scenarios) == {"pk", "join", "aggregate"}
        for result in scenarios.values():
            assert result["speedup_vs_uncached"]["uncached"] == 1.0
            assert {"sqlperf memory", "sqlperf redis", "dogpile redis"} <= set(result["us_per_op"])
    assert data["redis_round_trips"]["per_hit"] == 1.0  # counted, not timed
    assert data["redis_round_trips"]["per_commit_on_commit_path"] == 1.0
    assert all("met" in t for t in data["targets"].values())


def test_bench_capture_runs(postgres_url: str, tmp_path: Path):
    from benchmarks import bench_capture

    out = tmp_path / "bench_capture.json"
    argv = ["--queries", "50", "--pg-queries", "20", "--rounds", "2", "--pg-url", postgres_url]
    assert bench_capture.main([*argv, "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert set(data["results"]) == {"sqlite", "postgresql"}
    for result in data["results"].values():
        assert result["ratio_to_none"]["none"] == 1.0
        assert {"list-append", "sqltap", "recorder aggregates"} <= set(result["us_per_query"])
        aggregates, record_all = (
            result["recorder"]["recorder aggregates"],
            result["recorder"]["recorder record-all"],
        )
        assert (aggregates["recorded"], aggregates["fingerprints_computed"]) == (0, 1)
        assert record_all["recorded"] == record_all["statements"]  # nothing dropped or lost
    assert all("met" in t for t in data["targets"].values())


def test_bench_pagination_runs(postgres_url: str, tmp_path: Path):
    from benchmarks import bench_pagination

    out = tmp_path / "bench_pagination.json"
    argv = ["--rows", "60000", "--rounds", "2", "--calls", "2", "--pg-url", postgres_url]
    argv += ["--out", str(out)]
    argv += ["--sqlite-path", str(tmp_path / "pages.db")]
    assert bench_pagination.main(argv) == 0
    data = json.loads(out.read_text())
    assert set(data["results"]) == {"sqlite", "postgresql"}
    for result in data["results"].values():
        assert set(result["ms_per_page"]) == {"1", "1000"}  # 60,000 rows: no page 10,000
        for page in result["ms_per_page"].values():
            assert set(page) == {"offset", "sqlperf", "sqlakeyset"}
    assert all("met" in t for t in data["targets"].values())


def test_bench_bulk_runs(postgres_url: str, mysql_url: str, tmp_path: Path):
    from benchmarks import bench_bulk

    out = tmp_path / "bench_bulk.json"
    argv = ["--rows", "2000", "--rounds", "1", "--pg-url", postgres_url, "--mysql-url", mysql_url]
    argv += ["--sqlite-path", str(tmp_path / "bulk.db"), "--out", str(out)]
    assert bench_bulk.main(argv) == 0
    data = json.loads(out.read_text())
    assert set(data["results"]) == {"sqlite", "postgresql", "mysql"}
    ids = range(1, 2001)
    sum_qty = {  # what each operation leaves in the table (qty is i % 1000, +7 when changed)
        "insert": sum(i % 1000 for i in ids),
        "upsert": sum(i % 1000 + 7 * (i % 2) for i in ids),  # the odd ids were there
        "update": sum(i % 1000 + 7 for i in ids),
    }
    for db, result in data["results"].items():
        ops = result["operations"]
        assert set(ops) == set(bench_bulk.VARIANTS)  # 2,000 rows: no separate upsert_2000
        for name, variants in bench_bulk.VARIANTS.items():
            op = ops[name]
            expected = [v for v in variants if v != "raw_load_data" or db == "mysql"]
            assert set(op["seconds"]) == set(expected), (db, name)
            assert not op["not_run"]
            for variant in expected:
                assert op["seconds"][variant] > 0, (db, name, variant)
                # the benchmark checks the table after every run and raises when it differs
                after = op["table_after"][variant]
                assert after == op["expected_table"][variant], (db, name, variant)
                assert (after["rows"], after["sum_qty"]) == (2000, sum_qty[name])
        assert ops["insert"]["info"]["sqlperf"]["method"]
        assert ops["upsert"]["info"]["core_on_conflict"]["parameter_sets"] == 2000
    assert all("met" in t for t in data["targets"].values())
