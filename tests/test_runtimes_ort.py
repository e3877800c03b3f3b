"""OrtPredictor's devices: explicit providers, no silent CPU fallback, `auto`, I/O binding, TensorRT options.

This machine may have plain onnxruntime (no CUDA provider at all) or onnxruntime-gpu without a usable GPU
(CUDA listed, but it does not load). Both are tested: the second by listing CUDA and TensorRT in
`get_available_providers`, exactly what onnxruntime-gpu does, and letting the real session show what loaded.
Tests that need a working GPU skip without one.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import pytest

from lvvit.synthetic import synthetic_batch
from runtimes import ConfigurationError, DeviceUnavailableError, OrtPredictor
from runtimes import ort_providers as eps

pytest_plugins = ["tests.runtime_fixtures"]

GPU_LISTING = [eps.TENSORRT, eps.CUDA, eps.CPU]


def _cuda_usable() -> bool:
    if eps.CUDA not in ort.get_available_providers():
        return False
    try:
        session = ort.InferenceSession(_identity_model(), providers=[eps.CUDA, eps.CPU])
    except Exception:
        return False
    return eps.CUDA in session.get_providers()


def _identity_model() -> bytes:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


CUDA_USABLE = _cuda_usable()
needs_gpu = pytest.mark.skipif(not CUDA_USABLE, reason="needs onnxruntime-gpu and a usable CUDA GPU")
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
            match=r"libonnxruntime_providers_cuda\.so cannot load: libcublasLt\.so\.12: cannot open",
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
        assert predictor.logits(synthetic_batch(1, predictor.preprocess_config)).shape == (1, 10)


@needs_no_gpu
def test_auto_with_gpu_wheel_but_no_gpu_runs_on_the_cpu_and_says_why(tiny, gpu_wheel_listing):
    with OrtPredictor(tiny.onnx, device="auto") as predictor:
        assert predictor.device == "cpu" and predictor.providers == [eps.CPU]
        assert "CUDA listed but not loaded: " in predictor.describe()["auto_note"]
        assert "libonnxruntime_providers_cuda" in predictor.describe()["auto_note"]


# -- options -----------------------------------------------------------------------------------------------------


def test_cpu_io_binding_matches_run(tiny):
    # the binding code path of the GPU devices, exercised on the CPU
    with OrtPredictor(tiny.onnx, io_binding=True) as bound, OrtPredictor(tiny.onnx) as plain:
        assert bound.describe()["io_binding"] is True and plain.describe()["io_binding"] is False
        x = synthetic_batch(3, plain.preprocess_config)
        np.testing.assert_array_equal(bound.logits(x), plain.logits(x))


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


# -- with a GPU --------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@needs_gpu
def test_cuda_matches_cpu(tiny):
    with OrtPredictor(tiny.onnx, device="cuda") as gpu, OrtPredictor(tiny.onnx) as cpu:
        assert gpu.device == "cuda" and gpu.providers[0] == eps.CUDA and gpu.describe()["io_binding"] is True
        x = synthetic_batch(5, cpu.preprocess_config)
        got, expected = gpu.logits(x), cpu.logits(x)
        assert np.abs(got - expected).max() < 1e-4
        assert (got.argmax(1) == expected.argmax(1)).all()


@pytest.mark.gpu
@needs_gpu
def test_auto_picks_cuda(tiny):
    with OrtPredictor(tiny.onnx, device="auto") as predictor:
        assert predictor.device == "cuda" and predictor.providers[0] == eps.CUDA


@pytest.mark.gpu
@needs_gpu
def test_tensorrt_fp16_with_engine_cache(tiny, tmp_path):
    if eps.TENSORRT not in ort.get_available_providers():
        pytest.skip("onnxruntime without TensorRT")
    try:
        predictor = OrtPredictor(tiny.onnx, device="tensorrt", tensorrt_fp16=True, tensorrt_cache=tmp_path / "trt")
    except DeviceUnavailableError as exc:
        pytest.skip(f"TensorRT does not load here: {exc}")
    with predictor, OrtPredictor(tiny.onnx) as cpu:
        assert predictor.providers[0] == eps.TENSORRT and predictor.precision == "fp16"
        x = synthetic_batch(4, cpu.preprocess_config)
        assert np.abs(predictor.logits(x) - cpu.logits(x)).max() < 5e-2
        assert any((tmp_path / "trt").iterdir())
