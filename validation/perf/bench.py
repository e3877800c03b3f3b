"""`python -m validation bench`: every runtime path side by side in one process, with drift.

Each path runs the same inputs at the same thread count. Repeats are
interleaved (round-robin over the paths), so that a noisy neighbour slows
every path alike and the ratios stay meaningful; medians and the interquartile
spread are reported, and paths whose spreads overlap are called within the
run's noise rather than ranked. Ratios are throughput against one baseline,
`paddle-inference` (Paddle Inference, oneDNN, one stream). `--onnx FILE` adds
the user's own file on ONNX Runtime and OpenVINO beside the bench's exports.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lvvit.common.metrics import image_errors, summarize_drift
from lvvit.common.provenance import RANDOM_INIT, sha256_of
from lvvit.presets import Preset
from runtimes import registry
from runtimes.spec import PredictorSpec
from validation.reports.bench import BASELINE
from validation.reports.types import (
    BenchPathResult,
    BenchReport,
    CpuRecord,
    FastestPick,
    ImageSet,
    PathDrift,
    RuntimeRecord,
    Timing,
)


@dataclass
class BenchPath:
    """One row: which runtime opens which of the exported files (`Artifacts` field), with which options."""

    name: str
    what: str
    runtime: str  # a `runtimes.registry` name; "paddle" is the eager model
    artifact: str | None  # the `Artifacts` field of its file (None: the eager model, from the preset)
    options: dict[str, Any] = field(default_factory=dict)
    precision: str = "fp32"
    unavailable: str | None = None  # why this path cannot run here (reported, not silently dropped)
    file: Path | None = None  # a user's own file (`--onnx`), instead of an `Artifacts` field

    def spec(self, artifacts: Any, preset: Preset, weights: Path | None) -> PredictorSpec:
        if self.file is not None:
            return PredictorSpec.for_model(self.runtime, self.file, **self.options)
        if self.artifact is None:
            return PredictorSpec.eager(preset, weights)
        return PredictorSpec.for_model(self.runtime, getattr(artifacts, self.artifact), **self.options)


@dataclass
class PathResult:
    name: str
    what: str
    precision: str
    describe: dict[str, Any] = field(default_factory=dict)
    timings: dict[int, dict[str, float]] = field(default_factory=dict)  # batch -> stats
    drift: dict[str, float] = field(default_factory=dict)
    skipped: str | None = None


def bench_paths(threads: int, streams: int, include: set[str] | None) -> list[BenchPath]:
    """Every path as data; those this CPU cannot run carry the reason instead."""
    from lvvit.common.cpuinfo import has_native_bf16

    run = {"threads": threads, "streams": streams}
    no_bf16 = (
        None
        if has_native_bf16()
        else "this CPU has no native bf16 (avx512_bf16 / amx_bf16); OpenVINO would emulate it, far slower than f32"
    )
    paths = [
        BenchPath("paddle-eager", "Paddle dynamic graph (drift reference)", "paddle", None),
        BenchPath("paddle-inference", "Paddle Inference, oneDNN", "paddle-inference", "paddle", {"threads": threads}),
        BenchPath(
            "paddle-inference-streams",
            f"Paddle Inference, oneDNN, {streams} streams",
            "paddle-inference",
            "paddle",
            run,
        ),
        BenchPath("ort-fp32", "ONNX Runtime, exported graph", "ort", "onnx", run),
        BenchPath("ort-fused", "ONNX Runtime, fused graph (--optimize)", "ort", "fused", run),
        BenchPath("openvino-f32", "OpenVINO f32", "openvino", "onnx", {"precision": "f32", **run}),
        BenchPath("openvino-bf16", "OpenVINO bf16", "openvino", "onnx", {"precision": "bf16", **run}, "bf16", no_bf16),
        BenchPath("ort-int8", "ONNX Runtime, int8 QDQ (ort quantizer)", "ort", "int8_ort", run, "int8"),
        BenchPath(
            "openvino-int8", "OpenVINO, int8 QDQ (nncf)", "openvino", "int8", {"precision": "f32", **run}, "int8"
        ),
    ]
    on_request = [  # exported only when listed: accuracy control takes minutes; the others are comparisons
        # (name, what, artifact, runtime, OpenVINO's precision for the float parts)
        ("ort-int8-ac", "ONNX Runtime, int8 QDQ (ort quantizer, accuracy control: fine stages)", "int8_ort_ac",
         "ort", None),
        ("openvino-int8-ac", "OpenVINO, int8 QDQ (nncf, accuracy control: fine stages, agreement on OpenVINO)",
         "int8_ac", "openvino", "f32"),
        ("openvino-int8-ac-whole", "OpenVINO, int8 QDQ (nncf, accuracy control: whole stages, agreement on OpenVINO)",
         "int8_ac_whole", "openvino", "f32"),
        ("openvino-int8-bf16", "OpenVINO, int8 QDQ (nncf), the float parts in bf16", "int8", "openvino", "bf16"),
        ("openvino-int8-ac-bf16", "OpenVINO, int8 QDQ (nncf, accuracy control: fine stages, agreement on OpenVINO "
         "at bf16), the float parts in bf16", "int8_ac_bf16", "openvino", "bf16"),
        ("openvino-int8-unfolded", "OpenVINO, int8 QDQ (nncf, SmoothQuant's Multiply nodes left)", "int8_unfolded",
         "openvino", "f32"),
        ("openvino-int8-vnni", "OpenVINO, int8 QDQ (nncf, every linear layer in int8: --int8-target vnni)",
         "int8_vnni", "openvino", "f32"),
    ]  # fmt: skip
    for name, what, artifact, runtime, float_math in on_request:
        if include is not None and name in include:
            options = run if float_math is None else {"precision": float_math, **run}
            unavailable = no_bf16 if float_math == "bf16" else None
            paths.append(BenchPath(name, what, runtime, artifact, options, "int8", unavailable))
    if streams == 1:  # the same as paddle-inference
        paths = [p for p in paths if p.name != "paddle-inference-streams"]
    return [p for p in paths if include is None or p.name in include]


def extra_exports(paths: list[BenchPath]) -> tuple[str, ...]:
    """The on-request files (`EXTRA_INT8`) of the paths that can run here: a row this CPU cannot run (the bf16
    rows without native bf16) is reported as not run, and its file, which could not be made here, is not asked for."""
    from validation.perf.artifacts import EXTRA_INT8

    return tuple(p.artifact for p in paths if p.artifact in EXTRA_INT8 and p.unavailable is None)


def user_file_paths(onnx: Path, preset: Preset, weights: Path | None, threads: int, streams: int) -> list[BenchPath]:
    """`--onnx FILE`: the user's file on every registered runtime that loads an `.onnx` (rows `file-<runtime>`),
    checked to be the bench's model first."""
    from runtimes.onnx_file import graph_precision
    from runtimes.spec import read_model_metadata
    from validation.core.runners import ModelSource, check_same_model

    metadata = read_model_metadata(onnx)
    check_same_model(ModelSource(spec=preset, weights=weights), onnx, metadata)
    precision = graph_precision(metadata)  # the floor of its precision, as the predictors call it
    run = {"threads": threads, "streams": streams}
    return [
        BenchPath(f"file-{name}", f"{registry.get(name).label} on {onnx.name}", name, None, run, precision, file=onnx)
        for name in registry.with_model_files(["onnx"])
    ]


