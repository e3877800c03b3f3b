"""The load benchmark command runs bounded on loopback and reports every level (its numbers are not asserted:
it is a measurement, not a timed test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytest.importorskip("fastapi")


def test_bench_command(tiny, tmp_path):
    out = tmp_path / "bench.json"
    command = [sys.executable, "-m", "serving", "bench", str(tiny.onnx), "--threads", "1", "--concurrency", "1", "3"]
    command += ["--requests", "30", "--seconds", "20", "--max-batch", "4", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [level["concurrency"] for level in report["levels"]] == [1, 3]
    for level in report["levels"]:
        assert level["requests"] == 30 and level["errors"] == {}
        assert sum(level["batch_sizes"].values()) >= 30 / 4  # every image ran, in batches of at most 4
        assert 0 < level["p50_ms"] <= level["p95_ms"] <= level["p99_ms"]
        # the server's own clock (its /metrics): a request takes at least its predictor call
        assert 0 < level["server_predictor_ms"] <= level["server_request_ms"]
        assert level["client_cpu_share"] > 0
    assert set(report["predictor_throughput"]) == {"1", "2", "4"}
    # measured again after the server stopped, to show drift (the ratios keep the first measurement)
    assert report["predictor_after_batch1_ms"] > 0 and set(report["predictor_after_throughput"]) == {"1", "2", "4"}
    assert report["server_exit"] == 0 and report["rss_after_mb"] > 0
    assert set(report["ratios"]) == {
        "server_best_over_predictor_best",
        "p50_c1_minus_predictor_batch1_ms",
        "server_overhead_c1_ms",
    }
    assert "| concurrency | img/s | p50 ms |" in result.stdout
    assert "server best / predictor best:" in result.stdout
    assert "server overhead at concurrency 1" in result.stdout
    assert "in process again after the server" in result.stdout
