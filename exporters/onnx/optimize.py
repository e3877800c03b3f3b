"""Fast-path graph transforms: ONNX Runtime's transformer fusion, fp16 conversion, and the key transposes
written the way OpenVINO's attention kernel takes them (`split_key_transposes`, for its int8 files).

The fused file uses ONNX Runtime contrib ops (Attention, and in the fp16 graph
SkipLayerNormalization and BiasGelu): it runs on ONNX Runtime only, and starting
a session on it does not redo the fusion. The exported graph must come from
`exporters.fusable`. The fp32 graph targets the CPU, where ONNX Runtime's
SkipLayerNormalization and BiasGelu kernels are slower than the plain ops they
replace (see `runtimes.ort_providers.CPU_DISABLED_FUSIONS`): it keeps them
expanded once their fusion has been checked.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass

import onnx

from ..errors import ExportError

# Ops kept in fp32 (with casts around them). ONNX Runtime's fused SkipLayerNormalization and
# Attention kernels already accumulate their statistics and softmax sums in fp32 for fp16 data.
FP16_KEEP_FP32_OPS = ["LayerNormalization", "Softmax", "ReduceMax"]


@dataclass(frozen=True)
class FusionReport:
    attention: int
    gelu: int
    skip_layer_norm: int
    expected_blocks: int

    @property
    def complete(self) -> bool:
        n = self.expected_blocks
        # Per block: its attention, its GELU, and the residual+LayerNorm pairs (norm2 of every block,
        # norm1 of every block but the first, whose input is no residual, plus the final norm).
        return self.attention == n and self.gelu == n and self.skip_layer_norm == 2 * n

    def line(self) -> str:
        n = self.expected_blocks
        return (
            f"fused Attention {self.attention}/{n}, GELU {self.gelu}/{n}, "
            f"SkipLayerNormalization {self.skip_layer_norm}/{2 * n}"
        )


def _ort_optimizer(proto: onnx.ModelProto, num_heads: int, hidden_size: int):
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.onnx_model_bert import BertOnnxModel

    options = FusionOptions("vit")
    model = BertOnnxModel(proto, num_heads=num_heads, hidden_size=hidden_size)
    logging.disable(logging.WARNING)  # the optimizer logs every pass at INFO through its own handler
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            model.optimize(options, add_dynamic_axes=False)
            model.topological_sort()
            stats = model.get_fused_operator_statistics()
    finally:
        logging.disable(logging.NOTSET)
    return model, stats


def fuse_for_onnxruntime(proto: onnx.ModelProto, num_heads: int, hidden_size: int, blocks: int):
    """Run ONNX Runtime's ViT fusions; raise unless every block's attention, GELU and skip-LN fused."""
    model, stats = _ort_optimizer(proto, num_heads, hidden_size)
    report = FusionReport(
        attention=stats.get("Attention", 0) + stats.get("MultiHeadAttention", 0),
        gelu=sum(stats.get(k, 0) for k in ("Gelu", "BiasGelu", "FastGelu")),
        skip_layer_norm=stats.get("SkipLayerNormalization", 0),
        expected_blocks=blocks,
    )
    if not report.complete:
        raise ExportError(f"ONNX Runtime fusion is incomplete: {report.line()}")
    proto = model.model
    if not any(op.domain == "com.microsoft" for op in proto.opset_import):
        proto.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return proto, report


def expand_slow_cpu_fusions(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    """SkipLayerNormalization -> Add (+ bias Add) + LayerNormalization; BiasGelu -> Add + Gelu.

    The same arithmetic as the fused ops (their kernels sum the same terms, in fp32), in the ops
    ONNX Runtime's CPU provider runs faster. Returns the graph and how many nodes were expanded.
    """
    from onnx import helper

    expanded = {"SkipLayerNormalization": 0, "BiasGelu": 0}
    nodes = []
    for node in proto.graph.node:
        if node.op_type == "SkipLayerNormalization" and node.domain == "com.microsoft":
            nodes.extend(_expand_skip_layer_norm(node, helper))
        elif node.op_type == "BiasGelu" and node.domain == "com.microsoft":
            biased = f"{node.name}/biased"
            nodes.append(helper.make_node("Add", list(node.input[:2]), [biased], name=f"{node.name}/add"))
            nodes.append(
                helper.make_node("Gelu", [biased], [node.output[0]], name=f"{node.name}/gelu", domain="com.microsoft")
            )
        else:
            nodes.append(node)
            continue
        expanded[node.op_type] += 1
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return proto, expanded


def _expand_skip_layer_norm(node: onnx.NodeProto, helper) -> list[onnx.NodeProto]:
    inputs = list(node.input) + [""] * (5 - len(node.input))
    outputs = list(node.output) + [""] * (4 - len(node.output))
    x, skip, gamma, beta, bias = inputs
    if outputs[1] or outputs[2]:  # mean / inv_std_var: never produced by the ViT fusion
        raise ExportError(f"{node.name}: SkipLayerNormalization with statistics outputs cannot be expanded")
    epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-12)
    total = outputs[3] or f"{node.name}/sum"  # the residual stream, when a later block reads it
    out = []
    if bias:  # the linear layer's bias first, as the unfused graph adds it
        biased = f"{node.name}/biased"
        out.append(helper.make_node("Add", [x, bias], [biased], name=f"{node.name}/bias"))
        x = biased
    out.append(helper.make_node("Add", [x, skip], [total], name=f"{node.name}/add"))
    norm_inputs = [total, gamma] + ([beta] if beta else [])
    out.append(
        helper.make_node(
            "LayerNormalization", norm_inputs, [outputs[0]], name=f"{node.name}/norm", axis=-1, epsilon=epsilon
        )
    )
    return out


def convert_to_fp16(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Weights and compute in fp16, inputs and outputs kept float32, LayerNorm/Softmax kept fp32."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(proto)
    logging.disable(logging.WARNING)
    try:
        model.convert_float_to_float16(keep_io_types=True, op_block_list=FP16_KEEP_FP32_OPS)
        model.topological_sort()
    finally:
        logging.disable(logging.NOTSET)
    return model.model


KEY_PERM = (0, 2, 3, 1)  # (batch, tokens, heads, head_dim) -> (batch, heads, head_dim, tokens): the key of q @ k^T


def split_key_transposes(proto: onnx.ModelProto) -> int:
    """Write each key transpose (`KEY_PERM`, read by MatMuls only) as (0, 2, 1, 3) then (0, 1, 3, 2), in place;
    returns how many. Exact: the same permutation in two steps, the second keeping the output's name.

    Why: OpenVINO's CPU attention kernel (its MHA snippet) takes a transpose of the last two axes into the
    product, but not the 4-D one, which then runs as a layer of its own. On NNCF's lvvit_s int8 file (batch 8,
    float parts in bf16, AMD Zen 5, 2 cores) the transposes went from 2.65 to 0.27 ms and, with the attention
    kernels, from 16.1 to 14.4 ms, the logits unchanged. ONNX Runtime merges the two back into one.
    """
    graph = proto.graph
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    nodes: list[onnx.NodeProto] = []
    split = 0
    for node in graph.node:
        perm = next((tuple(a.ints) for a in node.attribute if a.name == "perm"), None)
        read_by = readers.get(node.output[0], []) if node.op_type == "Transpose" else []
        if perm != KEY_PERM or not read_by or any(r.op_type != "MatMul" for r in read_by):
            nodes.append(node)
            continue
        heads_first = f"{node.output[0]}/heads_first"
        nodes.append(onnx.helper.make_node("Transpose", [node.input[0]], [heads_first], f"{node.name}/heads_first",
                                           perm=[0, 2, 1, 3]))  # fmt: skip
        nodes.append(onnx.helper.make_node("Transpose", [heads_first], [node.output[0]], f"{node.name}/last_two",
                                           perm=[0, 1, 3, 2]))  # fmt: skip
        split += 1
    if split:
        del graph.node[:]
        graph.node.extend(nodes)
    return split
