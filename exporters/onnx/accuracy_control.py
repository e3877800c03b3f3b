"""int8 with accuracy control: keep the stages that lose the most in float until top-1 agrees with Paddle.

The loop, per step:
1. quantize the fp32 graph with NNCF, the stages kept so far in its ignored scope (the first step is plain
   int8, with the same settings, so the two differ only in what is kept);
2. measure its top-1 agreement with Paddle fp32 on the validation images, and the error each stage adds by
   itself: the int8 graph is cut at every stage's tensor (`stage_map`), each stage runs on the fp32 graph's
   values of the stage before it, and its output is compared with the fp32 graph's, per token standardized
   (what the next LayerNorm sees), so the residual stream and the logits compare on one scale;
3. stop when the agreement reaches the target; otherwise keep in float the stage that adds the most error,
   and go again;
4. once the target is reached, try each kept stage back in int8, the costliest (in multiply-accumulates) first,
   and leave it there if the agreement stays at the target.

The stages (`stage_map.control_ends`) are fine by default: the input's quantization, each convolution of the stem
and its patch projection, each block's attention half and MLP half, the head. Whole stages (the stem, a block, the
head) kept the stem's four convolutions in float, about a fifth of lvvit_s's MACs, where one of them, or the
input's quantization, held the error. The agreement can be measured on OpenVINO, the runtime that ships the file.

Why the kit's own loop and not NNCF's `quantize_with_accuracy_control` (tried first, nncf 3.4):
- its ONNX backend ranks quantizers by the metric alone (the NMSE ranking over logits raises
  UnsupportedBackendError for ONNX), and top-1 agreement on a few dozen images ties most of lvvit_s's 118
  quantizer groups, so the order is left to chance and it re-ranks after reverts that do not help: one
  ranking pass took 8 minutes on 2 cores, and it had reached 94.7% from 89.5% after 25 minutes;
- it reverts a layer without undoing SmoothQuant's scaling of its input, so it ran without SmoothQuant,
  i.e. from a worse start than plain int8.
Here the ranking is continuous (the error a stage adds), costs three runs per step instead of one per
quantizer group, and each step is a fresh NNCF quantization, so SmoothQuant stays on and stays exact.
A step costs one NNCF calibration (19 s for lvvit_s on 32 images, 2 cores) and three runs over the images:
the fp32 graph with its stages exposed, the int8 graph as shipped (agreement) and cut (errors); about 35 s.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx

from runtimes.probe import open_probe

from ..errors import ExportError
from .stage_map import Mapped, control_ends, graph_depth, matrix_tensors, partition, stage_macs, with_outputs
from .verify import shipped_probe

BATCH = 8  # images per run: bounds the memory of the exposed stages (16 blocks x tokens x width per image)
CONTROL_RUNTIMES = ("ort", "openvino")  # where the loop measures the agreement of the graph as shipped
# the math of the float parts there: bf16 (OpenVINO's inference precision, on a CPU with native bf16) runs what is
# kept in float, and every op between the int8 layers, about twice as fast as f32, so it is measured as it will run
CONTROL_PRECISIONS = ("f32", "bf16")


@dataclass(frozen=True)
class ControlStep:
    kept: tuple[str, ...]  # stages in float during this step
    agreement: float  # top-1 agreement with Paddle fp32
    errors: dict[str, float]  # stage -> the relative error it adds by itself (see `_measure`)
    seconds: float


@dataclass
class ControlledInt8:
    proto: onnx.ModelProto  # the chosen step's graph
    steps: list[ControlStep] = field(default_factory=list)
    chosen: int = 0  # index into `steps`
    reached: bool = False

    @property
    def kept(self) -> tuple[str, ...]:
        return self.steps[self.chosen].kept if self.steps else ()

    @property
    def agreement(self) -> float:
        return self.steps[self.chosen].agreement if self.steps else float("nan")


def _control_stages(
    proto: onnx.ModelProto, images: np.ndarray, reference_top1: np.ndarray, fine: bool, runtime: str, precision: str
) -> tuple[int, bool, dict[str, list[str]]]:
    """The checked request's (depth, aux head, stage -> its node names), the head last."""
    if runtime not in CONTROL_RUNTIMES:
        raise ExportError(f"--control-runtime must be one of {', '.join(CONTROL_RUNTIMES)}, got {runtime!r}")
    if precision not in CONTROL_PRECISIONS or (precision != "f32" and runtime != "openvino"):
        raise ExportError(f"--control-precision {precision!r}: f32 on any runtime, bf16 on openvino only")
    if len(images) != len(reference_top1) or not len(images):
        raise ExportError(f"accuracy control needs images with their Paddle classes, got {len(images)} and "
                          f"{len(reference_top1)}")  # fmt: skip
    depth, aux_head = graph_depth(proto)
    try:
        return depth, aux_head, partition(proto, control_ends(proto, depth, aux_head, fine))
    except ValueError as exc:
        raise ExportError(f"accuracy control needs the graph's stages: {exc}") from exc


