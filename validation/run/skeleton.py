"""The run that drift and accuracy share: open the engine, run the shards, collect, and the report's common part.

`collect` runs the reference and the runtimes on the same samples through an engine (here, `LocalEngine`, when
none is given) in resumable shards; `run_record` is what both reports say about the run (environment, model,
preprocessing, engine, shards, output, limits). Each run summarizes and gates its own numbers.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lvvit.common.gate import Limit
from lvvit.metadata import OUTPUT_NAME
from validation.core.data import Failure, Sample
from validation.core.runners import Participant, num_classes_of
from validation.engines.local import DEFAULT_SHARD_SIZE, LocalEngine, evaluate
from validation.engines.shards import Engine, describe_engine, run_description
from validation.errors import DatasetError
from validation.provenance import environment
from validation.reports.types import (
    EngineRecord,
    Environment,
    ModelRecord,
    Preprocessing,
    Reference,
    RuntimeRecord,
    ShardsRecord,
    limit_table,
)


@dataclass(frozen=True)
class RunSettings:
    """How a drift or accuracy run executes: batches, reading threads, the engine and where shards are kept."""

    batch_size: int = 16
    workers: int = 4
    prefetch: int = 2
    progress: bool = True
    engine: Engine | None = None
    shard_dir: Path | None = None
    shard_size: int = DEFAULT_SHARD_SIZE


@dataclass(frozen=True)
class Collected:
    """Every shard's records of one run, and what the report says about how they were made."""

    shards: list[Any]
    engine: Engine
    computed: int
    folder: str | None
    failures: list[Failure]
    seconds: dict[str, float]  # inside each participant, over every shard
    wall: float
    classes: int

    @property
    def records(self) -> list[dict[str, Any]]:
        return [r for s in self.shards for r in s.records]


def collect(
    kind: str, reference: Participant, runners: Sequence[Participant], samples: Sequence[Sample], where: Any,
    settings: RunSettings,
) -> Collected:  # fmt: skip
    """Run everyone on `samples` (labelled for accuracy) in shards; refuses a run where no image could be read."""
    everyone = [reference, *runners]
    engine = settings.engine or LocalEngine(
        {r.name: r for r in everyone}, reference.preprocess_config, settings.batch_size, settings.workers,
        settings.prefetch,
    )  # fmt: skip
    classes = num_classes_of(reference)
    labelled = kind == "accuracy"
    run = run_description(kind, samples, everyone, settings.shard_size, labelled=labelled)
    started = time.perf_counter()
    shards, computed, folder = evaluate(
        samples, run, settings.shard_size, engine, None if labelled else reference.name, classes,
        settings.shard_dir, settings.progress,
    )  # fmt: skip
    failures = [f for s in shards for f in s.failures]
    if not any(s.records for s in shards):
        shown = "; ".join(f"{f.name}: {f.reason}" for f in failures[:5])
        raise DatasetError(f"{where}: none of the {len(failures)} images could be read ({shown})")
    seconds = {r.name: sum(s.seconds.get(r.name, 0.0) for s in shards) for r in everyone}
    wall = time.perf_counter() - started
    return Collected(shards, engine, computed, folder, failures, seconds, wall, classes)


def run_record(
    reference: Participant, got: Collected, settings: RunSettings, tolerance: Mapping[str, float],
    limits: Mapping[str, Limit], model: Mapping[str, Any] | None, command: list[str] | None,
) -> dict[str, Any]:  # fmt: skip
    """The fields of `validation.reports.types.RunRecord`: what ran, where, and the limits in force."""
    return {
        "environment": Environment.from_json(environment(command)),
        "model": ModelRecord.from_json(model) if model else None,
        "preprocess": Preprocessing.from_json(reference.preprocess_config.to_dict()),
        "batch_size": settings.batch_size,
        "engine": EngineRecord.from_json(describe_engine(got.engine)),
        "shards": ShardsRecord(
            size=settings.shard_size, count=len(got.shards), computed=got.computed, folder=got.folder
        ),  # fmt: skip
        "output": OUTPUT_NAME,
        "tolerance": dict(tolerance),
        "limits": limit_table(limits),
    }


def timing(seconds: float, images: int) -> dict[str, float | None]:
    return {"seconds": seconds, "images_per_second": images / seconds if seconds > 0 else None}


def reference_record(reference: Participant, got: Collected, images: int) -> Reference:
    return Reference(name=reference.name, describe=RuntimeRecord.from_json(reference.describe()),
                     **timing(got.seconds[reference.name], images))  # fmt: skip
