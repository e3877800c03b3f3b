"""Which tensor of an exported ONNX graph holds each named stage of the Paddle model.

The exporter names the graph's initializers after the Paddle state dict
(`exporters.onnx.convert._use_state_dict_names`), so the stages are found
through their weights, not through node names that change with every export:

- `stem`: the output of the convolution on `patch_embed.proj.weight` (after its bias Add);
- `blocks.i`: the residual stream after block i, i.e. the input of the LayerNormalization
  scaled by `blocks.{i+1}.norm1.weight` (by `norm.weight` after the last block);
- `norm`: the output of that final LayerNormalization (or of the SkipLayerNormalization it is fused into);
- `head` / `aux_head`: the output of the matrix product on `head.weight` / `aux_head.weight`
  (after its bias Add);
- `output`: the graph output.

In a quantized graph a weight reaches its Conv/MatMul through a DequantizeLinear
whose input is the quantized initializer (NNCF names it `q_output_<name>_1`,
ONNX Runtime `<name>_quantized`); those names are traced back to the state-dict name, and so is ONNX Runtime's
`ConvBnFusion_W_<name>` (a convolution with its batch norm folded in, by its quantizer's pre-processing).
A stage whose tensor is not in the graph (a fused graph's SkipLayerNormalization
hides the residual stream; LayerNorm decomposed at an old opset) is returned as
`Unmapped` with the reason, never guessed.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import onnx

from ..errors import ExportError

_QUANTIZED_NAME = re.compile(r"^(?:q_output_)?(?P<name>.+?)(?:_quantized|_\d+)?$")
# ONNX Runtime's Conv+BatchNormalization fusion (run by its quantizer's pre-processing) names the folded weight so
_FUSED_PREFIXES = ("ConvBnFusion_W_",)
_PASS_THROUGH = {"Identity"}
MATRIX_OPS = {"Conv", "MatMul", "Gemm"}  # the nodes whose multiply-accumulates dominate the time, in float or int8
_SIDE_CONSUMERS = {"Shape", "QuantizeLinear"}  # read the tensor without being the next step of the stage


class StageMapError(ExportError):
    """The graph cannot be walked: a loop of pass-through nodes (a valid ONNX graph has no cycle)."""


@dataclass(frozen=True)
class Mapped:
    tensor: str  # the graph tensor that holds the stage
    how: str  # what found it, for the report
    weight: str = ""  # the state-dict name the stage was found through ("" for the graph output)
    weight_shape: tuple[int, ...] | None = None  # that initializer's shape in the graph, for the caller to check


@dataclass(frozen=True)
class Unmapped:
    reason: str


def stage_names(depth: int, aux_head: bool = True) -> list[str]:
    """The stages in network order: stem, each block's residual stream, final norm, heads, output."""
    names = ["stem", *(f"blocks.{i}" for i in range(depth)), "norm", "head"]
    return [*names, "aux_head", "output"] if aux_head else [*names, "output"]


