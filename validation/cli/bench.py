"""`python -m validation bench`: its parser, and its run from the command line (the work: `validation.perf.bench`)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtimes import registry
from validation.perf.bench import DEFAULT_SETTLE_MS, run_bench
from validation.reports.bench import BASELINE


def add_parser(subparsers: Any) -> None:
    from validation.cli.options import add_preset_options

    parser = subparsers.add_parser(
        "bench",
        help="time every runtime path side by side (same inputs, threads, warm-up) with drift and ratios",
        description=__doc__,
    )
    add_preset_options(parser, required=True)
    _add_inputs(parser)
    _add_timing(parser)
    _add_paths(parser)
    _add_outputs(parser)
    parser.set_defaults(func=main)


def _add_inputs(parser: argparse.ArgumentParser) -> None:
    from validation.cli.options import add_limit, deprecated_alias

    parser.add_argument(
        "--images",
        type=Path,
        default=None,
        help="folder of real images for int8 calibration and drift "
        "(default: scikit-image's sample photographs and crops)",
    )
    limit = add_limit(
        parser,
        "measure drift on N images only, spread evenly over the folder (the large presets run Paddle eager slowly)",
    )
    deprecated_alias(parser, "--limit-images", limit)


def _add_timing(parser: argparse.ArgumentParser) -> None:
    from validation.cli.options import non_negative, positive, positive_list

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


def _add_paths(parser: argparse.ArgumentParser) -> None:
    from validation.cli.options import positive

    onnx_runtimes = registry.with_model_files(["onnx"])
    parser.add_argument(
        "--paths",
        default=None,
        help="comma-separated subset of: paddle-eager, paddle-inference, ort-fp32, ort-fused, "
        "openvino-f32, openvino-bf16, ort-int8, openvino-int8 (default: all), and, exported only when listed "
        "here, ort-int8-ac (ONNX Runtime's int8 with accuracy control, fine stages), openvino-int8-ac (NNCF int8 "
        "with accuracy control, fine stages), openvino-int8-ac-whole (whole stages), openvino-int8-bf16 (the NNCF "
        "int8 file with its float parts in bf16), openvino-int8-ac-bf16 (accuracy control measured so: "
        "--control-precision bf16; both need a CPU with native bf16), "
        "openvino-int8-unfolded (nncf int8 with SmoothQuant's Multiply nodes left, to compare with the folded "
        "file) and openvino-int8-vnni (every linear layer in int8, whatever this CPU's --int8-target); with --onnx, "
        f"{', '.join(f'file-{name}' for name in onnx_runtimes)}",
    )
    parser.add_argument(
        "--onnx",
        type=Path,
        default=None,
        help="your own exported .onnx file of this preset and weights, timed on every runtime that loads one "
        f"(rows {', '.join(f'file-{name}' for name in onnx_runtimes)}) beside the bench's exports",
    )
    parser.add_argument(
        "--max-float-stages",
        type=positive,
        default=None,
        help="ort-int8-ac, openvino-int8-ac(-whole, -bf16): the exports' --max-float-stages (default: until the target "
        "or every stage is float)",
    )


def _add_outputs(parser: argparse.ArgumentParser) -> None:
    from validation.cli.options import add_progress, add_report_dir, add_report_name, add_work_dir

    add_work_dir(
        parser, Path("build/bench"), "build/bench", "where the exported files are made and reused", ("--workdir",)
    )
    add_report_dir(parser, "the work dir", old=("--output",))
    add_report_name(parser, "default bench: bench.json, bench.md, bench.html")
    add_progress(parser, "no progress lines on stderr")


@dataclass(frozen=True)
class BenchOptions:
    """`bench`'s command line, typed."""

    preset: str
    weights: Path | None
    resolution: int | None
    images: Path | None
    limit: int | None
    batch_sizes: tuple[int, ...]
    threads: int | None
    streams: int | None
    warmup: int
    repeats: int
    settle_ms: int
    paths: tuple[str, ...] | None
    onnx: Path | None
    max_float_stages: int | None
    work_dir: Path
    report_dir: Path | None
    name: str
    progress: bool

    @classmethod
    def from_args(cls, args: Any) -> BenchOptions:
        fields = {f: getattr(args, f) for f in cls.__dataclass_fields__ if f not in ("paths", "name", "progress")}
        paths = tuple(args.paths.split(",")) if args.paths else None
        return cls(**fields, paths=paths, name=args.name or "bench", progress=not args.no_progress)


def main(args: Any) -> int:
    return run(BenchOptions.from_args(args))


def run(options: BenchOptions) -> int:
    import sys

    include = set(options.paths) if options.paths else None
    if include:
        include.add(BASELINE)  # the ratios' baseline
    if include and "paddle-eager" not in include:
        include.add("paddle-eager")  # drift needs it
    o = options
    report = run_bench(
        o.preset, o.weights, o.resolution, o.work_dir, o.images,
        o.batch_sizes, o.threads, o.streams, o.warmup, o.repeats,
        include,
        log=(lambda m: print(m, file=sys.stderr, flush=True)) if o.progress else (lambda m: None),
        limit_images=o.limit,
        settle_ms=o.settle_ms,
        max_float_stages=o.max_float_stages,
        onnx=o.onnx,
        progress=o.progress,
    )  # fmt: skip
    from validation.reports.write import write_reports

    written = write_reports(report, o.report_dir or o.work_dir, o.name)
    print(written["markdown"].read_text(encoding="utf-8"))
    print(f"wrote {written['json']}, {written['markdown']} and {written['html']}")
    return 0
