"""Where the drift comes from: native Paddle and an export compared stage by stage.

The same inputs go through native Paddle eager, with forward hooks on the named
stages (`exporters.onnx.stage_map.stage_names`), and through the exported ONNX file
on ONNX Runtime or OpenVINO, with the stages' tensors added as outputs (found
through the state-dict-named weights, see `exporters.onnx.stage_map`). Per stage:
max / mean absolute and relative error and cosine similarity. Two stages are
named: the first divergent stage, where the error jumps far above the one
before it (and above the rounding noise of the file's precision): that is
where a fault sits, even when the error stays under the threshold there and a
later LayerNorm amplifies it over; and the first stage over the threshold,
which is the gate. The limits and the noise are those of the precision the
file computes in (`runtimes.onnx_file.graph_precision`, as the predictors
report it). A stage the export does not hold as a tensor is reported as not
mapped, with the reason. A mapping is found through initializer names, which a
file may carry wrongly: each mapped stage is checked by its weight's shape and
by its values (its tensor must be closer to Paddle's same stage than to any
other); a stage that fails is reported as doubtful and never blamed.

Exposing a tensor as an output keeps the runtime from fusing across it, so the
export runs slightly differently here than in production (Polygraphy's
`--onnx-outputs mark all` has the same effect); the `output` stage is always
compared as well, and drift (`python -m validation drift`) measures the
unmodified graph.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exporters.onnx.stage_map import Mapped, Unmapped, map_stages, stage_names, with_outputs
from lvvit.common.metrics import drift_stats
from lvvit.common.provenance import sha256_of
from runtimes import Probe, open_probe, registry
from validation.core import gate
from validation.core.data import Dataset, Failure, image_folder, stream_batches
from validation.core.runners import ModelSource, check_given_files, ensure_onnx
from validation.engines.local import load_batches, synthetic_samples
from validation.errors import DatasetError, ModelSourceError
from validation.provenance import environment
from validation.reports.locate import MAX_INSTRUMENTATION_REL
from validation.run.drift import DriftInputs, describe_inputs

# The per-stage limits: those of the drift gate that mean something for any tensor (not top-k or KL).
STAGE_LIMITS = {name: gate.DRIFT_LIMITS[name] for name in ("max_abs", "mean_abs", "p99_abs", "max_rel", "min_cosine")}
DEFAULT_STAGE_TOLERANCE = {"max_rel": 1e-3}
_REDUCED_STAGE_TOLERANCE = {"max_rel": 5e-2}  # as drift's gate for bf16/fp16/tf32
# int8 moves every stage by percents (NNCF's tiny test model: max rel 0.2, cosine 0.991-0.996 per stage); its gate
# is a cosine floor a little under drift's 0.99 on the logits, which an inner stage may dip below
STAGE_TOLERANCE_BY_PRECISION = {
    "fp32": DEFAULT_STAGE_TOLERANCE,
    "tf32": _REDUCED_STAGE_TOLERANCE,
    "fp16": _REDUCED_STAGE_TOLERANCE,
    "bf16": _REDUCED_STAGE_TOLERANCE,
    "int8": {"min_cosine": 0.98},
}
# The mean rel a stage may carry from rounding alone: fp32 measured 9e-7 per stage on clean exports (ORT, OpenVINO);
# int8 from 1e-3 (ort quantizer) to 0.05 (NNCF) on the tiny test model. The mean rel, not the max: a LayerNorm
# multiplies the max rel of an error by 20 (the residual stream's largest values set its scale), its mean rel by 5.
STAGE_NOISE = {"fp32": 2e-6, "tf32": 2e-3, "fp16": 2e-3, "bf16": 1e-2, "int8": 5e-2}
# A stage diverges when its mean rel is this many times the larger of the stage before it and the noise: a mild
# fault (fc2 x 1.02, under the 1e-3 threshold) measured 270x; LayerNorm and the heads at most 6x.
JUMP_FACTOR = 10.0
# A mapping is doubtful when the tensor matches another stage of Paddle this many times better than its own.
_CLOSER_ELSEWHERE = 4.0
_VALUE_CHECK_IMAGES = 8  # the quick value check looks at the first images only
# The output of the graph with the stages added as outputs, against the graph as it ships: adding outputs
# keeps a runtime from fusing across them, and can change its result (OpenVINO's int8 pipeline did, by 0.3 in the
# logits, when the stem of an NNCF int8 file was exposed). A runtime whose result changed is flagged in the report.
_INSTRUMENTED = "output (instrumented graph)"
_STAGE_FIELDS = ("max_abs", "mean_abs", "p99_abs", "max_rel", "mean_rel", "min_cosine", "mean_cosine")


def stage_stats(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """The drift statistics of one stage's tensors, each image flattened to one row.

    The one place that computes them (repoint it when the evaluation core moves).
    """
    rows = len(reference)
    stats = drift_stats(reference.reshape(rows, -1), other.reshape(rows, -1), worst=0).to_dict()
    return {key: stats[key] for key in _STAGE_FIELDS}


# -- the two sides -----------------------------------------------------------------------------------------------


class PaddleStages:
    """Native Paddle eager with forward hooks on every stage; `run(batch)` -> stage -> array."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.names = stage_names(len(model.blocks), getattr(model, "return_dense", False))
        layers = {"stem": model.patch_embed, "norm": model.norm, "head": model.head}
        layers.update({f"blocks.{i}": block for i, block in enumerate(model.blocks)})
        if "aux_head" in self.names:
            layers["aux_head"] = model.aux_head
        self._layers = layers

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        import paddle

        seen: dict[str, np.ndarray] = {}

        def hook(name: str):
            def keep(layer, inputs, output):
                seen[name] = output.numpy()

            return keep

        handles = [layer.register_forward_post_hook(hook(name)) for name, layer in self._layers.items()]
        try:
            with paddle.no_grad():
                seen["output"] = self.model(paddle.to_tensor(batch)).numpy()
        finally:
            for handle in handles:
                handle.remove()
        return seen

    def describe(self) -> dict[str, Any]:
        import paddle

        versions = {"paddle": paddle.__version__}
        return {"name": "paddle", "runtime": "paddle (eager, forward hooks)", "versions": versions}


