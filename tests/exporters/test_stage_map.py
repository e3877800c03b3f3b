"""`exporters.onnx.stage_map` on crafted graphs: a loop of pass-through nodes is a typed error in bounded time."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.bounded import run_bounded


def _identity_loop(path) -> None:
    """The stem's convolution feeds a chain of Identity nodes that loops: `c0 -> c -> d -> c`, nothing else reads it."""
    weight = numpy_helper.from_array(np.zeros((4, 3, 2, 2), np.float32), "patch_embed.proj.weight")
    nodes = [
        helper.make_node("Conv", ["image", "patch_embed.proj.weight"], ["c0"], name="stem_conv", strides=[2, 2]),
        helper.make_node("Identity", ["c0"], ["c"], name="into"),
        helper.make_node("Identity", ["c"], ["d"], name="there"),
        helper.make_node("Identity", ["d"], ["c"], name="back"),
    ]
    graph = helper.make_graph(
        nodes, "loop", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("d", TensorProto.FLOAT, None)], [weight],
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_an_identity_loop_is_a_typed_error_not_a_hang(tmp_path):
    path = tmp_path / "loop.onnx"
    _identity_loop(path)
    result = run_bounded(
        f"""
        import onnx
        from exporters.onnx.stage_map import map_stages
        map_stages(onnx.load({str(path)!r}), depth=1)
        """,
        timeout_s=60,
    )
    assert result.outcome == "raised", (result.outcome, result.output[-2000:])
    assert result.error_type == "StageMapError" and "ExportError" in result.error_mro
    assert "the graph loops: Identity node 'back' writes 'c', which it already passed through" in result.message
    assert result.seconds < 60
