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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from lvvit.common.progress import Log
from lvvit.common.provenance import RANDOM_INIT, sha256_of
from lvvit.metadata import ModelMetadata
from lvvit.presets import ArchConfig, PreprocessConfig, Preset, get_preset
from lvvit.weights.state_dict import weights_identity
from runtimes import registry
from runtimes.spec import REFERENCE, RUNTIMES, PredictorSpec, read_model_metadata
from validation.errors import ModelSourceError


@runtime_checkable
class Participant(Protocol):
    """A runtime as a report sees it: its name, its inputs, its description (an opened runner or a spec)."""

    name: str

    @property
    def preprocess_config(self) -> PreprocessConfig: ...

    def describe(self) -> dict[str, Any]: ...


def num_classes_of(participant: Participant) -> int:
    """The number of classes the model says it has (in `describe()["output"]`)."""
    classes = participant.describe().get("output", {}).get("num_classes")
    if not isinstance(classes, int) or classes < 1:
        raise ModelSourceError(f"the {participant.name} model does not say how many classes it has ({classes!r})")
    return classes


@runtime_checkable
class Runner(Participant, Protocol):
    def logits(self, batch: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...


@dataclass
class PredictorRunner:
    """A predictor opened from its spec, as a runner; `describe()` records the spec's files and their hashes."""

    name: str
    predictor: Any
    spec: PredictorSpec

    @classmethod
    def open(cls, name: str, spec: PredictorSpec) -> PredictorRunner:
        return cls(name, spec.open(), spec)

    @property
    def preprocess_config(self) -> PreprocessConfig:
        return self.predictor.preprocess_config

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.predictor.logits(batch)

    def describe(self) -> dict[str, Any]:
        files = {str(Path(self.spec.folder or ".") / f.name): f.sha256 for f in self.spec.files}
        return {"name": self.name, **self.predictor.describe(), "model_files": files, "spec": self.spec.describe()}

    def close(self) -> None:
        self.predictor.close()


@dataclass(frozen=True)
class RuntimeOptions:
    """Settings of every runtime (batch size, threads), and each runtime's own options (`runtimes.registry` rows:
    runtime name -> option -> value; an option not given takes its row's default). Recorded in every report."""

    batch_size: int = 16
    threads: int | None = None
    own: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def of(self, name: str) -> dict[str, Any]:
        """Runtime `name`'s own options: its row's defaults, with those given here over them."""
        return {**registry.get(name).defaults(), **self.own.get(name, {})}


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
            "weights_sha256": sha256_of(self.weights) if self.weights else None,  # provenance: the file
            "weights_tensors_sha256": weights_identity(self.weights, self.checkpoint_key) if self.weights else None,
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


def check_same_model(source: ModelSource, path: Path, metadata: ModelMetadata | None) -> None:
    """A given model file must come from the reference's weights and architecture (by its metadata)."""
    if metadata is None:
        return  # the runtime itself refuses a file without metadata, naming it
    recorded = metadata.weights or {}
    if source.weights is not None:
        # the same weights are the same tensors, whatever file holds them (.pth.tar, converted .pdparams)
        made_from = recorded.get("file_name") or recorded.get("source", "unknown weights")
        expected = weights_identity(source.weights, source.checkpoint_key)
        if recorded.get("tensors_sha256") is None:  # exported before tensor identities: only the file can compare
            if recorded.get("sha256") != sha256_of(source.weights):
                raise ModelSourceError(
                    f"{path}: was exported from {made_from} (sha256 {recorded.get('sha256')}), not from "
                    f"{source.weights} (sha256 {sha256_of(source.weights)}), and records no tensors_sha256 to "
                    "compare the tensors by; export it again with this kit"
                )
        elif recorded["tensors_sha256"] != expected:
            raise ModelSourceError(
                f"{path}: was exported from {made_from} (sha256 {recorded.get('sha256')}), not from "
                f"{source.weights} (sha256 {sha256_of(source.weights)}): their tensors differ (tensors_sha256 "
                f"{recorded['tensors_sha256']} vs {expected}); compare files of the same weights"
            )
    elif recorded.get("source") != RANDOM_INIT or recorded.get("seed") != source.seed:
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
            check_same_model(source, path, read_model_metadata(path))


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


# a runtime's model-file kind (`runtimes.registry.MODEL_KINDS`) -> the file of `source`, exported when not given
MODEL_FILES = {"onnx": ensure_onnx, "paddle-inference": ensure_paddle_inference}


def _stem(spec: Preset) -> str:
    return f"{spec.name}_{spec.resolution}"


def runner_spec(name: str, source: ModelSource, options: RuntimeOptions, log: Log) -> PredictorSpec:
    """The spec of the runner called `name` (a `runtimes.registry` row), exporting its model file first when none
    was given."""
    row = registry.get(name)
    if row.model_kind is None:  # the eager model: the preset and its weights, no file
        return PredictorSpec.eager(
            source.spec,
            source.weights,
            runtime=name,
            checkpoint_key=source.checkpoint_key,
            seed=source.seed,
            batch_size=options.batch_size,
        )
    path = MODEL_FILES[row.model_kind](source, log)
    return PredictorSpec.for_model(
        name, path, threads=options.threads, batch_size=options.batch_size, **options.of(name)
    )


def runner_specs(
    names: Sequence[str], source: ModelSource, options: RuntimeOptions, log: Log, reference: bool = True
) -> dict[str, PredictorSpec]:
    """The reference's spec first (unless `reference` is False), then the other runtimes' in the order asked.

    Their files are exported when none was given.
    """
    unknown = [n for n in names if n not in RUNTIMES]
    if unknown:
        raise ModelSourceError(f"unknown runtime(s) {unknown}; valid: {', '.join(RUNTIMES)}")
    check_given_files(source)
    others = list(dict.fromkeys(n for n in names if n != REFERENCE))
    names = [REFERENCE, *others] if reference else others
    return {name: runner_spec(name, source, options, log) for name in names}


def open_runners(specs: Mapping[str, PredictorSpec]) -> tuple[Runner, list[Runner]]:
    """(the first spec's runner, the others'); their preprocessing must be the first one's."""
    opened: list[Runner] = []
    try:
        for name, spec in specs.items():
            runner = PredictorRunner.open(name, spec)
            opened.append(runner)
            if runner.preprocess_config != opened[0].preprocess_config:
                raise ModelSourceError(
                    f"{name}: its model preprocesses as {runner.preprocess_config.to_dict()}, the reference as "
                    f"{opened[0].preprocess_config.to_dict()}; the same inputs cannot feed both"
                )
    except BaseException:
        for runner in opened:
            runner.close()
        raise
    return opened[0], opened[1:]


def build_runners(
    names: Sequence[str], source: ModelSource, options: RuntimeOptions, log: Log
) -> tuple[Runner, list[Runner]]:
    """(the Paddle reference, the other runtimes in the order asked); their preprocessing must be the reference's."""
    return open_runners(runner_specs(names, source, options, log))
