"""Where the drift comes from: native Paddle and an export compared stage by stage.

The same inputs go through native Paddle eager, with forward hooks on the named
stages (`exporters.onnx.stage_map.stage_names`), and through the exported ONNX file
on ONNX Runtime or OpenVINO, with the stages' tensors added as outputs (found
through the state-dict-named weights, see `exporters.onnx.stage_map`). Per stage:
max / mean absolute and relative error and cosine similarity; the first stage
outside the threshold is where the answers part. A stage the export does not
hold as a tensor is reported as not mapped, with the reason.

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
from lvvit.comparison import drift_stats
from lvvit.provenance import sha256_of

from . import gate
from .data import Dataset, Failure, image_folder, stream_batches
from .drift import DriftInputs, describe_inputs
from .engines import load_batches, synthetic_samples
from .errors import DatasetError, ModelSourceError
from .locate_report import MAX_INSTRUMENTATION_REL, summary_line
from .provenance import environment
from .runners import ModelSource, check_given_files, ensure_onnx

RUNTIMES = {"ort": "ONNX Runtime (CPU) on the .onnx file", "openvino": "OpenVINO (CPU, f32) on the .onnx file"}
# The per-stage limits: those of the drift gate that mean something for any tensor (not top-k or KL).
STAGE_LIMITS = {name: gate.DRIFT_LIMITS[name] for name in ("max_abs", "mean_abs", "p99_abs", "max_rel", "min_cosine")}
DEFAULT_STAGE_TOLERANCE = {"max_rel": 1e-3}
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
    """The exported graph on one runtime, with the mapped stages' tensors added as outputs."""

    def __init__(self, runtime: str, path: Path, proto: Any, mapped: dict[str, Mapped], threads: int | None) -> None:
        if runtime not in RUNTIMES:
            raise ModelSourceError(f"locate runs on {', '.join(RUNTIMES)}, not {runtime!r}")
        self.name, self.path, self.threads = runtime, path, threads
        self.tensors = {stage: m.tensor for stage, m in mapped.items()}
        self.unavailable: dict[str, str] = {}
        try:
            self._run = self._open_ort(proto) if runtime == "ort" else self._open_openvino()
        except Exception as exc:  # both runtimes raise their own classes straight from C++
            raise ModelSourceError(
                f"{path}: {RUNTIMES[runtime]} cannot load this graph with its stages as outputs "
                f"({type(exc).__name__}: {str(exc)[:500]})"
            ) from exc

    def _open_ort(self, proto: Any):
        import onnxruntime as ort

        from runtimes.ort_providers import CPU_DISABLED_FUSIONS

        copy = with_outputs(proto, self.tensors.values())
        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        session = ort.InferenceSession(
            copy.SerializeToString(), options, providers=["CPUExecutionProvider"],
            disabled_optimizers=list(CPU_DISABLED_FUSIONS),  # as OrtPredictor runs it on the CPU
        )  # fmt: skip
        plain = ort.InferenceSession(
            proto.SerializeToString(), options, providers=["CPUExecutionProvider"],
            disabled_optimizers=list(CPU_DISABLED_FUSIONS),
        )  # fmt: skip
        names = list(dict.fromkeys(self.tensors.values()))
        self._versions = {"onnxruntime": ort.__version__}
        self._details = {"providers": session.get_providers(), "disabled_fusions": list(CPU_DISABLED_FUSIONS)}

        def run(batch: np.ndarray) -> dict[str, np.ndarray]:
            feed = {session.get_inputs()[0].name: batch}
            values = dict(zip(names, session.run(names, feed), strict=True))
            found = {stage: values[tensor] for stage, tensor in self.tensors.items() if stage != "output"}
            return {**found, "output": plain.run(None, feed)[0], _INSTRUMENTED: values[self.tensors["output"]]}

        return run

    def _open_openvino(self):
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(self.path))
        for stage, tensor in list(self.tensors.items()):
            if stage == "output":
                continue
            try:
                model.add_outputs([tensor])
            except RuntimeError as exc:  # the tensor was folded away by OpenVINO's frontend
                self.unavailable[stage] = f"OpenVINO has no tensor {tensor!r} ({str(exc).splitlines()[-1]})"
                del self.tensors[stage]
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = self.threads
        request = core.compile_model(model, "CPU", config).create_infer_request()
        plain = core.compile_model(str(self.path), "CPU", config).create_infer_request()
        outputs = request.model_outputs
        self._versions = {"openvino": ov.__version__}
        self._details = {"device": "CPU", "precision": "fp32"}

        def run(batch: np.ndarray) -> dict[str, np.ndarray]:
            request.infer({0: batch})
            plain.infer({0: batch})
            found = {}
            for stage, tensor in self.tensors.items():
                if stage != "output":
                    port = next(o for o in outputs if tensor in o.get_names())
                    found[stage] = np.array(request.get_tensor(port).data)
            instrumented = np.array(request.get_tensor(outputs[0]).data)
            return {**found, "output": np.array(plain.get_output_tensor(0).data), _INSTRUMENTED: instrumented}

        return run

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return self._run(batch)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "runtime": RUNTIMES[self.name],
            "threads": self.threads,
            **self._details,
            "model_files": {str(self.path): sha256_of(self.path)},
            "versions": self._versions,
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


