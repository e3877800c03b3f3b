"""`python -m validation bench`: every runtime path side by side in one process, with drift.

Each path runs the same inputs at the same thread count. Repeats are
interleaved (round-robin over the paths), so that a noisy neighbour slows
every path alike and the ratios stay meaningful; medians and the interquartile
spread are reported. Ratios are throughput against Paddle inference (oneDNN).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REFERENCES = ("paddle-inference", "paddle-inference-streams")  # ratios use the faster of the two


@dataclass
class PathSpec:
    name: str
    what: str
    open: Callable[[], Any]  # -> a runtimes.Predictor
    precision: str = "fp32"
    unavailable: str | None = None  # why this path cannot run here (reported, not silently dropped)


@dataclass
class PathResult:
    name: str
    what: str
    precision: str
    describe: dict[str, Any] = field(default_factory=dict)
    timings: dict[int, dict[str, float]] = field(default_factory=dict)  # batch -> stats
    drift: dict[str, float] = field(default_factory=dict)
    skipped: str | None = None


def bench_paths(artifacts, model, threads: int, streams: int, include: set[str] | None) -> list[PathSpec]:
    from runtimes import OpenVinoPredictor, OrtPredictor, PaddlePredictor

    from .cpu_floor import has_native_bf16

    run = {"threads": threads, "streams": streams}
    no_bf16 = (
        None
        if has_native_bf16()
        else "this CPU has no native bf16 (avx512_bf16 / amx_bf16); OpenVINO would emulate it, far slower than f32"
    )
    specs = [
        PathSpec("paddle-eager", "Paddle dynamic graph (drift reference)", lambda: PaddlePredictor.from_model(model)),
        PathSpec(
            "paddle-inference", "Paddle Inference, oneDNN", lambda: PaddlePredictor(artifacts.paddle, threads=threads)
        ),
        PathSpec(
            "paddle-inference-streams",
            f"Paddle Inference, oneDNN, {streams} streams",
            lambda: PaddlePredictor(artifacts.paddle, **run),
        ),
        PathSpec("ort-fp32", "ONNX Runtime, exported graph", lambda: OrtPredictor(artifacts.onnx, **run)),
        PathSpec("ort-fused", "ONNX Runtime, fused graph (--optimize)", lambda: OrtPredictor(artifacts.fused, **run)),
        PathSpec("openvino-f32", "OpenVINO f32", lambda: OpenVinoPredictor(artifacts.onnx, "f32", **run)),
        PathSpec(
            "openvino-bf16", "OpenVINO bf16", lambda: OpenVinoPredictor(artifacts.onnx, "bf16", **run), "bf16", no_bf16
        ),
        PathSpec(
            "ort-int8",
            "ONNX Runtime, int8 QDQ (ort quantizer)",
            lambda: OrtPredictor(artifacts.int8_ort, **run),
            "int8",
        ),
        PathSpec(
            "openvino-int8",
            "OpenVINO, int8 QDQ (nncf)",
            lambda: OpenVinoPredictor(artifacts.int8, "f32", **run),
            "int8",
        ),
    ]
    if artifacts.int8_ac is not None:
        specs.append(
            PathSpec(
                "openvino-int8-ac",
                "OpenVINO, int8 QDQ (nncf, accuracy control)",
                lambda: OpenVinoPredictor(artifacts.int8_ac, "f32", **run),
                "int8",
            )
        )
    if streams == 1:  # the same as paddle-inference
        specs = [s for s in specs if s.name != "paddle-inference-streams"]
    return [s for s in specs if include is None or s.name in include]


def _open_all(specs: list[PathSpec], log) -> tuple[dict[str, Any], list[PathResult]]:
    from runtimes import PredictorError

    opened, results = {}, []
    for spec in specs:
        result = PathResult(spec.name, spec.what, spec.precision)
        results.append(result)
        if spec.unavailable:
            result.skipped = spec.unavailable
            log(f"  {spec.name}: not run ({spec.unavailable})")
            continue
        try:
            predictor = spec.open()
        except PredictorError as exc:  # e.g. bf16 on a CPU without it: reported, never silently replaced
            result.skipped = str(exc)
            log(f"  {spec.name}: not run ({exc})")
        else:
            opened[spec.name] = predictor
            result.describe = predictor.describe()
    return opened, results


def _tile(images: np.ndarray, batch: int) -> np.ndarray:
    reps = -(-batch // len(images))
    return np.ascontiguousarray(np.concatenate([images] * reps)[:batch])


# Paddle's OpenMP threads (Intel OpenMP, KMP_BLOCKTIME 200 ms) keep spinning after a run ends, ONNX Runtime's
# for ~50 ms: measured 0.2 and 0.05 CPU-seconds in the half second after a batch. Without a pause the next
# path in the round would share the cores with them.
DEFAULT_SETTLE_MS = 300


def _time(
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


def _stats(samples: list[float], batch: int) -> dict[str, float]:
    ms = np.asarray(samples) * 1e3
    median = float(np.median(ms))
    return {
        "median_ms": median,
        "p25_ms": float(np.percentile(ms, 25)),
        "p75_ms": float(np.percentile(ms, 75)),
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
    top2 = np.sort(reference, axis=1)[:, -2:]
    drift = {}
    for name, out in outputs.items():
        diff = np.abs(out.astype(np.float64) - reference)
        drift[name] = {
            "max_abs": float(diff.max()),
            "mean_abs": float(diff.mean()),
            "top1_agreement": float((out.argmax(1) == reference.argmax(1)).mean()),
            "images": len(images),
            "reference_median_top2_margin": float(np.median(top2[:, 1] - top2[:, 0])),
        }
    return drift


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
) -> dict[str, Any]:
    """Export the paths' files (or reuse them), time each path per batch size, measure drift; return a report."""
    from lvvit import create_model
    from lvvit.macs import count_macs
    from lvvit.preprocess import image_files, preprocess_batch

    from .bench_artifacts import prepare_artifacts
    from .cpu_floor import SgemmProbe, detect_cpu, ms_at_rate

    threads = threads or len(os.sched_getaffinity(0))
    streams = streams or threads
    controlled = include is not None and "openvino-int8-ac" in include  # minutes of NNCF: only when asked
    artifacts = prepare_artifacts(preset, weights, resolution, Path(workdir), images, log, accuracy_control=controlled)
    model = create_model(preset, weights=weights, resolution=resolution)
    config = model.preset.preprocess
    paths = image_files(artifacts.images)[:limit_images]
    real = preprocess_batch(paths, config)
    specs = bench_paths(artifacts, model, threads, streams, include)
    log(f"opening {len(specs)} paths with {threads} threads ({streams} streams where batched)")
    opened, results = _open_all(specs, log)
    by_name = {r.name: r for r in results}
    log(f"drift against Paddle eager on {len(real)} real images")
    if "paddle-eager" in opened:
        for name, numbers in _drift(opened, real).items():
            by_name[name].drift = numbers
    probe = SgemmProbe(threads)
    sgemm_rates: list[float] = []
    for batch in batch_sizes:
        log(f"timing batch {batch}: {warmup} warm-up + {repeats} interleaved repeats per path, {settle_ms} ms apart")
        # the SGEMM probe runs in the batch-1 rounds, where the floor is compared
        batch_probe = probe if batch == 1 else None
        seconds, rates = _time(opened, _tile(real, batch), warmup, repeats, settle_ms / 1e3, batch_probe)
        sgemm_rates += rates
        for name, samples in seconds.items():
            by_name[name].timings[batch] = _stats(samples, batch)
    if not sgemm_rates:  # no batch-1 timing: measure it on its own
        sgemm_rates = [probe.gfma_per_s() for _ in range(5)]
    for predictor in opened.values():
        predictor.close()
    cpu = detect_cpu(threads)
    macs = count_macs(model.preset.arch, model.preset.resolution)
    sgemm = float(np.median(sgemm_rates))
    return {
        "preset": model.preset.name,
        "resolution": model.preset.resolution,
        "weights": str(weights) if weights else "random-init (seed 0)",
        "threads": threads,
        "streams": streams,
        "batch_sizes": list(batch_sizes),
        "warmup": warmup,
        "repeats": repeats,
        "settle_ms": settle_ms,
        "images": {"folder": str(artifacts.images), "count": len(real)},
        "cpu": cpu.to_dict(),
        "macs_per_image": macs,
        "floor_ms_batch1": cpu.floor_ms(macs),
        "floor_working": cpu.working(macs),
        # median over the rounds; the floor at that rate is what this machine could do while the bench ran
        "measured_sgemm_gfma_per_s": sgemm,
        "measured_sgemm_gfma_per_s_range": [float(min(sgemm_rates)), float(max(sgemm_rates))],
        "measured_floor_ms_batch1": ms_at_rate(macs, sgemm),
        "paths": [r.__dict__ for r in results],
    }


