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

from lvvit.common.gate import check_gate
from lvvit.common.metrics import summarize_drift
from lvvit.metadata import OUTPUT_NAME
from validation.core import gate
from validation.core.data import Dataset, Failure, image_folder
from validation.core.runners import Participant, num_classes_of
from validation.engines.local import DEFAULT_SHARD_SIZE, LocalEngine, evaluate, synthetic_samples
from validation.engines.shards import Engine, describe_engine, merged_errors, run_description
from validation.errors import DatasetError
from validation.provenance import environment


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


def describe_inputs(inputs: DriftInputs, dataset: Dataset | None, failures: list[Failure], used: int) -> dict[str, Any]:
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
    same call resumes. Returns the report as plain data (see `validation.reports.write`); check the gate with
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
