"""`PaddlePredictor`: native Paddle, the reference the other runtimes are validated against.

Two sources:
- `PaddlePredictor(path)`: the Paddle inference artifact of `export_paddle_inference`
  (`<stem>.json` or `.pdmodel`, `<stem>.pdiparams`, `<stem>.lvvit.json` metadata),
  run by `paddle.inference` (oneDNN on the CPU by default). Predictors are not
  thread-safe, so each concurrent caller gets its own clone (shared weights).
- `PaddlePredictor.from_preset(preset, weights)` / `from_model(model)`: the eager
  model (`lvvit.create_model`), the numeric reference; calls are serialised.
Importing this module imports Paddle; `runtimes` itself does not.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from lvvit.common.provenance import weights_provenance
from lvvit.common.versions import package_version
from lvvit.metadata import INPUT_NAME, OUTPUT_NAME, ModelMetadata
from lvvit.presets import PreprocessConfig, Preset

from .base import LabelsArg, Predictor, check_threads_and_streams
from .errors import (
    BackendNotInstalledError,
    ConfigurationError,
    DeviceUnavailableError,
    ModelFileError,
    PredictorClosedError,
)
from .model_info import ModelInfo, build_model_info
from .pool import Pool

DEVICES = ("cpu", "gpu")
_PROGRAM_SUFFIXES = (".json", ".pdmodel")
_ARTIFACT_SUFFIXES = (".lvvit.json", *_PROGRAM_SUFFIXES, ".pdiparams")  # the longest suffix first


def _import_paddle() -> Any:
    try:
        import paddle
    except ImportError as exc:
        raise BackendNotInstalledError(f"PaddlePredictor needs Paddle: pip install paddlepaddle ({exc})") from exc
    return paddle


def find_artifact(model_path: str | Path) -> tuple[Path, Path, Path]:
    """(program, params, metadata sidecar) for a path to any of the artifact's files, its stem, or its folder."""
    path = Path(model_path)
    if path.is_dir():
        params = sorted(path.glob("*.pdiparams"))
        if len(params) != 1:
            found = ", ".join(p.name for p in params) or "none"
            raise ModelFileError(f"{path}: expected one .pdiparams file in the folder, found {found}; give its path")
        path = params[0]
    stem = path.name
    for suffix in _ARTIFACT_SUFFIXES:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    base = path.with_name(stem)
    params = base.with_name(stem + ".pdiparams")
    programs = [base.with_name(stem + s) for s in _PROGRAM_SUFFIXES if base.with_name(stem + s).is_file()]
    if not programs or not params.is_file():
        raise ModelFileError(
            f"{base}: no Paddle inference artifact (looked for {stem}.json or {stem}.pdmodel, and {stem}.pdiparams "
            f"in {base.parent}); write one with exporters.onnx.export_paddle_inference"
        )
    for file in (programs[0], params):
        if file.stat().st_size == 0:
            raise ModelFileError(f"{file}: empty file (0 bytes)")
    return programs[0], params, base.with_name(stem + ".lvvit.json")


def read_sidecar(sidecar: Path) -> ModelMetadata | None:
    return ModelMetadata.from_json_file(sidecar) if sidecar.exists() else None


