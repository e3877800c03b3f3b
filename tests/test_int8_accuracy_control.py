"""int8: SmoothQuant's leftover Multiply nodes folded (exact maths), and int8 with accuracy control."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from exporters.onnx.quantize import fold_smooth_quant_scales

from .test_export_fast_paths import photos  # noqa: F401 (the fixture: 38 real photographs and crops)

C = 8


def _smoothed_graph(shared_gamma: bool = False) -> onnx.ModelProto:
    """x -> LayerNorm -> Mul(s1) -> MatMul(W) -> Mul(c) -> Mul(s2) -> Relu, the SmoothQuant Muls named as NNCF does."""
    rng = np.random.default_rng(0)
    inits = {
        "norm.weight": rng.normal(1, 0.1, C),
        "norm.bias": rng.normal(0, 0.1, C),
        "w": rng.normal(0, 0.3, (C, C)),
        "half": np.array(0.5),
        "s1": rng.uniform(0.2, 3.0, (1, 1, C)),
        "s2": rng.uniform(0.2, 3.0, C),
    }
    nodes = [
        helper.make_node("LayerNormalization", ["x", "norm.weight", "norm.bias"], ["ln"], axis=-1, epsilon=1e-5),
        helper.make_node("Mul", ["ln", "s1"], ["ln_s"], name="LayerNormalization.0_0_0/nncf_smooth_quant"),
        helper.make_node("Shape", ["ln"], ["ln_shape"]),
        helper.make_node("MatMul", ["ln_s", "w"], ["h"]),
        helper.make_node("Mul", ["h", "half"], ["g"], name="Mul.2"),
        helper.make_node("Mul", ["g", "s2"], ["g_s"], name="Mul.2_0_0/nncf_smooth_quant"),
        helper.make_node("Relu", ["g_s"], ["y"]),  # in NNCF's graphs a QuantizeLinear reads the smoothed tensor
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5, C])]
    if shared_gamma:
        nodes.append(helper.make_node("Mul", ["x", "norm.weight"], ["other"]))
        outputs.append(helper.make_tensor_value_info("other", TensorProto.FLOAT, [2, 5, C]))
    graph = helper.make_graph(
        nodes, "smoothed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, C])], outputs,
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["y"], {"x": x})[0]


def test_smooth_quant_multiplies_fold_into_the_layernorm_and_the_constant_mul_exactly():
    proto = _smoothed_graph()
    folded = copy.deepcopy(proto)
    report = fold_smooth_quant_scales(folded)
    assert (report.into_layernorm, report.into_mul, report.left) == (1, 1, 0)
    onnx.checker.check_model(folded, full_check=True)
    assert [n.op_type for n in folded.graph.node] == ["LayerNormalization", "Shape", "MatMul", "Mul", "Relu"]
    assert {i.name for i in folded.graph.initializer} == {"norm.weight", "norm.bias", "w", "half"}  # names kept
    x = np.random.default_rng(1).normal(0, 2, (2, 5, C)).astype(np.float32)
    expected, got = _run(proto, x), _run(folded, x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_a_layernorm_whose_scale_is_shared_is_left_alone():
    folded = _smoothed_graph(shared_gamma=True)
    report = fold_smooth_quant_scales(folded)
    assert (report.into_layernorm, report.into_mul, report.left) == (0, 1, 1)
    assert sum("nncf_smooth_quant" in n.name for n in folded.graph.node) == 1
    weight = next(i for i in folded.graph.initializer if i.name == "norm.weight")
    np.testing.assert_array_equal(
        numpy_helper.to_array(weight), numpy_helper.to_array(_smoothed_graph().graph.initializer[0])
    )


def test_accuracy_control_reaches_the_gate_plain_int8_misses(photos, tmp_path):  # noqa: F811
    """A tiny random model calibrated on one photo: plain int8 fails the 99% gate on 38 photos; with accuracy
    control the export keeps what costs agreement in float and passes the same gate."""
    from exporters.errors import VerificationError
    from exporters.onnx import FastPath, export_onnx

    from .conftest import TINY

    common = {"resolution": 64, **TINY}
    plain_log: list[str] = []
    with pytest.raises(VerificationError, match=r"top-1 agreement >= 99\.0%"):
        export_onnx("lvvit_s", output=tmp_path / "plain/", log=plain_log.append, **common,
                    fast=FastPath(quantize="int8", calibration=photos, calibration_count=1))  # fmt: skip
    # the plain NNCF file has SmoothQuant: its Multiply after each of the 4 LayerNorms is folded away
    assert any("folded 4 SmoothQuant Multiply nodes into the LayerNorm" in m for m in plain_log), plain_log
    messages: list[str] = []
    fast = FastPath(quantize="int8", calibration=photos, calibration_count=1, accuracy_control=True)
    result = export_onnx("lvvit_s", output=tmp_path, fast=fast, log=messages.append, **common)
    assert result.path.name == "lvvit_s_64_int8_ac.onnx" and result.metadata.precision == "int8"
    assert result.checks[0].inputs == "real images" and result.checks[0].top1_agreement >= 0.99
    kept = next(m for m in messages if "accuracy control kept" in m)
    count = int(kept.split("kept ")[1].split(" of")[0])
    assert count >= 1 and ".weight" in kept  # the layers kept in float, by their state-dict names
    proto = onnx.load(str(result.path))
    assert "with accuracy control; weighted layers kept in float: " in proto.graph.doc_string
    assert sum(n.op_type == "DequantizeLinear" for n in proto.graph.node) > 10  # still an int8 graph


def test_accuracy_control_on_the_trained_digits_model_agrees_on_held_out_images(tmp_path):
    """Calibrated and controlled on training digits; >= 99% top-1 agreement with Paddle fp32 on the 450 held-out."""
    import shutil

    from exporters.onnx import FastPath, export_onnx
    from lvvit import create_model
    from lvvit.preprocess import image_files, preprocess_batch
    from runtimes import OrtPredictor
    from validation.datasets import digits

    digits.write_folder(tmp_path / "digits", log=lambda m: None)
    calibration = tmp_path / "calibration"  # every 5th training image: all ten classes, none held out
    calibration.mkdir()
    for i, path in enumerate(image_files(tmp_path / "digits" / "train")[::5]):
        shutil.copy(path, calibration / f"{i:04d}_{path.name}")
    messages: list[str] = []
    fast = FastPath(quantize="int8", calibration=calibration, calibration_count=32, accuracy_control=True)
    result = export_onnx(digits.digits_spec(), weights=digits.WEIGHTS, output=tmp_path / "m/", fast=fast,
                         log=messages.append)  # fmt: skip
    assert any("accuracy control kept" in m for m in messages)
    held_out = image_files(tmp_path / "digits" / "val")
    assert len(held_out) == 450
    spec = digits.digits_spec()
    x = preprocess_batch(held_out, spec.preprocess)
    from exporters.onnx.verify import paddle_logits

    expected = paddle_logits(create_model(spec, weights=digits.WEIGHTS), x).argmax(1)
    with OrtPredictor(result.path, batch_size=64) as predictor:
        got = predictor.logits(x).argmax(1)
    assert (got == expected).mean() >= 0.99


def test_accuracy_control_needs_nncf_int8():
    from exporters.errors import ExportError
    from exporters.onnx import FastPath

    with pytest.raises(ExportError, match="--accuracy-control applies to --quantize int8 with --quantizer nncf"):
        FastPath(accuracy_control=True)
    with pytest.raises(ExportError, match="--accuracy-control applies to --quantize int8 with --quantizer nncf"):
        FastPath(quantize="int8", calibration=".", quantizer="ort", accuracy_control=True)