def quantize_until_agreement(
    proto: onnx.ModelProto,
    quantize: Callable[[onnx.ModelProto, list[str]], onnx.ModelProto],
    images: np.ndarray,
    reference_top1: np.ndarray,
    min_agreement: float,
    max_float_stages: int | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
    fine: bool = True,
    runtime: str = "ort",
    precision: str = "f32",
) -> ControlledInt8:
    """int8 of `proto` with the fewest stages kept in float (greedily) for top-1 agreement >= `min_agreement`.

    `quantize(proto, ignored_node_names)` makes the int8 graph; `reference_top1` are Paddle fp32's classes for
    `images`. Stages: `stage_map.control_ends` (`fine`: the input's quantization, each convolution of the
    stem and its projection, each block's attention and MLP halves; else the stem and whole blocks), and the head. The
    agreement is measured on `runtime` (ONNX Runtime or OpenVINO, the int8 graph as shipped; on OpenVINO at
    `precision`, the math of its float parts); the error each stage adds, on ONNX Runtime. Once the target is
    reached, `_drop_unneeded` puts back in int8 the kept stages it does not need, costliest first.
    Stops after `max_float_stages` stages kept (None: until every stage is float). When no step met the target,
    the result is the step with the best agreement (the fewest stages in float among equals), with
    `reached=False`; the export's gate then decides. `progress`: a bar on stderr over each step's runs.
    """
    say = log or (lambda message: None)
    depth, aux_head, parts = _control_stages(proto, images, reference_top1, fine, runtime, precision)
    order = list(parts)  # in network order, head last
    limit = len(order) if max_float_stages is None else min(max_float_stages, len(order))
    fp32 = _StageRunner(proto, depth, aux_head, "the fp32 graph", fine)
    macs = _stage_macs(proto, parts, images[:1])
    result = ControlledInt8(proto)
    measured = _Measured(proto, quantize, parts, fp32, depth, aux_head, fine, images, reference_top1, runtime,
                         precision, macs, progress, say, result)  # fmt: skip
    step = measured.step
    kept: list[str] = []
    while True:
        quantized = step(kept)
        agreement, errors = result.steps[-1].agreement, result.steps[-1].errors
        if len(result.steps) == 1 or agreement > result.agreement:  # a NaN is never better; equals: fewer stages
            result.proto, result.chosen = quantized, len(result.steps) - 1
        if agreement >= min_agreement:
            result.reached = True
            _drop_unneeded(result, step, macs, min_agreement, say)
            return result
        if len(kept) >= limit:
            why = "every stage is in float" if limit == len(order) else f"--max-float-stages {limit}"
            say(f"no step reached {min_agreement:.1%} ({why}); the best was step {result.chosen + 1}: "
                f"{', '.join(result.kept) or 'nothing'} in float, {result.agreement:.1%}")  # fmt: skip
            return result
        stage = _next_stage([s for s in order if s not in kept], errors)
        say(f"  keeping {stage} in float next: it adds the most error by itself ({errors[stage]:.4f}; "
            f"{measured.share([stage]):.1%} of the MACs)")  # fmt: skip
        kept.append(stage)


@dataclass
class _Measured:
    """One step of the loop: quantize with some stages in float, measure, record the step in `result`, say it."""

    proto: onnx.ModelProto
    quantize: Callable[[onnx.ModelProto, list[str]], onnx.ModelProto]
    parts: dict[str, list[str]]  # stage -> its node names
    fp32: _StageRunner
    depth: int
    aux_head: bool
    fine: bool
    images: np.ndarray
    reference_top1: np.ndarray
    runtime: str
    precision: str
    macs: dict[str, int]  # stage -> multiply-accumulates per image
    progress: bool
    say: Callable[[str], None]
    result: ControlledInt8

    def step(self, stages: list[str]) -> onnx.ModelProto:
        """The int8 graph with `stages` in float, its agreement and stage errors recorded as a new step."""
        started, result = time.perf_counter(), self.result
        quantized = self.quantize(self.proto, [name for stage in stages for name in self.parts[stage]])
        if "input" in stages:  # no node of the float graph is the input's quantizer: take NNCF's out
            float_input(quantized)
        cut = _StageRunner(quantized, self.depth, self.aux_head, "the int8 graph", self.fine, cut=True)
        desc = f"accuracy control, step {len(result.steps) + 1}: measuring"
        shipped = _shipped(quantized, self.runtime, self.precision)
        agreement, errors = _measure(self.fp32, shipped, cut, self.images, self.reference_top1, desc, self.progress)
        result.steps.append(ControlStep(tuple(stages), agreement, errors, time.perf_counter() - started))
        self.say(f"step {len(result.steps)}: {', '.join(stages) or 'nothing'} in float ({self.share(stages):.1%} of "
                 f"the MACs): top-1 agreement {agreement:.1%} ({result.steps[-1].seconds:.0f} s)")  # fmt: skip
        return quantized

    def share(self, stages: list[str]) -> float:
        """The share of the MACs in float. A float input costs its first convolution (`stage_macs`): counted once
        when that is kept too."""
        total = sum(count for stage, count in self.macs.items() if stage != "input")
        return sum(self.macs[s] for s in stages if s != "input" or "stem.conv1" not in stages) / total