class PaddlePredictor(Predictor):
    """Native Paddle predictor: `paddle.inference` over an exported artifact, or the eager model.

    Args (artifact):
        model_path: `<stem>.json`/`.pdmodel`/`.pdiparams`, the stem, or a folder holding one artifact.
        device: "cpu", or "gpu" (needs a CUDA build of Paddle and a GPU; never falls back).
        threads: CPU math threads (None: Paddle's default).
        onednn: use oneDNN kernels on the CPU (Paddle's fast CPU path).
        ir_optim: Paddle's graph optimisation passes (fusions).
        streams: CPU only: run a batch as N parts at once on N predictor clones, each with threads/N
            math threads (default 1). A batch of fewer than N images runs whole on a second predictor
            with all the threads (one more copy of the weights in memory).
        batch_size, preset, resolution, preprocess, labels: as for every predictor.
    """

    runtime = "paddle"

    def __init__(
        self,
        model_path: str | Path,
        device: str = "cpu",
        threads: int | None = None,
        *,
        onednn: bool = True,
        ir_optim: bool = True,
        streams: int = 1,
        batch_size: int | None = None,
        preset: str | None = None,
        resolution: int | None = None,
        preprocess: PreprocessConfig | None = None,
        labels: LabelsArg = None,
        device_id: int = 0,
    ) -> None:
        if device not in DEVICES:
            raise ConfigurationError(f"unknown device {device!r}; valid: {', '.join(DEVICES)}")
        per_stream = check_threads_and_streams(threads, streams, os.cpu_count())
        if streams > 1 and device != "cpu":
            raise ConfigurationError(f"streams apply to device='cpu' only, not {device!r}")
        program, params, sidecar = find_artifact(model_path)
        metadata = read_sidecar(sidecar)
        paddle = _import_paddle()
        _check_gpu(paddle, device)
        engine_threads = per_stream if streams > 1 else threads
        use_onednn = onednn and device == "cpu"
        self._engine: _InferenceEngine | _EagerEngine = _InferenceEngine(
            paddle, program, params, device, device_id, engine_threads, use_onednn, ir_optim
        )
        # batches smaller than `streams`: one predictor with all the threads (see runtimes.base)
        self._whole_engine = (
            _InferenceEngine(paddle, program, params, device, device_id, threads, use_onednn, ir_optim)
            if streams > 1
            else None
        )
        size = metadata.resolution if metadata is not None else None
        batch = metadata.batch if metadata is not None else None
        info = build_model_info(
            str(program), INPUT_NAME, [batch, 3, size, size], OUTPUT_NAME, None, metadata,
            preset=preset, resolution=resolution, preprocess=preprocess,
        )  # fmt: skip
        super().__init__(info, batch_size=batch_size, labels=labels, streams=streams)

    @classmethod
    def from_preset(
        cls,
        preset: str | Preset,
        weights: str | Path | None = None,
        resolution: int | None = None,
        *,
        checkpoint_key: str | None = None,
        seed: int | None = 0,
        batch_size: int | None = None,
        labels: LabelsArg = None,
        **arch_overrides: Any,
    ) -> PaddlePredictor:
        """The eager model of `lvvit.create_model(preset, weights, resolution, ...)`: the numeric reference.

        Without weights the model is a deterministic random initialisation (`seed`),
        the same one an export with the same seed and overrides writes.
        """
        _import_paddle()
        from lvvit import create_model

        model = create_model(
            preset, weights=weights, resolution=resolution, checkpoint_key=checkpoint_key, seed=seed, **arch_overrides
        )
        return cls.from_model(model, batch_size=batch_size, labels=labels)

    @classmethod
    def from_model(cls, model: Any, *, batch_size: int | None = None, labels: LabelsArg = None) -> PaddlePredictor:
        """An eager `LVViT` (from `lvvit.create_model`), switched to eval mode."""
        spec = getattr(model, "preset", None)
        if spec is None:
            raise ConfigurationError("from_model needs an LVViT built by lvvit.create_model (it carries .preset)")
        paddle = _import_paddle()
        model.eval()
        self = cls.__new__(cls)
        self._engine = _EagerEngine(paddle, model)
        self._whole_engine = None
        info = ModelInfo(
            source=f"eager {spec.name}",
            input_name=INPUT_NAME,
            output_name=OUTPUT_NAME,
            preprocess=spec.preprocess,
            preprocess_origin=f"preset {spec.name}",
            batch=None,
            num_classes=spec.arch.num_classes,
            metadata=None,
        )
        Predictor.__init__(self, info, batch_size=batch_size, labels=labels)
        return self

    @property
    def device(self) -> str:
        return self._engine.device

    def _logits_impl(self, batch: np.ndarray) -> np.ndarray:
        return self._engine.run(batch)

    def _logits_whole(self, batch: np.ndarray) -> np.ndarray:
        return (self._whole_engine or self._engine).run(batch)

    def _runtime_details(self) -> dict[str, Any]:
        versions = {"paddlepaddle": package_version("paddlepaddle")}
        return {**self._engine.details(), "streams": self.streams, "precision": "fp32", "versions": versions}

    def _release(self) -> None:
        self._engine.release()
        if self._whole_engine is not None:
            self._whole_engine.release()


