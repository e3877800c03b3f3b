"""Runs cut into shards: per-image records, saved as each shard finishes, merged exactly, resumed by the same command.

A run is a list of samples cut into shards of `shard_size` images. An engine
(`validation.engines.local`) turns a shard's samples into logits per runtime; this
module turns those into per-image records (path, label, each runtime's top-5
ids and probabilities, and each runtime's errors against the reference,
`lvvit.common.metrics.ImageErrors`) and stores them as JSON Lines in
`<report>.shards/shard-NNNNN.jsonl`, written atomically when the shard is done.

The folder's `run.json` holds the run key (the samples, the runtimes' specs,
the reference, the shard size). The same command finds the finished shards and
computes only the others; a folder made by another run is refused, naming what
differs. Merging concatenates the records, so every statistic, percentiles
included, equals the single-run value (see `lvvit.common.metrics`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lvvit.common.atomic import atomic_output, sweep_leftovers
from lvvit.common.metrics import HIST_EDGES, TOPK, ComparisonError, ImageErrors, image_errors, top_predictions
from lvvit.common.regular_files import open_regular
from validation.core.data import Failure, Sample
from validation.core.stored import changed, fingerprint, parse_json, read_bounded, say, version_changes
from validation.errors import ValidationError

RUN_FILE = "run.json"
MAX_SHARD_FILE_BYTES = 1 << 30  # a shard of 50,000 images with four runtimes is ~100 MB; more is not ours
MAX_RUN_FILE_BYTES = 64 << 20  # the run key lists every image's name: 50,000 names take ~3 MB
MAX_HEADER_LINE_BYTES = 64 << 20  # a shard's header: every input's hash and every unreadable image's reason
MAX_RECORD_LINE_BYTES = 256 << 10  # one image's record: two paths and ~1 kB per runtime


# the per-image columns of `ImageErrors.row`
ERROR_COLUMNS = tuple(f.name for f in dataclasses.fields(ImageErrors) if f.name not in ("classes", "histogram"))


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
    inputs: list[dict[str, Any]] = field(default_factory=list)  # each input's size and SHA-256 when computed


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


def run_description(
    kind: str, samples: Sequence[Sample], participants: Sequence[Any], shard_size: int, labelled: bool
) -> dict[str, Any]:
    """What a run's numbers depend on: the samples, each runtime's spec, the versions that ran it, the shard size.

    `versions` holds what each participant reports it runs with (the runtime, the kit, Python, numpy, Pillow;
    measured on the worker for the Ray engine), so that shards computed under other versions are not reused.
    """
    return {
        "kind": kind,
        "samples": [(s.name, s.label) if labelled else s.name for s in samples],
        "runtimes": {p.name: p.describe().get("spec") or p.describe() for p in participants},
        "versions": {p.name: p.describe().get("versions") for p in participants},
        "shard_size": shard_size,
    }


class ShardStore:
    """The `<report>.shards` folder: one JSON Lines file per finished shard, and the run they belong to.

    A folder made by the same run under other versions (an upgraded runtime, kit, Python...) is emptied with a
    word on the console: its numbers were not computed by what runs now, so they are computed again.
    """

    def __init__(self, folder: str | Path, description: Mapping[str, Any], log: Callable[[str], None] = say) -> None:
        self.folder = Path(folder)
        self.description = json.loads(json.dumps(description, default=str))
        self.key = run_key(self.description)
        self.log = log
        run_file = self.folder / RUN_FILE
        if self.folder.is_dir():
            sweep_leftovers(self.folder)  # staging files of a killed run
        if run_file.is_file() and self._same_run(run_file):
            return
        with atomic_output(run_file) as tmp:
            tmp.write_text(json.dumps({"key": self.key, "run": self.description}, indent=1), encoding="utf-8")

    def _same_run(self, run_file: Path) -> bool:
        """True for a folder of this run; False (emptied) for this run under other versions; else `ShardError`."""
        stored = parse_json(read_bounded(run_file, MAX_RUN_FILE_BYTES, ShardError), run_file, ShardError)
        if not isinstance(stored, dict) or not isinstance(stored.get("run"), dict) or "key" not in stored:
            raise ShardError(f"{run_file}: not a shard folder's run file (no run and key)")
        other, key = stored["run"], stored["key"]
        if key == self.key and run_key(other) == key:
            return True
        differs = sorted(k for k in set(other) | set(self.description) if other.get(k) != self.description.get(k))
        if differs != ["versions"]:
            raise ShardError(
                f"{self.folder}: holds the shards of another run (it differs in {', '.join(differs) or 'its key'}); "
                "give this run another --name (the report's and its shards' name), or another --report-dir, or "
                "remove the folder to start over"
            )
        old = [p for p in self.folder.glob("shard-*.jsonl") if p.is_file()]
        changes = version_changes(other.get("versions"), self.description["versions"])
        self.log(
            f"{self.folder}: its {len(old)} finished shard(s) were computed under other versions "
            f"({'; '.join(changes)}); computing them again with the versions installed now"
        )
        for path in old:
            path.unlink()
        return False

    def path(self, index: int) -> Path:
        return self.folder / f"shard-{index:05d}.jsonl"

    def finished(self, count: int) -> set[int]:
        return {i for i in range(count) if self.path(i).is_file()}

    def save(self, shard: ShardRecords, inputs: Sequence[Sample], reference: str | None, classes: int) -> None:
        """Write the shard: a header (with each input's size and SHA-256), the records, a SHA-256 of all of it."""
        header = {
            "key": self.key,
            "shard": shard.index,
            "images": len(shard.records),
            "classes": classes,
            "reference": reference,
            "inputs": [fingerprint(s) for s in inputs],
            "failures": [vars(f) for f in shard.failures],
            "seconds": shard.seconds,
            "histograms": shard.histograms,
        }
        digest = hashlib.sha256()
        with atomic_output(self.path(shard.index)) as tmp, open(tmp, "wb") as out:
            for line in (header, *shard.records):
                data = (json.dumps(line) + "\n").encode("utf-8")
                digest.update(data)
                out.write(data)
            out.write((json.dumps({"sha256": digest.hexdigest()}) + "\n").encode("utf-8"))

    def load(self, index: int, samples: Sequence[Sample]) -> ShardRecords:
        """The shard `index` of `samples`' range, checked: its checksum, its header, and every record's fields."""
        path = self.path(index)
        header, records = read_shard_file(path)
        try:
            shard = check_shard(header, records, index, samples, list(self.description.get("runtimes") or {}))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ShardError(f"{path}: not a shard file of this kit ({type(exc).__name__}: {str(exc)[:200]})") from None
        if header["key"] != self.key:
            raise ShardError(f"{path}: says run {str(header['key'])[:12]}; expected run {self.key[:12]}")
        return shard


def read_shard_file(path: Path) -> tuple[Any, list[Any]]:
    """(header, records) of a shard file whose closing SHA-256 matches; lines and file bounded in size."""
    digest = hashlib.sha256()
    lines: list[Any] = []
    closing: Any = None
    try:
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_SHARD_FILE_BYTES:
                raise ShardError(f"{path}: {size} bytes, over the limit of {MAX_SHARD_FILE_BYTES} bytes")
            while True:
                limit = MAX_HEADER_LINE_BYTES if not lines else MAX_RECORD_LINE_BYTES
                line = f.readline(limit + 1)
                if not line:
                    break
                if len(line) > limit:
                    raise ShardError(f"{path}: line {len(lines) + 1} is longer than {limit} bytes")
                if closing is not None:
                    lines.append(closing)  # what looked like the closing line was not the last one
                    closing = None
                value = parse_json(line, path, ShardError, allow_nan=True)
                if isinstance(value, dict) and set(value) == {"sha256"}:
                    closing, expected = value, digest.hexdigest()
                else:
                    lines.append(value)
                digest.update(line)
    except OSError as exc:
        raise ShardError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if closing is None:
        raise ShardError(f"{path}: has no closing checksum line: cut short, or not written by this kit (version)")
    if closing["sha256"] != expected:
        raise ShardError(f"{path}: its checksum does not match its content: it was edited or damaged after writing")
    if not lines:
        raise ShardError(f"{path}: holds no header")
    return lines[0], lines[1:]


def _int(value: Any, low: int, high: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{what} is {str(value)[:40]!r}, expected an integer in {low}..{high}")
    return value


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} is {str(value)[:40]!r}, expected a number")
    return float(value)


def _ids(value: Any, k: int, classes: int, what: str) -> list[int]:
    if not isinstance(value, list) or len(value) != k:
        raise ValueError(f"{what} is not a list of {k} class ids")
    return [_int(v, 0, classes - 1, what) for v in value]


def _check_record(record: Any, sample: Sample, runtimes: list[str], reference: str | None, classes: int) -> None:
    """One image's record: its name and label are the run's, and every runtime's numbers have their shapes."""
    k = min(TOPK, classes)
    if not isinstance(record, dict):
        raise ValueError(f"a record is a {type(record).__name__}, not an object")
    keys = {"name", "path", "label", "top5", "probs"} | ({"errors"} if reference is not None else set())
    if set(record) != keys:
        raise ValueError(f"the record of {sample.name!r} has the fields {sorted(record)[:8]}, expected {sorted(keys)}")
    if record["name"] != sample.name or not isinstance(record["path"], str):
        raise ValueError(f"a record names {str(record['name'])[:80]!r} where the run has {sample.name!r}")
    if type(record["label"]) is not type(sample.label) or record["label"] != sample.label:
        raise ValueError(f"{sample.name}: label {json.dumps(record['label'])[:40]}, the run's label is {sample.label}")
    for field_name in ("top5", "probs"):
        if not isinstance(record[field_name], dict) or sorted(record[field_name]) != sorted(runtimes):
            raise ValueError(f"{sample.name}: {field_name} is not one entry per runtime ({', '.join(runtimes)})")
    for name in runtimes:
        _ids(record["top5"][name], k, classes, f"{sample.name}: {name}'s top-5")
        probs = record["probs"][name]
        if not isinstance(probs, list) or len(probs) != k:
            raise ValueError(f"{sample.name}: {name}'s probabilities are not {k} numbers")
        for p in probs:
            _number(p, f"{sample.name}: a probability of {name}")
    if reference is None:
        return
    compared = sorted(n for n in runtimes if n != reference)
    if not isinstance(record["errors"], dict) or sorted(record["errors"]) != compared:
        raise ValueError(f"{sample.name}: errors are not one row per runtime compared ({', '.join(compared)})")
    for name, row in record["errors"].items():
        if not isinstance(row, dict) or set(row) != set(ERROR_COLUMNS):
            raise ValueError(f"{sample.name}: {name}'s error row lacks or adds columns")
        for column in ERROR_COLUMNS:
            if column in ("top5", "ref_top5"):
                _ids(row[column], k, classes, f"{sample.name}: {name}'s {column}")
            else:
                _number(row[column], f"{sample.name}: {name}'s {column}")


def check_shard(
    header: Any, records: list[Any], index: int, samples: Sequence[Sample], runtimes: list[str]
) -> ShardRecords:
    """The shard as `ShardRecords`, once its header and records are shown to be what this kit writes for it.

    `ValueError` (or `KeyError`, `TypeError`) naming the first field that is not.
    """
    if not isinstance(header, dict):
        raise ValueError("the first line is not a header object")
    shard = _int(header["shard"], 0, 1 << 40, "the shard index")
    if shard != index:
        raise ValueError(f"it says shard {shard}, expected shard {index}")
    classes = _int(header["classes"], 1, 1 << 24, "the number of classes")
    reference = header["reference"]
    if reference is not None and reference not in runtimes:
        raise ValueError(f"its reference {str(reference)[:40]!r} is not a runtime of the run")
    failures = [Failure(str(f["name"]), str(f["reason"])) for f in header["failures"]]
    failed = {f.name for f in failures}
    expected = [s for s in samples if s.name not in failed]
    if len(failed) != len(failures) or len(expected) + len(failures) != len(samples):
        raise ValueError("its unreadable images are not images of this shard, or are listed twice")
    if _int(header["images"], 0, len(samples), "the number of images") != len(records) or len(records) != len(expected):
        raise ValueError(f"it holds {len(records)} records for {header['images']} images, expected {len(expected)}")
    for record, sample in zip(records, expected, strict=True):
        _check_record(record, sample, runtimes, reference, classes)
    seconds = {str(k): _number(v, f"{k}'s seconds") for k, v in header["seconds"].items()}
    if any(not 0 <= v < float("inf") for v in seconds.values()):
        raise ValueError(f"its seconds {seconds} are not finite and >= 0")
    histograms: dict[str, list[int]] = {}
    if not (records and reference is not None) and header["histograms"] != {}:
        raise ValueError("it holds error histograms, but nothing of it was compared with a reference")
    if records and reference is not None:
        if sorted(header["histograms"]) != sorted(n for n in runtimes if n != reference):
            raise ValueError("its error histograms are not one per runtime compared")
        for name, counts in header["histograms"].items():
            if not isinstance(counts, list) or len(counts) != len(HIST_EDGES) + 2:
                raise ValueError(f"{name}'s error histogram is not {len(HIST_EDGES) + 2} counts")
            histograms[name] = [_int(c, 0, len(records) * classes, f"a count of {name}'s histogram") for c in counts]
            if sum(histograms[name]) != len(records) * classes:
                raise ValueError(f"{name}'s error histogram counts {sum(histograms[name])}, not images x classes")
    inputs = header["inputs"]
    if not isinstance(inputs, list) or len(inputs) != len(samples):
        raise ValueError(f"its inputs are not a list of its {len(samples)} images")
    return ShardRecords(index, records, failures, seconds, histograms, inputs)


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

    A finished shard whose images changed on disk since (size or SHA-256) is computed again, with a word on the
    console. Returns (the shards, how many were computed by this call).
    """
    from tqdm import tqdm

    ranges = shard_ranges(len(samples), shard_size)
    loaded: dict[int, ShardRecords] = {}
    for i in sorted(store.finished(len(ranges))):
        shard = store.load(i, samples[slice(*ranges[i])])
        stale = changed(list(samples[slice(*ranges[i])]), shard.inputs)
        if stale:
            store.log(
                f"{store.path(i)}: {len(stale)} image(s) changed since it was computed ({', '.join(stale[:5])}); "
                "computing it again"
            )
        else:
            loaded[i] = shard
    pending = [(i, list(samples[a:b])) for i, (a, b) in enumerate(ranges) if i not in loaded]
    todo = sum(len(s) for _, s in pending)
    inputs = dict(pending)
    kind = str(store.description.get("kind", "images"))
    with tqdm(total=todo, unit="img", desc=kind, file=sys.stderr, disable=not progress, leave=False) as bar:
        for shard in engine(pending):
            records = make_records(shard, reference, classes)
            store.save(records, inputs[shard.index], reference, classes)
            loaded[shard.index] = store.load(shard.index, inputs[shard.index])  # read back: what a resume reads
            bar.update(len(records.records) + len(records.failures))
            for hook in shard_saved_hooks:
                hook(records)
    missing = [i for i in range(len(ranges)) if i not in loaded]
    if missing:
        raise ShardError(f"the engine did not return shard(s) {missing[:10]} of {store.folder}")
    return [loaded[i] for i in range(len(ranges))], len(pending)


def merged_errors(shards: Sequence[ShardRecords], runtime: str, classes: int) -> ImageErrors:
    """`runtime`'s errors against the reference over every shard (exact: records concatenate)."""
    try:
        parts = [
            ImageErrors.from_rows([r["errors"][runtime] for r in s.records], classes, s.histograms[runtime])
            for s in shards
            if s.records
        ]
    except (KeyError, TypeError, ValueError, ComparisonError) as exc:
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
