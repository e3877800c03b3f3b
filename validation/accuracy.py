"""Top-1 / top-5 of native Paddle and each runtime over a labelled folder, streamed with bounded memory.

Every batch is read once (by prefetching threads) and fed to every runtime, so
all of them see identical inputs; only the top-5 class ids of each image are
kept. Unreadable images are counted, listed and left out for every runtime
alike. Throughput counts the time inside each runtime, after one untimed
warm-up batch (first-call setup such as oneDNN kernel creation is excluded).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lvvit.comparison import accuracy_summary, check_gate
from lvvit.metadata import OUTPUT_NAME

from . import gate
from .data import Dataset
from .engines import DEFAULT_SHARD_SIZE, LocalEngine, evaluate
from .errors import DatasetError
from .provenance import environment
from .runners import Participant, num_classes_of
from .shards import Engine, describe_engine, merged_top5, run_description


def run_accuracy(
    reference: Participant,
    runners: Sequence[Participant],
    dataset: Dataset,
    tolerance: dict[str, float] | None = None,
    batch_size: int = 32,
    workers: int = 4,
    prefetch: int = 2,
    progress: bool = True,
    model: dict[str, Any] | None = None,
    command: list[str] | None = None,
    *,
    engine: Engine | None = None,
    shard_dir: Path | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
) -> dict[str, Any]:
    """Evaluate `reference` and `runners` on `dataset`; returns the report as plain data.

    Without `engine`, the runners run here (`LocalEngine`); `shard_dir` keeps the finished shards so that
    the same call resumes (a temporary folder when None). Check the gate with `gate.raise_if_failed(report)`.
    """
    tolerance = gate.check_tolerance(
        gate.DEFAULT_ACCURACY_TOLERANCE if tolerance is None else tolerance, gate.ACCURACY_LIMITS
    )
    num_classes = num_classes_of(reference)
    bad = [s.name for s in dataset.samples if s.label is None or not 0 <= s.label < num_classes]
    if bad:
        raise DatasetError(f"labels outside 0..{num_classes - 1} for {bad[:5]} (the model has {num_classes} classes)")
    everyone = [reference, *runners]
    if engine is None:
        engine = LocalEngine({r.name: r for r in everyone}, reference.preprocess_config, batch_size, workers, prefetch)
    started = time.perf_counter()
    run = run_description("accuracy", dataset.samples, everyone, shard_size, labelled=True)
    shards, computed, folder = evaluate(
        dataset.samples, run, shard_size, engine, None, num_classes, shard_dir, progress
    )
    wall = time.perf_counter() - started
    failures = [f for s in shards for f in s.failures]
    labels = np.asarray([r["label"] for s in shards for r in s.records], dtype=np.int64)
    if len(labels) == 0:
        shown = "; ".join(f"{f.name}: {f.reason}" for f in failures[:5])
        raise DatasetError(f"{dataset.root}: none of the {len(failures)} images could be read ({shown})")
    seconds = {r.name: sum(s.seconds.get(r.name, 0.0) for s in shards) for r in everyone}
    ref_top5 = merged_top5(shards, reference.name)
    report: dict[str, Any] = {
        "kind": "accuracy",
        "environment": environment(command),
        "model": model or {},
        "preprocess": reference.preprocess_config.to_dict(),
        "inputs": {
            **dataset.describe(),
            "images_listed": len(dataset.samples),
            "images_evaluated": len(labels),
            "unreadable": [vars(f) for f in failures],
        },
        "num_classes": num_classes,
        "chance_top1": 100.0 / num_classes,
        "batch_size": batch_size,
        "workers": workers,
        "wall_seconds": wall,
        "engine": describe_engine(engine),
        "shards": {"size": shard_size, "count": len(shards), "computed": computed, "folder": folder},
        "output": OUTPUT_NAME,
        "tolerance": tolerance,
        "limits": {name: {"kind": limit.kind, "help": limit.help} for name, limit in gate.ACCURACY_LIMITS.items()},
        "reference": {
            "name": reference.name,
            **accuracy_summary(ref_top5, labels, num_classes, seconds[reference.name]),
            "describe": reference.describe(),
        },
        "runtimes": {},
    }
    for runner in runners:
        top5 = merged_top5(shards, runner.name)
        summary = accuracy_summary(top5, labels, num_classes, seconds[runner.name], reference_top5=ref_top5)
        report["runtimes"][runner.name] = {
            **summary,
            "describe": runner.describe(),
            "gate": [c.to_dict() for c in check_gate(gate.ACCURACY_LIMITS, tolerance, summary)],
        }
    report["passed"] = all(c["passed"] for e in report["runtimes"].values() for c in e["gate"])
    return report


# -- command line --------------------------------------------------------------------------------------------------


def add_parser(subparsers: Any) -> None:
    from .options import (
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
    from .options import interruptible

    return interruptible(_main, args)


def _main(args: Any, written: dict[str, Path]) -> int:
    from .data import labelled_folder
    from .engines import engine_for
    from .options import log, model_source, print_written, report_stem
    from .reference import specs_and_cache
    from .report import write_reports

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