class ExportStages:
    """The exported graph on one runtime's probe (`runtimes.probe`), with the mapped stages' tensors as outputs.

    The stem is read from a graph of its own: with the stem of an NNCF int8 file as an extra output, OpenVINO
    2026.4 computed every later stage wrongly (cosine ~0 to Paddle, the logits moved by 0.8 relative), while the
    same stages exposed without it matched ONNX Runtime exactly. The graph as it ships runs beside them.
    """

    def __init__(
        self, runtime: str, path: Path, proto: Any, mapped: dict[str, Mapped], threads: int | None, precision: str
    ) -> None:
        runtimes = registry.with_extra_outputs()
        if runtime not in runtimes:
            raise ModelSourceError(f"locate runs on {', '.join(runtimes)}, not {runtime!r}")
        self.name, self.path, self.threads, self.precision = runtime, path, threads, precision
        self.tensors = {stage: m.tensor for stage, m in mapped.items()}
        self.unavailable: dict[str, str] = {}
        groups = [[s for s in self.tensors if s not in ("output", "stem")], [s for s in self.tensors if s == "stem"]]
        try:
            self._plain = open_probe(proto, runtime, threads=threads)
            self._probes = [self._instrumented(proto, stages) for stages in groups if stages]
        except Exception as exc:  # the runtimes raise their own classes straight from C++
            raise ModelSourceError(
                f"{path}: {registry.get(runtime).description} cannot load this graph with its stages as outputs "
                f"({type(exc).__name__}: {str(exc)[:500]})"
            ) from exc

    def _instrumented(self, proto: Any, stages: list[str]) -> tuple[Probe, dict[str, str]]:
        """A probe of the graph with `stages`' tensors as outputs, and those stages (any it lacks: unavailable)."""
        probe = open_probe(with_outputs(proto, [self.tensors[s] for s in stages]), self.name, threads=self.threads)
        kept = {}
        for stage in stages:
            if probe.has(self.tensors[stage]):
                kept[stage] = self.tensors[stage]
            else:  # folded away by the runtime
                self.unavailable[stage] = f"{self.name} has no tensor {self.tensors[stage]!r} among its outputs"
        return probe, kept

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        output = self._plain.run(batch)[self._plain.outputs[0]]
        found: dict[str, np.ndarray] = {}
        instrumented = output
        for k, (probe, stages) in enumerate(self._probes):
            head = probe.outputs[0]
            values = probe.run(batch, list(dict.fromkeys([head, *stages.values()])))
            found.update({stage: values[tensor] for stage, tensor in stages.items()})
            if k == 0:  # the blocks' graph: the instrumented one whose logits are checked against the plain one
                instrumented = values[head]
        return {**found, "output": output, _INSTRUMENTED: instrumented}

    def describe(self) -> dict[str, Any]:
        details = self._plain.describe()
        return {
            "name": self.name,
            "runtime": registry.get(self.name).description,
            "threads": self.threads,
            "precision": self.precision,
            **{k: v for k, v in details.items() if k not in ("runtime", "versions")},
            "stem_compiled_apart": True,
            "model_files": {str(self.path): sha256_of(self.path)},
            "versions": details.get("versions", {}),
        }


