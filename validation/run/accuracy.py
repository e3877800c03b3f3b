"""Top-1 / top-5 of native Paddle and each runtime over a labelled folder, streamed with bounded memory.

Every batch is read once (by prefetching threads) and fed to every runtime, so
all of them see identical inputs; only the top-5 class ids of each image are
kept. Unreadable images are counted, listed and left out for every runtime
alike. Throughput counts the time inside each runtime, after one untimed
warm-up batch (first-call setup such as oneDNN kernel creation is excluded).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lvvit.common.gate import check_gate
from lvvit.common.metrics import accuracy_summary
from validation.core import gate
from validation.core.data import Dataset
from validation.core.runners import Participant, num_classes_of
from validation.engines.local import DEFAULT_SHARD_SIZE
from validation.engines.shards import Engine, merged_top5
from validation.errors import DatasetError
from validation.reports.types import AccuracyEntry, AccuracyReport, Inputs
from validation.run.skeleton import Collected, RunSettings, collect, run_record


def _check_labels(dataset: Dataset, num_classes: int) -> None:
    bad = [s.name for s in dataset.samples if s.label is None or not 0 <= s.label < num_classes]
    if bad:
        raise DatasetError(f"labels outside 0..{num_classes - 1} for {bad[:5]} (the model has {num_classes} classes)")


def _entry(participant: Participant, summary: dict[str, Any], **more: Any) -> AccuracyEntry:
    return AccuracyEntry.from_json({**summary, "describe": participant.describe(), **more})


def _runtimes(
    runners: Sequence[Participant],
    got: Collected,
    labels: np.ndarray,
    ref_top5: np.ndarray,
    tolerance: dict[str, float],
) -> dict[str, AccuracyEntry]:
    entries = {}
    for runner in runners:
        top5 = merged_top5(got.shards, runner.name)
        summary = accuracy_summary(top5, labels, got.classes, got.seconds[runner.name], reference_top5=ref_top5)
        checks = [c.to_dict() for c in check_gate(gate.ACCURACY_LIMITS, tolerance, summary)]
        entries[runner.name] = _entry(runner, summary, gate=checks)
    return entries


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
) -> AccuracyReport:
    """Evaluate `reference` and `runners` on `dataset`; returns the typed report (`bool()` its verdict).

    Without `engine`, the runners run here (`LocalEngine`); `shard_dir` keeps the finished shards so that
    the same call resumes (a temporary folder when None). Check the gate with `gate.raise_if_failed(report)`.
    """
    tolerance = gate.check_tolerance(
        gate.DEFAULT_ACCURACY_TOLERANCE if tolerance is None else tolerance, gate.ACCURACY_LIMITS
    )
    _check_labels(dataset, num_classes_of(reference))
    settings = RunSettings(batch_size, workers, prefetch, progress, engine, shard_dir, shard_size)
    got = collect("accuracy", reference, runners, dataset.samples, dataset.root, settings)
    labels = np.asarray([r["label"] for r in got.records], dtype=np.int64)
    ref_top5 = merged_top5(got.shards, reference.name)
    ref_summary = accuracy_summary(ref_top5, labels, got.classes, got.seconds[reference.name])
    return AccuracyReport(
        **run_record(reference, got, settings, tolerance, gate.ACCURACY_LIMITS, model, command),
        inputs=Inputs.from_json(
            {
                **dataset.describe(),
                "images_listed": len(dataset.samples),
                "images_evaluated": len(labels),
                "unreadable": [vars(f) for f in got.failures],
            }
        ),
        num_classes=got.classes,
        chance_top1=100.0 / got.classes,
        workers=workers,
        wall_seconds=got.wall,
        reference=_entry(reference, ref_summary, name=reference.name),
        runtimes=_runtimes(runners, got, labels, ref_top5, tolerance),
    )
