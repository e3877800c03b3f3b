"""Runs cut into shards: per-image records, saved as each shard finishes, merged exactly, resumed by the same command.

A run is a list of samples cut into shards of `shard_size` images. An engine
(`validation.engines`) turns a shard's samples into logits per runtime; this
module turns those into per-image records (path, label, each runtime's top-5
ids and probabilities, and each runtime's errors against the reference,
`lvvit.comparison.ImageErrors`) and stores them as JSON Lines in
`<report>.shards/shard-NNNNN.jsonl`, written atomically when the shard is done.

The folder's `run.json` holds the run key (the samples, the runtimes' specs,
the reference, the shard size). The same command finds the finished shards and
computes only the others; a folder made by another run is refused, naming what
differs. Merging concatenates the records, so every statistic, percentiles
included, equals the single-run value (see `lvvit.comparison`).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lvvit.atomic import atomic_output
from lvvit.comparison import TOPK, ImageErrors, image_errors, top_predictions
from lvvit.regular_files import read_regular

from .data import Failure, Sample
from .errors import ValidationError

RUN_FILE = "run.json"
MAX_SHARD_FILE_BYTES = 1 << 30  # a shard of 50,000 images with four runtimes is ~100 MB; more is not ours


class ShardError(ValidationError, ValueError):
    """A shard folder of another run, or a shard file that is not what this kit wrote."""


@dataclass
class ShardLogits:
    """What an engine returns for one shard: the readable samples, the failures, logits and seconds per runtime."""

    index: int
    samples: list[Sample]
    failures: list[Failure]
    logits: dict[str, np.ndarray]
    seconds: dict[str, float]


@dataclass
class ShardRecords:
    """One finished shard: per-image records and, per runtime against the reference, the error histogram."""

    index: int
    records: list[dict[str, Any]]
    failures: list[Failure]
    seconds: dict[str, float]
    histograms: dict[str, list[int]] = field(default_factory=dict)


def shard_ranges(count: int, shard_size: int) -> list[tuple[int, int]]:
    if shard_size < 1:
        raise ShardError(f"the shard size must be at least 1 image, got {shard_size}")
    return [(start, min(start + shard_size, count)) for start in range(0, count, shard_size)]


def make_records(shard: ShardLogits, reference: str | None, classes: int) -> ShardRecords:
    """Per-image records of one shard; `reference` names the runtime the others are compared with (if any)."""
    predictions = {}
    for name, logits in shard.logits.items():
        if not shard.samples:
            continue
        if logits.shape != (len(shard.samples), classes):
            raise ShardError(
                f"shard {shard.index}: {name} gave logits of shape {list(logits.shape)}, "
                f"expected [{len(shard.samples)}, {classes}]"
            )
        predictions[name] = top_predictions(logits, TOPK)
    errors: dict[str, ImageErrors] = {}
    if reference is not None and shard.samples:
        ref = shard.logits[reference]
        errors = {name: image_errors(ref, x) for name, x in shard.logits.items() if name != reference}
    records = []
    for i, sample in enumerate(shard.samples):
        record: dict[str, Any] = {
            "name": sample.name,
            "path": str(sample.path),
            "label": sample.label,
            "top5": {name: ids[i].tolist() for name, (ids, _) in predictions.items()},
            "probs": {name: probs[i].tolist() for name, (_, probs) in predictions.items()},
        }
        if errors:
            record["errors"] = {name: e.row(i) for name, e in errors.items()}
        records.append(record)
    histograms = {name: e.histogram.tolist() for name, e in errors.items()}
    return ShardRecords(shard.index, records, shard.failures, shard.seconds, histograms)


def run_key(description: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()


class ShardStore:
    """The `<report>.shards` folder: one JSON Lines file per finished shard, and the run they belong to."""

    def __init__(self, folder: str | Path, description: Mapping[str, Any]) -> None:
        self.folder = Path(folder)
        self.description = json.loads(json.dumps(description, default=str))
        self.key = run_key(self.description)
        run_file = self.folder / RUN_FILE
        if run_file.is_file():
            self._check_same_run(run_file)
        else:
            with atomic_output(run_file) as tmp:
                tmp.write_text(json.dumps({"key": self.key, "run": self.description}, indent=1), encoding="utf-8")

    def _check_same_run(self, run_file: Path) -> None:
        try:
            stored = json.loads(read_regular(run_file, MAX_SHARD_FILE_BYTES).decode("utf-8"))
            other = stored["run"]
            key = stored["key"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ShardError(f"{run_file}: not a shard folder's run file ({exc})") from None
        if key == self.key:
            return
        differs = sorted(k for k in set(other) | set(self.description) if other.get(k) != self.description.get(k))
        raise ShardError(
            f"{self.folder}: holds the shards of another run (it differs in {', '.join(differs) or 'its key'}); "
            "give this run another --name (the report's and its shards' name), or another --report-dir, or remove "
            "the folder to start over"
        )

    def path(self, index: int) -> Path:
        return self.folder / f"shard-{index:05d}.jsonl"

    def finished(self, count: int) -> set[int]:
        return {i for i in range(count) if self.path(i).is_file()}

    def save(self, shard: ShardRecords) -> None:
        header = {
            "key": self.key,
            "shard": shard.index,
            "images": len(shard.records),
            "failures": [vars(f) for f in shard.failures],
            "seconds": shard.seconds,
            "histograms": shard.histograms,
        }
        with atomic_output(self.path(shard.index)) as tmp, open(tmp, "w", encoding="utf-8") as out:
            out.write(json.dumps(header) + "\n")
            for record in shard.records:
                out.write(json.dumps(record) + "\n")

    def load(self, index: int) -> ShardRecords:
        path = self.path(index)
        try:
            lines = read_regular(path, MAX_SHARD_FILE_BYTES).decode("utf-8").splitlines()
            header = json.loads(lines[0])
            records = [json.loads(line) for line in lines[1:]]
            failures = [Failure(str(f["name"]), str(f["reason"])) for f in header["failures"]]
            seconds = {str(k): float(v) for k, v in header["seconds"].items()}
            histograms = {str(k): [int(c) for c in v] for k, v in header["histograms"].items()}
            images, key, shard = int(header["images"]), header["key"], int(header["shard"])
        except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            raise ShardError(f"{path}: not a shard file of this kit ({type(exc).__name__}: {exc})") from None
        if key != self.key or shard != index or images != len(records):
            raise ShardError(
                f"{path}: says shard {shard} of run {str(key)[:12]} with {images} images, found {len(records)} "
                f"records; expected shard {index} of run {self.key[:12]}"
            )
        return ShardRecords(index, records, failures, seconds, histograms)


# An engine: given the shards still to compute (index, samples), yields their logits as each one finishes.
Engine = Callable[[Sequence[tuple[int, list[Sample]]]], Iterator[ShardLogits]]


# Called after each shard is saved (tests stop a run halfway with it).
shard_saved_hooks: list[Callable[[ShardRecords], None]] = []


def run_shards(
    samples: Sequence[Sample],
    shard_size: int,
    store: ShardStore,
    engine: Engine,
    reference: str | None,
    classes: int,
    progress: bool = False,
) -> tuple[list[ShardRecords], int]:
    """Every shard's records, in order: the finished ones loaded, the others computed by `engine` and saved.

    Returns (the shards, how many were computed by this call).
    """
    from tqdm import tqdm

    ranges = shard_ranges(len(samples), shard_size)
    done = store.finished(len(ranges))
    pending = [(i, list(samples[a:b])) for i, (a, b) in enumerate(ranges) if i not in done]
    todo = sum(len(s) for _, s in pending)
    computed = 0
    kind = str(store.description.get("kind", "images"))
    with tqdm(total=todo, unit="img", desc=kind, file=sys.stderr, disable=not progress, leave=False) as bar:
        for shard in engine(pending):
            records = make_records(shard, reference, classes)
            store.save(records)
            computed += 1
            bar.update(len(records.records) + len(records.failures))
            for hook in shard_saved_hooks:
                hook(records)
    return [store.load(i) for i in range(len(ranges))], computed


def merged_errors(shards: Sequence[ShardRecords], runtime: str, classes: int) -> ImageErrors:
    """`runtime`'s errors against the reference over every shard (exact: records concatenate)."""
    try:
        parts = [
            ImageErrors.from_rows([r["errors"][runtime] for r in s.records], classes, s.histograms[runtime])
            for s in shards
            if s.records
        ]
    except (KeyError, TypeError) as exc:
        raise ShardError(f"a shard has no errors of {runtime!r} against the reference ({exc})") from None
    return ImageErrors.concat(parts)


def merged_top5(shards: Sequence[ShardRecords], runtime: str) -> np.ndarray:
    try:
        rows = [r["top5"][runtime] for s in shards for r in s.records]
        return np.asarray(rows, dtype=np.int64).reshape(len(rows), -1)
    except (KeyError, TypeError, ValueError) as exc:
        raise ShardError(f"a shard has no top-5 predictions of {runtime!r} ({exc})") from None


def all_records(shards: Sequence[ShardRecords]) -> list[dict[str, Any]]:
    return [r for s in shards for r in s.records]


def describe_engine(engine: Engine) -> dict[str, object]:
    describe = getattr(engine, "describe", None)
    return describe() if callable(describe) else {"name": type(engine).__name__}
