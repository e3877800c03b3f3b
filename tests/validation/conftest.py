"""Fixtures shared by the validation tests: the tiny LV-ViT trained on scikit-learn's digits, its data and runners."""

from __future__ import annotations

import subprocess
import sys

import pytest

from exporters.onnx import export_onnx
from tests.conftest import ROOT
from validation import ModelSource, RuntimeOptions, build_runners
from validation.datasets import digits

QUIET = {"log": lambda message: None}


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    run = subprocess.run(
        [sys.executable, "-m", "validation", "digits", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr
    assert "python -m validation accuracy" in run.stdout
    return out


@pytest.fixture(scope="session")
def digits_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("digits_model") / "digits.onnx"
    return export_onnx(digits.digits_spec(), weights=digits.WEIGHTS, output=path, **QUIET).path


@pytest.fixture(scope="module")
def runners(digits_onnx):
    source = ModelSource(spec=digits.digits_spec(), weights=digits.WEIGHTS, onnx=digits_onnx)
    reference, others = build_runners(["ort"], source, RuntimeOptions(batch_size=64), lambda m: None)
    yield reference, others
    for runner in [reference, *others]:
        runner.close()