def _compare(
    names: list[str], ref: dict[str, np.ndarray], got: dict[str, np.ndarray], mapping: dict, tolerance: dict
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    stages: dict[str, Any] = {}
    gate_checks: list[dict[str, Any]] = []
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
        over = not all(c["passed"] for c in checks)
        stages[stage] = {"mapped": True, "tensor": where.tensor, "how": where.how, "shape": list(a.shape[1:]),
                         **stats, "checks": checks, "over": over}  # fmt: skip
        if over and not gate_checks:
            gate_checks = [{**c, "name": f"{stage} {c['name']}"} for c in checks if not c["passed"]]
    return stages, gate_checks


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
    unknown = [r for r in settings.runtimes if r not in RUNTIMES]
    if unknown or not settings.runtimes:
        raise ModelSourceError(f"locate runs on {', '.join(RUNTIMES)}; got {list(settings.runtimes) or 'none'}")
    tolerance = dict(DEFAULT_STAGE_TOLERANCE if settings.tolerance is None else settings.tolerance)
    check_given_files(source)
    model = create_model(source.spec, weights=source.weights, checkpoint_key=source.checkpoint_key, seed=source.seed)
    paddle_side = PaddleStages(model)
    path = ensure_onnx(source, log)
    proto = onnx.load(str(path))
    found = map_stages(proto, len(model.blocks), "aux_head" in paddle_side.names)
    mapped = {stage: m for stage, m in found.items() if isinstance(m, Mapped)}
    sides = [ExportStages(r, path, proto, mapped, settings.threads) for r in dict.fromkeys(settings.runtimes)]
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
        "export": {"file": str(path), "sha256": sha256_of(path), "metadata": _export_metadata(path)},
        "preprocess": config.to_dict(),
        "inputs": describe_inputs(inputs, dataset, failures, used),
        "batch_size": settings.batch_size,
        "seconds": time.perf_counter() - started,
        "stages": paddle_side.names,
        "tolerance": tolerance,
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
        stages, checks = _compare(paddle_side.names, reference, values, mapping, tolerance)
        first = next((s for s in paddle_side.names if stages[s].get("over")), None)
        change = stage_stats(values["output"], values[_INSTRUMENTED])
        instrumentation = {"max_abs_change": change["max_abs"], "max_rel_change": change["max_rel"],
                           "trusted": change["max_rel"] <= MAX_INSTRUMENTATION_REL}  # fmt: skip
        report["runtimes"][side.name] = {"describe": side.describe(), "stages": stages, "first_over": first,
                                         "instrumentation": instrumentation, "gate": checks}  # fmt: skip
    report["passed"] = all(e["first_over"] is None for e in report["runtimes"].values())
    return report


def _export_metadata(path: Path) -> dict[str, Any] | None:
    from runtimes.onnx_file import kit_metadata, read_onnx_file

    found, props = read_onnx_file(path)
    metadata = kit_metadata(props, found)
    return None if metadata is None else {"graph": metadata.graph, "precision": metadata.precision}


# -- command line --------------------------------------------------------------------------------------------------


def add_parser(subparsers: Any) -> None:
    from .options import add_image_inputs, add_model_options, add_report_options, positive

    parser = subparsers.add_parser(
        "locate",
        help="where an export parts from native Paddle: per-stage comparison, first stage over the threshold",
        description="Run the same inputs through native Paddle (forward hooks) and the exported ONNX file "
        "(ONNX Runtime or OpenVINO, the stages' tensors added as outputs, found through the state-dict-named "
        "weights); report max/mean absolute and relative error and cosine similarity per stage (stem, each "
        "block's residual stream, final norm, class head, aux head, output), mark the first stage over the "
        "threshold, and exit 1 when there is one.",
    )
    add_image_inputs(parser, default_synthetic=8)
    add_model_options(parser)
    group = parser.add_argument_group("export runtimes")
    group.add_argument(
        "--runtime", action="append", choices=list(RUNTIMES), default=None,
        help="runtime that runs the export, repeatable (default: ort); "
        + "; ".join(f"{k}: {v}" for k, v in RUNTIMES.items()),
    )  # fmt: skip
    group.add_argument("--batch-size", type=positive, default=8, help="images per run (default 8)")
    group.add_argument("--threads", type=positive, default=None, help="runtime threads (default: each runtime's own)")
    defaults = ", ".join(f"{k}={v:g}" for k, v in DEFAULT_STAGE_TOLERANCE.items())
    add_report_options(parser, f"per-stage limit: {', '.join(STAGE_LIMITS)}; NAME=none drops one (default {defaults})")
    parser.set_defaults(func=main)


def main(args: Any) -> int:
    from .options import log, model_source, print_written, report_stem
    from .report import write_reports

    tolerance = gate.parse_tolerance(args.tolerance, STAGE_LIMITS, DEFAULT_STAGE_TOLERANCE)
    if args.limit is not None and args.images is None:
        raise DatasetError("--limit applies to --images")
    synthetic = args.synthetic if args.images is not None or args.synthetic is not None else 8
    inputs = DriftInputs(args.images, None if args.images else synthetic, args.seed, args.limit)
    source = model_source(args)
    settings = LocateSettings(
        tuple(args.runtime or ["ort"]), tolerance, args.batch_size, args.threads, args.workers, not args.no_progress
    )
    report = run_locate(source, inputs, settings, log, args.argv)
    written = write_reports(report, args.report_dir, report_stem(args, "locate", source))
    for name in report["runtimes"]:
        print(f"{name}: " + summary_line(report, name))
    print_written(written)
    gate.raise_if_failed(report)
    print("PASSED: every mapped stage is within the threshold")
    return 0
