"""Predictor specs: a small, picklable description of a predictor, opened where it runs.

Following Polygraphy's loader/runner split, making a spec (on the driver: hash the
files, record the options) is apart from opening it (on a worker: check the files,
build the session). A spec names its model files by name, size and SHA-256, never by
a path only the driver can see: `read_files()` gives their bytes to ship (through
Ray's object store, for instance), `materialize()` writes shipped bytes into a
worker's own folder after checking every hash, and `open()` re-checks the hashes of
the files it is about to load.

A spec travels between machines, so it may come from a stranger: its file names
must be bare names (no folder, no `..`, nothing absolute), checked when it is
made, when its bytes are read and when they are written, and a spec that is
not what this module makes (a pickle from elsewhere) gets `ConfigurationError`
or `ModelFileError` naming the field, never an IndexError or a file outside
the worker's folder.

    spec = PredictorSpec.for_model("ort", "lvvit_s.onnx", threads=1, batch_size=8)
    with spec.open() as predictor:
        predictor.logits(batch)

Also here: `read_model_metadata`, the public way to read the kit metadata of an
`.onnx` file or a Paddle inference artifact, and `RUNTIMES`, the runtime names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lvvit.common.provenance import sha256_of
from lvvit.metadata import ModelMetadata
from lvvit.presets import Preset

from . import registry
from .base import Predictor
from .errors import ConfigurationError, ModelFileError
from .registry import REFERENCE, RUNTIMES  # noqa: F401 (RUNTIMES: public here since before the registry)


def read_model_metadata(path: str | Path) -> ModelMetadata | None:
    """The kit metadata of an `.onnx` file or a Paddle inference artifact (its `.lvvit.json`); None without any.

    `ModelFileError` for a file that is not a model, `MetadataError` for metadata that is there but unreadable.
    """
    path = Path(path)
    if path.suffix == ".onnx":
        from .onnx_file import kit_metadata, read_onnx_file

        found, props = read_onnx_file(path)
        return kit_metadata(props, found)
    from .paddle_native import find_artifact, read_sidecar

    return read_sidecar(find_artifact(path)[2])


def model_files(runtime: str, path: str | Path) -> list[Path]:
    """The files a runtime loads for the model at `path`, the one to open first (see `registry.model_files`)."""
    return registry.model_files(runtime, path)


@dataclass(frozen=True)
class ModelFile:
    name: str  # the file's name in its folder (workers recreate the same names)
    size: int
    sha256: str


_SHA256 = re.compile(r"[0-9a-f]{64}")


def bare_name(name: object) -> str:
    """`name` if it names a file inside a folder (no separator, not `.`/`..`, no NUL); else `ModelFileError`."""
    if not isinstance(name, str) or name in ("", ".", "..") or len(name) > 255 or any(c in name for c in "/\\\0"):
        raise ModelFileError(
            f"{str(name)[:200]!r}: a spec's file names must be bare file names (no folder, no '..', not absolute)"
        )
    return name


def _check_file(file: object) -> None:
    if not isinstance(file, ModelFile):
        raise ConfigurationError(f"a spec's files must be ModelFile entries, got {type(file).__name__}")
    bare_name(file.name)
    if isinstance(file.size, bool) or not isinstance(file.size, int) or file.size < 0:
        raise ConfigurationError(f"{file.name}: size {str(file.size)[:40]} is not a number of bytes")
    if not isinstance(file.sha256, str) or not _SHA256.fullmatch(file.sha256):
        raise ConfigurationError(f"{file.name}: sha256 {str(file.sha256)[:80]!r} is not a hex SHA-256")


@dataclass(frozen=True)
class PredictorSpec:
    """Runtime, model files (name, size, SHA-256), options; `open()` builds the predictor.

    `preset` is set for the eager Paddle model only (its architecture and preprocessing);
    its one file, when there is one, is the weights file.
    """

    runtime: str
    files: tuple[ModelFile, ...]
    options: tuple[tuple[str, Any], ...] = ()
    folder: str | None = None  # where the files are on the machine that holds them now
    preset: Preset | None = None

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """`ConfigurationError` or `ModelFileError` for a spec this module would not make (one from elsewhere)."""
        row = registry.get(self.runtime)
        if not isinstance(self.files, tuple):
            raise ConfigurationError(f"a spec's files must be a tuple, got {type(self.files).__name__}")
        for file in self.files:
            _check_file(file)
        if row.model_kind is not None and not self.files:
            raise ConfigurationError(f"this {self.runtime} spec names no model file")
        if row.model_kind is None and not isinstance(self.preset, Preset):
            raise ConfigurationError(f"an eager {self.runtime} spec needs its preset")
        if not isinstance(self.options, tuple) or not all(
            isinstance(o, tuple) and len(o) == 2 and isinstance(o[0], str) for o in self.options
        ):
            raise ConfigurationError(f"a spec's options must be (name, value) pairs, got {str(self.options)[:200]}")
        if self.folder is not None and not isinstance(self.folder, str):
            raise ConfigurationError(f"a spec's folder must be a path, got {type(self.folder).__name__}")

    @classmethod
    def for_model(cls, runtime: str, path: str | Path, **options: Any) -> PredictorSpec:
        """A spec for an exported model (`runtime`: a registered runtime that loads a model file)."""
        files = model_files(runtime, path)
        described = tuple(ModelFile(f.name, f.stat().st_size, sha256_of(f)) for f in files)
        return cls(runtime, described, tuple(sorted(options.items())), str(files[0].parent))

    @classmethod
    def eager(
        cls, preset: Preset, weights: str | Path | None = None, *, runtime: str = REFERENCE, **options: Any
    ) -> PredictorSpec:
        """The eager model of `preset` with `weights` (or a random initialisation: `seed` in options), on
        `runtime` (one without a model file: native Paddle)."""
        files: tuple[ModelFile, ...] = ()
        folder = None
        if weights is not None:
            path = Path(weights)
            files = (ModelFile(path.name, path.stat().st_size, sha256_of(path)),)
            folder = str(path.parent)
        return cls(runtime, files, tuple(sorted(options.items())), folder, preset)

    @property
    def option_dict(self) -> dict[str, Any]:
        return dict(self.options)

    def describe(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "files": [vars(f) for f in self.files],
            "options": self.option_dict,
            "preset": None
            if self.preset is None
            else {
                "name": self.preset.name,
                "resolution": self.preset.resolution,
                "arch": self.preset.arch.to_kwargs(),
                "preprocess": self.preset.preprocess.to_dict(),
            },
        }

    def _path(self, file: ModelFile) -> Path:
        bare_name(file.name)
        if self.folder is None:
            raise ModelFileError(f"{file.name}: this {self.runtime} spec has no folder to read it from")
        return Path(self.folder) / file.name

    def check_files(self) -> None:
        """Every file is where the spec says, with its size and SHA-256; `ModelFileError` naming what differs."""
        self.check()
        for file in self.files:
            path = self._path(file)
            if not path.is_file():
                raise ModelFileError(f"{path}: missing on this machine (the {self.runtime} spec needs it)")
            size = path.stat().st_size
            digest = sha256_of(path) if size == file.size else None
            if digest != file.sha256:
                raise ModelFileError(
                    f"{path}: {size} bytes, sha256 {digest or 'not computed'}; the spec was made for {file.size} "
                    f"bytes, sha256 {file.sha256} (the file changed after the spec was made)"
                )

    def read_files(self) -> dict[str, bytes]:
        """The files' bytes by name, each checked against its SHA-256: what travels to a worker."""
        self.check_files()
        return {f.name: self._path(f).read_bytes() for f in self.files}

    def materialize(self, blobs: Mapping[str, bytes], folder: str | Path) -> PredictorSpec:
        """Write shipped `blobs` into `folder` after checking each against the spec; the spec that opens them."""
        import hashlib

        from lvvit.common.atomic import atomic_output

        self.check()
        folder = Path(folder)
        for file in self.files:
            blob = blobs.get(bare_name(file.name))
            if not isinstance(blob, bytes):
                raise ModelFileError(f"{file.name}: not among the shipped files ({sorted(map(str, blobs))[:10]})")
            digest = hashlib.sha256(blob).hexdigest()
            if digest != file.sha256:
                raise ModelFileError(
                    f"{file.name}: the shipped bytes hash to {digest}, the spec says {file.sha256} ({len(blob)} bytes)"
                )
            with atomic_output(folder / file.name) as tmp:
                tmp.write_bytes(blob)
        return replace(self, folder=str(folder))

    def open(self) -> Predictor:
        """Check the files, then build the predictor (this is where the runtime is imported)."""
        self.check_files()
        row = registry.get(self.runtime)
        predictor = row.predictor_class()
        if row.model_kind is None:  # the eager model: from its preset, with the weights file when there is one
            if self.preset is None:
                raise ConfigurationError(f"an eager {self.runtime} spec needs its preset")
            weights = self._path(self.files[0]) if self.files else None
            return predictor.from_preset(self.preset, weights, **self.option_dict)
        return predictor(self._path(self.files[0]), **self.option_dict)
