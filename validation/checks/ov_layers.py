"""`python -m validation ov-layers FILE [FILE ...]`: where each runtime spends its time, layer by layer.

OpenVINO's per-layer performance counters (`PERF_COUNT`, `InferRequest.get_profiling_info()`) name the kernel
each node ran (`exec_type`, e.g. `brgemm_avx2_I8`, `jit_avx2_FP32`, `ref_any_FP32`) and its time; ONNX Runtime's
profiler gives the time per operator. Run on an fp32 file and its int8 export side by side, they show which
matrix layers really ran in int8, which fell back to f32, and what the reorders and (de)quantization cost.
This is the evidence behind the int8 graph's settings (`exporters.onnx.quantize`); rerun it after upgrading
OpenVINO or ONNX Runtime, or on another CPU.
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from runtimes.registry import precision_note

# OpenVINO's matrix layers (after its transformations; a quantized linear layer is `FullyConnectedQuantized...`,
# attention's products `MatMul`): where int8 pays or not
MATRIX = {"Convolution", "GroupConvolution", "FullyConnected", "FullyConnectedQuantized",
          "FullyConnectedQuantizedLegacy", "MatMul"}  # fmt: skip


@dataclass(frozen=True)
class Layer:
    name: str
    node_type: str  # OpenVINO's operation (after its transformations), or ONNX Runtime's op type
    exec_type: str  # the kernel that ran; its last `_` part is the precision (I8, U8, FP32, BF16, ...)
    ms: float  # per run, mean over the runs

    @property
    def precision(self) -> str:
        """The kernel's precision, upper case ('I8', 'U8', 'FP32', 'BF16'); OpenVINO writes both `f32` and `FP32`."""
        found = self.exec_type.rsplit("_", 1)[-1].upper()
        return {"F32": "FP32", "F16": "FP16"}.get(found, found)

    @property
    def matrix(self) -> bool:
        return self.node_type in MATRIX


def openvino_layers(
    path: str | Path, batch: int = 8, threads: int = 2, runs: int = 3, precision: str = "f32"
) -> list[Layer]:
    """Every executed node of `path` compiled by OpenVINO for the CPU (one stream; `precision` for what the file
    leaves in float, f32 by default, so int8 is what the file's QDQ asks for and nothing else), with its kernel and
    mean time over `runs` runs."""
    from runtimes.probe import openvino_probe

    with openvino_probe(str(path), threads=threads, precision=precision, streams=1, perf_counters=True) as probe:
        x = _batch(probe, batch)
        probe.run(x)  # warm-up: first-run allocations are no layer's cost
        totals: dict[str, float] = defaultdict(float)
        kinds: dict[str, tuple[str, str]] = {}
        for _ in range(runs):
            probe.run(x)
            for info in probe.profiling_info():
                if str(info.status).endswith("EXECUTED") and not str(info.status).endswith("NOT_RUN"):
                    totals[info.node_name] += info.real_time.total_seconds() * 1e3
                    kinds[info.node_name] = (info.node_type, info.exec_type)
    return [Layer(name, *kinds[name], ms / runs) for name, ms in totals.items()]


def ort_layers(path: str | Path, batch: int = 8, threads: int = 2, runs: int = 3) -> list[Layer]:
    """Every node ONNX Runtime's CPU provider ran for `path` (the kit's session options), from its profiler."""
    from runtimes.probe import ort_probe

    with tempfile.TemporaryDirectory(prefix="lvvit-ort-profile-") as work:
        with ort_probe(str(path), threads=threads, profile_prefix=Path(work) / "profile") as probe:
            x = _batch(probe, batch)
            for _ in range(runs + 1):  # a warm-up, as for OpenVINO, then the runs
                probe.run(x)
            events = json.loads(probe.end_profiling().read_text())
    totals: dict[str, float] = defaultdict(float)
    kinds: dict[str, str] = {}
    for event in events[1:]:  # the first event is the session's initialisation, the rest each node per run
        args = event.get("args", {})
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and "op_name" in args:
            node = event["name"][: -len("_kernel_time")]
            totals[node] += event["dur"] / 1e3
            kinds[node] = args["op_name"]
    # the warm-up run is in the profile too
    return [Layer(node, kinds[node], kinds[node], ms / (runs + 1)) for node, ms in totals.items()]


