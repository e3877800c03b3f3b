"""OpenVinoPredictor: reads the ONNX file directly, explicit and checked precision, clear errors."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from lvvit.metadata import MetadataError
from lvvit.synthetic import synthetic_batch
from runtimes import ConfigurationError, DeviceUnavailableError, ModelFileError, OrtPredictor

ov = pytest.importorskip("openvino", reason="OpenVINO is an optional extra: pip install 'lvvit-deploy[openvino]'")
from runtimes import OpenVinoPredictor  # noqa: E402

pytest_plugins = ["tests.runtime_fixtures"]


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


@pytest.mark.skipif("FP16" in _cpu_capabilities(), reason="this CPU runs f16")
def test_a_precision_the_cpu_does_not_run_raises(tiny):
    # OpenVINO's CPU plugin accepts the f16 hint and compiles at f32: the predictor refuses that silent swap.
    with pytest.raises(
        DeviceUnavailableError, match=r"precision='f16': OpenVINO's CPU plugin compiled tiny\.onnx at f32"
    ):
        OpenVinoPredictor(tiny.onnx, precision="f16")


def test_bf16_runs_or_says_why(tiny):
    try:
        predictor = OpenVinoPredictor(tiny.onnx, precision="bf16")
    except DeviceUnavailableError as exc:
        assert "bf16" in str(exc)
        return
    with predictor, OpenVinoPredictor(tiny.onnx) as fp32:
        assert predictor.describe()["precision"] == "bf16"
        x = synthetic_batch(2, fp32.preprocess_config)
        drift = np.abs(predictor.logits(x) - fp32.logits(x)).max()
        assert 0 < drift < 0.1  # bf16 really ran: not bit-identical to fp32, but close


def test_bad_arguments(tiny, tmp_path):
    with pytest.raises(ConfigurationError, match=r"unknown precision 'int4'; valid: f32, fp32, bf16, f16, fp16"):
        OpenVinoPredictor(tiny.onnx, precision="int4")
    with pytest.raises(DeviceUnavailableError, match=r"device='NPU': OpenVINO .* sees only \["):
        OpenVinoPredictor(tiny.onnx, device="NPU")
    data = tiny.onnx.read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelFileError, match=r"cut\.onnx: truncated ONNX file"):
        OpenVinoPredictor(tmp_path / "cut.onnx")


def test_concurrent_predict_matches_serial(ov_tiny, photos):
    jobs = [photos[i:] + photos[:i] for i in range(len(photos))]
    serial = [ov_tiny.predict(job) for job in jobs]
    results: list = [None] * len(jobs)

    def work(i: int) -> None:
        results[i] = ov_tiny.predict(jobs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == serial
