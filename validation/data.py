"""Inputs: labelled folders (a `val_list.txt` or one folder per class), plain image folders, and a bounded stream.

Label file: one `relative/path label` line per image (the seed article's
ImageNet `val_list.txt`), paths relative to the file's folder, labels integer
class ids; blank lines are ignored. Class folders: every sub-folder of the root
is a class, numbered in sorted name order (torchvision's `ImageFolder` rule;
hidden folders such as `.ipynb_checkpoints` are not classes). Files without
an image suffix are listed as skipped, never dropped unsaid.

Streaming keeps at most `(prefetch + 1) * batch_size` decoded images alive;
worker threads read and preprocess ahead of the consumer. An image that cannot
be read becomes a `Failure` and the stream goes on.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import hashlib
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lvvit.errors import ImageError
from lvvit.preprocess import IMAGE_SUFFIXES, preprocess
from lvvit.presets import PreprocessConfig

from .errors import DatasetError, LabelFileError

LABEL_FILE = "val_list.txt"
_SHOWN = 20  # bad lines named in an error message


@dataclass(frozen=True)
class Sample:
    path: Path
    name: str  # as reports show it: the path relative to the data root
    label: int | None = None
    synthetic: int | None = None  # not a file: `lvvit.synthetic.synthetic_image(synthetic)` (drift --synthetic)


@dataclass(frozen=True)
class BadLine:
    line: int  # 1-based
    text: str
    reason: str

    def describe(self) -> str:
        return f"line {self.line}: {self.text!r}: {self.reason}"


@dataclass(frozen=True)
class Failure:
    """An input file that could not be used, and why."""

    name: str
    reason: str


@dataclass
class Dataset:
    """What a folder holds: the samples, how they were found, and what was left out (with reasons)."""

    root: Path
    kind: str  # "label-file", "class-folders" or "images"
    samples: list[Sample]
    label_file: Path | None = None
    classes: list[str] | None = None  # class-folder names, in class-id order
    bad_lines: list[BadLine] = field(default_factory=list)
    skipped: list[Failure] = field(default_factory=list)  # files that are not images by their name

    def limited(self, limit: int | None) -> Dataset:
        """The first `limit` samples (all when None)."""
        if limit is None:
            return self
        if limit < 1:
            raise DatasetError(f"--limit must be a positive number of images, got {limit}")
        return Dataset(
            self.root, self.kind, self.samples[:limit], self.label_file, self.classes, self.bad_lines, self.skipped
        )

    def describe(self) -> dict[str, object]:
        return {
            "root": str(self.root),
            "kind": self.kind,
            "label_file": str(self.label_file) if self.label_file else None,
            "label_file_sha256": hashlib.sha256(self.label_file.read_bytes()).hexdigest() if self.label_file else None,
            "images": len(self.samples),
            "classes": self.classes,
            "bad_label_lines": [vars(b) for b in self.bad_lines],
            "skipped_files": [vars(s) for s in self.skipped],
        }


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _walk_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _split_by_name(files: Iterable[Path], root: Path) -> tuple[list[Path], list[Failure]]:
    images, skipped = [], []
    for path in files:
        if _is_image_name(path):
            images.append(path)
        else:
            skipped.append(Failure(path.relative_to(root).as_posix(), "not an image file name (suffix)"))
    return images, skipped


def image_folder(root: str | Path) -> Dataset:
    """Every file under `root` with an image suffix, unlabelled, in sorted order; other files are listed as skipped."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder of images")
    images, skipped = _split_by_name(_walk_files(root), root)
    if not images:
        raise DatasetError(f"{root}: holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    samples = [Sample(p, p.relative_to(root).as_posix()) for p in images]
    return Dataset(root, "images", samples, skipped=skipped)


def parse_label_file(
    label_file: str | Path, num_classes: int | None = None, skip_bad_lines: bool = False
) -> tuple[list[Sample], list[BadLine]]:
    """Read `relative/path label` lines. Bad lines raise `LabelFileError` naming each, unless `skip_bad_lines`."""
    label_file = Path(label_file)
    base = label_file.parent
    try:
        text = label_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelFileError(f"{label_file}: cannot read the label file ({exc})") from exc
    samples: list[Sample] = []
    bad: list[BadLine] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2:
            bad.append(BadLine(number, raw, "expected '<relative/path> <label>'"))
            continue
        rel, label_text = parts
        try:
            label = int(label_text)
        except ValueError:
            bad.append(BadLine(number, raw, f"label {label_text!r} is not an integer class id"))
            continue
        if label < 0 or (num_classes is not None and label >= num_classes):
            valid = f"0..{num_classes - 1}" if num_classes is not None else "0 or more"
            bad.append(BadLine(number, raw, f"label {label} is not a class id of this model ({valid})"))
            continue
        if rel in seen:
            bad.append(BadLine(number, raw, f"duplicate of line {seen[rel]}"))
            continue
        path = base / rel
        if not path.is_file():
            bad.append(BadLine(number, raw, f"no such file: {path}"))
            continue
        seen[rel] = number
        samples.append(Sample(path, rel, label))
    if bad and not skip_bad_lines:
        shown = "\n  ".join(b.describe() for b in bad[:_SHOWN])
        more = f"\n  ... and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else ""
        raise LabelFileError(
            f"{label_file}: {len(bad)} bad line(s) of {len(text.splitlines())}:\n  {shown}{more}\n"
            "fix them, or pass --skip-bad-lines to evaluate the other lines and list these in the report"
        )
    if not samples:
        raise LabelFileError(f"{label_file}: lists no images")
    return samples, bad


def labelled_folder(
    root: str | Path,
    label_file: str | Path | None = None,
    num_classes: int | None = None,
    skip_bad_lines: bool = False,
) -> Dataset:
    """A labelled data set: `label_file` (default `root/val_list.txt` when present), else one folder per class."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such data folder")
    if label_file is None and (root / LABEL_FILE).is_file():
        label_file = root / LABEL_FILE
    if label_file is not None:
        label_file = Path(label_file)
        samples, bad = parse_label_file(label_file, num_classes, skip_bad_lines)
        return Dataset(root, "label-file", samples, label_file=label_file, bad_lines=bad)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DatasetError(
            f"{root}: neither a {LABEL_FILE} (lines '<relative/path> <label>') nor one sub-folder per class"
        )
    if num_classes is not None and len(classes) > num_classes:
        raise DatasetError(
            f"{root}: {len(classes)} class folders but the model has {num_classes} classes "
            f"(folders are numbered in sorted order: {', '.join(classes[:5])}...)"
        )
    samples: list[Sample] = []
    skipped = [Failure(p.name, "not inside a class folder") for p in sorted(root.iterdir()) if p.is_file()]
    for label, name in enumerate(classes):
        images, left_out = _split_by_name(_walk_files(root / name), root)
        samples.extend(Sample(p, p.relative_to(root).as_posix(), label) for p in images)
        skipped.extend(left_out)
    if not samples:
        raise DatasetError(f"{root}: the class folders hold no image files")
    return Dataset(root, "class-folders", samples, classes=classes, skipped=skipped)


@dataclass
class Batch:
    samples: list[Sample]  # the readable ones, in order
    inputs: np.ndarray  # [len(samples), 3, H, W] float32
    failures: list[Failure]  # unreadable images of this chunk

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label if s.label is not None else -1 for s in self.samples], dtype=np.int64)


def _load(sample: Sample, config: PreprocessConfig) -> np.ndarray | Failure:
    try:
        return preprocess(sample.path, config)
    except ImageError as exc:
        reason = str(exc).removeprefix(f"{sample.path}: ")
        return Failure(sample.name, reason)


def stream_batches(
    samples: list[Sample],
    config: PreprocessConfig,
    batch_size: int = 32,
    workers: int = 4,
    prefetch: int = 2,
    progress: bool = True,
    description: str = "images",
) -> Iterator[Batch]:
    """Preprocessed batches in order, read by `workers` threads at most `prefetch` batches ahead.

    Unreadable images are reported in `Batch.failures` (and left out of its
    inputs); a batch whose images all failed still comes, with empty inputs.
    """
    from tqdm import tqdm

    if batch_size < 1 or workers < 1 or prefetch < 0:
        raise DatasetError(
            f"batch size and workers must be >= 1 and prefetch >= 0 (got {batch_size}, {workers}, {prefetch})"
        )
    size = config.input_size
    chunks = (samples[i : i + batch_size] for i in range(0, len(samples), batch_size))
    bar = tqdm(total=len(samples), unit="img", desc=description, file=sys.stderr, disable=not progress, leave=False)
    pending: collections.deque[tuple[list[Sample], list[cf.Future]]] = collections.deque()
    with cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prefetch") as pool:
        try:
            for chunk in chunks:
                pending.append((chunk, [pool.submit(_load, s, config) for s in chunk]))
                if len(pending) > prefetch:
                    yield _collect(*pending.popleft(), size, bar)
            while pending:
                yield _collect(*pending.popleft(), size, bar)
        finally:
            for _, futures in pending:  # a consumer that stopped early: drop the queued work
                for future in futures:
                    future.cancel()
            bar.close()


def _collect(chunk: list[Sample], futures: list[cf.Future], size: int, bar) -> Batch:
    kept: list[Sample] = []
    arrays: list[np.ndarray] = []
    failures: list[Failure] = []
    for sample, future in zip(chunk, futures, strict=True):
        result = future.result()
        if isinstance(result, Failure):
            failures.append(result)
        else:
            kept.append(sample)
            arrays.append(result)
    bar.update(len(chunk))
    inputs = np.stack(arrays) if arrays else np.zeros((0, 3, size, size), dtype=np.float32)
    return Batch(kept, inputs, failures)
