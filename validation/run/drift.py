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
from validation.core.data import Dataset, Failure, Sample, image_folder
from validation.core.runners import Participant
from validation.engines.local import DEFAULT_SHARD_SIZE, synthetic_samples
from validation.engines.shards import Engine, merged_errors
from validation.errors import DatasetError
from validation.reports.types import DriftReport, DriftRuntime, Inputs, RuntimeRecord
from validation.run.skeleton import Collected, RunSettings, collect, reference_record, run_record, timing


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


def _tolerances(runners: Sequence[Participant], tolerance: dict[str, float] | None) -> tuple[dict, dict]:
    """(each runtime's limits, the report's): without a tolerance, each runtime's precision's defaults."""
    own = {
        r.name: gate.check_tolerance(
            gate.default_drift_tolerance(r.describe().get("precision")) if tolerance is None else tolerance,
            gate.DRIFT_LIMITS,
        )
        for r in runners
    }
    shown = gate.check_tolerance(gate.DEFAULT_DRIFT_TOLERANCE if tolerance is None else tolerance, gate.DRIFT_LIMITS)
    return own, shown


def _samples(inputs: DriftInputs) -> tuple[list[Sample], Dataset | None]:
    if inputs.folder is None:
        return synthetic_samples(inputs.synthetic or 0, inputs.seed), None
    dataset = image_folder(inputs.folder).limited(inputs.limit)
    return dataset.samples, dataset


def _runtime(runner: Participant, got: Collected, names: list[str], tolerance: dict[str, float]) -> DriftRuntime:
    errors = merged_errors(got.shards, runner.name, got.classes)
    stats = summarize_drift(errors, names, tie_abs=tolerance.get("max_abs"), tie_rel=tolerance.get("max_rel"))
    return DriftRuntime(
        describe=RuntimeRecord.from_json(runner.describe()),
        outputs={OUTPUT_NAME: stats},
        tolerance=tolerance,
        gate=check_gate(gate.DRIFT_LIMITS, tolerance, stats.to_dict()),
        **timing(got.seconds[runner.name], len(names)),
    )


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
) -> DriftReport:
    """Run every runner on the same preprocessed inputs and compare each with `reference`.

    Without `engine`, the runners run here (`LocalEngine`); `shard_dir` keeps the finished shards so that the
    same call resumes. Returns the typed report (`validation.reports.types.DriftReport`, `bool()` its verdict);
    `gate.raise_if_failed(report)` raises on a failed gate.
    """
    if not runners:
        raise DatasetError("drift needs at least one runtime besides the native Paddle reference")
    tolerances, shown = _tolerances(runners, tolerance)
    samples, dataset = _samples(inputs)
    settings = RunSettings(batch_size, workers, progress=progress, engine=engine, shard_dir=shard_dir,
                           shard_size=shard_size)  # fmt: skip
    got = collect("drift", reference, runners, samples, inputs.folder, settings)
    names = [r["name"] for r in got.records]
    return DriftReport(
        **run_record(reference, got, settings, shown, gate.DRIFT_LIMITS, model, command),
        inputs=Inputs.from_json(describe_inputs(inputs, dataset, got.failures, len(names))),
        reference=reference_record(reference, got, len(names)),
        runtimes={r.name: _runtime(r, got, names, tolerances[r.name]) for r in runners},
    )