def _batch(probe, batch: int) -> np.ndarray:
    """Random images of the model's first input's shape (the values do not change which kernels run)."""
    dims = next(iter(probe.input_shapes.values()))
    dims = [batch, *(d if isinstance(d, int) else 224 for d in dims[1:])]
    return np.random.default_rng(0).normal(0, 1, dims).astype(np.float32)


@dataclass(frozen=True)
class Summary:
    file: str
    runtime: str
    total_ms: float
    by_precision: dict[str, tuple[int, float]]  # matrix layers: precision -> (count, ms)
    by_type: dict[str, tuple[int, float]]  # every node: type -> (count, ms)
    float_matrix: list[str]  # matrix layers that ran in a float kernel
    precision: str = "f32"  # OpenVINO's inference precision: the math of what the file leaves in float

    def to_dict(self) -> dict:
        return asdict(self)


FLOAT_PRECISIONS = {"FP32", "F32", "BF16", "FP16"}


def summarize(file: str, runtime: str, layers: Iterable[Layer], precision: str = "f32") -> Summary:
    layers = list(layers)
    by_precision: dict[str, list[float]] = defaultdict(list)
    by_type: dict[str, list[float]] = defaultdict(list)
    for layer in layers:
        by_type[layer.node_type].append(layer.ms)
        if layer.matrix:
            by_precision[layer.precision].append(layer.ms)
    floats = [f"{layer.name} ({layer.exec_type})" for layer in layers
              if layer.matrix and layer.precision.upper() in FLOAT_PRECISIONS]  # fmt: skip
    return Summary(
        file,
        runtime,
        sum(layer.ms for layer in layers),
        {p: (len(v), sum(v)) for p, v in sorted(by_precision.items())},
        {t: (len(v), sum(v)) for t, v in sorted(by_type.items(), key=lambda kv: -sum(kv[1]))},
        floats,
        precision,
    )


def render(summaries: list[Summary], top: int = 12) -> str:
    """Markdown: per file and runtime, the matrix layers by precision and the node types by time."""
    lines = []
    for s in summaries:
        where = f"{s.runtime}{precision_note(s.runtime, s.precision)}"
        lines += [f"### {Path(s.file).name} on {where}: {s.total_ms:.1f} ms per run", ""]
        if s.runtime == "openvino":
            lines += ["| matrix layers' precision | layers | ms |", "|---|---|---|"]
            lines += [f"| {p} | {n} | {ms:.1f} |" for p, (n, ms) in s.by_precision.items()]
            lines.append("")
            if s.float_matrix:
                shown = ", ".join(s.float_matrix[:top]) + (" ..." if len(s.float_matrix) > top else "")
                lines += [f"matrix layers in a float kernel ({len(s.float_matrix)}): {shown}", ""]
        lines += ["| node type | nodes | ms | share |", "|---|---|---|---|"]
        for kind, (n, ms) in list(s.by_type.items())[:top]:
            lines.append(f"| {kind} | {n} | {ms:.1f} | {ms / max(s.total_ms, 1e-9):.0%} |")
        lines.append("")
    return "\n".join(lines)


RUNTIMES = {"openvino": openvino_layers, "ort": ort_layers}


def profile(
    files: Iterable[Path],
    runtimes: Iterable[str] = ("openvino",),
    batch: int = 8,
    threads: int = 2,
    runs: int = 3,
    openvino_precision: str = "f32",
) -> tuple[list[Summary], dict[str, list[dict]]]:
    """Each runtime's layers on each file: the summaries, and every layer as plain data keyed `runtime:file`.
    `openvino_precision`: OpenVINO's math for what a file leaves in float (f32, or bf16 on a CPU that has it)."""
    summaries, layers = [], {}
    for runtime in runtimes:
        precision = openvino_precision if runtime == "openvino" else "f32"
        options = {"precision": precision} if runtime == "openvino" else {}
        for path in files:
            found = RUNTIMES[runtime](path, batch, threads, runs, **options)
            layers[f"{runtime}:{path}"] = [asdict(layer) for layer in found]
            summaries.append(summarize(str(path), runtime, found, precision))
    return summaries, layers
