"""What the harness runs: native Paddle (the reference) and the runtimes, behind one small `Runner` protocol.

A runner has a `name`, `preprocess_config` (what its inputs must be),
`logits(batch)`, `describe()` and `close()`. `runtimes`' predictors fit it
through `PredictorRunner`, which adds the model file's hash. `ModelSource`
says which model: a preset (with architecture overrides and weights) for the
eager reference, and the exported files the runtimes load. A file that is
not given is exported from the same preset and weights into `work_dir`; a
given file must say (in its metadata) it was made from the same weights.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from lvvit.metadata import ModelMetadata
from lvvit.presets import ArchConfig, PreprocessConfig, Preset, get_preset

from .errors import ModelSourceError

REFERENCE = "paddle"  # native Paddle, eager: what every other runtime is measured against
RUNTIMES = {
    "paddle": "native Paddle, eager (the reference)",
    "ort": "ONNX Runtime on the exported .onnx",
    "openvino": "OpenVINO on the exported .onnx",
    "paddle-inference": "paddle.inference on the exported Paddle inference artifact",
}

Log = Callable[[str], None]


@runtime_checkable
class Runner(Protocol):
    name: str

    @property
    def preprocess_config(self) -> PreprocessConfig: ...

    def logits(self, batch: np.ndarray) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class PredictorRunner:
    """A `runtimes` predictor as a runner; `files` are hashed into `describe()`."""

    name: str
    predictor: Any
    files: list[Path] = field(default_factory=list)

    @property
    def preprocess_config(self) -> PreprocessConfig:
        return self.predictor.preprocess_config

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.predictor.logits(batch)

    def describe(self) -> dict[str, Any]:
        described = {"name": self.name, **self.predictor.describe()}
        if self.files:
            described["model_files"] = {str(p): file_sha256(p) for p in self.files}
        return described

    def close(self) -> None:
        self.predictor.close()


@dataclass(frozen=True)
class RuntimeOptions:
    """Per-runtime settings, recorded in every report."""

    batch_size: int = 16
    threads: int | None = None
    ort_device: str = "cpu"
    openvino_device: str = "CPU"
    openvino_precision: str = "f32"


@dataclass
class ModelSource:
    """One model: the preset spec for the reference, and where the runtimes' files are (or go)."""

    spec: Preset
    weights: Path | None = None
    checkpoint_key: str | None = None
    seed: int = 0
    onnx: Path | None = None
    paddle_inference: Path | None = None
    work_dir: Path = Path("build/validation")

    def describe(self) -> dict[str, Any]:
        return {
            "preset": self.spec.name,
            "resolution": self.spec.resolution,
            "arch": self.spec.arch.to_kwargs(),
            "weights": str(self.weights) if self.weights else None,
            "weights_sha256": file_sha256(self.weights) if self.weights else None,
            "checkpoint_key": self.checkpoint_key,
            "seed": None if self.weights else self.seed,
            "onnx": str(self.onnx) if self.onnx else None,
            "paddle_inference": str(self.paddle_inference) if self.paddle_inference else None,
        }


def _arch_from_metadata(arch: dict[str, Any]) -> ArchConfig:
    values = dict(arch)
    if values.get("order") is not None:
        values["order"] = tuple(values["order"])
    try:
        return ArchConfig(**values)
    except TypeError as exc:
        raise ModelSourceError(f"the model's metadata has an architecture this kit cannot build ({exc})") from exc


def spec_from_metadata(metadata: ModelMetadata) -> Preset:
    """The preset an exported file was made from: its registered name with the recorded arch and preprocessing."""
    base = get_preset(metadata.preset)
    arch = _arch_from_metadata(metadata.arch) if metadata.arch else base.arch
    return replace(base, arch=arch, preprocess=metadata.preprocess)


def read_file_metadata(path: Path) -> ModelMetadata | None:
    """The kit metadata of an `.onnx` file or a Paddle inference artifact (its `.lvvit.json`)."""
    from runtimes.onnx_file import kit_metadata, read_onnx_file

    if path.suffix == ".onnx":
        found, props = read_onnx_file(path)
        return kit_metadata(props, found)
    from runtimes.paddle_native import find_artifact

    _, _, sidecar = find_artifact(path)
    return ModelMetadata.from_json_file(sidecar) if sidecar.exists() else None


def check_same_model(source: ModelSource, path: Path, metadata: ModelMetadata | None) -> None:
    """A given model file must come from the reference's weights and architecture (by its metadata)."""
    if metadata is None:
        return  # the runtime itself refuses a file without metadata, naming it
    recorded = metadata.weights or {}
    if source.weights is not None:
        expected = file_sha256(source.weights)
        if recorded.get("sha256") != expected:
            made_from = recorded.get("file_name") or recorded.get("source", "unknown weights")
            raise ModelSourceError(
                f"{path}: was exported from {made_from} (sha256 {recorded.get('sha256')}), not from "
                f"{source.weights} (sha256 {expected}); compare files of the same weights"
            )
    elif recorded.get("source") != "random-init" or recorded.get("seed") != source.seed:
        raise ModelSourceError(
            f"{path}: holds {recorded.get('file_name') or recorded}, but the reference is a random initialisation "
            f"(seed {source.seed}); pass --weights"
        )
    if metadata.arch and _arch_from_metadata(metadata.arch) != source.spec.arch:
        raise ModelSourceError(
            f"{path}: architecture {metadata.arch} differs from the reference's {source.spec.arch.to_kwargs()}"
        )
    if metadata.preprocess.input_size != source.spec.resolution:
        raise ModelSourceError(
            f"{path}: takes {metadata.resolution}px inputs, the reference {source.spec.resolution}px"
        )


