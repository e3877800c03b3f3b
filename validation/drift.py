"""Numeric drift: the same inputs through native Paddle (the reference) and each runtime, compared per output.

Inputs are a folder of images (unreadable ones are listed and skipped) or N
synthetic photo-like images (`lvvit.synthetic`); the report says which. The
logits of every runtime are kept for the comparison: N x classes x 4 bytes per
runtime (4 MB for 1,000 ImageNet images), so limit large folders with `limit`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lvvit.comparison import check_gate, summarize_drift
from lvvit.metadata import OUTPUT_NAME

from . import gate
from .data import Dataset, Failure, image_folder
from .engines import DEFAULT_SHARD_SIZE, LocalEngine, evaluate, synthetic_samples
from .errors import DatasetError
from .provenance import environment
from .runners import Participant, num_classes_of
from .shards import Engine, describe_engine, merged_errors, run_description


@dataclass(frozen=True)
class DriftInputs:
    """Either `folder` (optionally the first `limit` images) or `synthetic` images made from `seed`."""

    folder: Path | None = None
    synthetic: int | None = None
    seed: int = 0
    limit: int | None = None

    def __post_init__(self) -> None:
        if (self.folder is None) == (self.synthetic is None):
            raise DatasetError("drift needs either a folder of images or a number of synthetic images, not both")
        if self.synthetic is not None and self.synthetic < 1:
            raise DatasetError(f"the number of synthetic images must be at least 1, got {self.synthetic}")


def describe_inputs(
    inputs: DriftInputs, dataset: Dataset | None, failures: list[Failure], used: int
) -> dict[str, Any]:
    if dataset is None:
        return {
            "type": "synthetic",
            "images": used,
            "seed": inputs.seed,
            "generator": "lvvit.synthetic.synthetic_image (gradients, shapes, noise) through lvvit.preprocess",
        }
    return {
        "type": "folder",
        **dataset.describe(),
        "limit": inputs.limit,
        "images_used": used,
        "unreadable": [vars(f) for f in failures],
    }


def run_drift(
    reference: Participant,
    runners: Sequence[Participant],
    inputs: DriftInputs,
    tolerance: dict[str, float] | None = None,
    batch_size: int = 16,
    workers: int = 4,
    progress: bool = True,
    model: dict[str, Any] | None = None,
    command: list[str] | None = None,
    *,
    engine: Engine | None = None,
    shard_dir: Path | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
) -> dict[str, Any]:
    """Run every runner on the same preprocessed inputs and compare each with `reference`.

    Without `engine`, the runners run here (`LocalEngine`); `shard_dir` keeps the finished shards so that the
    same call resumes. Returns the report as plain data (see `validation.report`); check the gate with
    `gate.raise_if_failed(report)`.
    """
    if not runners:
        raise DatasetError("drift needs at least one runtime besides the native Paddle reference")
    # without a tolerance, each runtime is gated by the precision it computes in (fp32, bf16/fp16/tf32, int8)
    tolerances = {
        r.name: gate.check_tolerance(
            gate.default_drift_tolerance(r.describe().get("precision")) if tolerance is None else tolerance,
            gate.DRIFT_LIMITS,
        )
        for r in runners
    }
    tolerance = gate.check_tolerance(
        gate.DEFAULT_DRIFT_TOLERANCE if tolerance is None else tolerance, gate.DRIFT_LIMITS
    )
    config = reference.preprocess_config
    dataset: Dataset | None = None
    if inputs.folder is not None:
        dataset = image_folder(inputs.folder).limited(inputs.limit)
        samples = dataset.samples
    else:
        samples = synthetic_samples(inputs.synthetic or 0, inputs.seed)
    everyone = [reference, *runners]
    if engine is None:
        engine = LocalEngine({r.name: r for r in everyone}, config, batch_size, workers)
    classes = num_classes_of(reference)
    run = run_description("drift", samples, everyone, shard_size, labelled=False)
    shards, computed, folder = evaluate(samples, run, shard_size, engine, reference.name, classes, shard_dir, progress)
    failures = [f for s in shards for f in s.failures]
    names = [r["name"] for s in shards for r in s.records]
    if not names:
        shown = "; ".join(f"{f.name}: {f.reason}" for f in failures[:5])
        raise DatasetError(f"{inputs.folder}: none of the {len(failures)} images could be read ({shown})")
    seconds = {r.name: sum(s.seconds.get(r.name, 0.0) for s in shards) for r in everyone}
    report: dict[str, Any] = {
        "kind": "drift",
        "environment": environment(command),
        "model": model or {},
        "preprocess": config.to_dict(),
        "inputs": describe_inputs(inputs, dataset, failures, len(names)),
        "batch_size": batch_size,
        "engine": describe_engine(engine),
        "shards": {"size": shard_size, "count": len(shards), "computed": computed, "folder": folder},
        "output": OUTPUT_NAME,
        "tolerance": tolerance,
        "limits": {name: {"kind": limit.kind, "help": limit.help} for name, limit in gate.DRIFT_LIMITS.items()},
        "reference": {
            "name": reference.name,
            **_timing(seconds[reference.name], len(names)),
            "describe": reference.describe(),
        },
        "runtimes": {},
    }
    for runner in runners:
        errors = merged_errors(shards, runner.name, classes)
        own = tolerances[runner.name]
        stats = summarize_drift(errors, names, tie_abs=own.get("max_abs"), tie_rel=own.get("max_rel")).to_dict()
        report["runtimes"][runner.name] = {
            "describe": runner.describe(),
            "outputs": {OUTPUT_NAME: stats},
            "tolerance": own,
            "gate": [c.to_dict() for c in check_gate(gate.DRIFT_LIMITS, own, stats)],
            **_timing(seconds[runner.name], len(names)),
        }
    report["passed"] = all(c["passed"] for e in report["runtimes"].values() for c in e["gate"])
    return report


def _timing(seconds: float, images: int) -> dict[str, float | None]:
    return {"seconds": seconds, "images_per_second": images / seconds if seconds > 0 else None}


# -- command line --------------------------------------------------------------------------------------------------


def add_parser(subparsers: Any) -> None:
    from .options import (
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
    from .options import interruptible

    return interruptible(_main, args)


def _main(args: Any, written: dict[str, Path]) -> int:
    from .engines import engine_for
    from .options import log, model_source, print_written, report_stem
    from .reference import specs_and_cache
    from .report import write_reports

    # no --tolerance: each runtime gets the default of its precision (see lvvit.comparison.default_drift_tolerance)
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
    for name, entry in report["runtimes"].items():
        stats = entry["outputs"][OUTPUT_NAME]
        print(
            f"{name}: max abs {stats['max_abs']:.3g}, p99 abs {stats['p99_abs']:.3g}, max rel {stats['max_rel']:.3g}, "
            f"min cosine {stats['min_cosine']:.9f}, top-1 agreement {stats['top1_agreement']:.2%}, "
            f"top-5 overlap {stats['top5_overlap']:.2%}, max KL {stats['max_kl']:.3g}"
        )
    print_written(written)
    gate.raise_if_failed(report)
    print("PASSED: every runtime is within the tolerance")
    return 0
