"""OrtPredictor's devices: explicit providers, no silent CPU fallback, `auto`, I/O binding, TensorRT options.

This machine may have plain onnxruntime (no CUDA provider at all) or onnxruntime-gpu without a usable GPU
(CUDA listed, but it does not load). Both are tested: the second by listing CUDA and TensorRT in
`get_available_providers`, exactly what onnxruntime-gpu does, and letting the real session show what loaded.
The tests that need a working GPU are in test_gpu.py.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import pytest

from lvvit.synthetic import synthetic_batch
from runtimes import ConfigurationError, DeviceUnavailableError, OrtPredictor
from runtimes import ort_providers as eps
from tests.cuda import CUDA_USABLE

GPU_LISTING = [eps.TENSORRT, eps.CUDA, eps.CPU]


needs_no_gpu = pytest.mark.skipif(CUDA_USABLE, reason="this machine has a usable GPU")


@pytest.fixture
def gpu_wheel_listing(monkeypatch):
    """Behave like onnxruntime-gpu: CUDA and TensorRT are listed whether or not they can load.

    (With the CPU wheel, the session also warns that the provider is not in its own list; that warning is
    onnxruntime's, and not what is under test, so it is silenced.)
    """
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(GPU_LISTING))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Specified provider", category=UserWarning)
        yield


# -- no usable GPU ------------------------------------------------------------------------------------------------


def test_unknown_device(tiny):
    with pytest.raises(ConfigurationError, match=r"unknown device 'gpu'; valid: cpu, cuda, tensorrt, auto"):
        OrtPredictor(tiny.onnx, device="gpu")


@pytest.mark.skipif(eps.CUDA in ort.get_available_providers(), reason="onnxruntime-gpu is installed")
@pytest.mark.parametrize(("device", "provider"), [("cuda", eps.CUDA), ("tensorrt", eps.TENSORRT)])
def test_gpu_device_with_plain_onnxruntime_raises(tiny, device, provider):
    with pytest.raises(
        DeviceUnavailableError,
        match=rf"device='{device}': this onnxruntime build .* has no {provider}.*onnxruntime-gpu",
    ):
        OrtPredictor(tiny.onnx, device=device)


@needs_no_gpu
@pytest.mark.parametrize(
    ("device", "provider", "library"),
    [
        ("cuda", eps.CUDA, "libonnxruntime_providers_cuda"),
        ("tensorrt", eps.TENSORRT, "libonnxruntime_providers_tensorrt"),
    ],
)
def test_gpu_device_that_does_not_load_raises(tiny, gpu_wheel_listing, device, provider, library):
    # The session is real: it shows what onnxruntime actually loaded (the CPU only), which the predictor checks.
    with (
        pytest.warns(UserWarning, match="not in available provider names"),
        pytest.raises(
            DeviceUnavailableError,
            match=rf"device='{device}': onnxruntime created the session with \['CPUExecutionProvider'\] only, "
            rf"without {provider}: .*{library}",
        ),
    ):
        OrtPredictor(tiny.onnx, device=device)


@needs_no_gpu
def test_the_missing_library_is_named(tiny, gpu_wheel_listing, monkeypatch, tmp_path):
    # onnxruntime-gpu ships the provider library; what is missing is usually a CUDA library it links against.
    provider_lib = tmp_path / "libonnxruntime_providers_cuda.so"
    provider_lib.write_bytes(b"\x7fELF")
    monkeypatch.setattr(eps, "_provider_library", lambda module, provider: provider_lib)
    missing = "libcublasLt.so.12: cannot open shared object file: No such file or directory"
    monkeypatch.setattr(eps, "try_load", lambda library: missing if library == provider_lib else None)
    with (
        pytest.warns(UserWarning),
        pytest.raises(
            DeviceUnavailableError,
            match=r"libonnxruntime_providers_cuda\.so cannot load: libcublasLt\.so\.12: cannot open.* \(CUDA and "
            r"cuDNN from pip's nvidia-\* packages are found only after onnxruntime\.preload_dlls\(\)",
        ),
    ):
        OrtPredictor(tiny.onnx, device="cuda")
    monkeypatch.setattr(
        eps, "try_load", lambda library: "libcuda.so.1: cannot open" if "libcuda" in str(library) else None
    )
    with (
        pytest.warns(UserWarning),
        pytest.raises(
            DeviceUnavailableError, match=r"the NVIDIA driver library libcuda\.so\.1 cannot load .*no GPU driver"
        ),
    ):
        OrtPredictor(tiny.onnx, device="cuda")


def test_a_real_provider_library_is_diagnosed_by_the_dynamic_linker(monkeypatch, tmp_path):
    fake = tmp_path / "libonnxruntime_providers_cuda.so"
    fake.write_bytes(b"not an ELF file")
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(GPU_LISTING))
    monkeypatch.setattr(eps, "_provider_library", lambda module, provider: fake)
    assert eps.why_not_loaded(ort, eps.CUDA).startswith(f"{fake.name} cannot load: {fake}")


@needs_no_gpu
def test_auto_without_gpu_runs_on_the_cpu_and_says_so(tiny):
    with OrtPredictor(tiny.onnx, device="auto") as predictor:
        assert predictor.device == "cpu" and predictor.providers == [eps.CPU]
        described = predictor.describe()
        assert described["device"] == "cpu" and described["requested_device"] == "auto"
        assert described["io_binding"] is False  # it comes from the device that runs, not the one asked for
        assert predictor.logits(synthetic_batch(1, predictor.preprocess_config)).shape == (1, 10)


@needs_no_gpu
def test_auto_with_gpu_wheel_but_no_gpu_runs_on_the_cpu_and_says_why(tiny, gpu_wheel_listing):
    with OrtPredictor(tiny.onnx, device="auto") as predictor:
        assert predictor.device == "cpu" and predictor.providers == [eps.CPU]
        assert "CUDA listed but not loaded: " in predictor.describe()["auto_note"]
        assert "libonnxruntime_providers_cuda" in predictor.describe()["auto_note"]
        # the CPU session is the one device="cpu" builds, not the one onnxruntime left without the GPU
        described = predictor.describe()
        assert described["io_binding"] is False and described["precision"] == "fp32"
        assert described["disabled_fusions"] == list(eps.CPU_DISABLED_FUSIONS)
        assert list(described["provider_options"]) == [eps.CPU]


def test_a_gpu_provider_failing_during_a_run_is_not_retried_on_the_cpu(tiny):
    # onnxruntime's own answer to an EPFail in `run` is to print it and re-run every later batch on the CPU
    def fail(*args, **kwargs):
        raise ort.capi.onnxruntime_pybind11_state.EPFail("CUDA failure 700: an illegal memory access")

    class FailingProvider:  # the C++ session under onnxruntime's Python `InferenceSession`, failing its runs
        def __init__(self, session):
            self._session = session

        def __getattr__(self, name):
            return fail if name == "run" else getattr(self._session, name)

    for io_binding in (False, True):
        with OrtPredictor(tiny.onnx, io_binding=io_binding) as predictor:
            if io_binding:
                predictor._session.run_with_iobinding = fail
            else:
                predictor._session._sess = FailingProvider(predictor._session._sess)
            x = synthetic_batch(2, predictor.preprocess_config)
            with pytest.raises(
                DeviceUnavailableError,
                match=r"device='cpu': CPUExecutionProvider failed during the run of a batch of 2 "
                r"\(CUDA failure 700: an illegal memory access\); not retried on the CPU",
            ):
                predictor.logits(x)


def test_both_onnxruntime_wheels_installed_is_named(monkeypatch):
    monkeypatch.setattr(eps, "installed_distributions", lambda: {"onnxruntime": "1.31.1", "onnxruntime-gpu": "1.31.1"})
    monkeypatch.setattr(ort, "get_available_providers", lambda: [eps.CPU])
    why = eps.why_not_loaded(ort, eps.CUDA)
    assert "the onnxruntime and onnxruntime-gpu wheels are both installed" in why
    assert "pip uninstall -y onnxruntime onnxruntime-gpu, then pip install 'lvvit-deploy[gpu]'" in why


# -- options -----------------------------------------------------------------------------------------------------


def test_cpu_io_binding_matches_run(tiny):
    # the binding code path of the GPU devices, exercised on the CPU; batches of 2, 2 and 1 through one
    # predictor: the bound output follows the dynamic batch axis
    with OrtPredictor(tiny.onnx, io_binding=True, batch_size=2) as bound, OrtPredictor(tiny.onnx) as plain:
        assert bound.describe()["io_binding"] is True and plain.describe()["io_binding"] is False
        x = synthetic_batch(5, plain.preprocess_config)
        np.testing.assert_array_equal(bound.logits(x), plain.logits(x))
        np.testing.assert_array_equal(bound.logits(x[:1]), plain.logits(x[:1]))


def test_threads_are_checked_and_recorded(tiny):
    with pytest.raises(ConfigurationError, match=r"threads must be a positive integer or None, got 0"):
        OrtPredictor(tiny.onnx, threads=0)
    with OrtPredictor(tiny.onnx, threads=2) as predictor:
        assert predictor.describe()["threads"] == 2


def test_provider_chains_are_explicit(tmp_path):
    assert eps.provider_chain("cpu") == [(eps.CPU, {})]
    assert eps.provider_chain("cuda", 1) == [(eps.CUDA, {"device_id": 1, "use_tf32": 0}), (eps.CPU, {})]
    profile = ("image:1x3x224x224", "image:8x3x224x224", "image:8x3x224x224")
    chain = eps.provider_chain("tensorrt", 0, tensorrt_fp16=True, tensorrt_cache=tmp_path, trt_profile=profile)
    assert [name for name, _ in chain] == [eps.TENSORRT, eps.CUDA, eps.CPU]
    assert chain[0][1] == {
        "device_id": 0,
        "trt_fp16_enable": True,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(tmp_path),
        "trt_profile_min_shapes": profile[0],
        "trt_profile_opt_shapes": profile[1],
        "trt_profile_max_shapes": profile[2],
    }


def test_precision_names_what_really_runs(monkeypatch):
    assert eps.precision("cpu", tf32=True, tensorrt_fp16=False) == "fp32"
    assert eps.precision("cuda", tf32=False, tensorrt_fp16=False) == "fp32"
    assert eps.precision("cuda", tf32=True, tensorrt_fp16=False) == "tf32"
    assert eps.precision("tensorrt", tf32=False, tensorrt_fp16=True) == "fp16"
    monkeypatch.delenv("NVIDIA_TF32_OVERRIDE", raising=False)
    assert eps.precision("tensorrt", tf32=False, tensorrt_fp16=False) == "tf32"
    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "0")
    assert eps.precision("tensorrt", tf32=False, tensorrt_fp16=False) == "fp32"
    # an fp16 or int8 export computes in its own precision whatever the device
    assert eps.precision("cuda", tf32=False, tensorrt_fp16=False, graph_precision="fp16") == "fp16"
    assert eps.precision("cpu", tf32=False, tensorrt_fp16=False, graph_precision="int8") == "int8"
