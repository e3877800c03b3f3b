"""Top-1 / top-5 of native Paddle and each runtime over a labelled folder, streamed with bounded memory.

Every batch is read once (by prefetching threads) and fed to every runtime, so
all of them see identical inputs; only the top-5 class ids of each image are
kept. Unreadable images are counted, listed and left out for every runtime
alike. Throughput counts the time inside each runtime, after one untimed
warm-up batch (first-call setup such as oneDNN kernel creation is excluded).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from lvvit.metadata import OUTPUT_NAME

from . import gate
from .data import Dataset, Failure, stream_batches
from .errors import DatasetError
from .metrics import AccuracyTally
from .provenance import environment
from .runners import Runner


def _num_classes(reference: Runner) -> int:
    classes = reference.describe().get("output", {}).get("num_classes")
    if not isinstance(classes, int) or classes < 1:
        raise DatasetError(f"the reference model does not say how many classes it has ({classes!r})")
    return classes


def run_accuracy(
    reference: Runner,
    runners: list[Runner],
    dataset: Dataset,
    tolerance: dict[str, float] | None = None,
    batch_size: int = 32,
    workers: int = 4,
    prefetch: int = 2,
    progress: bool = True,
    model: dict[str, Any] | None = None,
    command: list[str] | None = None,
) -> dict[str, Any]:
    """Evaluate `reference` and `runners` on `dataset`; returns the report as plain data.

    Check the gate (each runtime against the reference) with `gate.raise_if_failed(report)`.
    """
    tolerance = gate.check_tolerance(
        gate.DEFAULT_ACCURACY_TOLERANCE if tolerance is None else tolerance, gate.ACCURACY_LIMITS
    )
    num_classes = _num_classes(reference)
    everyone = [reference, *runners]
    tallies = {r.name: AccuracyTally(num_classes) for r in everyone}
    failures: list[Failure] = []
    warmed = False
    started = time.perf_counter()
    batches = stream_batches(
        dataset.samples, reference.preprocess_config, batch_size, workers, prefetch, progress, "accuracy"
    )
    with contextlib.closing(batches):  # on an interrupt, stop the reading threads and clear the progress bar at once
        for batch in batches:
            failures.extend(batch.failures)
            if not len(batch.inputs):
                continue
            labels = batch.labels
            if (labels < 0).any() or (labels >= num_classes).any():
                bad = [s.name for s in batch.samples if s.label is None or not 0 <= s.label < num_classes]
                raise DatasetError(
                    f"labels outside 0..{num_classes - 1} for {bad[:5]} (the model has {num_classes} classes)"
                )
            for runner in everyone:
                if not warmed:
                    runner.logits(batch.inputs)
                t0 = time.perf_counter()
                logits = runner.logits(batch.inputs)
                tallies[runner.name].add(logits, labels, time.perf_counter() - t0)
            warmed = True
    wall = time.perf_counter() - started
    evaluated = sum(len(t) for t in tallies[reference.name].labels)
    if evaluated == 0:
        shown = "; ".join(f"{f.name}: {f.reason}" for f in failures[:5])
        raise DatasetError(f"{dataset.root}: none of the {len(failures)} images could be read ({shown})")
    ref_tally = tallies[reference.name]
    report: dict[str, Any] = {
        "kind": "accuracy",
        "environment": environment(command),
        "model": model or {},
        "preprocess": reference.preprocess_config.to_dict(),
        "inputs": {
            **dataset.describe(),
            "images_listed": len(dataset.samples),
            "images_evaluated": evaluated,
            "unreadable": [vars(f) for f in failures],
        },
        "num_classes": num_classes,
        "chance_top1": 100.0 / num_classes,
        "batch_size": batch_size,
        "workers": workers,
        "wall_seconds": wall,
        "output": OUTPUT_NAME,
        "tolerance": tolerance,
        "limits": {name: {"kind": limit.kind, "help": limit.help} for name, limit in gate.ACCURACY_LIMITS.items()},
        "reference": {"name": reference.name, **ref_tally.summary(), "describe": reference.describe()},
        "runtimes": {},
    }
    for runner in runners:
        summary = tallies[runner.name].summary(ref_tally)
        report["runtimes"][runner.name] = {
            **summary,
            "describe": runner.describe(),
            "gate": gate.check(gate.ACCURACY_LIMITS, tolerance, summary),
        }
    report["passed"] = all(c["passed"] for e in report["runtimes"].values() for c in e["gate"])
    return report


# -- command line --------------------------------------------------------------------------------------------------


def add_parser(subparsers: Any) -> None:
    from .options import add_model_options, add_report_options, add_runtime_options, at_most, non_negative, positive

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
    add_runtime_options(parser, batch_size=32)
    limits = ", ".join(gate.ACCURACY_LIMITS)
    defaults = ", ".join(f"{k}={v:g}" for k, v in gate.DEFAULT_ACCURACY_TOLERANCE.items())
    add_report_options(parser, f"limit: {limits} (percent / points); NAME=none drops one (defaults {defaults})")
    parser.set_defaults(func=main)


def main(args: Any) -> int:
    from .options import interruptible

    return interruptible(_main, args)


def _main(args: Any, written: dict[str, Path]) -> int:
    from .data import labelled_folder
    from .options import log, model_source, print_written, report_stem, runtime_options
    from .report import write_reports
    from .runners import build_runners

    tolerance = gate.parse_tolerance(args.tolerance, gate.ACCURACY_LIMITS, gate.DEFAULT_ACCURACY_TOLERANCE)
    source = model_source(args)
    classes = source.spec.arch.num_classes
    dataset = labelled_folder(args.data, args.labels, classes, args.skip_bad_lines).limited(args.limit)
    reference, runners = build_runners(args.runtime or ["ort"], source, runtime_options(args), log)
    try:
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
        )
    finally:
        for runner in [reference, *runners]:
            runner.close()
    written.update(write_reports(report, args.report_dir, report_stem(args, "accuracy", source)))
    ref = report["reference"]
    print(f"{ref['name']} (reference): top-1 {ref['top1']:.2f}%, top-5 {ref['top5']:.2f}% on {ref['images']} images")
    for name, entry in report["runtimes"].items():
        print(
            f"{name}: top-1 {entry['top1']:.2f}% ({entry['top1_diff']:+.2f} points), top-5 {entry['top5']:.2f}% "
            f"({entry['top5_diff']:+.2f}), agreement {entry['agreement']:.2f}%, "
            f"{entry['images_per_second'] or 0:.1f} images/s"
        )
    unreadable = report["inputs"]["unreadable"]
    if unreadable:
        print(f"{len(unreadable)} unreadable image(s) left out: " + ", ".join(f["name"] for f in unreadable[:10]))
    print_written(written)
    gate.raise_if_failed(report)
    if report["runtimes"]:
        print("PASSED: every runtime is within the tolerance")
    return 0
