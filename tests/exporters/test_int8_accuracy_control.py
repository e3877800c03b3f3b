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


def test_smooth_quant_multiplies_fold_into_the_layernorm_exactly_and_stay_after_a_constant_mul():
    """The Mul after the LayerNorm folds into it; the one after `Mul(h, 0.5)` stays, because folding it there made
    the scalar a vector and OpenVINO's int8 lvvit_s ran about 20% slower."""
    proto = _smoothed_graph()
    folded = copy.deepcopy(proto)
    report = fold_smooth_quant_scales(folded)
    assert (report.into_layernorm, report.left) == (1, 1)
    onnx.checker.check_model(folded, full_check=True)
    assert [n.op_type for n in folded.graph.node] == ["LayerNormalization", "Shape", "MatMul", "Mul", "Mul", "Relu"]
    assert {i.name for i in folded.graph.initializer} == {"norm.weight", "norm.bias", "w", "half", "s2"}  # names kept
    half = next(i for i in folded.graph.initializer if i.name == "half")
    assert numpy_helper.to_array(half).shape == ()  # the constant Mul keeps its scalar
    x = np.random.default_rng(1).normal(0, 2, (2, 5, C)).astype(np.float32)
    expected, got = _run(proto, x), _run(folded, x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_a_layernorm_whose_scale_is_shared_is_left_alone():
    folded = _smoothed_graph(shared_gamma=True)
    report = fold_smooth_quant_scales(folded)
    assert (report.into_layernorm, report.left) == (0, 2)
    assert sum("nncf_smooth_quant" in n.name for n in folded.graph.node) == 2
    weight = next(i for i in folded.graph.initializer if i.name == "norm.weight")
    np.testing.assert_array_equal(
        numpy_helper.to_array(weight), numpy_helper.to_array(_smoothed_graph().graph.initializer[0])
    )


def test_accuracy_control_reaches_the_gate_plain_int8_misses(photo_folder, tmp_path):  # noqa: F811
    """A tiny random model calibrated on one photo: plain int8 fails the 99% gate on 38 photos; with accuracy
    control the export keeps what costs agreement in float and passes the same gate."""
    from exporters.errors import VerificationError
    from exporters.onnx import FastPath, export_onnx
    from tests.conftest import TINY

    common = {"resolution": 64, **TINY}
    plain_log: list[str] = []
    # SmoothQuant on
    plain = FastPath(quantize="int8", calibration=photo_folder, calibration_count=1, int8_target="vnni")
    with pytest.raises(VerificationError, match=r"top-1 agreement >= 99\.0%"):
        export_onnx("lvvit_s", output=tmp_path / "plain/", log=plain_log.append, **common, fast=plain)
    # the plain NNCF file has SmoothQuant: its Multiply after each of the 4 LayerNorms is folded away
    assert any("folded 4 SmoothQuant Multiply nodes into the LayerNorm" in m for m in plain_log), plain_log
    messages: list[str] = []
    fast = FastPath(
        quantize="int8", calibration=photo_folder, calibration_count=1, accuracy_control=True, int8_target="vnni"
    )
    result = export_onnx("lvvit_s", output=tmp_path, fast=fast, log=messages.append, **common)
    assert result.path.name == "lvvit_s_64_int8_ac_vnni.onnx" and result.metadata.precision == "int8"
    assert result.checks[0].inputs == "real images" and result.checks[0].top1_agreement >= 0.99
    kept_line = next(m for m in messages if "accuracy control kept" in m)
    stages = tuple(kept_line.split("in float (")[1].split(")")[0].split(", "))
    assert len(stages) >= 1 and ".weight" in kept_line  # the stages, and the layers kept in float by their names
    steps = [m for m in messages if m.lstrip().startswith("step ")]
    assert len(steps) >= len(stages) + 1 and "nothing in float (0.0% of the MACs)" in steps[0]  # plain int8 first
    assert result.metadata.float_stages == stages
    from runtimes import read_model_metadata

    assert read_model_metadata(result.path).float_stages == stages  # the file says what it kept
    proto = onnx.load(str(result.path))
    doc = "int8 (nncf) for vnni with accuracy control (fine stages, agreement on ort); stages kept in float: "
    assert doc + ", ".join(stages) in proto.graph.doc_string
    from exporters.onnx.stage_map import control_ends, partition

    # the stages of the file itself (the graph NNCF quantized is the export's rewrite: its own node names)
    parts = partition(proto, control_ends(proto, TINY["depth"], fine=True))
    in_float = {name for stage in stages for name in parts[stage]}
    dequantized = {n.output[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    layers = [n for n in proto.graph.node if n.op_type in ("Conv", "MatMul", "Gemm")]
    dequantized_into = {n.name for n in layers if dequantized & set(n.input)}
    assert dequantized_into or len(stages) == len(parts)  # some int8 is left unless every stage is float
    assert not dequantized_into & in_float  # no layer kept in float reads an int8 tensor
    assert {n.name for n in layers} & in_float  # and the stages kept hold layers
    # NNCF's files ship each key transpose split, as OpenVINO's attention kernel takes it (see split_key_transposes)
    assert _key_transposes(proto) == [] and len(_key_transposes(proto, (0, 1, 3, 2))) == TINY["depth"]


def test_the_smooth_quant_multiplies_can_be_kept_for_comparison(photo_folder, tmp_path):  # noqa: F811
    """`--keep-smooth-quant-muls` writes NNCF's graph as it made it, beside the folded default, under its own name."""
    from exporters.onnx import FastPath, export_onnx
    from tests.conftest import TINY

    common = {"resolution": 64, "log": lambda m: None, "verify": False, **TINY}
    files = {}
    for fold in (True, False):
        fast = FastPath(quantize="int8", calibration=photo_folder, calibration_count=2, fold_smooth_quant=fold,
                        int8_target="vnni")  # SmoothQuant smooths the int8 linear layers' inputs  # fmt: skip
        files[fold] = export_onnx("lvvit_s", output=tmp_path, fast=fast, **common).path
    assert (files[True].name, files[False].name) == ("lvvit_s_64_int8_vnni.onnx", "lvvit_s_64_int8_unfolded_vnni.onnx")
    smoothing = {fold: sum("nncf_smooth_quant" in n.name for n in onnx.load(str(path)).graph.node)
                 for fold, path in files.items()}  # fmt: skip
    assert smoothing[False] == smoothing[True] + 4  # 4 folded into the LayerNorms


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


def test_accuracy_control_needs_int8_from_either_quantizer():
    from exporters.errors import ExportError
    from exporters.onnx import FastPath

    with pytest.raises(ExportError, match="--accuracy-control applies to --quantize int8"):
        FastPath(accuracy_control=True)
    ort = FastPath(quantize="int8", calibration=".", quantizer="ort", accuracy_control=True)
    assert ort.tag == "_int8_ortq_ac"


def test_onnx_runtimes_quantizer_keeps_the_named_stages_in_float(tiny_fp32, photo_folder):  # noqa: F811
    """Accuracy control with `--quantizer ort`: the MatMuls of the stages named stay float (found by their weights,
    since ONNX Runtime's pre-processing renames nodes), every other linear layer is int8; on target avx2 the
    weights are 7-bit (reduce_range), on vnni 8-bit."""
    from exporters.onnx.quantize import _quantize_ort, find_calibration_images, float_layers
    from exporters.onnx.stage_map import control_ends, partition
    from lvvit import resolve_preset

    proto = tiny_fp32
    config = resolve_preset("lvvit_s", 32).preprocess
    calibration = find_calibration_images(photo_folder, config, 2)
    parts = partition(proto, control_ends(proto, LOOP_ARCH["depth"], fine=True))
    kept = parts["blocks.1.mlp"]
    weights_of = {}
    for target in ("vnni", "avx2"):
        quantized = _quantize_ort(proto, calibration, config, ignored=kept, target=target)
        in_float, weighted = float_layers(quantized)
        assert {"blocks.1.mlp.fc1.weight", "blocks.1.mlp.fc2.weight"} <= set(in_float)
        assert not any(w.startswith(("blocks.0.", "blocks.1.attn")) for w in in_float), in_float
        assert weighted > len(in_float)
        int8 = {i.name: onnx.numpy_helper.to_array(i) for i in quantized.graph.initializer
                if i.name.endswith("_quantized") and i.data_type == onnx.TensorProto.INT8}  # fmt: skip
        weights_of[target] = max(int(abs(v.astype(np.int32)).max()) for v in int8.values())
    assert weights_of["vnni"] == 127 and weights_of["avx2"] <= 64  # reduce_range: 7-bit weights


# -- the loop itself, with a stand-in quantizer that damages chosen blocks unless they are kept in float ------------

LOOP_ARCH = {"embed_dim": 64, "depth": 3, "num_heads": 4, "num_classes": 10}


@pytest.fixture(scope="module")
def tiny_fp32(tmp_path_factory):
    from exporters.onnx import export_onnx

    path = tmp_path_factory.mktemp("ac") / "tiny.onnx"
    return onnx.load(str(export_onnx("lvvit_s", resolution=32, output=path, log=lambda m: None, **LOOP_ARCH).path))


def _damaging(blocks: tuple[int, ...], scale: float = 0.5, half: str = ""):
    """A `quantize(proto, ignored)` that adds noise to every weight of `blocks` (of their `half`, "attn" or "mlp",
    when given) whose node is not ignored."""

    def quantize(proto: onnx.ModelProto, ignored: list[str]) -> onnx.ModelProto:
        users = {i: n.name for n in proto.graph.node for i in n.input}
        damaged = copy.deepcopy(proto)
        rng = np.random.default_rng(1)
        for init in damaged.graph.initializer:
            block = init.name.split(".")[1] if init.name.startswith("blocks.") else None
            in_half = not half or f".{half}." in init.name
            if block is not None and int(block) in blocks and init.name.endswith(".weight") and users[init.name] \
                    and in_half:  # fmt: skip
                if users[init.name] not in ignored:
                    w = numpy_helper.to_array(init)
                    init.CopyFrom(numpy_helper.from_array(w + rng.normal(0, scale * w.std() + 1e-3, w.shape)
                                                          .astype(np.float32), init.name))  # fmt: skip
        return damaged

    return quantize


def _images_and_classes(proto: onnx.ModelProto, count: int = 24):
    import onnxruntime as ort

    images = np.random.default_rng(0).normal(0, 1, (count, 3, 32, 32)).astype(np.float32)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return images, session.run(None, {"image": images})[0].argmax(1)


def test_every_node_belongs_to_exactly_one_stage(tiny_fp32):
    from exporters.onnx.stage_map import graph_depth, map_stages, stage_nodes

    assert graph_depth(tiny_fp32) == (3, True)
    parts = stage_nodes(tiny_fp32, map_stages(tiny_fp32, 3))
    assert list(parts) == ["stem", "blocks.0", "blocks.1", "blocks.2", "head"]
    named = [name for names in parts.values() for name in names]
    assert sorted(named) == sorted(n.name for n in tiny_fp32.graph.node)  # a partition: no node twice, none left
    initializers = {i.name for i in tiny_fp32.graph.initializer}
    where = {name: stage for stage, names in parts.items() for name in names}
    for node in tiny_fp32.graph.node:
        for weight in (i for i in node.input if i in initializers and i.endswith(".weight")):
            owner = "head" if weight.startswith(("head.", "aux_head.", "norm.")) else (
                "stem" if weight.startswith("patch_embed.") else ".".join(weight.split(".")[:2])
            )  # fmt: skip
            if owner != "blocks.0" or not weight.startswith("blocks.0.norm1"):  # block 0's first norm reads the stem
                assert where[node.name] == owner, (node.name, weight)
    for i in range(3):  # attention's two activation-by-activation products sit in their block
        activation_matmuls = [n for n in tiny_fp32.graph.node if n.name in set(parts[f"blocks.{i}"])
                              and n.op_type == "MatMul" and not set(n.input) & initializers]  # fmt: skip
        assert len(activation_matmuls) == 2


def test_the_loop_keeps_the_damaged_block_first_and_stops_at_the_target(tiny_fp32):
    from exporters.onnx.accuracy_control import quantize_until_agreement

    images, classes = _images_and_classes(tiny_fp32)
    messages: list[str] = []
    result = quantize_until_agreement(tiny_fp32, _damaging((1,)), images, classes, 0.99, log=messages.append,
                                      fine=False)  # fmt: skip
    assert result.steps[0].kept == () and result.steps[0].agreement < 0.99  # the damage costs agreement
    first = result.steps[0].errors
    assert first["blocks.1"] > 0.01  # the error each stage adds by itself: only block 1's, none propagated
    assert first["stem"] == first["blocks.0"] == first["blocks.2"] == 0.0 and first["head"] < 1e-6
    assert result.reached and result.kept == ("blocks.1",) and result.agreement == 1.0
    assert "keeping blocks.1 in float next" in "\n".join(messages)


def test_max_float_stages_stops_the_loop_below_the_target(tiny_fp32):
    from exporters.onnx.accuracy_control import quantize_until_agreement

    images, classes = _images_and_classes(tiny_fp32)
    messages: list[str] = []
    result = quantize_until_agreement(tiny_fp32, _damaging((0, 2)), images, classes, 0.99, max_float_stages=1,
                                      log=messages.append, fine=False)  # fmt: skip
    assert not result.reached and len(result.steps) == 2 and result.steps[1].kept[0] in ("blocks.0", "blocks.2")
    best = max(range(2), key=lambda i: (result.steps[i].agreement, -i))  # the best step, the earlier among equals
    assert result.chosen == best and result.kept == result.steps[best].kept and result.agreement < 0.99
    assert "no step reached 99.0% (--max-float-stages 1); the best was step" in messages[-1]
    full = quantize_until_agreement(tiny_fp32, _damaging((0, 2)), images, classes, 0.99, fine=False)
    assert full.reached and sorted(full.kept) == ["blocks.0", "blocks.2"]


def test_when_no_step_reaches_the_target_the_best_step_is_kept(tiny_fp32):
    """Keeping block 1 in float makes things worse here (the stand-in then damages block 2 far more): the result is
    the first step's graph, not the last one's."""
    from exporters.onnx.accuracy_control import quantize_until_agreement
    from exporters.onnx.stage_map import map_stages, stage_nodes

    block1 = set(stage_nodes(tiny_fp32, map_stages(tiny_fp32, 3))["blocks.1"])
    mild, harsh = _damaging((1,), scale=0.3), _damaging((2,), scale=3.0)

    def quantize(proto, ignored):
        return harsh(proto, []) if block1 & set(ignored) else mild(proto, [])

    images, classes = _images_and_classes(tiny_fp32)
    result = quantize_until_agreement(tiny_fp32, quantize, images, classes, 0.99, max_float_stages=1, fine=False)
    assert [s.kept for s in result.steps] == [(), ("blocks.1",)]
    assert result.steps[1].agreement < result.steps[0].agreement < 0.99
    assert result.chosen == 0 and result.kept == () and not result.reached
    expected = mild(tiny_fp32, [])
    assert [i.raw_data for i in result.proto.graph.initializer] == [i.raw_data for i in expected.graph.initializer]


def test_a_graph_whose_stages_cannot_be_found_is_refused_by_name(tiny_fp32):
    from exporters.errors import ExportError
    from exporters.onnx.accuracy_control import quantize_until_agreement

    renamed = copy.deepcopy(tiny_fp32)  # the norm that marks block 0's residual stream, under another name
    for init in renamed.graph.initializer:
        if init.name == "blocks.1.norm1.weight":
            init.name = "renamed"
    for node in renamed.graph.node:
        node.input[:] = ["renamed" if i == "blocks.1.norm1.weight" else i for i in node.input]
    images, classes = _images_and_classes(tiny_fp32, count=2)
    with pytest.raises(
        ExportError, match=r"accuracy control needs the graph.s stages: stage blocks\.0\.mlp has no tensor"
    ):
        quantize_until_agreement(renamed, _damaging(()), images, classes, 0.99)
    with pytest.raises(ExportError, match="needs images with their Paddle classes, got 2 and 1"):
        quantize_until_agreement(tiny_fp32, _damaging(()), images, classes[:1], 0.99)


def test_a_nan_stage_is_kept_first():
    from exporters.onnx.accuracy_control import _next_stage

    errors = {"stem": 0.1, "blocks.0": float("nan"), "head": 0.5}
    assert _next_stage(list(errors), errors) == "blocks.0"
    assert _next_stage(["stem", "head"], errors) == "head"


def test_the_backward_pass_puts_back_in_int8_what_the_target_does_not_need_costliest_first():
    from exporters.onnx.accuracy_control import ControlledInt8, ControlStep, _drop_unneeded

    macs = {"stem.rest": 1233, "head": 76, "blocks.5.attn": 146, "blocks.0.mlp": 174}

    def backward(forward: list[tuple[str, ...]], needed: set[str]) -> tuple[ControlledInt8, list, list[str]]:
        """The forward pass's steps (the last reached the target), then the backward pass over them."""
        steps = [ControlStep(k, 1.0 if k == forward[-1] else 0.9, {}, 0.0) for k in forward]
        result = ControlledInt8(onnx.ModelProto(), steps, chosen=len(steps) - 1, reached=True)
        tried: list[tuple[str, ...]] = []

        def step(stages: list[str]) -> onnx.ModelProto:
            tried.append(tuple(stages))
            agreement = float("nan") if "blocks.0.mlp" in stages else 1.0 if needed <= set(stages) else 0.9
            result.steps.append(ControlStep(tuple(stages), agreement, {}, 0.0))
            return onnx.ModelProto(doc_string=",".join(stages))

        messages: list[str] = []
        _drop_unneeded(result, step, macs, 0.99, messages.append)
        return result, tried, messages

    # the stem first (the costliest): the target holds without it, so it goes back to int8; the other two are needed
    result, tried, messages = backward([(), ("stem.rest",), ("stem.rest", "blocks.5.attn"),
                                        ("stem.rest", "blocks.5.attn", "head")], {"head", "blocks.5.attn"})  # fmt: skip
    assert tried == [("blocks.5.attn", "head"), ("head",), ("blocks.5.attn",)]
    assert result.kept == ("blocks.5.attn", "head") and result.proto.doc_string == "blocks.5.attn,head"
    assert result.reached and result.agreement == 1.0
    assert "stem.rest back in int8" in messages[0] and "blocks.5.attn stays in float" in messages[1]
    # a set the forward pass measured is not measured again: without the head is its step 2
    result, tried, _ = backward([(), ("stem.rest",), ("stem.rest", "head")], {"stem.rest", "head"})
    assert tried == [("head",)] and result.kept == ("stem.rest", "head")
    # a NaN agreement never passes: nothing is put back
    result, tried, _ = backward([(), ("head",), ("head", "blocks.0.mlp")], set())
    assert tried == [("blocks.0.mlp",)] and result.kept == ("head", "blocks.0.mlp")


@pytest.mark.parametrize("graph", ["fp32", "int8"])
def test_each_stage_costs_the_multiply_accumulates_of_its_matrix_products(tiny_fp32, tiny_int8, graph):
    from dataclasses import replace

    from exporters.onnx.accuracy_control import _stage_macs
    from exporters.onnx.stage_map import control_ends, partition
    from lvvit.macs import count_macs
    from lvvit.presets import get_preset

    proto = tiny_fp32 if graph == "fp32" else tiny_int8
    image = np.zeros((1, 3, 32, 32), np.float32)
    fine = _stage_macs(proto, partition(proto, control_ends(proto, 3, fine=True)), image)
    whole = _stage_macs(proto, partition(proto, control_ends(proto, 3)), image)
    total = count_macs(replace(get_preset("lvvit_s").arch, **LOOP_ARCH), 32)
    assert sum(fine.values()) - fine["input"] == sum(whole.values()) == total  # the model's own count, exactly
    assert fine["input"] == fine["stem.conv1"] > 0  # a float input leaves the first convolution in float
    assert sum(fine[f"stem.{part}"] for part in ("conv1", "conv2", "conv3", "proj")) == whole["stem"]
    assert fine["stem.conv2"] == fine["stem.conv3"] > fine["stem.conv1"]  # two 3x3 convolutions of the same width
    for i in range(3):
        assert fine[f"blocks.{i}.attn"] + fine[f"blocks.{i}.mlp"] == whole[f"blocks.{i}"] == whole["blocks.0"]
    assert fine["head"] == whole["head"] > 0


def test_max_float_stages_needs_accuracy_control():
    from exporters.errors import ExportError
    from exporters.onnx import FastPath

    with pytest.raises(ExportError, match="--keep-smooth-quant-muls applies to --quantize int8 with --quantizer nncf"):
        FastPath(quantize="int8", calibration=".", quantizer="ort", fold_smooth_quant=False)
    with pytest.raises(ExportError, match="--max-float-stages applies to --accuracy-control"):
        FastPath(quantize="int8", calibration=".", max_float_stages=2)
    with pytest.raises(ExportError, match="must be at least 1, got 0"):
        FastPath(quantize="int8", calibration=".", accuracy_control=True, max_float_stages=0)


def test_the_float_stages_are_metadata_checked_when_read():
    from lvvit import resolve_preset
    from lvvit.metadata import MetadataError, ModelMetadata

    spec = resolve_preset("lvvit_s")
    meta = ModelMetadata("lvvit_s", spec.preprocess, 1000, None, 17, {}, {}, precision="int8",
                         float_stages=("stem", "blocks.3"))  # fmt: skip
    props = meta.to_props()
    assert ModelMetadata.from_props(props).float_stages == ("stem", "blocks.3")
    assert "lvvit.float_stages" not in ModelMetadata("lvvit_s", spec.preprocess, 1000, None, 17, {}, {}).to_props()
    for bad in ("[1, 2]", '"stem"', '["' + "x" * 300 + '"]', "[" + ",".join(['"a"'] * 2000) + "]"):
        with pytest.raises(MetadataError, match="lvvit.float_stages"):
            ModelMetadata.from_props({**props, "lvvit.float_stages": bad}, "m.onnx")


def test_accuracy_control_refuses_a_gate_without_enough_held_out_images(photo_folder, tmp_path):  # noqa: F811
    """One calibration image among five: four held out, too few for a 99% gate to mean anything."""
    import shutil

    from exporters.errors import ExportError
    from exporters.onnx import FastPath, export_onnx
    from exporters.onnx.quantize import MIN_HELD_OUT
    from tests.conftest import TINY

    few = tmp_path / "few"
    few.mkdir()
    for path in sorted(photo_folder.glob("*.jpg"))[:5]:
        shutil.copy(path, few / path.name)
    fast = FastPath(quantize="int8", calibration=few, calibration_count=1, accuracy_control=True)
    messages: list[str] = []
    with pytest.raises(ExportError, match=rf"has 5 readable images and --calibration-count uses 1, which holds out 4; "
                                          rf"its gate needs at least {MIN_HELD_OUT} held-out images"):  # fmt: skip
        export_onnx("lvvit_s", resolution=32, output=tmp_path / "out/", fast=fast, log=messages.append, **TINY)
    assert not any("accuracy control:" in m for m in messages)  # refused before any calibration
    assert not list(tmp_path.rglob("*.onnx"))  # nothing written


def test_accuracy_control_says_how_many_images_were_held_out(photo_folder, tmp_path):  # noqa: F811
    from exporters.onnx.quantize import find_calibration_images
    from lvvit import resolve_preset

    calibration = find_calibration_images(photo_folder, resolve_preset("lvvit_s", 32).preprocess, 4)
    calibration.require_held_out()  # 38 photographs, 4 calibrate: 34 held out
    assert (len(calibration.used), calibration.held_out) == (4, len(calibration.evaluation) - 4)
    assert calibration.held_out >= 16


# -- finer stages: the input's quantization, each convolution of the stem, each block's two halves ------------------

STEM = ["stem.conv1", "stem.conv2", "stem.conv3", "stem.proj"]
FINE = ["input", *STEM, *(f"blocks.{i}.{h}" for i in range(3) for h in ("attn", "mlp")), "head"]


def _owner(weight: str) -> str:
    """The fine stage a state-dict weight belongs to."""
    if weight.startswith("patch_embed."):
        layer = weight.split(".")[1]  # conv1..3, bn1..3, proj
        return f"stem.{'proj' if layer == 'proj' else 'conv' + layer[-1]}"
    if weight.startswith("blocks."):
        block, layer = weight.split(".")[1:3]
        return f"blocks.{block}.{'attn' if layer in ('norm1', 'attn') else 'mlp'}"
    return "head"


@pytest.fixture(scope="module")
def tiny_int8(tiny_fp32, tmp_path_factory):
    """NNCF's int8 of the loop's tiny model (every linear layer and convolution quantized, the input too)."""
    from exporters.onnx.quantize import _quantize_nncf, find_calibration_images
    from lvvit import resolve_preset
    from validation.datasets.photos import write_sample_photos

    pytest.importorskip("skimage")
    folder = tmp_path_factory.mktemp("fine_photos")
    write_sample_photos(folder, variants=1)
    config = resolve_preset("lvvit_s", 32).preprocess
    quantized, _ = _quantize_nncf(tiny_fp32, find_calibration_images(folder, config, 4), config, target="vnni")
    return quantized


@pytest.mark.parametrize("graph", ["fp32", "int8"])
def test_the_fine_stages_partition_the_graph(tiny_fp32, tiny_int8, graph):
    from exporters.onnx.stage_map import control_ends, partition

    proto = tiny_fp32 if graph == "fp32" else tiny_int8
    parts = partition(proto, control_ends(proto, 3, fine=True))
    assert list(parts) == FINE
    named = [name for names in parts.values() for name in names]
    assert sorted(named) == sorted(n.name for n in proto.graph.node)  # every node in exactly one stage
    where = {name: stage for stage, names in parts.items() for name in names}
    initializers = {i.name for i in proto.graph.initializer}
    from exporters.onnx.stage_map import _Graph

    weights = _Graph(proto)
    for node in proto.graph.node:
        if node.op_type not in ("Conv", "MatMul", "LayerNormalization", "BatchNormalization") or len(node.input) < 2:
            continue
        weight = weights.weight_name(node.input[1])
        if weight is None or weight not in initializers | {weights.weight_name(n.output[0]) for n in proto.graph.node
                                                           if n.op_type == "DequantizeLinear"}:  # fmt: skip
            continue
        expected = _owner(weight)
        assert where[node.name] == expected, (node.name, weight, where[node.name])
    quantizes_image = [n.name for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "image"]
    if graph == "fp32":
        assert parts["input"] == [] and not quantizes_image  # a float graph reads the image as it is
    else:  # the image's QuantizeLinear and DequantizeLinear, nothing else
        assert len(quantizes_image) == 1 and len(parts["input"]) == 2 and quantizes_image[0] in parts["input"]


def test_the_loop_keeps_only_the_damaged_half_block(tiny_fp32):
    from exporters.onnx.accuracy_control import quantize_until_agreement

    images, classes = _images_and_classes(tiny_fp32)
    messages: list[str] = []
    result = quantize_until_agreement(tiny_fp32, _damaging((1,), half="mlp"), images, classes, 0.99,
                                      log=messages.append)  # fmt: skip
    first = result.steps[0]
    assert first.kept == () and first.agreement < 0.99 and list(first.errors) == FINE
    assert first.errors["blocks.1.mlp"] > 0.01 and first.errors["blocks.1.attn"] == 0.0  # the half it is in
    assert max(first.errors, key=first.errors.get) == "blocks.1.mlp"
    assert result.reached and result.kept == ("blocks.1.mlp",) and result.agreement == 1.0
    assert "keeping blocks.1.mlp in float next" in "\n".join(messages)
    attention = quantize_until_agreement(tiny_fp32, _damaging((1,), half="attn"), images, classes, 0.99)
    assert attention.reached and attention.kept == ("blocks.1.attn",)


def test_keeping_the_input_in_float_takes_out_its_quantizer_only(tiny_int8):
    import onnxruntime as ort

    from exporters.onnx.accuracy_control import float_input

    floated = copy.deepcopy(tiny_int8)
    assert float_input(floated) == 1
    assert not [n for n in floated.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "image"]
    first_conv = next(n for n in floated.graph.node if n.op_type == "Conv")
    assert first_conv.input[0] == "image" and len(floated.graph.node) == len(tiny_int8.graph.node) - 2
    x = np.random.default_rng(3).normal(0, 1, (2, 3, 32, 32)).astype(np.float32)
    sessions = [ort.InferenceSession(p.SerializeToString(), providers=["CPUExecutionProvider"])
                for p in (tiny_int8, floated)]  # fmt: skip
    outputs = [session.run(None, {"image": x})[0] for session in sessions]
    assert np.isfinite(outputs[1]).all() and not np.array_equal(outputs[0], outputs[1])


def test_the_loop_measures_agreement_on_openvino_when_asked(tiny_fp32):
    from exporters.errors import ExportError
    from exporters.onnx.accuracy_control import quantize_until_agreement

    pytest.importorskip("openvino")
    images, classes = _images_and_classes(tiny_fp32)
    on_ort = quantize_until_agreement(tiny_fp32, _damaging((1,), half="mlp"), images, classes, 0.99)
    on_openvino = quantize_until_agreement(tiny_fp32, _damaging((1,), half="mlp"), images, classes, 0.99,
                                           runtime="openvino")  # fmt: skip
    assert on_openvino.kept == on_ort.kept == ("blocks.1.mlp",)
    # float maths on both: the same classes up to near-ties
    assert abs(on_openvino.steps[0].agreement - on_ort.steps[0].agreement) <= 2 / len(images)
    with pytest.raises(ExportError, match="--control-runtime must be one of ort, openvino, got 'tensorrt'"):
        quantize_until_agreement(tiny_fp32, _damaging(()), images, classes, 0.99, runtime="tensorrt")
    with pytest.raises(ExportError, match="--control-precision 'bf16': f32 on any runtime, bf16 on openvino only"):
        quantize_until_agreement(tiny_fp32, _damaging(()), images, classes, 0.99, precision="bf16")


def test_the_loop_measures_openvino_at_bf16_only_where_the_cpu_has_it(tiny_fp32):
    from exporters.onnx.accuracy_control import quantize_until_agreement
    from lvvit.common.cpuinfo import has_native_bf16
    from runtimes.errors import DeviceUnavailableError

    pytest.importorskip("openvino")
    images, classes = _images_and_classes(tiny_fp32)
    run = lambda: quantize_until_agreement(tiny_fp32, _damaging((1,), half="mlp"), images, classes, 0.99,  # noqa: E731
                                           runtime="openvino", precision="bf16")  # fmt: skip
    if has_native_bf16():
        result = run()  # the float parts in bf16 cost agreement on near-ties only: the damage still decides
        assert result.kept[0] == "blocks.1.mlp" and result.steps[0].agreement < result.steps[1].agreement
    else:  # OpenVINO would compute in f32 and call it bf16: refused, not measured as something else
        with pytest.raises(DeviceUnavailableError, match="precision='bf16'"):
            run()


def test_control_precision_is_for_openvino_accuracy_control():
    from exporters.errors import ExportError
    from exporters.onnx import FastPath

    openvino = {"quantize": "int8", "calibration": ".", "accuracy_control": True, "control_runtime": "openvino"}
    assert FastPath(**openvino, control_precision="bf16").tag == "_int8_ac_bf16"
    assert FastPath(**openvino).tag == "_int8_ac"
    with pytest.raises(ExportError, match="--control-precision must be one of f32, bf16, got 'fp16'"):
        FastPath(**openvino, control_precision="fp16")
    for other in ({**openvino, "control_runtime": "ort"}, {"quantize": "int8", "calibration": "."}):
        with pytest.raises(ExportError, match="--control-precision applies to --accuracy-control with "
                                              "--control-runtime openvino"):  # fmt: skip
            FastPath(**other, control_precision="bf16")


def _key_transposes(proto: onnx.ModelProto, perm: tuple[int, ...] | None = None) -> list[onnx.NodeProto]:
    from exporters.onnx.optimize import KEY_PERM

    perm = perm or KEY_PERM
    return [n for n in proto.graph.node if n.op_type == "Transpose" and tuple(n.attribute[0].ints) == perm]


def _attention_scores(key_reader: str = "MatMul") -> onnx.ModelProto:
    """scores = q @ transpose(k, (0, 2, 3, 1)), k given as (batch, tokens, heads, head_dim), as the export spells it."""
    nodes = [
        helper.make_node("Transpose", ["k"], ["kt"], name="Transpose.2", perm=[0, 2, 3, 1]),
        helper.make_node(key_reader, ["q", "kt"] if key_reader == "MatMul" else ["kt"], ["y"]),
    ]
    scores = [1, 2, 5, 5] if key_reader == "MatMul" else [1, 2, 4, 5]  # or the transposed key itself
    graph = helper.make_graph(
        nodes, "scores",
        [helper.make_tensor_value_info("q", TensorProto.FLOAT, [1, 2, 5, 4]),
         helper.make_tensor_value_info("k", TensorProto.FLOAT, [1, 5, 2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, scores)],
    )  # fmt: skip
    if key_reader != "MatMul":
        graph.input.pop(0)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_key_transpose_is_split_exactly_into_the_two_openvinos_attention_takes():
    import onnxruntime as ort

    from exporters.onnx.optimize import split_key_transposes

    proto = _attention_scores()
    rng = np.random.default_rng(0)
    feeds = {
        "q": rng.standard_normal((1, 2, 5, 4), dtype=np.float32),
        "k": rng.standard_normal((1, 5, 2, 4), dtype=np.float32),
    }
    before = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert split_key_transposes(proto) == 1
    onnx.checker.check_model(proto)
    assert [(n.name, tuple(n.attribute[0].ints)) for n in proto.graph.node if n.op_type == "Transpose"] == [
        ("Transpose.2/heads_first", (0, 2, 1, 3)), ("Transpose.2/last_two", (0, 1, 3, 2))
    ]  # fmt: skip
    after = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_array_equal(after, before)


def test_a_key_like_transpose_read_by_anything_but_a_matmul_is_left_alone():
    from exporters.onnx.optimize import split_key_transposes

    proto = _attention_scores(key_reader="Relu")
    assert split_key_transposes(proto) == 0 and len(_key_transposes(proto)) == 1
