"""Weights files: formats, wrappers, conversion, resampling, fit errors, and refusing code."""

from __future__ import annotations

import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import paddle
import pytest

from lvvit import UnsafeWeightsError, WeightsError, WeightsMismatchError, create_model
from lvvit.weights.state_dict import read_state_dict, resample_pos_embed, save_state_dict
from tests.conftest import ROOT, TINY

RES = 64


def _model(seed: int = 0, **extra):
    return create_model("lvvit_s", resolution=extra.pop("resolution", RES), seed=seed, **{**TINY, **extra})


def _outputs(model, res: int = RES) -> np.ndarray:
    x = np.random.default_rng(3).standard_normal((2, 3, res, res)).astype(np.float32)
    return model(paddle.to_tensor(x)).numpy()


@pytest.mark.parametrize("suffix", [".pdparams", ".safetensors"])
def test_save_and_load_round_trip(tmp_path, suffix):
    source = _model(seed=1)
    path = save_state_dict(source, tmp_path / f"w{suffix}")
    loaded = create_model("lvvit_s", weights=path, resolution=RES, **TINY)
    np.testing.assert_array_equal(_outputs(loaded), _outputs(source))
    assert loaded.weights_info.layout == "paddle" and len(loaded.weights_info.sha256) == 64


def test_weights_stored_as_float16_are_converted_and_recorded(tmp_path):
    source = _model(seed=6)
    half = {k: v.numpy().astype(np.float16) for k, v in source.state_dict().items()}
    (tmp_path / "half.pdparams").write_bytes(pickle.dumps(half, protocol=4))
    loaded = create_model("lvvit_s", weights=tmp_path / "half.pdparams", resolution=RES, **TINY)
    assert loaded.weights_info.to_dict()["converted_to_float32"] == {"float16": len(half)}
    for name, value in loaded.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), half[name].astype(np.float32))


def test_paddle_save_file_is_read_without_paddle_load(tmp_path):
    source = _model(seed=2)
    paddle.save(source.state_dict(), str(tmp_path / "native.pdparams"))
    state, layout, _ = read_state_dict(tmp_path / "native.pdparams")
    assert layout == "paddle" and set(state) == set(source.state_dict())


def test_pos_embed_is_resampled_for_another_resolution(tmp_path):
    path = save_state_dict(_model(seed=3), tmp_path / "w.pdparams")
    model = create_model("lvvit_s", weights=path, resolution=96, **TINY)
    assert model.pos_embed.shape == [1, 37, 64]
    assert model.weights_info.resampled_pos_embed == (4, 6)
    assert model(paddle.zeros([1, 3, 96, 96])).shape == [1, 10]


def test_resample_keeps_the_class_token_and_a_constant_grid():
    pos = np.zeros((1, 17, 3), dtype=np.float32)
    pos[0, 0] = [1, 2, 3]
    pos[0, 1:] = 0.5
    out = resample_pos_embed(pos, 6)
    assert out.shape == (1, 37, 3)
    np.testing.assert_array_equal(out[0, 0], [1, 2, 3])
    np.testing.assert_allclose(out[0, 1:], 0.5, atol=1e-6)


def test_mismatch_lists_missing_unexpected_and_misshaped(tmp_path):
    path = save_state_dict(_model(seed=4), tmp_path / "w.pdparams")
    target = tmp_path / "out.safetensors"
    with pytest.raises(WeightsMismatchError) as info:
        create_model("lvvit_s", weights=path, resolution=RES, **{**TINY, "depth": 1, "num_classes": 7})
    message = str(info.value)
    assert "w.pdparams: the weights do not fit the model" in message
    assert "unexpected (" in message and "blocks.1.attn.qkv.weight" in message
    assert "mis-shaped (" in message and "head.weight: file (64, 10) vs model (64, 7)" in message
    result = subprocess.run(
        [sys.executable, "-m", "lvvit.convert", str(path), str(target), "--preset", "lvvit_s"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert "missing (" in result.stderr and "mis-shaped" in result.stderr
    assert not target.exists() and list(tmp_path.iterdir()) == [path]


def test_unknown_format_and_missing_file():
    with pytest.raises(WeightsError, match=r"no such weights file"):
        read_state_dict("/nonexistent/w.pdparams")
    with pytest.raises(WeightsError, match=r"unknown weights format"):
        read_state_dict(Path(__file__))


def test_truncated_pdparams_is_a_clear_error(tmp_path):
    path = save_state_dict(_model(), tmp_path / "w.pdparams")
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(WeightsError, match=r"w.pdparams: not a readable pickle of weights"):
        read_state_dict(path)


class _Payload:
    """Unpickling this calls os.system, which would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_malicious_pdparams_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pdparams"
    path.write_bytes(pickle.dumps({"head.weight": np.zeros(3), "x": _Payload(marker)}))
    with pytest.raises(UnsafeWeightsError, match=r"evil.pdparams: refusing to load: .*`(posix|os)\.system`"):
        create_model("lvvit_s", weights=path, resolution=RES, **TINY)
    assert not marker.exists()


def test_malicious_torch_checkpoint_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth.tar"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"state_dict": _Payload(marker)}, protocol=2))
        archive.writestr("archive/version", "3\n")
    with pytest.raises(UnsafeWeightsError, match=r"evil.pth.tar: refusing to load"):
        read_state_dict(path)
    assert not marker.exists()


def test_convert_cli_documents_every_flag():
    help_text = subprocess.run(
        [sys.executable, "-m", "lvvit.convert", "--help"], capture_output=True, text=True, cwd=ROOT
    ).stdout
    for flag in ("src", "dst", "--preset", "--resolution", "--checkpoint-key", "lvvit_l_512"):
        assert flag in help_text
