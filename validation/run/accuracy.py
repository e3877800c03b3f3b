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

from lvvit.common.gate import check_gate
from lvvit.common.metrics import accuracy_summary
from lvvit.metadata import OUTPUT_NAME
from validation.core import gate
from validation.core.data import Dataset
from validation.core.runners import Participant, num_classes_of
from validation.engines.local import DEFAULT_SHARD_SIZE, LocalEngine, evaluate
from validation.engines.shards import Engine, describe_engine, merged_top5, run_description
from validation.errors import DatasetError
from validation.provenance import environment


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