def _drop_unneeded(
    result: ControlledInt8,
    step: Callable[[list[str]], onnx.ModelProto],
    macs: dict[str, int],
    min_agreement: float,
    say: Callable[[str], None],
) -> None:
    """The backward pass, once the target is reached: try each kept stage back in int8, the costliest (most
    multiply-accumulates) first, and leave it there when the agreement stays at the target. The forward pass adds
    the stage with the most error, which reaches the target in few steps but can keep an expensive stage that a
    later one made unneeded (on lvvit_s the stem's second convolution alone is 7% of the MACs). A set already
    measured is not measured again (the forward pass's steps are the kept stages' prefixes)."""
    kept = list(result.kept)
    measured = {frozenset(s.kept) for s in result.steps}
    for stage in sorted(kept, key=lambda s: -macs[s]):
        trial = [s for s in kept if s != stage]
        if frozenset(trial) in measured:
            continue
        quantized = step(trial)
        measured.add(frozenset(trial))
        if result.steps[-1].agreement >= min_agreement:  # a NaN fails this
            kept = trial
            result.proto, result.chosen = quantized, len(result.steps) - 1
            say(f"  {stage} back in int8: the agreement stays at the target")
        else:
            say(f"  {stage} stays in float: without it the agreement falls below the target")


def _stage_macs(proto: onnx.ModelProto, parts: dict[str, list[str]], image: np.ndarray) -> dict[str, int]:
    """Each stage's multiply-accumulates per image (`stage_map.stage_macs`, at least 1), with the matrix nodes'
    shapes from one run of `image` on ONNX Runtime."""
    tensors = matrix_tensors(proto)
    values = open_probe(with_outputs(proto, tensors), "ort").run({proto.graph.input[0].name: image}, tensors)
    try:
        macs = stage_macs(proto, parts, {name: value.shape for name, value in values.items()})
    except ValueError as exc:
        raise ExportError(f"accuracy control needs the graph's matrix shapes: {exc}") from exc
    return {stage: max(count, 1) for stage, count in macs.items()}


def _next_stage(candidates: list[str], errors: dict[str, float]) -> str:
    """The stage to keep in float next: the one that adds the most error by itself. A NaN or infinite error (an
    int8 stage that overflowed) ranks above every finite one.

    Not the most error per multiply-accumulate kept in float: that greedy choice keeps cheap stages first, and
    where the error sits in an expensive one (the tests' tiny model: its stem is 98% of the MACs) it ends with
    every stage in float. `_drop_unneeded` takes the expensive ones back out instead."""
    return max(candidates, key=lambda s: errors[s] if np.isfinite(errors[s]) else np.inf)