def _check_gpu(paddle: Any, device: str) -> None:
    if device != "gpu":
        return
    if not paddle.is_compiled_with_cuda():
        raise DeviceUnavailableError(
            f"device='gpu': this Paddle ({paddle.__version__}) is a CPU-only build; install paddlepaddle-gpu"
        )
    if paddle.device.cuda.device_count() < 1:
        raise DeviceUnavailableError(
            "device='gpu': Paddle is built with CUDA but sees no GPU (driver missing? CUDA_VISIBLE_DEVICES empty?)"
        )


class _InferenceEngine:
    """`paddle.inference` predictors, one clone per concurrent caller."""

    def __init__(
        self,
        paddle: Any,
        program: Path,
        params: Path,
        device: str,
        device_id: int,
        threads: int | None,
        onednn: bool,
        ir_optim: bool,
    ) -> None:
        from paddle import inference

        config = inference.Config(str(program), str(params))
        if device == "gpu":
            config.enable_use_gpu(256, device_id)
        else:
            config.disable_gpu()
            if threads is not None:
                config.set_cpu_math_library_num_threads(threads)
            config.enable_onednn() if onednn else config.disable_onednn()
        config.switch_ir_optim(ir_optim)
        config.disable_glog_info()
        try:
            root = inference.create_predictor(config)
        except Exception as exc:  # Paddle raises its own C++ error types
            raise ModelFileError(f"{program}: paddle.inference cannot load this artifact ({exc})") from exc
        self.device = device
        self._facts = {
            "device": device,
            "onednn": bool(config.onednn_enabled()),
            "ir_optim": bool(config.ir_optim()),
            "threads": threads,
            "engine": "paddle.inference",
            "program": program.name,
        }
        self._pool: Pool[Any] | None = Pool(root.clone, first=root)

    def run(self, batch: np.ndarray) -> np.ndarray:
        if self._pool is None:
            raise PredictorClosedError("the Paddle inference predictor is closed")
        with self._pool.borrow() as predictor:
            handle = predictor.get_input_handle(predictor.get_input_names()[0])
            handle.reshape(list(batch.shape))
            handle.copy_from_cpu(batch)
            predictor.run()
            return predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()

    def details(self) -> dict[str, Any]:
        return dict(self._facts)

    def release(self) -> None:
        self._pool = None


class _EagerEngine:
    """The dygraph model; Paddle's eager mode keeps global state, so calls run one at a time."""

    def __init__(self, paddle: Any, model: Any) -> None:
        self._paddle = paddle
        self._model = model
        self._spec = model.preset
        self._weights = getattr(model, "weights_info", None)
        self._lock = threading.Lock()
        self.device = paddle.get_device()

    def run(self, batch: np.ndarray) -> np.ndarray:
        paddle = self._paddle
        with self._lock, paddle.no_grad():
            if self._model is None:
                raise PredictorClosedError(f"the eager {self._spec.name} predictor is closed")
            return self._model(paddle.to_tensor(batch)).numpy()

    def details(self) -> dict[str, Any]:
        info, spec = self._weights, self._spec
        return {
            "device": self.device,
            "engine": "eager",
            "preset": spec.name,
            "weights": weights_provenance(info, seed=None),  # the eager model does not know its seed
            "arch": spec.arch.to_kwargs(),
        }

    def release(self) -> None:
        self._model = None
