"""A stored reference: native Paddle's logits for a data set, computed once, reused by every runtime's drift/accuracy.

    python -m validation reference DATA --preset lvvit_s --weights W --cache CACHE
    python -m validation drift --images DATA --onnx lvvit_s.onnx --weights W --reference-cache CACHE
    python -m validation accuracy DATA --onnx lvvit_s.onnx --weights W --reference-cache CACHE

The cache folder holds `reference.json` (what made the logits: the weights'
SHA-256, the preset, resolution, architecture, preprocessing and kit version)
and, per shard of images, `logits-NNNNN.npy` (float32 [images, classes]) and
`images-NNNNN.json` (each image's name and size in bytes). It is built in
shards, so an interrupted `reference` run resumes. A run that asks for a
reference with other weights or preprocessing is refused, and the message names
every field that differs; an image that is not in the cache, or whose size
changed, is refused too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lvvit.atomic import atomic_output
from lvvit.presets import PreprocessConfig
from lvvit.regular_files import read_regular
from lvvit.versions import KIT_DISTRIBUTION, package_version

from .data import Sample
from .errors import ValidationError
from .runners import REFERENCE, ModelSource
from .shards import MAX_SHARD_FILE_BYTES, Engine, ShardLogits, describe_engine, shard_ranges

KEY_FILE = "reference.json"
MAX_KEY_BYTES = 1 << 20


class ReferenceCacheError(ValidationError, ValueError):
    """A reference cache made by other weights, preprocessing or kit version, or one that is not whole."""


def reference_key(source: ModelSource) -> dict[str, Any]:
    """What the cached logits depend on; a cache is used only where every field is equal."""
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
    }


def _differences(stored: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    return [
        f"{name}: cache {stored.get(name)!r}, this run {expected.get(name)!r}"
        for name in sorted(set(stored) | set(expected))
        if stored.get(name) != expected.get(name)
    ]


@dataclass
class ReferenceCache:
    folder: Path
    key: dict[str, Any]
    classes: int
    _index: tuple[dict[str, tuple[int, int, int]], list[Any]] | None = field(default=None, init=False, repr=False)

    # -- making one ---------------------------------------------------------------------------------------------------

    @classmethod
    def create(cls, folder: str | Path, key: Mapping[str, Any], classes: int) -> ReferenceCache:
        """A new cache folder, or the one already there when it was made for the same `key` (to resume it)."""
        folder = Path(folder)
        key = json.loads(json.dumps(dict(key)))
        if (folder / KEY_FILE).is_file():
            return cls.open(folder, key)
        with atomic_output(folder / KEY_FILE) as tmp:
            tmp.write_text(json.dumps({"key": key, "classes": classes}, indent=1), encoding="utf-8")
        return cls(folder, key, classes)

    def build(self, samples: Sequence[Sample], shard_size: int, engine: Engine) -> int:
        """Compute the shards not yet stored with `engine` (running the reference); returns how many it computed."""
        ranges = shard_ranges(len(samples), shard_size)
        pending = [(i, list(samples[a:b])) for i, (a, b) in enumerate(ranges) if not self._logits(i).is_file()]
        computed = 0
        for shard in engine(pending):
            self._save(shard)
            computed += 1
        return computed

    def _logits(self, index: int) -> Path:
        return self.folder / f"logits-{index:05d}.npy"

    def _images(self, index: int) -> Path:
        return self.folder / f"images-{index:05d}.json"

    def _save(self, shard: ShardLogits) -> None:
        logits = shard.logits[REFERENCE].astype(np.float32) if shard.samples else np.zeros((0, self.classes), "f4")
        images = [{"name": s.name, "bytes": s.path.stat().st_size} for s in shard.samples]
        failures = [vars(f) for f in shard.failures]
        with atomic_output(self._images(shard.index)) as tmp:
            tmp.write_text(json.dumps({"images": images, "unreadable": failures}), encoding="utf-8")
        with atomic_output(self._logits(shard.index)) as tmp, open(tmp, "wb") as out:
            np.save(out, logits, allow_pickle=False)  # written last: its presence marks the shard done

    # -- using one ----------------------------------------------------------------------------------------------------

    @classmethod
    def open(cls, folder: str | Path, expected: Mapping[str, Any]) -> ReferenceCache:
        """The cache in `folder`, if it was made for `expected` (see `reference_key`); else the differences, named."""
        folder = Path(folder)
        path = folder / KEY_FILE
        try:
            stored = json.loads(read_regular(path, MAX_KEY_BYTES).decode("utf-8"))
            key, classes = dict(stored["key"]), int(stored["classes"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ReferenceCacheError(f"{path}: not a reference cache ({type(exc).__name__}: {exc})") from None
        differs = _differences(key, json.loads(json.dumps(dict(expected))))
        if differs:
            raise ReferenceCacheError(
                f"{folder}: the cached reference was made by another model or preprocessing; it differs in "
                + "; ".join(differs)
            )
        return cls(folder, key, classes)

    def _shards(self) -> Iterator[tuple[list[dict[str, Any]], np.ndarray]]:
        index = 0
        while self._logits(index).is_file():
            images_path = self._images(index)
            try:
                images = json.loads(read_regular(images_path, MAX_SHARD_FILE_BYTES).decode("utf-8"))["images"]
                logits = np.load(self._logits(index), mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ReferenceCacheError(f"{images_path}: unreadable shard ({type(exc).__name__}: {exc})") from None
            if logits.dtype != np.float32 or logits.shape != (len(images), self.classes):
                raise ReferenceCacheError(
                    f"{self._logits(index)}: logits {logits.dtype} {list(logits.shape)}, expected float32 "
                    f"[{len(images)}, {self.classes}]"
                )
            yield images, logits
            index += 1

    def lookup(self, samples: Sequence[Sample]) -> np.ndarray:
        """The cached logits of `samples`, in order; every image must be in the cache with the same size."""
        if self._index is None:  # read once: every shard of a run looks its images up here
            shards = list(self._shards())
            try:
                where = {
                    str(image["name"]): (s, row, int(image["bytes"]))
                    for s, (images, _) in enumerate(shards)
                    for row, image in enumerate(images)
                }
            except (KeyError, TypeError, ValueError) as exc:
                raise ReferenceCacheError(f"{self.folder}: a list of cached images is malformed ({exc!r})") from None
            self._index = (where, shards)
        where, shards = self._index
        missing = [x.name for x in samples if x.name not in where]
        if missing:
            raise ReferenceCacheError(
                f"{self.folder}: {len(missing)} image(s) are not in the cached reference ({missing[:5]}); "
                "build it over this data set with python -m validation reference"
            )
        out = np.empty((len(samples), self.classes), dtype=np.float32)
        for i, sample in enumerate(samples):
            s, row, size = where[sample.name]
            if sample.path.is_file() and sample.path.stat().st_size != size:
                raise ReferenceCacheError(
                    f"{sample.path}: {sample.path.stat().st_size} bytes, the cached reference saw {size} bytes"
                )
            out[i] = shards[s][1][row]
        return out


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
        return {**describe_engine(self.inner), "reference": f"cached in {self.cache.folder}"}
