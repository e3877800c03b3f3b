"""`python -m validation drift`: its parser, and its run from the command line (the work: `validation.run.drift`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from validation.core import gate
from validation.errors import DatasetError
from validation.run.drift import DriftInputs, run_drift


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
    from validation.cli.options import interruptible

    return interruptible(_main, args)


def _main(args: Any, written: dict[str, Path]) -> int:
    from validation.cli.options import log, model_source, print_written, report_stem, specs_and_cache
    from validation.engines.local import engine_for
    from validation.reports.write import write_reports

    # no --tolerance: each runtime gets the default of its precision (see lvvit.common.gate.default_drift_tolerance)
    tolerance = None
    if args.tolerance:
        tolerance = gate.parse_tolerance(args.tolerance, gate.DRIFT_LIMITS, gate.DEFAULT_DRIFT_TOLERANCE)
    if args.limit is not None and args.images is None:
        raise DatasetError("--limit applies to --images")
    synthetic = args.synthetic if args.images is not None or args.synthetic is not None else 16
    inputs = DriftInputs(args.images, None if args.images else synthetic, args.seed, args.limit)
    source = model_source(args)
    stem = report_stem(args, "drift", source)
    args.shard_dir = args.report_dir / f"{stem}.shards"  # kept on an interrupt: the same command resumes
    specs, cache = specs_and_cache(args, source, log)
    engine_options = {"batch_size": args.batch_size, "workers": args.workers}
    running = engine_for(specs, args.engine, ray_address=args.ray_address, reference_cache=cache, **engine_options)
    with running as (reference, runners, engine):
        report = run_drift(
            reference,
            runners,
            inputs,
            tolerance,
            batch_size=args.batch_size,
            workers=args.workers,
            progress=not args.no_progress,
            model=source.describe(),
            command=args.argv,
            engine=engine,
            shard_dir=args.shard_dir,
            shard_size=args.shard_size,
        )
    written.update(write_reports(report, args.report_dir, stem))
    for name in report.runtimes:
        stats = report.stats(name)
        print(
            f"{name}: max abs {stats.max_abs:.3g}, p99 abs {stats.p99_abs:.3g}, max rel {stats.max_rel:.3g}, "
            f"min cosine {stats.min_cosine:.9f}, top-1 agreement {stats.top1_agreement:.2%}, "
            f"top-5 overlap {stats.top5_overlap:.2%}, max KL {stats.max_kl:.3g}"
        )
    print_written(written)
    gate.raise_if_failed(report)
    print("PASSED: every runtime is within the tolerance")
    return 0
