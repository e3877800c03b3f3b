"""`python -m validation drift`: its parser, and its run from the command line (the work: `validation.run.drift`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from validation.core import gate
from validation.run.drift import run_drift

if TYPE_CHECKING:
    from validation.cli.options import ImageOptions, Kept, RunOptions


def add_parser(subparsers: Any) -> None:
    from validation.cli.options import (
        add_engine_options,
        add_image_inputs,
        add_model_options,
        add_report_options,
        add_runtime_options,
    )

    parser = subparsers.add_parser(
        "drift",
        help="numeric drift of runtimes against native Paddle, with a tolerance gate",
        description="Run the same inputs through native Paddle (eager, the reference) and each runtime; report "
        "max/mean/p99 absolute and relative error, cosine similarity, top-1 agreement, top-5 overlap and KL "
        "divergence per output; exit 1 when a runtime is outside the tolerance.",
    )
    add_image_inputs(parser, default_synthetic=16)
    add_model_options(parser)
    add_engine_options(parser)
    add_runtime_options(parser, batch_size=16)
    limits = ", ".join(gate.DRIFT_LIMITS)
    defaults = ", ".join(f"{k}={v:g}" for k, v in gate.DEFAULT_DRIFT_TOLERANCE.items())
    reduced = ", ".join(f"{k}={v:g}" for k, v in gate.default_drift_tolerance("bf16").items())
    int8 = ", ".join(f"{k}={v:g}" for k, v in gate.default_drift_tolerance("int8").items())
    add_report_options(
        parser,
        f"limit: {limits}; NAME=none drops one. Without --tolerance each runtime gets the default of the precision "
        f"it computes in: fp32 {defaults}; bf16, fp16, tf32 {reduced}; int8 {int8}. A --tolerance applies to every "
        "runtime, over the fp32 defaults",
    )
    parser.set_defaults(func=main)


def main(args: Any) -> int:
    from validation.cli.options import ImageOptions, RunOptions, interruptible

    options = RunOptions.from_args(args)
    images = ImageOptions.from_args(args)
    report = options.report
    return interruptible(lambda kept: run(options, images, kept), report.report_dir, options.model.work_dir)


def run(options: RunOptions, images: ImageOptions, kept: Kept) -> int:
    from validation.cli.options import log, model_source, print_written, specs_and_cache
    from validation.engines.local import engine_for
    from validation.reports.write import write_reports

    opts = options.report
    # no --tolerance: each runtime gets the default of its precision (see lvvit.common.gate.default_drift_tolerance)
    tolerance = None
    if opts.tolerance:
        tolerance = gate.parse_tolerance(opts.tolerance, gate.DRIFT_LIMITS, gate.DEFAULT_DRIFT_TOLERANCE)
    inputs = images.inputs(options.model.seed, default_synthetic=16)
    source = model_source(options.model, opts.report_dir)
    stem = opts.stem("drift", source)
    kept.shards = opts.report_dir / f"{stem}.shards"  # kept on an interrupt: the same command resumes
    specs, cache = specs_and_cache(options, source, log)
    batch_size, workers = options.runtime.batch_size, images.workers
    engine_options = {"batch_size": batch_size, "workers": workers}
    engine = options.engine
    running = engine_for(specs, engine.engine, ray_address=engine.ray_address, reference_cache=cache, **engine_options)
    with running as (reference, runners, engine_run):
        report = run_drift(
            reference,
            runners,
            inputs,
            tolerance,
            batch_size=batch_size,
            workers=workers,
            progress=opts.progress,
            model=source.describe(),
            command=list(opts.command),
            engine=engine_run,
            shard_dir=kept.shards,
            shard_size=engine.shard_size,
        )
    kept.written.update(write_reports(report, opts.report_dir, stem))
    for name in report.runtimes:
        stats = report.stats(name)
        print(
            f"{name}: max abs {stats.max_abs:.3g}, p99 abs {stats.p99_abs:.3g}, max rel {stats.max_rel:.3g}, "
            f"min cosine {stats.min_cosine:.9f}, top-1 agreement {stats.top1_agreement:.2%}, "
            f"top-5 overlap {stats.top5_overlap:.2%}, max KL {stats.max_kl:.3g}"
        )
    print_written(kept.written)
    gate.raise_if_failed(report)
    print("PASSED: every runtime is within the tolerance")
    return 0