class _StageRunner:
    """A graph on ONNX Runtime's CPU provider with every stage's end tensor (`control_ends`) as an extra output.

    `cut=True`: every stage's tensor is also an input (its producer writes `<name>:local` instead), so each
    stage runs on the values fed for the stage before it, and its output is the error it adds by itself.
    A stage that ends at the graph's input (`input`, in a graph that does not quantize it) is the batch itself.
    """

    def __init__(
        self, proto: onnx.ModelProto, depth: int, aux_head: bool, what: str, fine: bool, cut: bool = False
    ) -> None:
        ends = control_ends(proto, depth, aux_head, fine)
        missing = [s for s, end in ends.items() if not isinstance(end, Mapped)]
        if missing:
            raise ExportError(f"accuracy control: {what} hides the stages {', '.join(missing)}")
        self.input = proto.graph.input[0].name
        self.output = proto.graph.output[0].name
        self.tensors = {s: end.tensor for s, end in ends.items()}  # type: ignore[union-attr]
        self.stages = [*ends, "head"]  # what `run` returns, in network order
        inner = {s: t for s, t in self.tensors.items() if t != self.input}
        self.fed = list(inner.values()) if cut else []
        graph = _cut(proto, self.fed) if cut else proto
        self.outputs = {s: t + _LOCAL if t in self.fed else t for s, t in inner.items()}
        # on ONNX Runtime's CPU provider with OrtPredictor's session settings (the export's verification runs so too)
        self.probe = open_probe(with_outputs(graph, self.outputs.values()), "ort")

    def run(self, batch: np.ndarray, fed: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """stage -> value (`head`: the graph's output); `fed`: the stage values the cut graph runs on."""
        fed_values = {self.tensors[s]: v for s, v in (fed or {}).items() if self.tensors.get(s) in self.fed}
        feed = {self.input: batch, **fed_values}
        names = [self.output, *self.outputs.values()]
        values = self.probe.run(feed, names)
        found = {s: values[t] for s, t in self.outputs.items()}
        at_input = {s: batch for s, t in self.tensors.items() if t == self.input}
        return {"head": values[self.output], **{s: at_input.get(s, found.get(s)) for s in self.tensors}}


def float_input(proto: onnx.ModelProto) -> int:
    """Remove the QuantizeLinear -> DequantizeLinear pairs on the graph's input, in place: their readers read the
    input itself. Returns how many pairs were removed."""
    graph = proto.graph
    image = graph.input[0].name
    quantizers = [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == image]
    removed = 0
    for quantize in quantizers:
        dequantizers = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] == quantize.output[0]]
        for dequantize in dequantizers:
            for node in graph.node:
                node.input[:] = [image if name == dequantize.output[0] else name for name in node.input]
            graph.node.remove(dequantize)
        graph.node.remove(quantize)
        removed += 1
    return removed


_LOCAL = ":local"


def _cut(proto: onnx.ModelProto, tensors: list[str]) -> onnx.ModelProto:
    """A copy of `proto` in which each of `tensors` is a graph input; its producer's output is renamed."""
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    for node in copy.graph.node:
        for k, name in enumerate(node.output):
            if name in tensors:
                node.output[k] = name + _LOCAL
    for name in tensors:
        copy.graph.input.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return copy


def _standardized(value: np.ndarray) -> np.ndarray:
    """Each token (each image's logits) at zero mean and unit variance: what the next LayerNorm (or softmax's
    ranking) sees, so that errors of the residual stream and of the logits compare on one scale."""
    value = value.astype(np.float64)
    value = value - value.mean(axis=-1, keepdims=True)
    return value / np.maximum(value.std(axis=-1, keepdims=True), 1e-12)


def _shipped(proto: onnx.ModelProto, runtime: str, precision: str = "f32") -> Callable[[np.ndarray], np.ndarray]:
    """The graph as it ships (no tensor exposed: that could keep a runtime from fusing, and change the answer), on
    the runtime the export's verification then measures it on (`verify.shipped_probe`)."""
    probe = shipped_probe(proto, runtime, precision)
    output = probe.outputs[0]
    return lambda batch: probe.run(batch, [output])[output]


def _measure(
    fp32: _StageRunner,
    int8: Callable[[np.ndarray], np.ndarray],
    cut: _StageRunner,
    images: np.ndarray,
    reference_top1: np.ndarray,
    desc: str = "measuring",
    progress: bool = False,
) -> tuple[float, dict[str, float]]:
    """(top-1 agreement of the int8 graph with `reference_top1`, stage -> the relative error the stage adds by
    itself: its int8 output from the fp32 input, standardized per token, L2 over the image, mean over images).

    `head` is measured at the output: the final norm, both heads and the output's max hold no other stage.
    """
    from tqdm import tqdm

    agree, sums = 0, {}
    for start in tqdm(range(0, len(images), BATCH), desc, unit="batch", file=sys.stderr, disable=not progress):
        batch = images[start : start + BATCH]
        want = fp32.run(batch)
        logits = int8(batch)
        agree += int((logits.argmax(1) == reference_top1[start : start + BATCH]).sum())
        got = cut.run(batch, fed=want)
        for stage, value in want.items():
            flat_want = _standardized(value).reshape(len(batch), -1)
            flat_got = _standardized(got[stage]).reshape(len(batch), -1)
            rel = np.linalg.norm(flat_got - flat_want, axis=1) / np.maximum(np.linalg.norm(flat_want, axis=1), 1e-12)
            sums[stage] = sums.get(stage, 0.0) + float(rel.sum())
    return agree / len(images), {stage: sums[stage] / len(images) for stage in fp32.stages}