def reference_throughput(paths: list[dict[str, Any]], batch: int) -> tuple[str, float] | None:
    """The faster Paddle Inference configuration at `batch`: (name, images/s)."""
    candidates = [
        (p["name"], p["timings"][batch]["images_per_s"])
        for p in paths
        if p["name"] in REFERENCES and not p["skipped"] and batch in p["timings"]
    ]
    return max(candidates, key=lambda c: c[1]) if candidates else None


def _ratio(result: dict[str, Any], paths: list[dict[str, Any]], batch: int) -> float | None:
    reference = reference_throughput(paths, batch)
    if reference is None or batch not in result["timings"]:
        return None
    return result["timings"][batch]["images_per_s"] / reference[1]


def render_markdown(report: dict[str, Any]) -> str:
    """The side-by-side table, the ratios against Paddle inference, and the arithmetic floor."""
    paths = report["paths"]
    batches = report["batch_sizes"]
    header = ["path", "precision"]
    for b in batches:
        header += [f"b{b} median ms (IQR)", f"b{b} img/s", f"b{b} x Paddle Inference"]
    header += ["max abs vs eager", "mean abs / median top-2 margin", "top-1 agreement"]
    lines = [
        f"# Benchmark: {report['preset']} at {report['resolution']}px, {report['threads']} threads",
        "",
        f"Batched runs use {report['streams']} streams (the batch split into parallel parts) on every runtime; "
        "ratios are throughput over the faster Paddle Inference configuration (one stream or the streams).",
        "",
        f"CPU: {report['cpu']['model_name']}; weights: {report['weights']}; "
        f"{report['warmup']} warm-up + {report['repeats']} interleaved repeats per path and batch size, "
        f"{report['settle_ms']} ms apart; "
        f"drift on {report['images']['count']} real images ({report['images']['folder']}).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for p in paths:
        if p["skipped"]:
            lines.append(f"| {p['name']} | not run: {p['skipped']} |")
            continue
        row = [p["name"], p["precision"]]
        for b in batches:
            t = p["timings"].get(b)
            ratio = _ratio(p, paths, b)
            row += (
                [f"{t['median_ms']:.1f} ({t['p25_ms']:.1f}-{t['p75_ms']:.1f})", f"{t['images_per_s']:.2f}"]
                if t
                else ["-", "-"]
            )
            row.append(f"{ratio:.2f}x" if ratio else "-")
        d = p["drift"]
        if d:  # the mean logit error against the typical top-1/top-2 gap: what top-1 flips mean on these weights
            margin = d["reference_median_top2_margin"]
            relative = f"{d['mean_abs'] / margin:.3f}" if margin else "-"
            row += [f"{d['max_abs']:.2e}", relative, f"{d['top1_agreement']:.1%}"]
        else:
            row += ["-", "-", "-"]
        lines.append("| " + " | ".join(row) + " |")
    fp32 = [p for p in paths if p["precision"] == "fp32" and not p["skipped"] and 1 in p["timings"]]
    if fp32:
        best = min(fp32, key=lambda p: p["timings"][1]["median_ms"])
        latency = best["timings"][1]["median_ms"]
        sgemm = report["measured_sgemm_gfma_per_s"]
        low, high = report["measured_sgemm_gfma_per_s_range"]
        lines += [
            "",
            f"Arithmetic floor (fp32, batch 1): {report['floor_working']}.",
            f"Fastest fp32 path at batch 1: {best['name']}, {latency:.1f} ms = "
            f"{latency / report['floor_ms_batch1']:.2f}x the floor.",
            f"A large SGEMM (1536^3, ONNX Runtime) timed in the same rounds ran at a median "
            f"{sgemm:.0f} GFMA/s ({low:.0f}-{high:.0f}), {sgemm / report['cpu']['peak_gfma_per_s']:.0%} of the "
            f"nominal peak: at that rate the model's MACs take {report['measured_floor_ms_batch1']:.1f} ms, and "
            f"{best['name']} is {latency / report['measured_floor_ms_batch1']:.2f}x that.",
        ]
    margin = next((p["drift"]["reference_median_top2_margin"] for p in paths if p["drift"]), None)
    if margin is not None:
        lines.append(f"Median top-1/top-2 logit margin of the reference on these images: {margin:.3g}.")
    return "\n".join(lines) + "\n"


def add_parser(subparsers) -> None:
    from .options import non_negative, positive, positive_list

    parser = subparsers.add_parser(
        "bench",
        help="time every runtime path side by side (same inputs, threads, warm-up) with drift and ratios",
        description=__doc__,
    )
    parser.add_argument("--preset", required=True, help="model to benchmark, e.g. lvvit_s")
    parser.add_argument("--weights", type=Path, default=None, help="weights file (default: random init, seed 0)")
    parser.add_argument("--resolution", type=positive, default=None, help="input size (default: the preset's)")
    parser.add_argument(
        "--images",
        type=Path,
        default=None,
        help="folder of real images for int8 calibration and drift "
        "(default: scikit-image's sample photographs and crops)",
    )
    parser.add_argument(
        "--batch-sizes", type=positive_list, default=(1, 8, 32), help="comma-separated batch sizes (default 1,8,32)"
    )
    parser.add_argument("--threads", type=positive, default=None, help="threads for every path (default: all cores)")
    parser.add_argument(
        "--streams",
        type=positive,
        default=None,
        help="parallel parts a batch is split into, on every runtime (default: the thread count)",
    )
    parser.add_argument(
        "--warmup", type=non_negative, default=2, help="untimed runs per path and batch size (default 2)"
    )
    parser.add_argument("--repeats", type=positive, default=7, help="timed runs per path and batch size (default 7)")
    parser.add_argument(
        "--settle-ms",
        type=non_negative,
        default=DEFAULT_SETTLE_MS,
        help="pause before each timed run, so that the previous path's spinning threads have stopped "
        f"(default {DEFAULT_SETTLE_MS}; Paddle's OpenMP spins 200 ms)",
    )
    parser.add_argument(
        "--paths",
        default=None,
        help="comma-separated subset of: paddle-eager, paddle-inference, ort-fp32, ort-fused, "
        "openvino-f32, openvino-bf16, ort-int8, openvino-int8 (default: all), and openvino-int8-ac (int8 with "
        "accuracy control, exported only when listed here)",
    )
    parser.add_argument(
        "--limit-images",
        type=positive,
        default=None,
        help="measure drift on the first N images only (the large presets run Paddle eager slowly)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("build/bench"),
        help="where the exported files are made and reused (default build/bench)",
    )
    parser.add_argument(
        "--output", type=Path, default=None, help="folder for bench.json and bench.md (default: the workdir)"
    )
    parser.set_defaults(func=_main)


def _main(args) -> int:
    import json
    import sys

    include = set(args.paths.split(",")) if args.paths else None
    if include:
        include.update(REFERENCES)  # ratios need them
    if include and "paddle-eager" not in include:
        include.add("paddle-eager")  # drift needs it
    report = run_bench(
        args.preset, args.weights, args.resolution, args.workdir, args.images,
        args.batch_sizes, args.threads, args.streams, args.warmup, args.repeats,
        include,
        log=lambda m: print(m, file=sys.stderr, flush=True),
        limit_images=args.limit_images,
        settle_ms=args.settle_ms,
    )  # fmt: skip
    out = args.output or args.workdir
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(report, indent=2, default=str))
    markdown = render_markdown(report)
    (out / "bench.md").write_text(markdown)
    print(markdown)
    print(f"wrote {out / 'bench.json'} and {out / 'bench.md'}")
    return 0
