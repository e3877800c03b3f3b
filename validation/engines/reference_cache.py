"""A stored reference: native Paddle's logits for a data set, computed once, reused by every runtime's drift/accuracy.

    python -m validation reference --images DATA --preset lvvit_s --weights W --cache CACHE
    python -m validation drift --images DATA --onnx lvvit_s.onnx --weights W --reference-cache CACHE
    python -m validation accuracy --images DATA --onnx lvvit_s.onnx --weights W --reference-cache CACHE

The cache folder holds `reference.json` (what made the logits: the weights'
SHA-256, the preset, resolution, architecture, preprocessing, kit version, and
the versions Paddle ran with) and, per shard of images, `logits-NNNNN.npy`
(float32 [images, classes]) and `images-NNNNN.json` (each image's name, size
and SHA-256, and the logits file's SHA-256). Every JSON file carries a checksum
of its content (`validation.core.stored`). It is built in shards, so an interrupted
`reference` run resumes; a stored shard whose images are not this data set's
(another `--limit`, images changed on disk) or that was made under other
versions is computed again, with a word on the console. A run that asks for a
reference with other weights or preprocessing is refused, and the message names
every field that differs; an image that is not in the cache, or whose size or
content changed, is refused too, as are logits that were edited or hold NaN.
Image names are compared normalised (`./val/x.png` is `val/x.png`).
"""

from __future__ import annotations

import json
import posixpath
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lvvit.common.atomic import atomic_output, sweep_leftovers
from lvvit.common.versions import KIT_DISTRIBUTION, package_version, tool_versions
from lvvit.presets import PreprocessConfig
from validation.core.data import Sample
from validation.core.runners import REFERENCE, ModelSource
from validation.core.stored import (
    changed,
    file_sha256,
    fingerprint,
    parse_json,
    read_bounded,
    say,
    sealed,
    unsealed,
    version_changes,
)
from validation.engines.shards import MAX_SHARD_FILE_BYTES, Engine, ShardLogits, describe_engine, shard_ranges
from validation.errors import ValidationError

KEY_FILE = "reference.json"
MAX_KEY_BYTES = 1 << 20
VERSIONS = "versions"  # recorded with the logits; a cache made under other versions is still used, and says so


class ReferenceCacheError(ValidationError, ValueError):
    """A reference cache made by other weights, preprocessing or kit version, or one that is not whole."""


def reference_key(source: ModelSource) -> dict[str, Any]:
    """What the cached logits depend on; a cache is used only where every field but `versions` is equal."""
    described = source.describe()
    return {
        "weights_tensors_sha256": described["weights_tensors_sha256"],  # the weights by their tensors, not file
        "checkpoint_key": described["checkpoint_key"],
        "seed": described["seed"],
        "preset": described["preset"],
        "resolution": described["resolution"],
        "arch": described["arch"],
        "preprocess": source.spec.preprocess.to_dict(),
        "kit_version": package_version(KIT_DISTRIBUTION),
        VERSIONS: {REFERENCE: tool_versions("paddlepaddle", "numpy", "pillow")},
    }


