"""Smoke run of the reference benchmark (bench/bench_reference.py): it runs and writes its JSON.

Times are never asserted (machines are noisy); the figures the report is built from must be there.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_reference.py"


def test_reference_bench_smoke(tmp_path: Path, pg_database: str) -> None:
    spec = importlib.util.spec_from_file_location("bench_reference", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # its dataclasses look their module up
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    assert bench.main(["--users", "12", "--contacts", "3", "--events", "2", "--latency-ms", "1",
                       "--naive-users", "2", "--shard-size", "4", "--staging", pg_database, "--json", str(out)]) == 0
    report = json.loads(out.read_text(encoding="utf-8"))
    assert list(report["modes"]) == ["initial_full", "repeat_full", "delta_none", "delta_churn"]
    for mode in report["modes"].values():
        assert {"wall_s", "steps", "sql_total", "graph", "threecx", "latency_floor_s", "peak_rss_tree_mib"} <= set(mode)
        assert mode["threecx"]["writes"] == mode["threecx"]["real_changes"]
        assert all(step["sql"] >= 0 for step in mode["steps"])
    assert report["modes"]["repeat_full"]["threecx"]["writes"] == 0
    assert report["modes"]["delta_none"]["threecx"]["writes"] == 0
    assert report["naive"]["requests"] > 0
    assert report["mapped_in"] == "processes"
    for step in report["modes"]["initial_full"]["steps"]:  # several shards, each in a forked process
        if step["step"].startswith(("extract_contacts", "extract_calendars")):
            assert int(step["step"].rsplit(" x", 1)[1]) > 1
            assert step["sql"] > 0  # the workers' statements are counted