def fastest_meeting_gate(results: list[PathResult], batch: int, gate: float) -> dict[str, Any] | None:
    """The path with the highest throughput at `batch` among those whose top-1 agreement with Paddle eager is at least
    `gate`, and the runners-up whose interquartile ranges overlap its own (within this run's noise)."""
    timed = [r for r in results if not r.skipped and batch in r.timings and r.drift.get("top1_agreement", -1) >= gate]
    if not timed:
        return None
    best = max(timed, key=lambda r: r.timings[batch]["images_per_s"])
    fastest = best.timings[batch]
    close = [r.name for r in timed if r is not best and r.timings[batch]["p25_ms"] <= fastest["p75_ms"]]
    return {"batch": batch, "gate": gate, "path": best.name, "images_per_s": fastest["images_per_s"],
            "top1_agreement": best.drift["top1_agreement"], "within_noise": close}  # fmt: skip


def _open_all(
    paths: list[BenchPath], artifacts: Any, preset: Preset, weights: Path | None, log
) -> tuple[dict[str, Any], list[PathResult]]:
    from runtimes import PredictorError

    opened, results = {}, []
    for path in paths:
        result = PathResult(path.name, path.what, path.precision)
        results.append(result)
        if path.unavailable:
            result.skipped = path.unavailable
            log(f"  {path.name}: not run ({path.unavailable})")
            continue
        try:
            predictor = path.spec(artifacts, preset, weights).open()
        except PredictorError as exc:  # e.g. bf16 on a CPU without it: reported, never silently replaced
            result.skipped = str(exc)
            log(f"  {path.name}: not run ({exc})")
        else:
            opened[path.name] = predictor
            result.describe = predictor.describe()
            if result.describe.get("float_stages"):
                result.what += f"; in float: {', '.join(result.describe['float_stages'])}"
    return opened, results


