"""`python -m validation accuracy`: its parser and its run (the work: `validation.run.accuracy`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from validation.core import gate
from validation.run.accuracy import run_accuracy


def add_parser(subparsers: Any) -> None:
    from validation.cli.options import (
        add_engine_options,
        add_model_options,
        add_report_options,
        add_runtime_options,
        at_most,
        non_negative,
        positive,
    )

    parser = subparsers.add_parser(
        "accuracy",
        help="top-1 / top-5 of runtimes and native Paddle over a labelled folder",
        description="Top-1 / top-5 over a labelled folder (a val_list.txt of '<relative/path> <label>' lines, or "
        "one sub-folder per class) for native Paddle and each runtime: accuracy, difference from Paddle, "
        "prediction agreement and throughput; exit 1 when a runtime is outside the tolerance.",
    )
    parser.add_argument("data", type=Path, help="the labelled folder")
    data = parser.add_argument_group("data")
    data.add_argument(
        "--labels", type=Path, default=None, help="label file, paths relative to DATA (default DATA/val_list.txt)"
    )
    data.add_argument("--limit", type=positive, default=None, help="only the first N images")
    data.add_argument(
        "--skip-bad-lines",
        action="store_true",
        help="evaluate the good lines of a label file with malformed or missing-file lines (listed in the report)",
    )
    data.add_argument("--workers", type=at_most(64), default=4, help="threads reading images ahead, 1..64 (default 4)")
    data.add_argument("--prefetch", type=non_negative, default=2, help="batches read ahead (default 2)")
    add_model_options(parser)
    add_engine_options(parser)
    add_runtime_options(parser, batch_size=32)
    limits = ", ".join(gate.ACCURACY_LIMITS)
    defaults = ", ".join(f"{k}={v:g}" for k, v in gate.DEFAULT_ACCURACY_TOLERANCE.items())
    add_report_options(parser, f"limit: {limits} (percent / points); NAME=none drops one (defaults {defaults})")
    parser.set_defaults(func=main)


def main(args: Any) -> int:
    from validation.cli.options import interruptible

    return interruptible(_main, args)


def _main(args: Any, written: dict[str, Path]) -> int:
    from validation.cli.options import log, model_source, print_written, report_stem, specs_and_cache
    from validation.core.data import labelled_folder
    from validation.engines.local import engine_for
    from validation.reports.write import write_reports

    tolerance = gate.parse_tolerance(args.tolerance, gate.ACCURACY_LIMITS, gate.DEFAULT_ACCURACY_TOLERANCE)
    source = model_source(args)
    classes = source.spec.arch.num_classes
    dataset = labelled_folder(args.data, args.labels, classes, args.skip_bad_lines).limited(args.limit)
    stem = report_stem(args, "accuracy", source)
    args.shard_dir = args.report_dir / f"{stem}.shards"  # kept on an interrupt: the same command resumes
    specs, cache = specs_and_cache(args, source, log)
    engine_options = {"batch_size": args.batch_size, "workers": args.workers, "prefetch": args.prefetch}
    running = engine_for(specs, args.engine, ray_address=args.ray_address, reference_cache=cache, **engine_options)
    with running as (reference, runners, engine):
        report = run_accuracy(
            reference,
            runners,
            dataset,
            tolerance,
            batch_size=args.batch_size,
            workers=args.workers,
            prefetch=args.prefetch,
            progress=not args.no_progress,
            model=source.describe(),
            command=args.argv,
            engine=engine,
            shard_dir=args.shard_dir,
            shard_size=args.shard_size,
        )
    written.update(write_reports(report, args.report_dir, stem))
    ref = report.reference
    print(f"{ref.name} (reference): top-1 {ref.top1:.2f}%, top-5 {ref.top5:.2f}% on {ref.images} images")
    for name, entry in report.runtimes.items():
        print(
            f"{name}: top-1 {entry.top1:.2f}% ({entry.top1_diff:+.2f} points), top-5 {entry.top5:.2f}% "
            f"({entry.top5_diff:+.2f}), agreement {entry.agreement:.2f}%, "
            f"{entry.images_per_second or 0:.1f} images/s"
        )
    unreadable = report.inputs.unreadable or []
    if unreadable:
        print(f"{len(unreadable)} unreadable image(s) left out: " + ", ".join(f.name for f in unreadable[:10]))
    print_written(written)
    gate.raise_if_failed(report)
    if report.runtimes:
        print("PASSED: every runtime is within the tolerance")
    return 0
