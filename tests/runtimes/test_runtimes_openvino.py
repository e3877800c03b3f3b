"""OpenVinoPredictor: reads the ONNX file directly, explicit and checked precision, clear errors."""

from __future__ import annotations

import re

import numpy as np
import pytest

from lvvit.common.cpuinfo import has_native_bf16
from lvvit.metadata import MetadataError
from lvvit.synthetic import synthetic_batch
from runtimes import ConfigurationError, DeviceUnavailableError, ModelFileError, OrtPredictor

ov = pytest.importorskip("openvino", reason="OpenVINO is an optional extra: pip install 'lvvit-deploy[openvino]'")
from runtimes import OpenVinoPredictor  # noqa: E402


def _cpu_capabilities() -> list[str]:
    return list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


@pytest.fixture(scope="module")
def ov_tiny(tiny):
    with OpenVinoPredictor(tiny.onnx, threads=1) as predictor:
        yield predictor


def test_fp32_matches_onnxruntime(tiny, ov_tiny, photos):
    with OrtPredictor(tiny.onnx) as reference:
        x = synthetic_batch(3, reference.preprocess_config)
        assert np.abs(ov_tiny.logits(x) - reference.logits(x)).max() < 1e-5
        assert [p.class_ids for p in ov_tiny.predict(photos)] == [p.class_ids for p in reference.predict(photos)]


def test_describe_records_precision_and_device(ov_tiny):
    described = ov_tiny.describe()
    assert described["runtime"] == "openvino" and described["precision"] == "fp32"
    assert described["device"] == "CPU" and described["execution_devices"] == ["CPU"]
    assert described["preprocess"]["from"] == "metadata" and described["threads"] == 1
    assert described["versions"]["openvino (distribution)"] == ov.__version__.split("-")[0]


def test_fixed_batch_and_no_metadata(tiny):
    with OpenVinoPredictor(tiny.onnx_fixed) as fixed:
        assert fixed.batch_size == 2
        assert fixed.logits(synthetic_batch(3, fixed.preprocess_config)).shape == (3, 10)
    with pytest.raises(MetadataError, match=r"tiny_bare\.onnx: has no LV-ViT kit metadata"):
        OpenVinoPredictor(tiny.onnx_bare)
    with OpenVinoPredictor(tiny.onnx_bare, preset="lvvit_s", resolution=64) as bare:
        assert bare.describe()["preprocess"]["from"] == "preset lvvit_s"


# CPU-dependent: OpenVINO's CPU plugin runs f16 only where the CPU has native half-precision math (AMX-FP16,
# AVX512-FP16) and bf16 only with AVX512-BF16 or AMX. Each branch is checked where the CPU takes it.


@pytest.mark.skipif("FP16" in _cpu_capabilities(), reason="this CPU runs f16: see test_f16_runs_where_the_cpu_has_it")
def test_a_precision_the_cpu_does_not_run_raises(tiny):
    # The plugin accepts the f16 hint and compiles at another precision (f32, or bf16 on CPUs with it):
    # the predictor refuses that silent swap, naming what was asked and what was compiled.
    with pytest.raises(DeviceUnavailableError) as refused:
        OpenVinoPredictor(tiny.onnx, precision="f16")
    message = str(refused.value)
    match = re.search(r"precision='f16': OpenVINO's CPU plugin compiled tiny\.onnx at (\w+) instead", message)
    assert match, message
    assert match.group(1) in {"f32", "bf16"}
    assert "choose a precision it supports" in message


@pytest.mark.skipif("FP16" not in _cpu_capabilities(), reason="this CPU has no native f16 (FP16 capability)")
def test_f16_runs_where_the_cpu_has_it(tiny):
    with OpenVinoPredictor(tiny.onnx, precision="f16") as predictor, OrtPredictor(tiny.onnx) as fp32:
        assert predictor.describe()["precision"] == "fp16"
        x = synthetic_batch(2, fp32.preprocess_config)
        assert np.abs(predictor.logits(x) - fp32.logits(x)).max() < 0.1


def test_the_kits_bf16_detection_agrees_with_openvino():
    # The bench decides whether to run its bf16 row from /proc/cpuinfo; OpenVINO decides from CPUID.
    assert has_native_bf16() == ("BF16" in _cpu_capabilities())


@pytest.mark.skipif(not has_native_bf16(), reason="this CPU has no avx512_bf16/amx_bf16: see the test below")
def test_bf16_runs_where_the_cpu_has_it(tiny):
    with OpenVinoPredictor(tiny.onnx, precision="bf16") as predictor, OpenVinoPredictor(tiny.onnx) as fp32:
        assert predictor.describe()["precision"] == "bf16"
        x = synthetic_batch(2, fp32.preprocess_config)
        drift = np.abs(predictor.logits(x) - fp32.logits(x)).max()
        assert 0 < drift < 0.1  # bf16 really ran: not bit-identical to fp32, but close


@pytest.mark.skipif(has_native_bf16(), reason="this CPU has native bf16: see the test above")
def test_bf16_is_refused_where_the_cpu_lacks_it(tiny):
    with pytest.raises(DeviceUnavailableError, match=r"precision='bf16': OpenVINO's CPU plugin compiled tiny\.onnx at"):
        OpenVinoPredictor(tiny.onnx, precision="bf16")


def test_bad_arguments(tiny, tmp_path):
    with pytest.raises(ConfigurationError, match=r"unknown precision 'int4'; valid: f32, fp32, bf16, f16, fp16"):
        OpenVinoPredictor(tiny.onnx, precision="int4")
    with pytest.raises(DeviceUnavailableError, match=r"device='NPU': OpenVINO .* sees only \["):
        OpenVinoPredictor(tiny.onnx, device="NPU")
    data = tiny.onnx.read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelFileError, match=r"cut\.onnx: truncated ONNX file"):
        OpenVinoPredictor(tmp_path / "cut.onnx")
