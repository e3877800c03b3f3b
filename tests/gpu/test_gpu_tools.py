"""The GPU run's tools, dry-run on the CPU: `gpu/stage.py --tiny-only` and `gpu/bench.py --device cpu`.

CI has no GPU, so without this the one script a lent GPU machine runs could break unseen. The staged tiny
model goes through every benchmark path (ONNX Runtime fp16 and fp32 bound to buffers, `OrtPredictor.logits`,
the authors' PyTorch model eager fp32 / AMP and `torch.compile`), and the report says what ran.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
PATHS = {
    "ort fp16 (I/O binding)",
    "ort fp32 (I/O binding)",
    "ort fp16, OrtPredictor.logits",
    "torch eager fp32",
    "torch eager AMP",
    "torch.compile AMP",
}


@pytest.fixture(scope="module")
def tiny_stage(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gpu-stage")
    subprocess.run([sys.executable, "gpu/stage.py", str(out), "--tiny-only"], cwd=ROOT, check=True)
    return out


def test_stage_writes_models_and_the_cpu_reference(tiny_stage):
    from runtimes import OrtPredictor

    manifest = json.loads((tiny_stage / "manifest.json").read_text())
    tiny = manifest["models"]["tiny"]
    assert set(manifest["files"]) == {"tiny.onnx", "tiny_fp16.onnx", "tiny_inputs.npy", "tiny_cpu_logits.npy"}
    with OrtPredictor(tiny_stage / tiny["fp32"]) as predictor:
        expected = predictor.logits(np.load(tiny_stage / tiny["inputs"]))
    np.testing.assert_array_equal(np.load(tiny_stage / tiny["cpu_logits"]), expected)
    assert tiny["reference"]["device"] == "cpu" and "random" in manifest["weights"]


def test_bench_smoke_run_on_the_cpu_times_every_path(tiny_stage, tmp_path):
    pytest.importorskip("tlt")
    command = [
        sys.executable, "gpu/bench.py", "--stage", str(tiny_stage), "--model", "tiny", "--device", "cpu",
        "--batch-sizes", "1,2", "--compile-batch-sizes", "2", "--warmup", "1", "--repeats", "1", "--round-s", "0.01",
        "--out", str(tmp_path),
    ]  # fmt: skip
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True)
    result = json.loads((tmp_path / "bench.json").read_text())
    rows = {(r["path"], r["batch"]): r for r in result["rows"]}
    assert {path for path, _ in rows} == PATHS, [r["note"] for r in result["rows"] if r["note"]]
    assert all(r["images_per_s"] > 0 and not r["note"] for r in rows.values())
    assert rows[("torch eager AMP", 1)]["ratio"] == 1.0 and rows[("torch eager AMP", 1)]["precision"] == "bfloat16"
    assert result["fp16_dense_peak_tflops"] is None and result["goal"]["measured"] is None  # no batch 128 here
    assert "| ort fp16 (I/O binding) | fp16 | 2 |" in (tmp_path / "bench.md").read_text()


def test_bench_rejects_bad_batch_sizes(tmp_path):
    done = subprocess.run(
        [sys.executable, "gpu/bench.py", "--batch-sizes", "0,2"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 2 and "--batch-sizes must be positive integers, got '0,2'" in done.stderr


def test_the_fp16_peak_is_chosen_by_the_device_name(monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "gpu" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # its dataclasses look their module up there
    spec.loader.exec_module(bench)
    peaks = {name: bench.fp16_dense_peak(name) for name in (
        "NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA H100 NVL", "NVIDIA H200", "NVIDIA H200 NVL", "NVIDIA A100",
    )}  # fmt: skip
    assert peaks == {
        "NVIDIA H100 80GB HBM3": 989.5,
        "NVIDIA H100 PCIe": 756.5,
        "NVIDIA H100 NVL": 835.5,
        "NVIDIA H200": 989.5,
        "NVIDIA H200 NVL": 835.5,
        "NVIDIA A100": None,  # not in the table: the share is not reported rather than guessed
    }


def test_the_gpu_scripts_import_no_test_code():
    """gpu/ runs on a machine that has the kit, not its tests: the tiny architecture is `lvvit.presets.TINY_ARCH`
    and the authors' model is `lvvit.authors.authors_model`."""
    import ast

    for script in sorted((ROOT / "gpu").glob("*.py")):
        tree = ast.parse(script.read_text())
        imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        imported += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [m for m in imported if m == "tests" or m.startswith("tests.")], script.name
