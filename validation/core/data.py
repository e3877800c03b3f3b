"""Inputs: labelled folders (a `val_list.txt` or one folder per class), plain image folders, and a bounded stream.

Label file: one `relative/path label` line per image (the seed article's
ImageNet `val_list.txt`), UTF-8 (a byte-order mark is allowed), paths relative
to the data folder as PaddleClas joins `image_root` and each line of
`cls_label_path`, labels decimal class ids; blank lines are ignored. A path
that is absolute or leaves the data folder (`../`) is a bad line: a label file
from a stranger must not make the kit read files elsewhere. Class folders:
every sub-folder of the root is a class, numbered in sorted name order
(torchvision's `ImageFolder` rule; hidden folders such as `.ipynb_checkpoints`
are not classes). Files without an image suffix, and entries that are not
regular files (FIFOs, devices, broken links, symlink loops), are listed as
skipped with their reason, never dropped unsaid.

Streaming keeps at most `(prefetch + 1) * batch_size` decoded images alive;
worker threads read and preprocess ahead of the consumer. An image that cannot
be read becomes a `Failure` and the stream goes on.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import hashlib
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lvvit.common.regular_files import classify, read_regular, walk_regular_files
from lvvit.common.sampling import evenly_spaced
from lvvit.errors import ImageError
from lvvit.preprocess import IMAGE_SUFFIXES, is_image_name, preprocess
from lvvit.presets import PreprocessConfig
from validation.errors import DatasetError, LabelFileError

LABEL_FILE = "val_list.txt"
_SHOWN = 20  # bad lines named in an error message
MAX_LABEL_FILE_BYTES = 256 << 20  # ImageNet's 1.28M training lines take 40 MB
_LINE_SHOWN = 200  # characters of a bad line kept for messages and reports
_CLASS_ID = re.compile(r"[0-9]{1,9}")  # ASCII digits only: int() would also take "1_0", "+1" and "١"


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
    skipped: list[Failure] = field(default_factory=list)  # entries that are not images, with the reason
    label_file_sha256: str | None = None  # of the bytes that were parsed

    def limited(self, limit: int | None) -> Dataset:
        """`limit` samples spread evenly over the folder, in its order (all when None): the first ones of a folder
        sorted by class would be its first classes, and their accuracy would stand for the whole set's."""
        if limit is None:
            return self
        if limit < 1:
            raise DatasetError(f"--limit must be a positive number of images, got {limit}")
        return Dataset(
            self.root,
            self.kind,
            evenly_spaced(self.samples, limit),
            self.label_file,
            self.classes,
            self.bad_lines,
            self.skipped,
            self.label_file_sha256,
        )

    def describe(self) -> dict[str, object]:
        return {
            "root": str(self.root),
            "kind": self.kind,
            "label_file": str(self.label_file) if self.label_file else None,
            "label_file_sha256": self.label_file_sha256,
            "images": len(self.samples),
            "classes": self.classes,
            "bad_label_lines": [vars(b) for b in self.bad_lines],
            "skipped_files": [vars(s) for s in self.skipped],
        }


def _walk_images(folder: Path, root: Path) -> tuple[list[Path], list[Failure]]:
    """Regular files with an image suffix under `folder`; everything else as `Failure`s named relative to `root`."""
    files, others = walk_regular_files(folder)
    images = [p for p in files if is_image_name(p)]
    skipped = [Failure(s.path.relative_to(root).as_posix(), s.reason) for s in others]
    skipped += [
        Failure(p.relative_to(root).as_posix(), "not an image file name (suffix)")
        for p in files
        if not is_image_name(p)
    ]
    return images, sorted(skipped, key=lambda f: f.name)