def check_given_files(source: ModelSource) -> None:
    """The exported files given by the user must match the reference (checked before anything is built)."""
    for path in (source.onnx, source.paddle_inference):
        if path is not None:
            check_same_model(source, path, read_file_metadata(path))


def ensure_onnx(source: ModelSource, log: Log) -> Path:
    if source.onnx is not None:
        return source.onnx
    from exporters.onnx import export_onnx

    log(f"exporting {source.spec.name} to ONNX in {source.work_dir}")
    result = export_onnx(
        source.spec,  # a Preset object: its overrides and preprocessing go into the file's metadata
        weights=source.weights,
        checkpoint_key=source.checkpoint_key,
        seed=source.seed,
        output=source.work_dir / f"{_stem(source.spec)}.onnx",
        log=log,
    )
    source.onnx = result.path
    return result.path


def ensure_paddle_inference(source: ModelSource, log: Log) -> Path:
    if source.paddle_inference is not None:
        return source.paddle_inference
    from exporters.onnx import export_paddle_inference

    log(f"saving {source.spec.name} as a Paddle inference artifact in {source.work_dir}")
    result = export_paddle_inference(
        source.spec,
        weights=source.weights,
        checkpoint_key=source.checkpoint_key,
        seed=source.seed,
        output=source.work_dir / f"{_stem(source.spec)}.pdiparams",
        log=log,
    )
    source.paddle_inference = result.path
    return result.path


def _stem(spec: Preset) -> str:
    return f"{spec.name}_{spec.resolution}"


def _paddle_artifact_files(path: Path) -> list[Path]:
    from runtimes.paddle_native import find_artifact

    program, params, _ = find_artifact(path)
    return [program, params]


def build_reference(source: ModelSource, options: RuntimeOptions) -> Runner:
    from lvvit import create_model
    from runtimes import PaddlePredictor

    model = create_model(source.spec, weights=source.weights, checkpoint_key=source.checkpoint_key, seed=source.seed)
    return PredictorRunner(REFERENCE, PaddlePredictor.from_model(model, batch_size=options.batch_size))


def build_runner(name: str, source: ModelSource, options: RuntimeOptions, log: Log) -> Runner:
    """The runner called `name` (see `RUNTIMES`), exporting its model file first when none was given."""
    if name == "ort":
        from runtimes import OrtPredictor

        path = ensure_onnx(source, log)
        predictor = OrtPredictor(
            path, device=options.ort_device, threads=options.threads, batch_size=options.batch_size
        )
        return PredictorRunner(name, predictor, [path])
    if name == "openvino":
        from runtimes import OpenVinoPredictor

        path = ensure_onnx(source, log)
        predictor = OpenVinoPredictor(
            path,
            precision=options.openvino_precision,
            device=options.openvino_device,
            threads=options.threads,
            batch_size=options.batch_size,
        )
        return PredictorRunner(name, predictor, [path])
    if name == "paddle-inference":
        from runtimes import PaddlePredictor

        path = ensure_paddle_inference(source, log)
        predictor = PaddlePredictor(path, threads=options.threads, batch_size=options.batch_size)
        return PredictorRunner(name, predictor, _paddle_artifact_files(path))
    if name == REFERENCE:
        return build_reference(source, options)
    raise ModelSourceError(f"unknown runtime {name!r}; valid: {', '.join(RUNTIMES)}")


def build_runners(
    names: Sequence[str], source: ModelSource, options: RuntimeOptions, log: Log
) -> tuple[Runner, list[Runner]]:
    """(the Paddle reference, the other runtimes in the order asked); their preprocessing must be the reference's."""
    unknown = [n for n in names if n not in RUNTIMES]
    if unknown:
        raise ModelSourceError(f"unknown runtime(s) {unknown}; valid: {', '.join(RUNTIMES)}")
    others = list(dict.fromkeys(n for n in names if n != REFERENCE))
    check_given_files(source)
    reference = build_reference(source, options)
    runners: list[Runner] = []
    try:
        for name in others:
            runner = build_runner(name, source, options, log)
            runners.append(runner)
            if runner.preprocess_config != reference.preprocess_config:
                raise ModelSourceError(
                    f"{name}: its model preprocesses as {runner.preprocess_config.to_dict()}, the reference as "
                    f"{reference.preprocess_config.to_dict()}; the same inputs cannot feed both"
                )
    except BaseException:
        for runner in [reference, *runners]:
            runner.close()
        raise
    return reference, runners
