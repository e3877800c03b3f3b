"""ONNX Runtime on a CUDA GPU: the kit's CUDA, I/O-binding and fp16 paths against CPU references made elsewhere.

These run from a staged folder (`gpu/stage.py`, packed by `gpu/prepare.sh`, unpacked by `gpu/run.sh`) with
nothing but onnxruntime-gpu, numpy and pillow: the GPU machine has no Paddle to export with, so the models
and the CPU fp32 reference logits come with it. `LVVIT_GPU_STAGE` names the folder (default `.gpu/payload`).
They skip where CUDA does not load, saying why. `LVVIT_GPU_TEST_DEVICE=cpu` runs the numeric ones on the CPU instead: a
dry run of the staging and of these tests' plumbing for machines without a GPU (the CUDA-only ones skip).
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from lvvit.preprocess import preprocess_batch
from runtimes import DeviceUnavailableError, OrtPredictor
from runtimes import ort_providers as eps
from tests.cuda import CUDA_UNUSABLE, CUDA_USABLE

ROOT = Path(__file__).resolve().parents[2]
STAGE = Path(os.environ.get("LVVIT_GPU_STAGE", ROOT / ".gpu" / "payload"))
DEVICE = os.environ.get("LVVIT_GPU_TEST_DEVICE", "cuda")
PRESET = "lvvit_s"
TINY_ATOL = 1e-4  # fp32 on CUDA with TF32 off against fp32 on the CPU
MIN_FP16_AGREEMENT = 0.99

# LVVIT_GPU_REQUIRE=1 (gpu/run.sh sets it): on the GPU machine a CUDA that does not load fails every test, naming
# what is missing, instead of skipping them all
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        DEVICE == "cuda" and not CUDA_USABLE and os.environ.get("LVVIT_GPU_REQUIRE") != "1",
        reason=f"needs onnxruntime-gpu and a usable CUDA GPU: {CUDA_UNUSABLE}",
    ),
]
cuda_only = pytest.mark.skipif(DEVICE != "cuda", reason="a CUDA-only check (LVVIT_GPU_TEST_DEVICE=cpu dry run)")


@pytest.fixture(scope="module")
def manifest() -> dict:
    path = STAGE / "manifest.json"
    if not path.is_file():  # on a GPU machine a missing stage is a setup error, not a reason to skip
        pytest.fail(f"no staged folder at {STAGE} (no {path.name}): run gpu/prepare.sh here, gpu/run.sh there")
    return json.loads(path.read_text())


def _staged(manifest: dict, model: str, key: str) -> Path:
    path = STAGE / manifest["models"][model][key]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    expected = manifest["files"][path.relative_to(STAGE).as_posix()]
    assert digest == expected, f"{path}: SHA-256 {digest} differs from the staged {expected}"
    return path


def test_tiny_fp32_with_io_binding_matches_the_cpu_reference(manifest):
    model = _staged(manifest, "tiny", "fp32")
    inputs = np.load(_staged(manifest, "tiny", "inputs"))
    reference = np.load(_staged(manifest, "tiny", "cpu_logits"))
    # batches of 3, 3 and 2: I/O binding sizes each output from its batch (the batch axis is dynamic)
    with OrtPredictor(model, device=DEVICE, batch_size=3) as predictor:
        described = predictor.describe()
        assert predictor.device == DEVICE and predictor.providers[0] == eps.PROVIDERS[DEVICE]
        assert described["io_binding"] is (DEVICE == "cuda") and described["precision"] == "fp32"
        if DEVICE == "cuda":
            assert described["provider_options"][eps.CUDA]["use_tf32"] == "0"
        got = predictor.logits(inputs)
    error = float(np.abs(got - reference).max())
    print(f"tiny fp32 on {DEVICE}: max abs error against the CPU reference {error:.3g} (limit {TINY_ATOL})")
    assert error <= TINY_ATOL, f"max abs error {error:.3g} > {TINY_ATOL}"
    assert (got.argmax(1) == reference.argmax(1)).all()


def test_lvvit_s_fp16_agrees_with_the_cpu_fp32_reference_on_photographs(manifest):
    staged = manifest["models"][PRESET]
    model = _staged(manifest, PRESET, "fp16")
    reference = np.load(_staged(manifest, PRESET, "cpu_logits"))
    with OrtPredictor(model, device=DEVICE, batch_size=32) as predictor:
        assert predictor.precision == "fp16" and predictor.providers[0] == eps.PROVIDERS[DEVICE]
        inputs = preprocess_batch([str(STAGE / p) for p in staged["photos"]], predictor.preprocess_config)
        changed = [
            p
            for p, x, h in zip(staged["photos"], inputs, staged["photo_inputs_sha256"], strict=True)
            if hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest() != h
        ]
        assert not changed, f"preprocessing here gave other pixels than where the reference was made: {changed}"
        got = predictor.logits(inputs)
    error = np.abs(got - reference)
    agree = got.argmax(1) == reference.argmax(1)
    ordered = np.sort(reference, axis=1)
    margins = (ordered[:, -1] - ordered[:, -2])[~agree]
    print(
        f"{PRESET} fp16 on {DEVICE}, {len(got)} images: top-1 agreement {agree.mean():.2%}, "
        f"max abs error {error.max():.4g}, mean {error.mean():.3g}; "
        f"reference top-2 margins of the disagreements {np.round(margins, 4).tolist()}"
    )
    assert agree.mean() >= MIN_FP16_AGREEMENT, (
        f"top-1 agreement {agree.mean():.2%} < {MIN_FP16_AGREEMENT:.0%} ({(~agree).sum()} of {len(got)} differ)"
    )


@cuda_only
def test_auto_picks_cuda_and_says_so(manifest):
    with OrtPredictor(_staged(manifest, "tiny", "fp32"), device="auto") as predictor:
        described = predictor.describe()
        assert predictor.device == "cuda" and predictor.providers[0] == eps.CUDA
        assert described["requested_device"] == "auto" and described["io_binding"] is True
        assert "auto_note" not in described


@cuda_only
def test_tensorrt_without_its_libraries_raises_naming_what_is_missing(manifest):
    model = _staged(manifest, "tiny", "fp32")
    if eps.TENSORRT in ort.get_available_providers() and eps.try_load("libnvinfer.so.10") is None:
        pytest.skip("TensorRT's libraries load here")
    with pytest.raises(DeviceUnavailableError, match=r"device='tensorrt': .*TensorrtExecutionProvider") as caught:
        OrtPredictor(model, device="tensorrt")
    print(f"device='tensorrt' here: {caught.value}")
    assert "libnvinfer" in str(caught.value) or "has no TensorrtExecutionProvider" in str(caught.value)


def test_four_threads_sharing_one_predictor_give_the_serial_results(manifest):
    inputs = np.load(_staged(manifest, "tiny", "inputs"))
    batches = [inputs[i % len(inputs) :][:3] for i in range(16)]  # 16 runs of 1..3 images
    with OrtPredictor(_staged(manifest, "tiny", "fp32"), device=DEVICE) as predictor:
        serial = [predictor.logits(b) for b in batches]
        with ThreadPoolExecutor(4) as pool:
            threaded = list(pool.map(predictor.logits, batches))
    for i, (a, b) in enumerate(zip(serial, threaded, strict=True)):
        # the same shapes give the same kernels; a race would mix images, far beyond float rounding
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5, err_msg=f"run {i} of a batch of {len(batches[i])}")


@cuda_only
def test_tensorrt_fp16_with_engine_cache(manifest, tmp_path):
    model = _staged(manifest, "tiny", "fp32")
    try:
        predictor = OrtPredictor(model, device="tensorrt", tensorrt_fp16=True, tensorrt_cache=tmp_path / "trt")
    except DeviceUnavailableError as exc:
        pytest.skip(f"TensorRT does not load here: {exc}")
    inputs = np.load(_staged(manifest, "tiny", "inputs"))
    reference = np.load(_staged(manifest, "tiny", "cpu_logits"))
    with predictor:
        assert predictor.providers[0] == eps.TENSORRT and predictor.precision == "fp16"
        assert np.abs(predictor.logits(inputs) - reference).max() < 5e-2
    assert any((tmp_path / "trt").iterdir())
