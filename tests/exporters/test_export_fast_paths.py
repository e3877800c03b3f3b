"""The fast export paths: ONNX Runtime fusion, fp16, int8 with its accuracy gate (tiny models)."""

from __future__ import annotations

import pytest

from exporters.errors import ExportError, VerificationError
from exporters.onnx import FastPath, export_onnx
from tests.conftest import TINY

RES = 64
QUIET = {"log": lambda message: None}


def _export(tmp_path, fast: FastPath, **kwargs):
    return export_onnx("lvvit_s", resolution=RES, output=tmp_path, fast=fast, **{**TINY, **QUIET, **kwargs})


def _op_counts(path) -> dict[str, int]:
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def test_optimize_fuses_every_block_and_still_verifies(tmp_path):
    messages = []
    result = _export(tmp_path, FastPath(optimize=True), log=messages.append)
    assert result.path.name == "lvvit_s_64_ort.onnx"
    assert "      fused Attention 2/2, GELU 2/2, SkipLayerNormalization 4/4" in messages
    assert any("expanded 4 SkipLayerNormalization and 2 BiasGelu" in m for m in messages)
    ops = _op_counts(result.path)
    # attention stays fused; skip-LN and bias-GELU are written back as the ops the CPU runs faster
    assert ops["Attention"] == 2 and ops["Gelu"] == 2 and ops["LayerNormalization"] == 5
    assert "SkipLayerNormalization" not in ops and "BiasGelu" not in ops
    assert "Softmax" not in ops and "Erf" not in ops
    assert result.metadata.graph == "ort-fused" and result.metadata.precision == "fp32"
    assert all(c.max_abs <= 1e-4 and c.top1_agreement == 1.0 for c in result.checks)


def test_cpu_sessions_keep_the_expanded_ops(tmp_path):
    """ONNX Runtime re-fuses Add+LayerNorm at session start unless the predictor disables that pass by name."""
    import onnxruntime as ort

    from runtimes.ort_providers import CPU_DISABLED_FUSIONS

    path = _export(tmp_path, FastPath(optimize=True)).path

    def optimized_ops(disabled) -> dict[str, int]:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(tmp_path / "seen.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)
        return _op_counts(tmp_path / "seen.onnx")

    refused = optimized_ops([])  # without the list ONNX Runtime fuses again: the names in it are live passes
    assert refused.get("SkipLayerNormalization", 0) >= 1 and refused.get("BiasGelu", 0) == 2, refused
    kept = optimized_ops(list(CPU_DISABLED_FUSIONS))
    assert "SkipLayerNormalization" not in kept and "BiasGelu" not in kept and kept["Attention"] == 2


def test_fp16_graph_keeps_float32_io_and_verifies(tmp_path):
    import onnxruntime as ort

    result = _export(tmp_path, FastPath(precision="fp16"))
    ops = _op_counts(result.path)  # GPUs keep every fusion
    assert ops["SkipLayerNormalization"] == 4 and ops["BiasGelu"] == 2
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float)" and session.get_outputs()[0].type == "tensor(float)"
    assert result.metadata.precision == "fp16"
    assert all(c.max_abs <= 5e-2 and c.top1_agreement == 1.0 for c in result.checks)


def test_int8_is_calibrated_on_real_images_and_gated(tmp_path, photo_folder):
    (photo_folder / "broken.jpg").write_bytes(b"not a jpeg")
    messages = []
    result = _export(
        tmp_path, FastPath(quantize="int8", calibration=photo_folder, calibration_count=8, min_int8_agreement=0.5),
        log=messages.append,
    )  # fmt: skip
    assert result.metadata.precision == "int8"
    assert any("skipped calibration file" in m and "broken.jpg" in m for m in messages)
    assert any("calibrating int8 (nncf) on 8 images" in m and "held-out" in m for m in messages)
    (check,) = result.checks
    assert check.inputs == "real images" and check.batch == 38
    assert check.top1_agreement >= 0.5
    assert "QuantizeLinear" in _op_counts(result.path)
    if check.top1_agreement < 0.99:  # a random-init model's margins are tiny; the default gate then fails
        with pytest.raises(VerificationError, match=r"lvvit_s_64_int8\.onnx: .*top-1 agreement >= 99\.0%"):
            _export(tmp_path / "strict", FastPath(quantize="int8", calibration=photo_folder, calibration_count=8))
    assert not (tmp_path / "strict" / "lvvit_s_64_int8.onnx").exists()


def test_onnx_runtime_quantizer_is_available_too(tmp_path, photo_folder):
    messages = []
    result = _export(
        tmp_path, FastPath(quantize="int8", calibration=photo_folder, calibration_count=4, min_int8_agreement=0.0,
                           quantizer="ort"),
        log=messages.append,
    )  # fmt: skip
    assert any("calibrating int8 (ort) on 4 images" in m for m in messages)
    assert "QuantizeLinear" in _op_counts(result.path)


def test_fast_path_options_are_checked():
    with pytest.raises(ExportError, match="--quantize int8 needs --images DIR"):
        FastPath(quantize="int8")
    with pytest.raises(ExportError, match="--precision must be one of fp32, fp16"):
        FastPath(precision="bf16")
    with pytest.raises(ExportError, match="--quantizer must be one of nncf, ort"):
        FastPath(quantize="int8", calibration=".", quantizer="tensorrt")
    with pytest.raises(ExportError, match=r"--min-int8-agreement must be within \[0, 1\], got 1.5"):
        FastPath(min_int8_agreement=1.5)
    with pytest.raises(ExportError, match="applies to the portable fp32 graph"):
        FastPath(quantize="int8", calibration=".", optimize=True)