def _tile(images: np.ndarray, batch: int) -> np.ndarray:
    reps = -(-batch // len(images))
    return np.ascontiguousarray(np.concatenate([images] * reps)[:batch])


# Paddle's OpenMP threads (Intel OpenMP, KMP_BLOCKTIME 200 ms) keep spinning after a run ends, ONNX Runtime's
# for ~50 ms: measured 0.2 and 0.05 CPU-seconds in the half second after a batch. Without a pause the next
# path in the round would share the cores with them.
DEFAULT_SETTLE_MS = 300
AGREEMENT_GATE = 0.99  # top-1 agreement with Paddle eager fp32 a path must reach to be recommended (the int8 gate's)


def time_interleaved(
    opened: dict[str, Any], x: np.ndarray, warmup: int, repeats: int, settle_s: float, probe=None
) -> tuple[dict[str, list[float]], list[float]]:
    """Per path, the seconds of each timed run; and the probe's GFMA/s once per round (when given)."""
    for predictor in opened.values():
        for _ in range(warmup):
            predictor.logits(x)
    seconds: dict[str, list[float]] = {name: [] for name in opened}
    rates: list[float] = []
    for _ in range(repeats):
        for name, predictor in opened.items():  # interleaved: noise hits every path alike
            time.sleep(settle_s)
            start = time.perf_counter()
            predictor.logits(x)
            seconds[name].append(time.perf_counter() - start)
        if probe is not None:
            time.sleep(settle_s)
            rates.append(probe.gfma_per_s())
    return seconds, rates


def timing_stats(samples: list[float], batch: int) -> dict[str, float]:
    """Median, interquartile range (the run's own noise, which decides whether two paths are ranked), minimum."""
    ms = np.asarray(samples) * 1e3
    median = float(np.median(ms))
    p25, p75 = float(np.percentile(ms, 25)), float(np.percentile(ms, 75))
    return {
        "median_ms": median,
        "p25_ms": p25,
        "p75_ms": p75,
        "iqr_rel": (p75 - p25) / median,
        "min_ms": float(ms.min()),
        "images_per_s": batch / median * 1e3,
        "repeats": len(samples),
    }


def _drift(opened: dict[str, Any], images: np.ndarray, chunk: int = 8) -> dict[str, dict[str, float]]:
    outputs = {
        name: np.concatenate([p.logits(images[i : i + chunk]) for i in range(0, len(images), chunk)])
        for name, p in opened.items()
    }
    reference = outputs["paddle-eager"]
    drift = {}
    for name, out in outputs.items():
        errors = image_errors(reference, out)
        stats = summarize_drift(errors)
        drift[name] = {
            "max_abs": stats.max_abs,
            "mean_abs": stats.mean_abs,
            "top1_agreement": stats.top1_agreement,
            "images": stats.samples,
            "reference_median_top2_margin": float(np.median(errors.ref_margin)),
        }
    return drift


@dataclass(frozen=True)
class _Measured:
    """What the timed rounds found: the SGEMM probe's rates, and the CPU and the floors they imply."""

    sgemm_rates: list[float]
    nominal: Any  # `cpu_floor.CpuInfo` as detected
    cpu: Any  # its clock raised to the fastest probe round's, where that beat it
    macs: int
    floors: dict[str, float | None]


def _time_batches(opened: dict[str, Any], by_name: dict[str, PathResult], real: np.ndarray, batch_sizes, warmup: int,
                  repeats: int, settle_ms: int, probe: Any, log) -> list[float]:  # fmt: skip
    """Time every path at every batch size (interleaved); the SGEMM probe's rates of the batch-1 rounds."""
    sgemm_rates: list[float] = []
    for batch in batch_sizes:
        log(f"timing batch {batch}: {warmup} warm-up + {repeats} interleaved repeats per path, {settle_ms} ms apart")
        # the SGEMM probe runs in the batch-1 rounds, where the floor is compared
        batch_probe = probe if batch == 1 else None
        seconds, rates = time_interleaved(opened, _tile(real, batch), warmup, repeats, settle_ms / 1e3, batch_probe)
        sgemm_rates += rates
        for name, samples in seconds.items():
            by_name[name].timings[batch] = timing_stats(samples, batch)
    if not sgemm_rates:  # no batch-1 timing: measure it on its own
        sgemm_rates = [probe.gfma_per_s() for _ in range(5)]
    return sgemm_rates


def _floors(spec: Any, threads: int, sgemm_rates: list[float], results: list[PathResult]) -> _Measured:
    """The arithmetic floors per precision, and each batch-1 timing against its precision's floor."""
    from lvvit.macs import count_macs
    from validation.perf.cpu_floor import detect_cpu

    macs = count_macs(spec.arch, spec.resolution)
    nominal = detect_cpu(threads)
    # a floor the probe has beaten is no floor: the clock is the one the fastest probe round implies (boost varies
    # from round to round; with the median, OpenVINO f32 once ran at 0.88x its "floor")
    cpu = nominal.at_measured_rate(max(sgemm_rates))
    floors = {p: cpu.floor_ms(macs, p) for p in ("fp32", "bf16", "int8")}
    for result in results:
        floor = floors.get(result.precision)
        if floor and 1 in result.timings:
            result.timings[1]["x_floor"] = result.timings[1]["median_ms"] / floor
    return _Measured(sgemm_rates, nominal, cpu, macs, floors)


def _path_record(result: PathResult) -> BenchPathResult:
    return BenchPathResult(
        name=result.name, what=result.what, precision=result.precision,
        describe=RuntimeRecord.from_json(result.describe),
        timings={batch: Timing.from_json(t) for batch, t in result.timings.items()},
        drift=PathDrift.from_json(result.drift) if result.drift else None,
        skipped=result.skipped,
    )  # fmt: skip


def _report(run: dict[str, Any], results: list[PathResult], measured: _Measured) -> BenchReport:
    """The typed bench report: the run's settings (`run`), the paths' results and the floors."""
    from validation.perf.cpu_floor import ms_at_rate

    cpu, macs, rates = measured.cpu, measured.macs, measured.sgemm_rates
    sgemm = float(np.median(rates))
    picks = [f for b in run["batch_sizes"] if (f := fastest_meeting_gate(results, b, AGREEMENT_GATE))]
    return BenchReport(
        **run,
        baseline=BASELINE,
        cpu=CpuRecord.from_json(cpu.to_dict()),
        nominal_clock_ghz=measured.nominal.clock_ghz,
        macs_per_image=macs,
        floor_ms_batch1=measured.floors["fp32"],
        floor_ms_batch1_by_precision=measured.floors,
        floor_working=cpu.working(macs),
        floor_working_by_precision={p: cpu.working(macs, p) for p in measured.floors},
        # median over the rounds; the floor at that rate is what this machine could do while the bench ran
        measured_sgemm_gfma_per_s=sgemm,
        measured_sgemm_gfma_per_s_range=[float(min(rates)), float(max(rates))],
        measured_floor_ms_batch1=ms_at_rate(macs, sgemm),
        paths=[_path_record(r) for r in results],
        # the answer a user wants from the table: what to ship on this CPU
        fastest_meeting_gate=[FastestPick.from_json(f) for f in picks],
    )


def run_bench(
    preset: str,
    weights: Path | None = None,
    resolution: int | None = None,
    workdir: Path = Path("build/bench"),
    images: Path | None = None,
    batch_sizes: tuple[int, ...] = (1, 8, 32),
    threads: int | None = None,
    streams: int | None = None,
    warmup: int = 2,
    repeats: int = 7,
    include: set[str] | None = None,
    log=print,
    limit_images: int | None = None,
    settle_ms: int = DEFAULT_SETTLE_MS,
    max_float_stages: int | None = None,
    onnx: Path | None = None,
    progress: bool = True,
) -> BenchReport:
    """Export the paths' files (or reuse them), time each path per batch size, measure drift; the typed report.

    `onnx`: a user's own file, timed on ONNX Runtime and OpenVINO beside the bench's exports. `progress`: the
    exports' calibration and accuracy-control bars on stderr.
    """
    from lvvit import resolve_preset
    from lvvit.preprocess import image_files, preprocess_batch
    from validation.perf.artifacts import prepare_artifacts
    from validation.perf.cpu_floor import SgemmProbe

    threads = threads or len(os.sched_getaffinity(0))
    streams = streams or threads
    spec = resolve_preset(preset, resolution)
    paths = bench_paths(threads, streams, include)
    if onnx is not None:  # checked before the minutes of exports
        paths += user_file_paths(Path(onnx), spec, weights, threads, streams)
    extras = extra_exports(paths)
    artifacts = prepare_artifacts(preset, weights, resolution, Path(workdir), images, log, extras=extras,
                                  max_float_stages=max_float_stages, progress=progress)  # fmt: skip
    real = preprocess_batch(image_files(artifacts.images)[:limit_images], spec.preprocess)
    log(f"opening {len(paths)} paths with {threads} threads ({streams} streams where batched)")
    opened, results = _open_all(paths, artifacts, spec, weights, log)
    by_name = {r.name: r for r in results}
    log(f"drift against Paddle eager on {len(real)} real images")
    if "paddle-eager" in opened:
        for name, numbers in _drift(opened, real).items():
            by_name[name].drift = numbers
    probe = SgemmProbe(threads)
    rates = _time_batches(opened, by_name, real, batch_sizes, warmup, repeats, settle_ms, probe, log)
    for predictor in opened.values():
        predictor.close()
    run = {
        "preset": spec.name, "resolution": spec.resolution, "threads": threads, "streams": streams,
        "weights": str(weights) if weights else f"{RANDOM_INIT} (seed 0)", "batch_sizes": list(batch_sizes),
        "warmup": warmup, "repeats": repeats, "settle_ms": settle_ms,
        "user_file": {"path": str(onnx), "sha256": sha256_of(Path(onnx))} if onnx is not None else None,
        "images": ImageSet(folder=str(artifacts.images), count=len(real)),
    }  # fmt: skip
    return _report(run, results, _floors(spec, threads, rates, results))