def _differences(stored: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    return [
        f"{name}: cache {stored.get(name)!r}, this run {expected.get(name)!r}"
        for name in sorted(set(stored) | set(expected))
        if stored.get(name) != expected.get(name) and name != VERSIONS
    ]


def image_name(name: str) -> str:
    """The name an image is cached under: `./val/x.png` and `val//x.png` are `val/x.png`."""
    return posixpath.normpath(name)


@dataclass
class ReferenceCache:
    folder: Path
    key: dict[str, Any]
    classes: int
    log: Callable[[str], None] = field(default=say, repr=False)
    _index: tuple[dict[str, tuple[int, int, dict[str, Any]]], list[Any]] | None = field(
        default=None, init=False, repr=False
    )

    # -- making one ---------------------------------------------------------------------------------------------------

    @classmethod
    def create(cls, folder: str | Path, key: Mapping[str, Any], classes: int) -> ReferenceCache:
        """A new cache folder, or the one already there when it was made for the same `key` (to resume it).

        One made for the same key under other versions is emptied and made again, with a word on the console.
        """
        folder = Path(folder)
        key = parse_json(json_text(dict(key)), folder / KEY_FILE, ReferenceCacheError)
        if (folder / KEY_FILE).is_file():
            cache = cls.open(folder, key)
            if cache.key.get(VERSIONS) == key[VERSIONS] and cache.classes == classes:
                return cache
            old = sorted(folder.glob("logits-*.npy"))
            cache.log(
                f"{folder}: its {len(old)} stored shard(s) were computed under other versions "
                f"({'; '.join(version_changes(cache.key.get(VERSIONS), key[VERSIONS]))}); computing them again"
            )
            for path in old:
                path.unlink()
        with atomic_output(folder / KEY_FILE) as tmp:
            tmp.write_text(json_text(sealed({"key": key, "classes": classes})), encoding="utf-8")
        return cls(folder, key, classes)

    def build(self, samples: Sequence[Sample], shard_size: int, engine: Engine, progress: bool = False) -> int:
        """Compute the shards not yet stored with `engine` (running the reference); returns how many it computed.

        A stored shard of other images (another --limit or shard size, images changed on disk) is computed again.
        `progress`: a bar of the images on stderr.
        """
        from tqdm import tqdm

        ranges = shard_ranges(len(samples), shard_size)
        pending = [(i, list(samples[a:b])) for i, (a, b) in enumerate(ranges) if not self._current(i, samples[a:b])]
        todo = sum(len(s) for _, s in pending)
        with tqdm(total=todo, unit="img", desc="reference", file=sys.stderr, disable=not progress, leave=False) as bar:
            for shard in engine(pending):
                self._save(shard, dict(pending)[shard.index])
                bar.update(len(dict(pending)[shard.index]))
        self._index = None
        return len(pending)

    def _current(self, index: int, samples: Sequence[Sample]) -> bool:
        """Whether shard `index` is stored, whole, and made from exactly these images as they are now."""
        if not self._logits(index).is_file():
            return False
        images, _ = self._read_shard(index)
        stale = changed(list(samples), images.get("inputs"))
        if stale:
            self.log(
                f"{self._images(index)}: {len(stale)} image(s) differ from the ones it was computed from "
                f"({', '.join(stale[:5])}); computing it again"
            )
        return not stale

    def versions(self) -> dict[str, Any]:
        """The versions native Paddle ran with when it computed the cached logits."""
        versions = self.key.get(VERSIONS)
        recorded = versions.get(REFERENCE) if isinstance(versions, dict) else None
        return recorded if isinstance(recorded, dict) else {}

    def _logits(self, index: int) -> Path:
        return self.folder / f"logits-{index:05d}.npy"

    def _images(self, index: int) -> Path:
        return self.folder / f"images-{index:05d}.json"

    def _save(self, shard: ShardLogits, inputs: list[Sample]) -> None:
        logits = shard.logits[REFERENCE].astype(np.float32) if shard.samples else np.zeros((0, self.classes), "f4")
        bad = int((~np.isfinite(logits)).sum())
        if bad:
            raise ReferenceCacheError(f"shard {shard.index}: native Paddle gave {bad} NaN or infinite logit(s)")
        with atomic_output(self._logits(shard.index)) as tmp, open(tmp, "wb") as out:
            np.save(out, logits, allow_pickle=False)
            out.flush()
            _, digest = file_sha256(tmp)
            body = {
                "images": [{**fingerprint(s), "name": image_name(s.name)} for s in shard.samples],
                "unreadable": [vars(f) for f in shard.failures],
                "inputs": [fingerprint(s) for s in inputs],
                "logits_sha256": digest,
            }
            with atomic_output(self._images(shard.index)) as images:
                images.write_text(json_text(sealed(body)), encoding="utf-8")
        # the logits are renamed last: their presence marks the shard done

    # -- using one ----------------------------------------------------------------------------------------------------

    @classmethod
    def open(cls, folder: str | Path, expected: Mapping[str, Any]) -> ReferenceCache:
        """The cache in `folder`, if it was made for `expected` (see `reference_key`); else the differences, named."""
        folder = Path(folder)
        path = folder / KEY_FILE
        if folder.is_dir():
            sweep_leftovers(folder)
        stored = unsealed(
            parse_json(read_bounded(path, MAX_KEY_BYTES, ReferenceCacheError), path, ReferenceCacheError),
            path,
            ReferenceCacheError,
        )
        key, classes = stored.get("key"), stored.get("classes")
        if not isinstance(key, dict) or isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
            raise ReferenceCacheError(f"{path}: not a reference cache (no key, or no number of classes)")
        differs = _differences(key, parse_json(json_text(dict(expected)), path, ReferenceCacheError))
        if differs:
            raise ReferenceCacheError(
                f"{folder}: the cached reference was made by another model or preprocessing; it differs in "
                + "; ".join(differs)
            )
        return cls(folder, key, classes)

    def _read_shard(self, index: int) -> tuple[dict[str, Any], np.ndarray]:
        """(the images file's content, the logits) of stored shard `index`, both checked; else the file, named."""
        images_path, logits_path = self._images(index), self._logits(index)
        raw = parse_json(read_bounded(images_path, MAX_SHARD_FILE_BYTES, ReferenceCacheError), images_path,
                         ReferenceCacheError)  # fmt: skip
        images = unsealed(raw, images_path, ReferenceCacheError)
        if not isinstance(images.get("images"), list) or not isinstance(images.get("inputs"), list):
            raise ReferenceCacheError(f"{images_path}: not a list of cached images")
        try:
            size, digest = file_sha256(logits_path)
            if size > MAX_SHARD_FILE_BYTES:
                raise ReferenceCacheError(f"{logits_path}: {size} bytes, over {MAX_SHARD_FILE_BYTES}")
            if digest != images.get("logits_sha256"):
                raise ReferenceCacheError(
                    f"{logits_path}: its SHA-256 is not the one {images_path.name} recorded: the logits were "
                    "edited or damaged after they were written"
                )
            logits = np.load(logits_path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise ReferenceCacheError(f"{logits_path}: unreadable logits ({type(exc).__name__}: {exc})") from None
        if logits.dtype != np.float32 or logits.shape != (len(images["images"]), self.classes):
            raise ReferenceCacheError(
                f"{logits_path}: logits {logits.dtype} {list(logits.shape)}, expected float32 "
                f"[{len(images['images'])}, {self.classes}]"
            )
        bad = int((~np.isfinite(logits)).sum())
        if bad:
            raise ReferenceCacheError(f"{logits_path}: holds {bad} NaN or infinite logit(s); build the cache again")
        return images, logits

    def _shards(self) -> Iterator[tuple[list[dict[str, Any]], np.ndarray]]:
        index = 0
        while self._logits(index).is_file():
            images, logits = self._read_shard(index)
            yield images["images"], logits
            index += 1

    def lookup(self, samples: Sequence[Sample]) -> np.ndarray:
        """The cached logits of `samples`, in order; every image must be in the cache with the same content."""
        if self._index is None:  # read once: every shard of a run looks its images up here
            shards = list(self._shards())
            try:
                where = {
                    image_name(str(image["name"])): (s, row, image)
                    for s, (images, _) in enumerate(shards)
                    for row, image in enumerate(images)
                }
            except (KeyError, TypeError, ValueError) as exc:
                raise ReferenceCacheError(f"{self.folder}: a list of cached images is malformed ({exc!r})") from None
            self._index = (where, shards)
        where, shards = self._index
        missing = [x.name for x in samples if image_name(x.name) not in where]
        if missing:
            raise ReferenceCacheError(
                f"{self.folder}: {len(missing)} image(s) are not in the cached reference ({missing[:5]}); "
                "build it over this data set with python -m validation reference"
            )
        out = np.empty((len(samples), self.classes), dtype=np.float32)
        for i, sample in enumerate(samples):
            s, row, seen = where[image_name(sample.name)]
            now = {**fingerprint(sample), "name": image_name(sample.name)}
            if now != seen:
                what = f"{now.get('bytes')} bytes, sha256 {str(now.get('sha256'))[:16]}…"
                cached = f"{seen.get('bytes')} bytes, sha256 {str(seen.get('sha256'))[:16]}…"
                raise ReferenceCacheError(
                    f"{sample.path}: {what} now; the cached reference saw {cached} (the image changed since "
                    "python -m validation reference ran: build the cache again)"
                )
            out[i] = shards[s][1][row]
        return out


def json_text(value: Any) -> str:
    return json.dumps(value, indent=1, allow_nan=False)


@dataclass
class CachedReference:
    """The reference participant of a run that reads the cache instead of running Paddle."""

    cache: ReferenceCache
    preprocess_config: PreprocessConfig
    name: str = REFERENCE

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "cached": str(self.cache.folder),
            "key": self.cache.key,
            "output": {"num_classes": self.cache.classes},
            "versions": self.cache.versions(),  # what computed the cached logits, not what is installed now
        }


@dataclass
class WithCachedReference:
    """An engine for the runtimes, with the reference's logits added to each shard from the cache."""

    inner: Engine
    cache: ReferenceCache

    def __call__(self, pending: Sequence[tuple[int, list[Sample]]]) -> Iterator[ShardLogits]:
        for shard in self.inner(pending):
            shard.logits[REFERENCE] = self.cache.lookup(shard.samples) if shard.samples else np.zeros((0, 0), "f4")
            shard.seconds[REFERENCE] = 0.0
            yield shard

    def describe(self) -> dict[str, Any]:
        paddle = self.cache.versions().get("paddlepaddle", "unknown")
        return {**describe_engine(self.inner), "reference": f"cached in {self.cache.folder} (paddlepaddle {paddle})"}
