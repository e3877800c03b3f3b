"""`OrtPredictor`: ONNX Runtime on the CPU, CUDA or TensorRT, with explicit providers and no silent fallback.

The device names the execution provider; after the session is created its real
providers are checked, because onnxruntime-gpu creates a CPU-only session
(with an error in its log) when the CUDA or TensorRT libraries cannot load.
`device="auto"` takes CUDA when it really loads, else the CPU, and reports the
choice in `device` / `providers`. On a GPU, inputs and outputs go through I/O
binding. `InferenceSession.run` is thread-safe, so one predictor serves many threads.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from lvvit.metadata import INPUT_NAME, ModelMetadata
from lvvit.presets import PreprocessConfig

from . import ort_providers as eps
from .base import DEFAULT_BATCH_SIZE, LabelsArg, Predictor, check_threads_and_streams
from .errors import BackendNotInstalledError, ConfigurationError, DeviceUnavailableError, ModelFileError
from .model_info import build_model_info
from .onnx_file import graph_precision, kit_metadata, read_onnx_file


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendNotInstalledError(
            "OrtPredictor needs ONNX Runtime, and no onnxruntime module is installed: pip install "
            f"'lvvit-deploy[cpu]' (the onnxruntime wheel) or 'lvvit-deploy[gpu]' (onnxruntime-gpu), one of them ({exc})"
        ) from exc
    return onnxruntime


def session_options(
    ort: Any, threads: int | None = None, *, profile_prefix: str | Path | None = None, optimize: bool = True
) -> Any:
    """The kit's `SessionOptions`: `threads` intra-op threads (None: ONNX Runtime's default), the profiler on
    when `profile_prefix` is given, every graph optimization unless `optimize` is False."""
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return options


def ort_session(
    model: str | Path | bytes,
    device: str = "cpu",
    *,
    threads: int | None = None,
    chain: list[tuple[str, dict[str, Any]]] | None = None,
    profile_prefix: str | Path | None = None,
    optimize: bool = True,
    name: str | None = None,
) -> Any:
    """An `InferenceSession` configured as every session of the kit is: the explicit provider chain of `device`
    (`chain` overrides it), the CPU's slow fusions off on the CPU (`ort_providers.CPU_DISABLED_FUSIONS`), no
    silent fallback to the CPU during a run. `ModelFileError` (naming `name`) when the session cannot be made."""
    ort = import_onnxruntime()
    chain = chain if chain is not None else eps.provider_chain(device)
    disabled = eps.CPU_DISABLED_FUSIONS if device == "cpu" else ()
    try:
        session = ort.InferenceSession(
            str(model) if isinstance(model, Path) else model,
            sess_options=session_options(ort, threads, profile_prefix=profile_prefix, optimize=optimize),
            providers=[provider for provider, _ in chain],
            provider_options=[options for _, options in chain],
            disabled_optimizers=list(disabled),
        )
    except Exception as exc:  # onnxruntime raises its own classes straight from C++
        what = name or (model if not isinstance(model, bytes) else "this graph")
        raise ModelFileError(
            f"{what}: onnxruntime cannot create a {device} session for this model ({type(exc).__name__}: {exc})"
        ) from exc
    # Otherwise `run` answers a GPU provider's failure (EPFail) by printing it and re-running on the CPU for
    # the rest of the session's life, while `providers` still names the GPU.
    session.disable_fallback()
    return session


class OrtPredictor(Predictor):
    """ONNX Runtime predictor for an exported LV-ViT `.onnx` file.

    Args:
        model_path: the `.onnx` file (its kit metadata gives the preprocessing).
        device: "cpu", "cuda", "tensorrt", or "auto" (CUDA if it really loads, else CPU).
        threads: intra-op threads in all (None: ONNX Runtime's default, one per physical core).
        streams: CPU only: run a batch as N parts at once, each on threads/N intra-op threads (default 1).
            Higher throughput for batches; a model with a fixed batch size cannot be split. A batch of fewer
            than N images runs whole on a second session with all the threads (one more copy of the weights
            in memory), so single images are as fast as with streams=1.
        batch_size: images per run in `predict`/`logits` (default 8, or the model's fixed batch).
        preset, resolution: the preprocessing of a model without kit metadata.
        preprocess: an explicit preprocessing config (overrides the metadata).
        labels: class names; see `runtimes.labels`.
        device_id: the GPU for "cuda"/"tensorrt".
        tf32: allow TF32 math in CUDA's matrix products (faster on Ampere+, drifts ~1e-3; off by default).
        tensorrt_fp16: let TensorRT build fp16 kernels.
        tensorrt_cache: folder for TensorRT engines (built once, reused across runs).
        io_binding: feed inputs/outputs through I/O binding (default: on for GPU devices).
    """

    runtime = "ort"

    def __init__(
        self,
        model_path: str | Path,
        device: str = "cpu",
        threads: int | None = None,
        *,
        streams: int = 1,
        batch_size: int | None = None,
        preset: str | None = None,
        resolution: int | None = None,
        preprocess: PreprocessConfig | None = None,
        labels: LabelsArg = None,
        device_id: int = 0,
        tf32: bool = False,
        tensorrt_fp16: bool = False,
        tensorrt_cache: str | Path | None = None,
        io_binding: bool | None = None,
    ) -> None:
        if device not in eps.DEVICES:
            raise ConfigurationError(f"unknown device {device!r}; valid: {', '.join(eps.DEVICES)}")
        per_stream = check_threads_and_streams(threads, streams, os.cpu_count())
        if streams > 1 and device != "cpu":
            raise ConfigurationError(f"streams apply to device='cpu' only, not {device!r}")
        ort = import_onnxruntime()
        path, props = read_onnx_file(model_path)
        metadata = kit_metadata(props, path)
        self._ort = ort
        self._auto_fallback: str | None = None
        self._threads = threads
        self._stream_threads = per_stream if streams > 1 else threads
        self._device_id = device_id
        self._tf32 = tf32
        self._tensorrt = {"fp16": tensorrt_fp16, "cache": str(tensorrt_cache) if tensorrt_cache else None}
        self._requested = device
        self.device = device  # the device that runs; "auto" is resolved below
        self._graph_precision = graph_precision(metadata)
        self._session, self.device = self._open_session(path, device, batch_size, metadata)
        # batches smaller than `streams`: one session with all the threads (see runtimes.base)
        self._whole_session = self._create_session(path, "cpu", batch_size, metadata, threads) if streams > 1 else None
        self.providers: list[str] = list(self._session.get_providers())
        self._provider_options = {k: dict(v) for k, v in self._session.get_provider_options().items()}
        # from the device that runs, not the one asked for: "auto" may have resolved to the CPU
        self._io_binding = (self.device != "cpu") if io_binding is None else bool(io_binding)
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelFileError(
                f"{path}: has {len(inputs)} inputs and {len(outputs)} outputs; an LV-ViT classifier has one of each"
            )
        inp, out = inputs[0], outputs[0]
        if inp.type != "tensor(float)":
            raise ModelFileError(f"{path}: input {inp.name!r} has type {inp.type}; LV-ViT takes tensor(float)")
        info = build_model_info(
            str(path), inp.name, inp.shape, out.name, out.shape, metadata,
            preset=preset, resolution=resolution, preprocess=preprocess,
        )  # fmt: skip
        super().__init__(info, batch_size=batch_size, labels=labels, streams=streams)

    def _open_session(
        self, path: Path, device: str, batch_size: int | None, metadata: ModelMetadata | None
    ) -> tuple[Any, str]:
        """(session, the device it really runs on); raises when an explicit GPU device did not load."""
        ort = self._ort
        available = ort.get_available_providers()
        if device in ("cuda", "tensorrt") and eps.PROVIDERS[device] not in available:
            raise DeviceUnavailableError(f"device={device!r}: {eps.why_not_loaded(ort, eps.PROVIDERS[device])}")
        if device == "auto":
            device = next(d for d in eps.AUTO_ORDER if eps.PROVIDERS[d] in available)
        session = self._create_session(path, device, batch_size, metadata, self._stream_threads)
        loaded = session.get_providers()
        wanted = eps.PROVIDERS[device]
        if wanted in loaded:
            return session, device
        why = eps.why_not_loaded(ort, wanted)
        if self._requested != "auto":
            raise DeviceUnavailableError(
                f"device={self._requested!r}: onnxruntime created the session with {loaded} only, "
                f"without {wanted}: {why}"
            )
        self._auto_fallback = why
        # auto allows the CPU. The session onnxruntime left (or re-created itself after a provider error) has the
        # GPU's graph optimizations and options; a CPU session is built the way device="cpu" builds it.
        return self._create_session(path, "cpu", batch_size, metadata, self._stream_threads), "cpu"

    def _create_session(
        self,
        path: Path,
        device: str,
        batch_size: int | None,
        metadata: ModelMetadata | None,
        threads: int | None,
    ) -> Any:
        profile = None
        if device == "tensorrt" and metadata is not None and metadata.batch is None:
            size, most = metadata.resolution, batch_size or DEFAULT_BATCH_SIZE
            profile = tuple(f"{INPUT_NAME}:{n}x3x{size}x{size}" for n in (1, most, most))
        cache = Path(self._tensorrt["cache"]) if self._tensorrt["cache"] else None
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
        chain = eps.provider_chain(device, self._device_id, self._tf32, self._tensorrt["fp16"], cache, profile)
        self._disabled_fusions = eps.CPU_DISABLED_FUSIONS if device == "cpu" else ()
        return ort_session(path, device, threads=threads, chain=chain)

    @property
    def session(self) -> Any:
        """The `onnxruntime.InferenceSession`, for tools that bind buffers already on the device (benchmarks)."""
        self._check_open()
        return self._session

    @property
    def precision(self) -> str:
        """The math the session uses: "fp32", "tf32", "fp16" or "int8" (see `ort_providers.precision`)."""
        return eps.precision(self.device, self._tf32, self._tensorrt["fp16"], self._graph_precision)

    def _logits_impl(self, batch: np.ndarray) -> np.ndarray:
        return self._run_session(self._session, batch)

    def _logits_whole(self, batch: np.ndarray) -> np.ndarray:
        return self._run_session(self._whole_session or self._session, batch)

    def _run_session(self, session: Any, batch: np.ndarray) -> np.ndarray:
        try:
            if not self._io_binding:
                return session.run([self.info.output_name], {self.info.input_name: batch})[0]
            return self._run_bound(session, batch)
        except self._ort.capi.onnxruntime_pybind11_state.EPFail as exc:  # an Exception, not a RuntimeError
            raise DeviceUnavailableError(
                f"device={self.device!r}: {self.providers[0]} failed during the run of a batch of {len(batch)} "
                f"({exc}); not retried on the CPU"
            ) from exc

    def _run_bound(self, session: Any, batch: np.ndarray) -> np.ndarray:
        """One run through I/O binding: the output is allocated by the session for this batch's (dynamic) size."""
        ort_device = "cpu" if self.device == "cpu" else "cuda"
        binding = session.io_binding()  # one per call: bindings are not shared between threads
        if ort_device == "cpu":
            binding.bind_cpu_input(self.info.input_name, batch)
        else:
            value = self._ort.OrtValue.ortvalue_from_numpy(batch, ort_device, self._device_id)
            binding.bind_ortvalue_input(self.info.input_name, value)
        binding.bind_output(self.info.output_name, ort_device, self._device_id)
        session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def _runtime_details(self) -> dict[str, Any]:
        details: dict[str, Any] = {
            "device": self.device,
            "requested_device": self._requested,
            "providers": self.providers,
            "provider_options": self._provider_options,
            "precision": self.precision,
            "threads": self._threads,
            "streams": self.streams,
            "io_binding": self._io_binding,
            "disabled_fusions": list(self._disabled_fusions),
            "versions": {
                "onnxruntime": self._ort.__version__,
                **{f"{name} (distribution)": v for name, v in eps.installed_distributions().items()},
            },
        }
        if self._auto_fallback:
            details["auto_note"] = f"CUDA listed but not loaded: {self._auto_fallback}"
        return details

    def _release(self) -> None:
        self._session = None
        self._whole_session = None
