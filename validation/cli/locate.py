"""`python -m validation locate`: its parser, and its run from the command line (the work: `validation.run.locate`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runtimes import registry
from validation.core import gate
from validation.reports.locate import summary_line
from validation.run.locate import (
    DEFAULT_STAGE_TOLERANCE,
    JUMP_FACTOR,
    STAGE_LIMITS,
    STAGE_TOLERANCE_BY_PRECISION,
    LocateSettings,
    run_locate,
)

if TYPE_CHECKING:
    from validation.cli.options import ImageOptions, ModelOptions, ReportOptions


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
    add_model_options(parser, paddle_inference=False)  # locate runs the .onnx file only
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
    from validation.cli.options import ImageOptions, ModelOptions, ReportOptions

    settings = (tuple(args.runtime or ["ort"]), args.batch_size, args.threads)
    return run(ModelOptions.from_args(args), ImageOptions.from_args(args), ReportOptions.from_args(args), *settings)


def run(
    model: ModelOptions,
    images: ImageOptions,
    opts: ReportOptions,
    runtimes: tuple[str, ...],
    batch_size: int,
    threads: int | None,
) -> int:
    from validation.cli.options import log, model_source, print_written
    from validation.reports.write import write_reports

    # no --tolerance: the per-stage default of the file's precision (STAGE_TOLERANCE_BY_PRECISION)
    tolerance = None
    if opts.tolerance:
        tolerance = gate.parse_tolerance(opts.tolerance, STAGE_LIMITS, DEFAULT_STAGE_TOLERANCE)
    inputs = images.inputs(model.seed, default_synthetic=8)
    source = model_source(model, opts.report_dir)
    settings = LocateSettings(runtimes, tolerance, batch_size, threads, images.workers, opts.progress)
    report = run_locate(source, inputs, settings, log, list(opts.command))
    written = write_reports(report, opts.report_dir, opts.stem("locate", source))
    for name in report.runtimes:
        print(f"{name}: " + summary_line(report, name))
    print_written(written)
    gate.raise_if_failed(report)
    print("PASSED: every mapped stage is within the threshold")
    return 0
