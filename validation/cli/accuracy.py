"""`python -m validation accuracy`: its parser and its run (the work: `validation.run.accuracy`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lvvit.common.flags import note_deprecated
from validation.core import gate
from validation.reports.types import AccuracyReport
from validation.run.accuracy import run_accuracy

if TYPE_CHECKING:
    from validation.cli.options import Kept, RunOptions


def add_parser(subparsers: Any) -> None:
    from validation.cli.options import (
        add_engine_options,
        add_images_folder,
        add_limit,
        add_model_options,
        add_report_options,
        add_runtime_options,
        add_workers,
        non_negative,
    )

    parser = subparsers.add_parser(
        "accuracy",
        help="top-1 / top-5 of runtimes and native Paddle over a labelled folder",
        description="Top-1 / top-5 over a labelled folder (a val_list.txt of '<relative/path> <label>' lines, or "
        "one sub-folder per class) for native Paddle and each runtime: accuracy, difference from Paddle, "
        "prediction agreement and throughput; exit 1 when a runtime is outside the tolerance.",
    )
    data = parser.add_argument_group("data")
    add_images_folder(data, "the labelled folder")
    data.add_argument(
        "--labels", type=Path, default=None, help="label file, paths relative to --images (default IMAGES/val_list.txt)"
    )
    add_limit(data)
    data.add_argument(
        "--skip-bad-lines",
        action="store_true",
        help="evaluate the good lines of a label file with malformed or missing-file lines (listed in the report)",
    )
    add_workers(data, "threads reading images ahead")
    data.add_argument("--prefetch", type=non_negative, default=2, help="batches read ahead (default 2)")
    add_model_options(parser)
    add_engine_options(parser)
    add_runtime_options(parser, batch_size=32)
    limits = ", ".join(gate.ACCURACY_LIMITS)
    defaults = ", ".join(f"{k}={v:g}" for k, v in _as_given(gate.DEFAULT_ACCURACY_TOLERANCE).items())
    add_report_options(
        parser,
        f"limit: {limits}: agreement a fraction (0.995 is 99.5%%, as drift's top1_agreement and the exporter's "
        f"--min-int8-agreement), top1 in percent, top1_diff and top5_diff in percentage points; NAME=none drops "
        f"one (defaults {defaults})",
    )
    parser.set_defaults(func=main)


def _as_given(tolerance: dict[str, float]) -> dict[str, float]:
    """The report's limits (agreement in percent) as the command line gives them (agreement a fraction)."""
    return {k: v / 100 if k == "agreement" else v for k, v in tolerance.items()}


def agreement_as_percent(items: tuple[str, ...]) -> list[str]:
    """`--tolerance agreement=0.995` -> the report's unit, `agreement=99.5`; an old percent (above 1) is taken as
    it is, with a deprecation note."""
    converted = []
    for item in items:
        name, sep, value = item.partition("=")
        if name.strip() == "agreement" and sep:
            try:
                number = float(value)
            except ValueError:
                number = None  # parse_tolerance says what is wrong with it
            if number is not None and number > 1:
                note_deprecated("python -m validation accuracy", f"agreement={value} (a percent)", "a fraction")
            elif number is not None:
                item = f"agreement={round(number * 100, 9)!r}"
        converted.append(item)
    return converted


@dataclass(frozen=True)
class DataOptions:
    """The labelled folder and how it is read."""

    images: Path
    labels: Path | None
    limit: int | None
    skip_bad_lines: bool
    workers: int
    prefetch: int

    @classmethod
    def from_args(cls, args: Any) -> DataOptions:
        from validation.cli.options import images_folder

        folder = images_folder(args)
        return cls(folder, args.labels, args.limit, args.skip_bad_lines, args.workers, args.prefetch)


def main(args: Any) -> int:
    from validation.cli.options import RunOptions, interruptible

    options = RunOptions.from_args(args)
    data = DataOptions.from_args(args)
    return interruptible(lambda kept: run(options, data, kept), options.report.report_dir, options.model.work_dir)


def run(options: RunOptions, data: DataOptions, kept: Kept) -> int:
    from validation.cli.options import log, model_source, print_written, specs_and_cache
    from validation.core.data import labelled_folder
    from validation.engines.local import engine_for
    from validation.reports.write import write_reports

    opts = options.report
    items = agreement_as_percent(opts.tolerance)
    tolerance = gate.parse_tolerance(items, gate.ACCURACY_LIMITS, gate.DEFAULT_ACCURACY_TOLERANCE)
    source = model_source(options.model, opts.report_dir)
    classes = source.spec.arch.num_classes
    dataset = labelled_folder(data.images, data.labels, classes, data.skip_bad_lines).limited(data.limit)
    stem = opts.stem("accuracy", source)
    kept.shards = opts.report_dir / f"{stem}.shards"  # kept on an interrupt: the same command resumes
    specs, cache = specs_and_cache(options, source, log)
    batch_size, engine = options.runtime.batch_size, options.engine
    engine_options = {"batch_size": batch_size, "workers": data.workers, "prefetch": data.prefetch}
    running = engine_for(specs, engine.engine, ray_address=engine.ray_address, reference_cache=cache, **engine_options)
    with running as (reference, runners, engine_run):
        report = run_accuracy(
            reference,
            runners,
            dataset,
            tolerance,
            batch_size=batch_size,
            workers=data.workers,
            prefetch=data.prefetch,
            progress=opts.progress,
            model=source.describe(),
            command=list(opts.command),
            engine=engine_run,
            shard_dir=kept.shards,
            shard_size=engine.shard_size,
        )
    kept.written.update(write_reports(report, opts.report_dir, stem))
    _print_summary(report)
    print_written(kept.written)
    gate.raise_if_failed(report)
    if report.runtimes:
        print("PASSED: every runtime is within the tolerance")
    return 0


def _print_summary(report: AccuracyReport) -> None:
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
