"""`python -m validation locate`: its parser, and its run from the command line (the work: `validation.run.locate`)."""

from __future__ import annotations

from typing import Any

from runtimes import registry
from validation.core import gate
from validation.errors import DatasetError
from validation.reports.locate import summary_line
from validation.run.drift import DriftInputs
from validation.run.locate import (
    DEFAULT_STAGE_TOLERANCE,
    JUMP_FACTOR,
    STAGE_LIMITS,
    STAGE_TOLERANCE_BY_PRECISION,
    LocateSettings,
    run_locate,
)


def add_parser(subparsers: Any) -> None:
    from validation.cli.options import add_image_inputs, add_model_options, add_report_options, positive

    parser = subparsers.add_parser(
        "locate",
        help="where an export parts from native Paddle: per-stage comparison, first divergent stage, first stage "
        "over the threshold",
        description="Run the same inputs through native Paddle (forward hooks) and the exported ONNX file "
        "(ONNX Runtime or OpenVINO, the stages' tensors added as outputs, found through the state-dict-named "
        "weights); report max/mean absolute and relative error and cosine similarity per stage (stem, each "
        "block's residual stream, final norm, class head, aux head, output), name the first divergent stage (a "
        f"jump of {JUMP_FACTOR:g}x over the stage before and over its precision's noise) and the first stage over "
        "the threshold, and exit 1 when there is one. Stages whose mapping fails a shape or value check are "
        "reported as doubtful, never blamed.",
    )
    add_image_inputs(parser, default_synthetic=8)
    add_model_options(parser)
    group = parser.add_argument_group("export runtimes")
    group.add_argument(
        "--runtime", action="append", choices=registry.with_extra_outputs(), default=None,
        help="runtime that runs the export with its stages as outputs, repeatable (default: ort); "
        + "; ".join(f"{name}: {registry.get(name).description}" for name in registry.with_extra_outputs()),
    )  # fmt: skip
    group.add_argument("--batch-size", type=positive, default=8, help="images per run (default 8)")
    group.add_argument("--threads", type=positive, default=None, help="runtime threads (default: each runtime's own)")
    defaults = "; ".join(
        f"{p}: " + ", ".join(f"{k}={v:g}" for k, v in t.items()) for p, t in STAGE_TOLERANCE_BY_PRECISION.items()
    )
    add_report_options(
        parser,
        f"per-stage limit: {', '.join(STAGE_LIMITS)}; NAME=none drops one "
        f"(default by the file's precision: {defaults})",
    )
    parser.set_defaults(func=main)


def main(args: Any) -> int:
    from validation.cli.options import log, model_source, print_written, report_stem
    from validation.reports.write import write_reports

    # no --tolerance: the per-stage default of the file's precision (STAGE_TOLERANCE_BY_PRECISION)
    tolerance = None
    if args.tolerance:
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
    for name in report.runtimes:
        print(f"{name}: " + summary_line(report, name))
    print_written(written)
    gate.raise_if_failed(report)
    print("PASSED: every mapped stage is within the threshold")
    return 0
