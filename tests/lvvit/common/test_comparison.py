"""`lvvit.common.metrics`, the one evaluation core: exact merge, JSON round trips, and a gate that NaN never passes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from lvvit.common.gate import DRIFT_LIMITS, GateCheck, ToleranceError, check_gate
from lvvit.common.metrics import ComparisonError, DriftStats, ImageErrors, drift_stats, image_errors, summarize_drift


def _logits(n: int, classes: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ref = rng.normal(0, 3, (n, classes)).astype(np.float32)
    noise = rng.normal(0, 1e-3, ref.shape) * rng.uniform(0.1, 10, (n, 1))  # some images drift far more
    return ref, (ref + noise).astype(np.float32)


def test_shards_merge_exactly_into_the_single_run_summary():
    ref, got = _logits(203)
    whole = drift_stats(ref, got, tie_abs=1e-3)
    cuts = [0, 17, 64, 65, 150, 203]
    parts = [image_errors(ref[a:b], got[a:b]) for a, b in zip(cuts, cuts[1:], strict=False)]
    # through JSON, as shards are stored
    stored = [json.loads(json.dumps([p.row(i) for i in range(len(p))])) for p in parts]
    restored = [
        ImageErrors.from_rows(rows, p.classes, p.histogram.tolist()) for rows, p in zip(stored, parts, strict=True)
    ]
    merged = summarize_drift(ImageErrors.concat(restored), tie_abs=1e-3)
    assert merged == whole  # p99, median, histogram, worst images: all equal, not approximately
    assert merged.p99_abs == np.percentile(np.abs(got.astype(np.float64) - ref).max(axis=1), 99)


def test_drift_stats_round_trip_through_json():
    ref, got = _logits(9)
    stats = drift_stats(ref, got)
    assert DriftStats.from_dict(json.loads(json.dumps(stats.to_dict()))) == stats
    with pytest.raises(ComparisonError, match=r"lack \['max_abs'\]"):
        DriftStats.from_dict({k: v for k, v in stats.to_dict().items() if k != "max_abs"})


def test_nan_logits_fail_every_drift_limit_that_reads_them():
    ref, got = _logits(4)
    got[2, 3] = np.nan
    stats = drift_stats(ref, got).to_dict()
    checks = check_gate(DRIFT_LIMITS, {"max_abs": 1e9, "p99_abs": 1e9, "min_cosine": 0.0, "max_kl": 1e9}, stats)
    assert [c.name for c in checks if c.passed] == []
    inf = got.copy()
    inf[2, 3] = np.inf
    assert not all(c.passed for c in check_gate(DRIFT_LIMITS, {"max_abs": 1e9}, drift_stats(ref, inf).to_dict()))


@pytest.mark.parametrize("bound", [float("nan"), float("inf"), -1e-4])
def test_non_finite_or_negative_limits_are_refused(bound):
    stats = drift_stats(*_logits(3)).to_dict()
    with pytest.raises(ToleranceError, match="max_abs: .* is not a finite number >= 0"):
        check_gate(DRIFT_LIMITS, {"max_abs": bound}, stats)


def test_gate_check_round_trips_and_describes_its_numbers():
    (check,) = check_gate(DRIFT_LIMITS, {"max_abs": 1e-6}, {"max_abs": 2.5e-3})
    assert not check.passed and check.describe() == "max_abs = 0.0025 (limit <= 1e-06)"
    assert GateCheck.from_dict(json.loads(json.dumps(check.to_dict()))) == check


def test_shapes_that_differ_are_refused():
    with pytest.raises(ComparisonError, match=r"shapes \[2, 3\] and \[2, 4\]"):
        image_errors(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ComparisonError, match=r"models with \[10, 12\] classes"):
        ImageErrors.concat([image_errors(*_logits(2, 10)), image_errors(*_logits(2, 12))])


def test_the_core_imports_no_paddle():
    code = "import sys, lvvit.common.metrics; assert 'paddle' not in sys.modules, 'paddle imported'"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
