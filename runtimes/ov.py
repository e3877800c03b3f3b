"""`OpenVinoPredictor`: OpenVINO reading the ONNX file directly (no IR conversion step).

The precision is explicit: OpenVINO's CPU plugin picks bf16 by itself on CPUs
with AMX/AVX512-BF16 and quietly keeps f32 when f16 is asked of a CPU that
lacks it; this predictor sets `INFERENCE_PRECISION_HINT` to what was asked
(f32 by default) and raises when the compiled model reports anything else.
A `CompiledModel` is thread-safe but an `InferRequest` is not: each concurrent
caller borrows its own request from a pool. OpenVINO is an optional extra:
`pip install 'lvvit-deploy[openvino]'`.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from lvvit.common.versions import package_version
from lvvit.presets import PreprocessConfig

from .base import LabelsArg, Predictor, check_threads_and_streams
from .errors import (
    BackendNotInstalledError,
    ConfigurationError,
    DeviceUnavailableError,
    ModelFileError,
    PredictorClosedError,
)
from .model_info import build_model_info
from .onnx_file import graph_precision, kit_metadata, read_onnx_file
from .pool import Pool

# accepted spellings -> the kit's name (as in every predictor's describe()); then OpenVINO's element type name
PRECISIONS = {"f32": "fp32", "fp32": "fp32", "bf16": "bf16", "f16": "fp16", "fp16": "fp16"}
_OV_TYPE = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


def _import_openvino() -> Any:
    try:
        import openvino
    except ImportError as exc:
        raise BackendNotInstalledError(
            f"OpenVinoPredictor needs OpenVINO: pip install 'lvvit-deploy[openvino]' (or openvino) ({exc})"
        ) from exc
    return openvino


def compile_config(
    device: str = "CPU",
    precision: str = "f32",
    threads: int | None = None,
    streams: int = 1,
    *,
    perf_counters: bool = False,
) -> dict[str, Any]:
    """The kit's OpenVINO compile settings: the inference precision asked for (never the plugin's own pick),
    `streams` streams, `threads` CPU threads in all (None: OpenVINO's default), per-layer counters on request."""
    if precision not in PRECISIONS:
        raise ConfigurationError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": _OV_TYPE[PRECISIONS[precision]], "NUM_STREAMS": streams}
    if threads is not None and device.upper().startswith("CPU"):
        config["INFERENCE_NUM_THREADS"] = threads  # OpenVINO splits the threads between its streams
    if perf_counters:
        config["PERF_COUNT"] = True
    return config


def compile_checked(core: Any, model: Any, device: str, config: dict[str, Any], name: str) -> Any:
    """`core.compile_model`, refused (`DeviceUnavailableError`) when it fails or when the plugin compiled another
    precision than the one `config` asks for."""
    wanted = config["INFERENCE_PRECISION_HINT"]
    try:
        compiled = core.compile_model(model, device, config)
    except Exception as exc:
        raise DeviceUnavailableError(f"OpenVINO cannot compile {name} for {device} at {wanted} ({exc})") from exc
    actual = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    if actual != wanted:
        capabilities = _capabilities(core, device)
        raise DeviceUnavailableError(
            f"precision={wanted!r}: OpenVINO's {device} plugin compiled {name} at {actual} instead "
            f"(device capabilities: {', '.join(capabilities) or 'unknown'}); choose a precision it supports"
        )
    return compiled


def _dims(partial_shape: Any) -> list[int | None]:
    return [d.get_length() if d.is_static else None for d in partial_shape]


class OpenVinoPredictor(Predictor):
    """OpenVINO predictor for an exported LV-ViT `.onnx` file.

    Args:
        model_path: the `.onnx` file (its kit metadata gives the preprocessing).
        precision: "f32" (default), "bf16" or "f16": OpenVINO's inference precision hint, checked after compiling.
        device: an OpenVINO device ("CPU", "GPU", "GPU.1", "NPU"); it must be in `Core().available_devices`.
        threads: CPU inference threads in all (None: OpenVINO's default).
        streams: parallel inference streams (default 1). With N > 1 a batch is split into N parts run
            at once, each stream on its share of the threads: higher throughput for batches, the same
            latency for one image.
        batch_size, preset, resolution, preprocess, labels: as for every predictor.
    """

    runtime = "openvino"

    def __init__(
        self,
        model_path: str | Path,
        precision: str = "f32",
        device: str = "CPU",
        threads: int | None = None,
        *,
        streams: int = 1,
        batch_size: int | None = None,
        preset: str | None = None,
        resolution: int | None = None,
        preprocess: PreprocessConfig | None = None,
        labels: LabelsArg = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise ConfigurationError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
        check_threads_and_streams(threads, streams)
        ov = _import_openvino()
        path, props = read_onnx_file(model_path)
        metadata = kit_metadata(props, path)
        core = ov.Core()
        device = device.upper()
        available = list(core.available_devices)
        if device.split(".")[0] not in {d.split(".")[0] for d in available} and device != "AUTO":
            raise DeviceUnavailableError(
                f"device={device!r}: OpenVINO {ov.__version__} sees only {available} on this machine"
            )
        self._hint = PRECISIONS[precision]  # OpenVINO's inference precision: the math of the float parts
        self._graph_precision = graph_precision(metadata)
        self.device = device
        self._threads = threads
        try:
            model = core.read_model(str(path))
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses from C++
            raise ModelFileError(f"{path}: OpenVINO cannot read this model ({exc})") from exc
        if len(model.inputs) != 1 or len(model.outputs) != 1:
            raise ModelFileError(
                f"{path}: has {len(model.inputs)} inputs and {len(model.outputs)} outputs; "
                "an LV-ViT classifier has one of each"
            )
        info = build_model_info(
            str(path),
            model.inputs[0].get_any_name(), _dims(model.input(0).get_partial_shape()),
            model.outputs[0].get_any_name(), _dims(model.output(0).get_partial_shape()),
            metadata, preset=preset, resolution=resolution, preprocess=preprocess,
        )  # fmt: skip
        compiled = self._compile(core, model, path, precision, threads, streams)
        self._ov_version = ov.__version__
        self._execution_devices = list(compiled.get_property("EXECUTION_DEVICES"))
        self._capabilities = _capabilities(core, device)
        self._compiled = compiled
        self._requests: Pool[Any] | None = Pool(compiled.create_infer_request)
        # batches smaller than `streams`: one stream with all the threads (see runtimes.base)
        self._whole_requests: Pool[Any] | None = (
            Pool(self._compile(core, model, path, precision, threads, 1).create_infer_request) if streams > 1 else None
        )
        self._submit_lock = threading.Lock()
        super().__init__(info, batch_size=batch_size, labels=labels, streams=streams)

    def _compile(self, core: Any, model: Any, path: Path, precision: str, threads: int | None, streams: int) -> Any:
        """The compiled model, refused when the plugin compiled another precision than the one asked for."""
        return compile_checked(core, model, self.device, compile_config(self.device, precision, threads, streams),
                               path.name)  # fmt: skip

    @property
    def precision(self) -> str:
        """The math the model runs in: the graph's own precision (an int8 QDQ or fp16 file), else the hint's."""
        return self._graph_precision if self._graph_precision != "fp32" else self._hint

    def _logits_impl(self, batch: np.ndarray) -> np.ndarray:
        return self._infer_on(self._requests, batch)

    def _logits_whole(self, batch: np.ndarray) -> np.ndarray:
        return self._infer_on(self._whole_requests or self._requests, batch)

    def _infer_on(self, requests: Pool[Any] | None, batch: np.ndarray) -> np.ndarray:
        if requests is None:
            raise PredictorClosedError("the OpenVINO predictor is closed")
        with requests.borrow() as request:
            # Submitting (OpenVINO's Python input dispatch) is serialised: two threads in it at once
            # deadlocked on lvvit_l_448 with 2 streams. The inferences themselves still overlap.
            with self._submit_lock:
                request.start_async({self.info.input_name: batch})
            request.wait()
            return np.array(request.get_output_tensor(0).data)  # a copy: the request goes back to the pool

    def _runtime_details(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "execution_devices": self._execution_devices,
            "precision": self.precision,
            "inference_precision_hint": self._hint,
            "threads": self._threads,
            "streams": self.streams,
            "device_capabilities": self._capabilities,
            "versions": {"openvino": self._ov_version, "openvino (distribution)": package_version("openvino")},
        }

    def _release(self) -> None:
        self._requests = None
        self._whole_requests = None
        self._compiled = None


def _capabilities(core: Any, device: str) -> list[str]:
    try:
        return list(core.get_property(device, "OPTIMIZATION_CAPABILITIES"))
    except Exception:  # not every device (AUTO, NPU) reports them
        return []