class _Graph:
    def __init__(self, proto: onnx.ModelProto) -> None:
        graph = proto.graph
        self.initializers = {init.name for init in graph.initializer}
        self.dims = {init.name: tuple(init.dims) for init in graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for name in node.output:
                self.producer[name] = node
            for name in node.input:
                self.consumers[name].append(node)
        self.output = graph.output[0].name if graph.output else None

    def weight_name(self, tensor: str) -> str | None:
        """The state-dict name behind a node input: an initializer, or one dequantized by a DequantizeLinear."""
        if tensor in self.initializers:
            return next((tensor[len(p) :] for p in _FUSED_PREFIXES if tensor.startswith(p)), tensor)
        node = self.producer.get(tensor)
        if node is not None and node.op_type == "DequantizeLinear" and node.input[0] in self.initializers:
            match = _QUANTIZED_NAME.match(node.input[0])
            return match.group("name") if match else None
        return None

    def weight_shape(self, node: onnx.NodeProto, weight: str) -> tuple[int, ...] | None:
        """The shape of the initializer behind `weight` where `node` reads it (quantized: the int8 tensor's)."""
        for tensor in node.input[1:]:
            if self.weight_name(tensor) == weight:
                source = self.producer.get(tensor)
                return self.dims.get(tensor if source is None else source.input[0])
        return None

    def before_quantizer(self, tensor: str) -> str:
        """The float tensor behind a QuantizeLinear -> DequantizeLinear pair (`tensor` itself when there is none)."""
        node = self.producer.get(tensor)
        if node is not None and node.op_type == "DequantizeLinear":
            quantize = self.producer.get(node.input[0])
            if quantize is not None and quantize.op_type == "QuantizeLinear":
                return quantize.input[0]
        return tensor

    def nodes_using(self, weight: str, op_types: set[str]) -> list[onnx.NodeProto]:
        found = []
        for node in self.producer.values():
            if node.op_type in op_types and any(self.weight_name(i) == weight for i in node.input[1:]):
                found.append(node)
        return list({id(n): n for n in found}.values())

    def _is_constant(self, tensor: str) -> bool:
        node = self.producer.get(tensor)
        return tensor in self.initializers or (node is not None and node.op_type == "Constant")

    def after_bias(self, tensor: str) -> str:
        """Follow pass-through nodes and one bias Add (an Add of a constant) from `tensor`."""
        added_bias = False
        seen = {tensor}  # a crafted file can chain Identity nodes into a loop: walking it would never end
        while True:
            nexts = [n for n in self.consumers.get(tensor, []) if n.op_type not in _SIDE_CONSUMERS]
            if len(nexts) != 1:
                return tensor
            node = nexts[0]
            if node.op_type in _PASS_THROUGH:
                tensor = node.output[0]
            elif node.op_type == "Add" and not added_bias and any(self._is_constant(i) for i in node.input):
                tensor, added_bias = node.output[0], True
            else:
                return tensor
            if tensor in seen:
                raise StageMapError(
                    f"the graph loops: {node.op_type} node {node.name!r} writes {tensor!r}, which it already passed "
                    f"through (a cycle of pass-through nodes; not a valid ONNX graph)"
                )
            seen.add(tensor)


def _layer_output(graph: _Graph, weight: str, ops: set[str]) -> Mapped | Unmapped:
    nodes = graph.nodes_using(weight, ops)
    if len(nodes) != 1:
        return Unmapped(f"{len(nodes)} {'/'.join(sorted(ops))} nodes use the weight {weight!r} (expected one)")
    how = f"{nodes[0].op_type} on {weight} (+ bias)"
    return Mapped(graph.after_bias(nodes[0].output[0]), how, weight, graph.weight_shape(nodes[0], weight))


def _norm_of(graph: _Graph, weight: str) -> onnx.NodeProto | Unmapped:
    nodes = graph.nodes_using(weight, {"LayerNormalization"})
    if len(nodes) == 1:
        return nodes[0]
    fused = graph.nodes_using(weight, {"SkipLayerNormalization"})
    if fused:
        return Unmapped(f"{weight} scales a fused SkipLayerNormalization: the residual stream is not a tensor here")
    return Unmapped(f"no single LayerNormalization scaled by {weight!r} (fused, decomposed or renamed)")


def map_stages(proto: onnx.ModelProto, depth: int, aux_head: bool = True) -> dict[str, Mapped | Unmapped]:
    """Each stage of `stage_names(depth, aux_head)` -> the tensor holding it in `proto`, or why none does."""
    graph = _Graph(proto)
    found: dict[str, Mapped | Unmapped] = {
        "stem": _layer_output(graph, "patch_embed.proj.weight", {"Conv"}),
    }
    for i in range(depth):
        weight = f"blocks.{i + 1}.norm1.weight" if i + 1 < depth else "norm.weight"
        norm = _norm_of(graph, weight)
        found[f"blocks.{i}"] = (
            norm
            if isinstance(norm, Unmapped)
            else Mapped(norm.input[0], f"input of {weight}", weight, graph.weight_shape(norm, weight))
        )
    norms = graph.nodes_using("norm.weight", {"LayerNormalization", "SkipLayerNormalization"})
    found["norm"] = (  # a fused SkipLayerNormalization's first output is the norm's output too
        Mapped(
            norms[0].output[0],
            f"output of the {norms[0].op_type} on norm.weight",
            "norm.weight",
            graph.weight_shape(norms[0], "norm.weight"),
        )
        if len(norms) == 1
        else Unmapped(f"{len(norms)} LayerNormalization nodes scaled by 'norm.weight' (expected one)")
    )
    found["head"] = _layer_output(graph, "head.weight", {"MatMul", "Gemm"})
    if aux_head:
        found["aux_head"] = _layer_output(graph, "aux_head.weight", {"MatMul", "Gemm"})
    found["output"] = Mapped(graph.output, "graph output") if graph.output else Unmapped("the graph has no output")
    return found


def graph_depth(proto: onnx.ModelProto) -> tuple[int, bool]:
    """(the number of blocks, whether there is an aux head), read from the state-dict-named weights.

    A quantized graph holds some weights under NNCF's or ONNX Runtime's names; those are traced back as above.
    """
    graph = _Graph(proto)
    names = set(graph.initializers)
    names |= {graph.weight_name(n.output[0]) for n in proto.graph.node if n.op_type == "DequantizeLinear"} - {None}
    blocks = {int(m.group(1)) for name in names if (m := re.match(r"^blocks\.(\d+)\.", name))}
    depth = max(blocks) + 1 if blocks else 0
    return depth, "aux_head.weight" in names


def float_layers(proto: onnx.ModelProto) -> tuple[list[str], int]:
    """(state-dict names of the weights that Conv/MatMul/Gemm nodes read in float, the number of weighted nodes:
    those reading a weight in float or through a DequantizeLinear). ONNX Runtime's fused names are traced back."""
    graph = _Graph(proto)
    weighted = [n for n in proto.graph.node if n.op_type in MATRIX_OPS and len(n.input) > 1]
    named = [(n.input[1], graph.weight_name(n.input[1])) for n in weighted]
    kept = [name for tensor, name in named if name is not None and tensor in graph.initializers]
    return kept, sum(1 for _, name in named if name is not None)


def with_outputs(proto: onnx.ModelProto, tensors: Iterable[str]) -> onnx.ModelProto:
    """A copy of `proto` that also outputs `tensors` (after its own outputs, in the given order)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    present = {o.name for o in copy.graph.output}
    for tensor in dict.fromkeys(tensors):
        if tensor not in present:
            copy.graph.output.append(onnx.ValueInfoProto(name=tensor))
    return copy


def stage_nodes(proto: onnx.ModelProto, mapped: dict[str, Mapped | Unmapped]) -> dict[str, list[str]]:
    """The names of the nodes that compute each whole stage from the one before it, in graph order.

    `stem`: every node that does not read the stem's tensor (directly or through others); `blocks.i`: the nodes
    that depend on block i-1's residual stream (the stem's, for block 0) but not on block i's; `head`: every
    node after the last block's residual stream (final norm, class head, aux head, output). Found by which
    tensors each node depends on, so attention's activation-by-activation MatMuls and every Add, Softmax and
    Gelu of a block belong to it without being named. Raises ValueError naming an unmapped stage.
    """
    depth = sum(stage.startswith("blocks.") for stage in mapped)
    order = ["stem", *(f"blocks.{i}" for i in range(depth))]
    return partition(proto, {stage: mapped.get(stage, Unmapped("not mapped")) for stage in order})


def control_ends(
    proto: onnx.ModelProto, depth: int, aux_head: bool = True, fine: bool = False
) -> dict[str, Mapped | Unmapped]:
    """The stages of accuracy control but the last (`head`), in network order -> the tensor each ends at.

    Whole stages: `stem`, `blocks.i`. Fine stages (`fine=True`):
    - `input`: the quantization of the network's input alone; it ends at the first convolution's data input (the
      image itself in a float graph, its DequantizeLinear in an int8 one);
    - `stem.conv1`, `stem.conv2`, `stem.conv3` (each convolution with its norm and ReLU) and `stem.proj` (the
      patch projection), each split at the next convolution's input, before any quantizer of it (the quantizer
      belongs to the layer it feeds). One stage for the last three measured: on lvvit_s accuracy control kept all
      of them, 18.8% of the MACs; apart, it keeps conv3 and the projection and puts conv2 (7.0%) back in int8;
    - `blocks.i.attn` and `blocks.i.mlp`, split at the residual stream between them: `norm2`'s input.
    """
    mapped = map_stages(proto, depth, aux_head)
    if not fine:
        return {stage: mapped[stage] for stage in ["stem", *(f"blocks.{i}" for i in range(depth))]}
    graph = _Graph(proto)
    ends: dict[str, Mapped | Unmapped] = {}
    ends["input"] = _conv_input(graph, "patch_embed.conv1.weight", trace=False)
    ends["stem.conv1"] = _conv_input(graph, "patch_embed.conv2.weight", trace=True)
    ends["stem.conv2"] = _conv_input(graph, "patch_embed.conv3.weight", trace=True)
    ends["stem.conv3"] = _conv_input(graph, "patch_embed.proj.weight", trace=True)
    ends["stem.proj"] = mapped["stem"]
    for i in range(depth):
        norm = _norm_of(graph, f"blocks.{i}.norm2.weight")
        ends[f"blocks.{i}.attn"] = (
            norm if isinstance(norm, Unmapped) else Mapped(norm.input[0], f"input of blocks.{i}.norm2.weight")
        )
        ends[f"blocks.{i}.mlp"] = mapped[f"blocks.{i}"]
    return ends


def _conv_input(graph: _Graph, weight: str, trace: bool) -> Mapped | Unmapped:
    """The data input of the one Conv on `weight`; with `trace`, the float tensor before its quantizer."""
    convs = graph.nodes_using(weight, {"Conv"})
    if len(convs) != 1:
        return Unmapped(f"{len(convs)} Conv nodes use the weight {weight!r} (expected one)")
    tensor = graph.before_quantizer(convs[0].input[0]) if trace else convs[0].input[0]
    return Mapped(tensor, f"input of the Conv on {weight}")


def partition(proto: onnx.ModelProto, ends: dict[str, Mapped | Unmapped]) -> dict[str, list[str]]:
    """Every node of `proto` in exactly one stage: the stages of `ends` (in network order, each ending at its
    tensor) and a last one, `head`, for the rest. A stage holds the nodes that do not depend on its end tensor and
    are in no stage before it; the `input` stage only those that read the graph's input (constants go to the
    next). Raises ValueError naming an unmapped stage."""
    for stage, end in ends.items():
        if not isinstance(end, Mapped):
            reason = end.reason if isinstance(end, Unmapped) else "not mapped"
            raise ValueError(f"stage {stage} has no tensor in the graph: {reason}")
    nodes = list(proto.graph.node)
    names = [n.name or f"#{i}" for i, n in enumerate(nodes)]
    remaining = set(range(len(nodes)))
    parts: dict[str, set[int]] = {}
    for stage, end in ends.items():
        part = remaining - _depends_on(nodes, end.tensor)  # type: ignore[union-attr]
        if stage == "input":
            part &= _depends_on(nodes, proto.graph.input[0].name)
        parts[stage] = part
        remaining -= part
    parts["head"] = remaining
    return {stage: [names[k] for k in sorted(indices)] for stage, indices in parts.items()}


def _depends_on(nodes: list[onnx.NodeProto], tensor: str) -> set[int]:
    """The indices of the nodes (in topological order) that read `tensor` directly or through other nodes."""
    reached, found = {tensor}, set()
    for index, node in enumerate(nodes):
        if any(name in reached for name in node.input):
            found.add(index)
            reached.update(node.output)
    return found


def matrix_tensors(proto: onnx.ModelProto) -> list[str]:
    """The tensors `stage_macs` needs the shapes of: every matrix node's data input and output, and a Conv's
    weight (a quantized graph computes it with a DequantizeLinear)."""
    tensors = []
    for node in proto.graph.node:
        if node.op_type in MATRIX_OPS:
            tensors += [node.input[0], node.output[0], *(node.input[1:2] if node.op_type == "Conv" else [])]
    return list(dict.fromkeys(tensors))


def stage_macs(
    proto: onnx.ModelProto, parts: dict[str, list[str]], shapes: dict[str, tuple[int, ...]]
) -> dict[str, int]:
    """Per-image multiply-accumulates of each stage's matrix nodes (`partition`'s stages): what keeping the stage
    in float makes run in float. `shapes`: the `matrix_tensors` at batch 1, as a run gave them (ONNX's shape
    inference leaves the exported graph's reshapes, computed from the input's shape at run time, unknown).

    The `input` stage holds no matrix node, but keeping the input's quantization in float leaves the convolution
    that reads the image without an int8 input, so it costs that convolution. Raises ValueError naming a tensor
    whose shape is missing.
    """
    known = {**{init.name: tuple(init.dims) for init in proto.graph.initializer}, **shapes}
    by_name = {n.name or f"#{i}": n for i, n in enumerate(proto.graph.node)}
    graph, image = _Graph(proto), proto.graph.input[0].name
    macs: dict[str, int] = {}
    for stage, names in parts.items():
        nodes = [by_name[name] for name in names if by_name[name].op_type in MATRIX_OPS]
        if stage == "input":
            readers = (n for n in by_name.values() if n.op_type in MATRIX_OPS)
            nodes = [n for n in readers if graph.before_quantizer(n.input[0]) == image]
        macs[stage] = sum(_node_macs(node, known) for node in nodes)
    return macs


def _node_macs(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]]) -> int:
    """A Conv's, MatMul's or Gemm's multiply-accumulates: output elements x the length of each dot product."""
    needed = [node.output[0], node.input[0]] + ([node.input[1]] if node.op_type == "Conv" else [])
    missing = [t for t in needed if t not in shapes]
    if missing:
        raise ValueError(f"{node.op_type} node {node.name!r}: no shape for {', '.join(missing)}")
    elements = math.prod(shapes[node.output[0]])
    if node.op_type == "Conv":  # weight [C_out, C_in / group, kH, kW] (a quantized one: its DequantizeLinear's)
        return elements * math.prod(shapes[node.input[1]][1:])
    trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0) if node.op_type == "Gemm" else 0
    return elements * shapes[node.input[0]][0 if trans_a else -1]  # MatMul: [..., M, K] x [..., K, N]
