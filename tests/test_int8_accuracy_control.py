"""int8: SmoothQuant's leftover Multiply nodes folded (exact maths), and int8 with accuracy control."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from exporters.onnx.quantize import fold_smooth_quant_scales

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


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory):
    from validation.datasets import digits

    out = tmp_path_factory.mktemp("digits")
    digits.main(["--out", str(out)])
    return out
