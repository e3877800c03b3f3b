"""Predict a whole folder (or a list of images) into JSON Lines or CSV: the first thing one does with an export.

    python -m serving predict --images photos/ --model lvvit_s.onnx --out preds.jsonl [--resume] [--limit N]

One record per image, in path order: its top-k, or the error that kept it from one (unreadable, truncated,
too large: the run goes on). Files that are no regular file (FIFOs, devices, broken links) are listed on stderr
with their reason. Records are written and flushed a batch at a time, so an interrupted run keeps what it did;
`--resume` skips the images already in the output (a half-written last line is dropped and redone).
A list file holds one image path per line, relative to the list's folder (anything after the path, such as
the label of a `val_list.txt`, is ignored); absolute paths and paths leaving the folder are errors.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from lvvit.common.progress import Log, to_stderr
from lvvit.common.regular_files import read_regular, walk_regular_files
from lvvit.preprocess import is_image_name
from runtimes import ImageResult, Predictor

from .errors import ServingSetupError

FORMATS = (".jsonl", ".csv")
CSV_FIELDS = ("source", "error", "class_id", "label", "prob", "class_ids", "labels", "probs")
MAX_LIST_BYTES = 256 << 20


@dataclass
class FolderSummary:
    written: int = 0
    resumed: int = 0  # already in the output
    failed: list[tuple[str, str]] = field(default_factory=list)  # (image, error)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why it is no image file)


@dataclass(frozen=True)
class Item:
    name: str  # as recorded: relative to the folder or the list's folder
    path: Path | None  # None: a bad list line, whose error is `problem`
    problem: str | None = None


def list_images(source: Path) -> tuple[list[Item], list[tuple[str, str]]]:
    """The images of a folder (recursive, sorted) or of a list file, and the paths skipped with their reason."""
    if source.is_dir():
        files, skipped = walk_regular_files(source)
        items = [Item(str(p.relative_to(source)), p) for p in files if is_image_name(p)]
        return items, [(str(s.path), s.reason) for s in skipped]
    try:
        text = read_regular(source, MAX_LIST_BYTES).decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ServingSetupError(f"{source}: cannot read the image list ({exc})") from None
    root = source.resolve().parent
    items = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        name = line.split()[0]
        path = (root / name).resolve()
        if Path(name).is_absolute() or not path.is_relative_to(root):
            items.append(Item(name, None, f"{source}:{number}: {name!r} is not inside {root}"))
        else:
            items.append(Item(name, path))
    return items, []


def _done_jsonl(out: Path) -> set[str]:
    """Sources already recorded; a torn last line (an interrupted write) is cut off so that appending is clean."""
    done: set[str] = set()
    keep = 0
    with open(out, "rb") as file:
        for line in file:
            try:
                record = json.loads(line)
            except ValueError:
                break
            if not line.endswith(b"\n") or not isinstance(record, dict) or "source" not in record:
                break
            done.add(record["source"])
            keep += len(line)
    os.truncate(out, keep)
    return done


def _done_csv(out: Path) -> set[str]:
    """Sources already recorded; a torn last row is dropped (the file rewritten without it)."""
    with open(out, newline="", encoding="utf-8") as file:
        complete = [line for line in file.read().splitlines(keepends=True) if line.endswith("\n")]
    with open(out, "w", newline="", encoding="utf-8") as file:
        file.writelines(complete)
    return {row["source"] for row in csv.DictReader(complete) if row.get("source")}


class _Writer:
    def __init__(self, file: TextIO, kind: str, new: bool) -> None:
        self.file = file
        self.csv = csv.DictWriter(file, CSV_FIELDS) if kind == ".csv" else None
        if self.csv is not None and new:
            self.csv.writeheader()

    def write(self, name: str, result: ImageResult) -> None:
        record: dict[str, Any] = {**result.to_dict(), "source": name}
        if self.csv is None:
            self.file.write(json.dumps(record) + "\n")
            return
        top = result.prediction
        self.csv.writerow(
            {
                "source": name,
                "error": result.error or "",
                "class_id": top.class_id if top else "",
                "label": top.label if top else "",
                "prob": top.probs[0] if top else "",
                "class_ids": json.dumps(list(top.class_ids)) if top else "",
                "labels": json.dumps(list(top.labels)) if top else "",
                "probs": json.dumps(list(top.probs)) if top else "",
            }
        )


def _batches(items: Sequence[Item], size: int) -> Iterator[list[Item]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _check_output(out: Path, resume: bool) -> str:
    """The output's kind (".jsonl" or ".csv"); an existing output is continued only with `resume`."""
    kind = out.suffix.lower()
    if kind not in FORMATS:
        raise ServingSetupError(f"{out}: write .jsonl or .csv")
    if out.exists() and not resume:
        raise ServingSetupError(f"{out} exists: pass --resume to continue it, or remove it")
    if out.exists() and not out.is_file():
        raise ServingSetupError(f"{out}: not a regular file")
    return kind


def _write_batches(
    predictor: Predictor, todo: Sequence[Item], writer: _Writer, topk: int, summary: FolderSummary, bar: Any
) -> None:
    """Predict `todo` a batch at a time, each record written (and flushed with its batch) in order."""
    for batch in _batches(todo, predictor.batch_size):
        readable = [item for item in batch if item.path is not None]
        results = dict(
            zip(
                [item.name for item in readable],
                predictor.predict_each([item.path for item in readable], topk),
                strict=True,
            )
        )
        for item in batch:
            result = results.get(item.name) or ImageResult(item.name, None, item.problem)
            writer.write(item.name, result)
            if result.error is not None:
                summary.failed.append((item.name, result.error))
        writer.file.flush()
        summary.written += len(batch)
        bar.update(len(batch))


def _log_summary(out: Path, summary: FolderSummary, log: Log) -> None:
    for path, why in summary.skipped:
        log(f"skipped {path}: {why}")
    for name, error in summary.failed[:20]:
        log(f"failed {name}: {error}")
    if len(summary.failed) > 20:
        log(f"... and {len(summary.failed) - 20} more failed images (their records say why)")
    log(
        f"{out}: {summary.written} images written ({len(summary.failed)} failed), {summary.resumed} resumed, "
        f"{len(summary.skipped)} paths skipped"
    )


def predict_folder(
    predictor: Predictor,
    source: str | Path,
    out: str | Path,
    *,
    topk: int = 5,
    resume: bool = False,
    limit: int | None = None,
    progress: bool = True,
    log: Log = to_stderr,
) -> FolderSummary:
    """Predict every image of `source` (a folder or a list file; only its first `limit` ones, in path order,
    when given) into `out` (.jsonl or .csv)."""
    source, out = Path(source), Path(out)
    kind = _check_output(out, resume)
    items, skipped = list_images(source)
    if limit is not None:
        items = items[:limit]
    summary = FolderSummary(skipped=skipped)
    done = (_done_jsonl(out) if kind == ".jsonl" else _done_csv(out)) if out.exists() else set()
    todo = [item for item in items if item.name not in done]
    summary.resumed = len(items) - len(todo)
    if summary.resumed:
        log(f"{out}: {summary.resumed} images already done, {len(todo)} to go")
    from tqdm import tqdm

    new = not out.exists() or out.stat().st_size == 0
    with (
        open(out, "a", newline="" if kind == ".csv" else None, encoding="utf-8") as file,
        tqdm(total=len(todo), unit="img", disable=not progress) as bar,
    ):
        _write_batches(predictor, todo, _Writer(file, kind, new), topk, summary, bar)
    _log_summary(out, summary, log)
    return summary
