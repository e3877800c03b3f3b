"""ONNX Runtime execution providers: the explicit provider list for a device, and why one did not load.

onnxruntime-gpu lists CUDA and TensorRT in `get_available_providers()` on any
machine; when their shared libraries (CUDA, cuDNN, TensorRT) or the driver are
missing, the session logs an error and quietly runs on the CPU. The predictor
checks the session's real providers, and `why_not_loaded` names the library
that is missing by loading the provider library the way the dynamic linker would.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path
from typing import Any

from lvvit.common.versions import package_version

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
PROVIDERS = {"cpu": CPU, "cuda": CUDA, "tensorrt": TENSORRT}
DEVICES = ("cpu", "cuda", "tensorrt", "auto")
# `auto` takes the first device whose provider really loads. TensorRT is never chosen by itself: building an
# engine takes minutes per model and shape, and its options (fp16, cache folder) are decisions to make explicitly.
AUTO_ORDER = ("cuda", "cpu")

# ONNX Runtime's own graph optimizer would fuse Add+LayerNormalization into SkipLayerNormalization and
# Add+Gelu into BiasGelu when a CPU session starts. Its CPU kernels for those two contrib ops measured slower
# than the plain ops they replace (ORT 1.31, lvvit_s shapes [8, 197, 384] and [8, 197, 1152]: SkipLN
# 2.39 ms against 1.04 ms for Add+Add+LayerNorm, BiasGelu 2.85 ms against 2.32 ms for Add+Gelu), so CPU
# sessions run without them; `exporters.onnx --optimize` writes its fp32 graph the same way. The
# attention fusion stays. GPU providers keep every fusion: their fused kernels are the fast ones.
# Re-check after an ONNX Runtime upgrade: `python -m validation ort-fusions`.
CPU_DISABLED_FUSIONS = ("SkipLayerNormFusion", "BiasGeluFusion")

_LIBRARY = {
    CUDA: ("libonnxruntime_providers_cuda.so", "onnxruntime_providers_cuda.dll"),
    TENSORRT: ("libonnxruntime_providers_tensorrt.so", "onnxruntime_providers_tensorrt.dll"),
}
_DRIVER = ("libcuda.so.1", "nvcuda.dll")


def provider_chain(
    device: str,
    device_id: int = 0,
    tf32: bool = False,
    tensorrt_fp16: bool = False,
    tensorrt_cache: Path | None = None,
    trt_profile: tuple[str, str, str] | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """Providers (with options) for a device, best first, ending with the CPU for the nodes a GPU EP leaves.

    CUDA's TF32 math (on by default in onnxruntime since 1.18, on Ampere and newer GPUs) is off unless asked
    for: it moves logits by about 1e-3, beyond the kit's fp32 drift tolerance.
    """
    cuda = (CUDA, {"device_id": device_id, "use_tf32": int(tf32)})
    if device == "cpu":
        return [(CPU, {})]
    if device == "cuda":
        return [cuda, (CPU, {})]
    if device == "tensorrt":
        options: dict[str, Any] = {"device_id": device_id, "trt_fp16_enable": tensorrt_fp16}
        if tensorrt_cache is not None:
            options.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(tensorrt_cache))
        if trt_profile is not None:  # one engine for batches 1..batch_size instead of one per shape seen
            options.update(
                trt_profile_min_shapes=trt_profile[0],
                trt_profile_opt_shapes=trt_profile[1],
                trt_profile_max_shapes=trt_profile[2],
            )
        return [(TENSORRT, options), cuda, (CPU, {})]
    raise ValueError(f"no provider chain for device {device!r}")


def precision(device: str, tf32: bool, tensorrt_fp16: bool, graph_precision: str = "fp32") -> str:
    """The math a session of `device` really uses.

    A graph exported in fp16 or int8 (`graph_precision`, from the model's metadata) computes in that precision
    on every device. TensorRT allows TF32 whenever the GPU has it, and onnxruntime has no option to stop that
    short of the process-wide NVIDIA_TF32_OVERRIDE=0, so a TensorRT session reports "tf32" unless that variable
    is set.
    """
    if graph_precision != "fp32":
        return graph_precision
    if device == "tensorrt":
        if tensorrt_fp16:
            return "fp16"
        return "fp32" if os.environ.get("NVIDIA_TF32_OVERRIDE") == "0" else "tf32"
    return "tf32" if device == "cuda" and tf32 else "fp32"


def installed_distributions() -> dict[str, str]:
    """The installed ONNX Runtime wheels (name -> version): the CPU and GPU wheels share the module name."""
    found = {name: package_version(name) for name in ("onnxruntime", "onnxruntime-gpu")}
    return {name: version for name, version in found.items() if version != "not installed"}


def try_load(library: str | Path) -> str | None:
    """None when the dynamic linker loads `library` (and its dependencies), else its error message."""
    try:
        ctypes.CDLL(str(library))
    except OSError as exc:
        return str(exc)
    return None


def _provider_library(ort_module: Any, provider: str) -> Path:
    capi = Path(ort_module.__file__).parent / "capi"
    return capi / _LIBRARY[provider][1 if sys.platform == "win32" else 0]


def why_not_loaded(ort_module: Any, provider: str) -> str:
    """A sentence naming what keeps `provider` from loading in this process."""
    version = getattr(ort_module, "__version__", "?")
    if provider not in ort_module.get_available_providers():
        available = ", ".join(ort_module.get_available_providers())
        if len(installed_distributions()) > 1:
            # both wheels write the one `onnxruntime` package; the one installed last won, file by file
            return (
                f"this onnxruntime ({version}) has no {provider} (available: {available}): the onnxruntime and "
                "onnxruntime-gpu wheels are both installed and overwrite each other; pip uninstall -y onnxruntime "
                "onnxruntime-gpu, then pip install 'lvvit-deploy[gpu]'"
            )
        return (
            f"this onnxruntime build ({version}) has no {provider} "
            f"(available: {available}); install onnxruntime-gpu instead (pip install 'lvvit-deploy[gpu]')"
        )
    library = _provider_library(ort_module, provider)
    if not library.exists():
        return f"{library.name} is missing from {library.parent} (onnxruntime {version} was built without it)"
    error = try_load(library)
    if error is not None:
        return (
            f"{library.name} cannot load: {error} (CUDA and cuDNN from pip's nvidia-* packages are found only "
            "after onnxruntime.preload_dlls() or `import torch` in this process, or with their lib folders on "
            "LD_LIBRARY_PATH)"
        )
    driver = _DRIVER[1 if sys.platform == "win32" else 0]
    error = try_load(driver)
    if error is not None:
        return f"the NVIDIA driver library {driver} cannot load ({error}): no GPU driver on this machine"
    return (
        f"{library.name} and {driver} load, yet the session did not keep {provider}: "
        "no usable GPU, or a CUDA/cuDNN/TensorRT version this onnxruntime does not support (see its log above)"
    )
