"""Every real preset exports from the CLI and verifies against Paddle (slow: minutes on 2 cores)."""

from __future__ import annotations

import subprocess
import sys

import onnx
import pytest

from lvvit import list_presets
from lvvit.metadata import ModelMetadata
from tests.conftest import ROOT


def _export(tmp_path, *args: str) -> tuple[subprocess.CompletedProcess, str]:
    result = subprocess.run(
        [sys.executable, "-m", "exporters.onnx", *args, "--output", str(tmp_path) + "/"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    return result, result.stdout + result.stderr


def _metadata(path) -> ModelMetadata:
    model = onnx.load(str(path), load_external_data=False)
    return ModelMetadata.from_props({p.key: p.value for p in model.metadata_props}, str(path))


@pytest.mark.slow
@pytest.mark.parametrize("preset", list_presets())
def test_preset_exports_and_verifies(tmp_path, preset):
    result, log = _export(tmp_path, "--preset", preset)
    assert result.returncode == 0, log
    assert log.count("top-1 agreement 100.0%") == 2, log
    path = tmp_path / f"{preset}.onnx"
    meta = _metadata(path)
    assert meta.preset == preset and meta.batch is None
    path.unlink()  # the L presets are 600 MB each


@pytest.mark.slow
def test_custom_resolution_exports_and_verifies(tmp_path):
    result, log = _export(tmp_path, "--preset", "lvvit_s", "--resolution", "288")
    assert result.returncode == 0, log
    assert log.count("top-1 agreement 100.0%") == 2, log
    meta = _metadata(tmp_path / "lvvit_s_288.onnx")
    assert meta.resolution == 288 and meta.preprocess.resize_size == 320