def image_folder(root: str | Path) -> Dataset:
    """Every file under `root` with an image suffix, unlabelled, in sorted order; other files are listed as skipped."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder of images")
    images, skipped = _walk_images(root, root)
    if not images:
        raise DatasetError(f"{root}: holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    samples = [Sample(p, p.relative_to(root).as_posix()) for p in images]
    return Dataset(root, "images", samples, skipped=skipped)


def parse_label_file(
    label_file: str | Path,
    num_classes: int | None = None,
    skip_bad_lines: bool = False,
    root: str | Path | None = None,
) -> tuple[list[Sample], list[BadLine]]:
    """Read `relative/path label` lines, paths relative to `root` (default: the label file's folder).

    Bad lines raise `LabelFileError` naming each, unless `skip_bad_lines`.
    """
    samples, bad, _ = _parse_label_file(Path(label_file), num_classes, skip_bad_lines, root)
    return samples, bad


def _parse_label_file(
    label_file: Path, num_classes: int | None, skip_bad_lines: bool, root: str | Path | None
) -> tuple[list[Sample], list[BadLine], str]:
    """`parse_label_file`, and the SHA-256 of the bytes it parsed."""
    base = label_file.parent if root is None else Path(root)
    try:
        data = read_regular(label_file, MAX_LABEL_FILE_BYTES)
        text = data.decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelFileError(f"{label_file}: cannot read the label file ({exc})") from None
    lines = text.split("\n")
    if lines[-1] == "":  # the newline that ends the last line
        lines.pop()
    samples: list[Sample] = []
    bad: list[BadLine] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        shown = raw.rstrip("\r")[:_LINE_SHOWN]
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2:
            bad.append(BadLine(number, shown, "expected '<relative/path> <label>'"))
            continue
        rel, label_text = parts
        if not _CLASS_ID.fullmatch(label_text):
            bad.append(BadLine(number, shown, f"label {label_text[:_LINE_SHOWN]!r} is not a class id (decimal digits)"))
            continue
        label = int(label_text)
        if num_classes is not None and label >= num_classes:
            bad.append(BadLine(number, shown, f"label {label} is not a class id of this model (0..{num_classes - 1})"))
            continue
        key, reason = _image_path(rel, base, label_file.parent)
        if reason is None and key in seen:
            reason = f"duplicate of line {seen[key]}"
        if reason is not None:
            bad.append(BadLine(number, shown, reason))
            continue
        seen[key] = number
        samples.append(Sample(base / key, rel, label))
    if bad and not skip_bad_lines:
        listed = "\n  ".join(b.describe() for b in bad[:_SHOWN])
        more = f"\n  ... and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else ""
        raise LabelFileError(
            f"{label_file}: {len(bad)} bad line(s) of {len(lines)}:\n  {listed}{more}\n"
            "fix them, or pass --skip-bad-lines to evaluate the other lines and list these in the report"
        )
    if not samples:
        raise LabelFileError(f"{label_file}: lists no images")
    return samples, bad, hashlib.sha256(data).hexdigest()


def _image_path(rel: str, base: Path, label_dir: Path) -> tuple[str, str | None]:
    """(the path relative to `base`, normalised; why it cannot be used or None)."""
    if "\0" in rel:
        return rel, "the path holds a NUL byte"
    if os.path.isabs(rel):
        return rel, f"absolute path; paths are relative to the data folder {base}"
    key = os.path.normpath(rel)
    if key == os.pardir or key.startswith(os.pardir + os.sep):
        return key, f"the path leaves the data folder {base}"
    path = base / key
    if not os.path.lexists(path):
        hint = ""
        if label_dir != base and (label_dir / key).is_file():
            hint = (
                f" (it exists relative to the label file's folder, {label_dir / key}, but paths are resolved "
                f"against the data folder {base}, as PaddleClas does: give the image folder as the data folder)"
            )
        return key, f"no such file: {path}{hint}"
    reason = classify(path)
    return key, None if reason is None else f"{path}: {reason}"


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
    if label_file is None and os.path.lexists(root / LABEL_FILE):  # a FIFO or broken link there is an error, not "none"
        label_file = root / LABEL_FILE
    if label_file is not None:
        label_file = Path(label_file)
        samples, bad, sha256 = _parse_label_file(label_file, num_classes, skip_bad_lines, root)
        return Dataset(root, "label-file", samples, label_file=label_file, bad_lines=bad, label_file_sha256=sha256)
    entries = sorted(root.iterdir())
    classes = [p.name for p in entries if p.is_dir() and not p.name.startswith(".")]
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
    skipped = [
        Failure(p.name, "a hidden folder, not a class" if p.is_dir() else classify(p) or "not inside a class folder")
        for p in entries
        if p.name not in classes
    ]
    for label, name in enumerate(classes):
        images, left_out = _walk_images(root / name, root)
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
        return preprocess(sample.path, config)  # MemoryError while reading an image is an ImageError too
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