# -- the comparison ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocateSettings:
    runtimes: tuple[str, ...] = ("ort",)
    tolerance: dict[str, float] | None = None  # per-stage limits (STAGE_LIMITS); default DEFAULT_STAGE_TOLERANCE
    batch_size: int = 8
    threads: int | None = None
    workers: int = 4
    progress: bool = True


def _batches(inputs: DriftInputs, config: Any, settings: LocateSettings) -> tuple[Any, Dataset | None]:
    if inputs.folder is None:
        samples = synthetic_samples(inputs.synthetic or 0, inputs.seed)
        return load_batches(samples, config, settings.batch_size), None
    dataset = image_folder(inputs.folder).limited(inputs.limit)
    stream = stream_batches(
        dataset.samples, config, settings.batch_size, settings.workers, progress=settings.progress,
        description="locate",
    )  # fmt: skip
    return stream, dataset


def _mean_rel(reference: np.ndarray, other: np.ndarray) -> float:
    scale = float(np.abs(reference).sum())
    return float(np.abs(reference - other).sum()) / scale if scale else float(np.abs(other).sum())


def _closest_stages(ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> dict[str, tuple[str, float, float]]:
    """Per compared stage: the Paddle stage of its shape its tensor matches best, that mean rel, and its own."""
    first = {stage: value[:_VALUE_CHECK_IMAGES] for stage, value in ref.items() if stage != "output"}
    found = {}
    for stage, value in got.items():
        value = value[:_VALUE_CHECK_IMAGES]
        rel = {other: _mean_rel(r, value) for other, r in first.items() if r.shape == value.shape}
        closest = min(rel, key=rel.__getitem__)
        found[stage] = (closest, rel[closest], rel[stage])
    return found


def _doubt(stage: str, where: Mapped, closest: dict[str, tuple[str, float, float]], shapes: dict) -> str | None:
    """Why the mapping of `stage` is doubtful, else None.

    Its weight's shape differs from Paddle's; or its tensor matches another stage of Paddle far better than its
    own while that stage's tensor is not its own either (names swapped). A block that a fault keeps from changing
    the stream matches the stage before it too, but that stage still matches itself: a fault, not a doubt.
    """
    expected = shapes.get(where.weight)
    found = where.weight_shape
    if expected is not None and found is not None and found not in (expected, expected[::-1]):
        return f"the graph's {where.weight} has shape {list(found)}, Paddle's {list(expected)}"
    other, other_rel, own_rel = closest[stage]
    if other == stage or other_rel * _CLOSER_ELSEWHERE >= own_rel:
        return None
    if other in closest and closest[other][0] == other:
        return None
    return (
        f"its tensor {where.tensor!r} matches Paddle's {other} (mean rel {other_rel:.3g}) far better than {stage} "
        f"(mean rel {own_rel:.3g}), and {other}'s own tensor does not match it: the initializer names it was "
        "found by look swapped"
    )


def _before(stage: str, order: list[str], usable: list[str]) -> list[str]:
    """The usable stages whose error `stage` inherits: the heads both read the norm; the output reads both heads."""
    if stage == "output" and {"head", "aux_head"} & set(usable):
        return [s for s in ("head", "aux_head") if s in usable]
    earlier = [s for s in order[: order.index(stage)] if s in usable and not (stage == "aux_head" and s == "head")]
    return earlier[-1:]


def _compare(
    names: list[str],
    ref: dict[str, np.ndarray],
    got: dict[str, np.ndarray],
    mapping: dict,
    tolerance: dict,
    shapes: dict[str, tuple[int, ...]],
    noise: float,
) -> dict[str, Any]:
    """Per stage: statistics, checks, doubt, growth over the stage before; the first jump and the first over."""
    stages: dict[str, Any] = {}
    comparable = {s: got[s] for s in names if s != "output" and not isinstance(mapping[s], str)}
    closest = _closest_stages(ref, {s: v for s, v in comparable.items() if v.shape == ref[s].shape})
    for stage in names:
        where = mapping[stage]
        if isinstance(where, str):
            stages[stage] = {"mapped": False, "reason": where}
            continue
        a, b = ref[stage], got[stage].astype(np.float32)
        if a.shape != b.shape:
            why = f"shapes differ: Paddle {list(a.shape)}, export {list(b.shape)}"
            stages[stage] = {"mapped": False, "reason": why}
            continue
        stats = stage_stats(a, b)
        checks = gate.check(STAGE_LIMITS, tolerance, stats)
        doubt = None if stage == "output" else _doubt(stage, where, closest, shapes)
        stages[stage] = {"mapped": True, "tensor": where.tensor, "how": where.how, "shape": list(a.shape[1:]),
                         **stats, "checks": checks, "over": not all(c["passed"] for c in checks),
                         "doubtful": doubt}  # fmt: skip
    usable = [s for s in names if stages[s]["mapped"] and not stages[s]["doubtful"]]
    first_jump = None
    for stage in usable:
        inherited = max((stages[s]["mean_rel"] for s in _before(stage, names, usable)), default=0.0)
        growth = stages[stage]["mean_rel"] / max(inherited, noise)
        stages[stage]["growth"] = growth
        stages[stage]["jump"] = growth >= JUMP_FACTOR
        if stages[stage]["jump"] and first_jump is None:
            first_jump = stage
    first_over = next((s for s in usable if stages[s]["over"]), None)
    checks = (
        [{**c, "name": f"{first_over} {c['name']}"} for c in stages[first_over]["checks"] if not c["passed"]]
        if first_over
        else []
    )
    return {"stages": stages, "first_jump": first_jump, "first_over": first_over, "gate": checks,
            "doubtful": [s for s in names if stages[s].get("doubtful")]}  # fmt: skip


def run_locate(
    source: ModelSource,
    inputs: DriftInputs,
    settings: LocateSettings | None = None,
    log: Any = print,
    command: list[str] | None = None,
) -> dict[str, Any]:
    """Compare native Paddle with `source`'s ONNX export stage by stage on each runtime; the report as plain data."""
    import onnx

    from lvvit import create_model

    settings = settings or LocateSettings()
    runtimes = registry.with_extra_outputs()
    unknown = [r for r in settings.runtimes if r not in runtimes]
    if unknown or not settings.runtimes:
        raise ModelSourceError(f"locate runs on {', '.join(runtimes)}; got {list(settings.runtimes) or 'none'}")
    check_given_files(source)
    model = create_model(source.spec, weights=source.weights, checkpoint_key=source.checkpoint_key, seed=source.seed)
    paddle_side = PaddleStages(model)
    path = ensure_onnx(source, log)
    metadata, precision = _export_metadata(path)
    default = STAGE_TOLERANCE_BY_PRECISION.get(precision, DEFAULT_STAGE_TOLERANCE)
    tolerance = dict(default if settings.tolerance is None else settings.tolerance)
    shapes = {name: tuple(value.shape) for name, value in model.state_dict().items()}
    proto = onnx.load(str(path))
    found = map_stages(proto, len(model.blocks), "aux_head" in paddle_side.names)
    mapped = {stage: m for stage, m in found.items() if isinstance(m, Mapped)}
    sides = [
        ExportStages(r, path, proto, mapped, settings.threads, precision) for r in dict.fromkeys(settings.runtimes)
    ]
    config = source.spec.preprocess
    batches, dataset = _batches(inputs, config, settings)
    ref: dict[str, list[np.ndarray]] = {s: [] for s in paddle_side.names}
    got: dict[str, dict[str, list[np.ndarray]]] = {side.name: {} for side in sides}
    failures: list[Failure] = []
    used = 0
    started = time.perf_counter()
    for batch in batches:
        failures.extend(batch.failures)
        if not len(batch.inputs):
            continue
        used += len(batch.inputs)
        for stage, value in paddle_side.run(batch.inputs).items():
            ref[stage].append(value)
        for side in sides:
            for stage, value in side.run(batch.inputs).items():
                got[side.name].setdefault(stage, []).append(value)
    if not used:
        shown = "; ".join(f"{f.name}: {f.reason}" for f in failures[:5])
        raise DatasetError(f"{inputs.folder}: none of the {len(failures)} images could be read ({shown})")
    reference = {stage: np.concatenate(values) for stage, values in ref.items()}
    report: dict[str, Any] = {
        "kind": "locate",
        "environment": environment(command),
        "model": source.describe(),
        "export": {"file": str(path), "sha256": sha256_of(path), "metadata": metadata, "precision": precision},
        "preprocess": config.to_dict(),
        "inputs": describe_inputs(inputs, dataset, failures, used),
        "batch_size": settings.batch_size,
        "seconds": time.perf_counter() - started,
        "stages": paddle_side.names,
        "tolerance": tolerance,
        "tolerance_source": f"{precision} default" if settings.tolerance is None else "--tolerance",
        "noise_mean_rel": STAGE_NOISE.get(precision, STAGE_NOISE["fp32"]),
        "jump_factor": JUMP_FACTOR,
        "limits": {name: {"kind": limit.kind, "help": limit.help} for name, limit in STAGE_LIMITS.items()},
        "reference": {"name": "paddle", "describe": paddle_side.describe()},
        "runtimes": {},
    }
    for side in sides:
        mapping: dict[str, Mapped | str] = {}
        for stage in paddle_side.names:
            where = found[stage]
            if isinstance(where, Unmapped):
                mapping[stage] = f"not in the graph: {where.reason}"
            elif stage in side.unavailable:
                mapping[stage] = side.unavailable[stage]
            else:
                mapping[stage] = where
        values = {stage: np.concatenate(v) for stage, v in got[side.name].items()}
        compared = _compare(paddle_side.names, reference, values, mapping, tolerance, shapes, report["noise_mean_rel"])
        change = stage_stats(values["output"], values[_INSTRUMENTED])
        instrumentation = {"max_abs_change": change["max_abs"], "max_rel_change": change["max_rel"],
                           "trusted": change["max_rel"] <= MAX_INSTRUMENTATION_REL}  # fmt: skip
        report["runtimes"][side.name] = {"describe": side.describe(), **compared, "instrumentation": instrumentation}
    report["passed"] = all(e["first_over"] is None for e in report["runtimes"].values())
    return report


def _export_metadata(path: Path) -> tuple[dict[str, Any] | None, str]:
    """The file's kit metadata (graph kind, precision), and the precision it computes in by the predictors' rule."""
    from runtimes.onnx_file import graph_precision
    from runtimes.spec import read_model_metadata

    metadata = read_model_metadata(path)
    described = None if metadata is None else {"graph": metadata.graph, "precision": metadata.precision}
    return described, graph_precision(metadata)
