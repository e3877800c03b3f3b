"""`python -m validation bench`: its parser, and its run from the command line (the work: `validation.perf.bench`)."""

from __future__ import annotations

from pathlib import Path

from runtimes import registry
from validation.perf.bench import DEFAULT_SETTLE_MS, run_bench
from validation.reports.bench import BASELINE


def add_parser(subparsers) -> None:
    from validation.cli.options import add_preset_options, non_negative, positive, positive_list

    parser = subparsers.add_parser(
        "bench",
        help="time every runtime path side by side (same inputs, threads, warm-up) with drift and ratios",
        description=__doc__,
    )
    add_preset_options(parser, required=True)
    onnx_runtimes = registry.with_model_files(["onnx"])
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
        "openvino-f32, openvino-bf16, ort-int8, openvino-int8 (default: all), and, exported only when listed "
        "here, openvino-int8-ac (int8 with accuracy control, fine stages), openvino-int8-ac-whole (whole stages), "
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
        help="openvino-int8-ac: the export's --max-float-stages (default: until the target or every stage is float)",
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
        "--output",
        type=Path,
        default=None,
        help="folder for bench.json, bench.md and bench.html (default: the workdir)",
    )
    parser.set_defaults(func=_main)


def _main(args) -> int:
    import sys

    include = set(args.paths.split(",")) if args.paths else None
    if include:
        include.add(BASELINE)  # the ratios' baseline
    if include and "paddle-eager" not in include:
        include.add("paddle-eager")  # drift needs it
    report = run_bench(
        args.preset, args.weights, args.resolution, args.workdir, args.images,
        args.batch_sizes, args.threads, args.streams, args.warmup, args.repeats,
        include,
        log=lambda m: print(m, file=sys.stderr, flush=True),
        limit_images=args.limit_images,
        settle_ms=args.settle_ms,
        max_float_stages=args.max_float_stages,
        onnx=args.onnx,
    )  # fmt: skip
    from validation.reports.write import write_reports

    written = write_reports(report, args.output or args.workdir, "bench")
    print(written["markdown"].read_text(encoding="utf-8"))
    print(f"wrote {written['json']}, {written['markdown']} and {written['html']}")
    return 0
