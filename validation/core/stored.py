"""Files the kit stores beside a run and reads back later (shards, the reference cache): bounded, checked, typed.

Between two runs such a file may have been edited, truncated or replaced, the
images it describes may have changed on disk, and the packages that computed
its numbers may have been upgraded. So every stored file carries a SHA-256 of
its content, written with it and checked on read; every input image is
recorded by its size and SHA-256 and checked before stored numbers are reused;
JSON is read with a size bound, without NaN where none belongs, and a nesting
that would exhaust Python's stack is a typed error naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lvvit.common.regular_files import open_regular, read_regular
from validation.core.data import Sample

_CHUNK = 1 << 20


def say(message: str) -> None:
    """A word on the console (stderr), where the progress bars are: stored numbers not reused, and why."""
    print(message, file=sys.stderr, flush=True)


def read_bounded(path: Path, max_bytes: int, error: type[Exception]) -> bytes:
    """The bytes of a regular file of at most `max_bytes`; `error` naming the file otherwise."""
    try:
        return read_regular(path, max_bytes)
    except OSError as exc:
        raise error(f"{path}: cannot read it ({exc.strerror or exc})") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number this file may hold")


def parse_json(data: bytes | str, path: Path, error: type[Exception], allow_nan: bool = False) -> Any:
    """JSON from a stored file; `error` naming `path` for bad UTF-8 or JSON, too deep a nesting, or NaN/Infinity."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        if allow_nan:
            return json.loads(text)
        return json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise error(f"{path}: its JSON is nested too deeply to be a file of this kit") from None
    except ValueError as exc:
        raise error(f"{path}: not a JSON file of this kit ({type(exc).__name__}: {str(exc)[:200]})") from None


def _digest(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, allow_nan=False).encode()).hexdigest()


def sealed(body: Mapping[str, Any]) -> dict[str, Any]:
    """`body` with a `sha256` of its canonical JSON, for `unsealed` to check on read."""
    return {**body, "sha256": _digest(body)}


def unsealed(document: Any, path: Path, error: type[Exception]) -> dict[str, Any]:
    """The body of a `sealed` document, or `error` naming `path` when it was edited or damaged after writing."""
    if not isinstance(document, dict) or not isinstance(document.get("sha256"), str):
        raise error(f"{path}: has no checksum; not a file written by this kit (version)")
    body = {k: v for k, v in document.items() if k != "sha256"}
    if _digest(body) != document["sha256"]:
        raise error(f"{path}: its checksum does not match its content: it was edited or damaged after it was written")
    return body


def file_sha256(path: Path) -> tuple[int, str]:
    """(size, SHA-256) of a regular file, streamed; `OSError` for anything else (a FIFO never blocks)."""
    digest = hashlib.sha256()
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return size, digest.hexdigest()


def fingerprint(sample: Sample) -> dict[str, Any]:
    """What a sample's numbers depend on: the image file's size and SHA-256 (or the synthetic image's seed)."""
    if sample.synthetic is not None:
        return {"name": sample.name, "synthetic": sample.synthetic}
    try:
        size, sha256 = file_sha256(sample.path)
    except OSError as exc:  # unreadable now: recorded as such, so that a readable file later counts as a change
        return {"name": sample.name, "unreadable": exc.strerror or str(exc)}
    return {"name": sample.name, "bytes": size, "sha256": sha256}


def changed(samples: list[Sample], stored: Any) -> list[str]:
    """The names of `samples` whose fingerprint differs from `stored` (a list of fingerprints in the same order)."""
    if not isinstance(stored, list) or len(stored) != len(samples):
        return [s.name for s in samples]
    return [s.name for s, seen in zip(samples, stored, strict=True) if fingerprint(s) != seen]


def version_changes(old: Any, new: Mapping[str, Any]) -> list[str]:
    """'name: package old -> new' for every version that differs (`old` as read from a file: any shape)."""
    old = old if isinstance(old, dict) else {}
    out = []
    for name in sorted(set(old) | set(new)):
        before = old.get(name) if isinstance(old.get(name), dict) else {}
        after = new.get(name) if isinstance(new.get(name), dict) else {}
        for package in sorted(set(before) | set(after)):
            if before.get(package) != after.get(package):
                out.append(f"{name}: {package} {before.get(package, 'none')} -> {after.get(package, 'none')}")
    return out[:12] or ["versions not recorded"]
