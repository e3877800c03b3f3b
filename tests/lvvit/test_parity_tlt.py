"""The kit's Paddle port against the authors' PyTorch code, on the same weights."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from lvvit import create_model
from lvvit.factory import resolve_preset
from tests.conftest import ROOT
from tests.tlt_oracle import build_reference, save_authors_checkpoint, tlt_lvvit, torch

paddle = pytest.importorskip("paddle")

TOL = 1e-4


def _inputs(resolution: int, batch: int = 2) -> np.ndarray:
    return np.random.default_rng(7).standard_normal((batch, 3, resolution, resolution)).astype(np.float32)


@pytest.mark.parametrize(
    "preset, overrides",
    [
        ("lvvit_s", {}),
        ("lvvit_m", {}),
        ("lvvit_l_448", {"depth": 2}),  # full stem and width of L, fewer blocks for CI time
    ],
)
@pytest.mark.slow
def test_eval_outputs_match_authors(tmp_path, preset, overrides):
    spec = resolve_preset(preset, **overrides)
    reference = build_reference(spec)
    ckpt = save_authors_checkpoint(reference, tmp_path / "lvvit.pth.tar", wrap="state_dict_ema", prefix="module.")
    x = _inputs(spec.resolution)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    model = create_model(preset, weights=ckpt, **overrides)
    got = model(paddle.to_tensor(x)).numpy()
    assert got.shape == expected.shape == (2, 1000)
    assert np.abs(got - expected).max() <= TOL
    assert model.weights_info.layout == "torch"
    assert model.weights_info.checkpoint_key == "state_dict_ema"


def test_training_forward_with_fixed_mixtoken_box_matches(tmp_path, monkeypatch):
    spec = resolve_preset("lvvit_s", depth=2, embed_dim=96, num_heads=3)
    reference = build_reference(spec).train()
    box = (2, 3, 9, 12)
    monkeypatch.setattr(tlt_lvvit, "rand_bbox", lambda size, lam: box)
    ckpt = save_authors_checkpoint(reference, tmp_path / "mix.pth.tar", wrap=None)
    x = _inputs(spec.resolution, batch=3)
    with torch.no_grad():
        ref_cls, ref_aux, ref_box = reference(torch.from_numpy(x))
    model = create_model(spec, weights=ckpt)
    model.train()
    x_cls, x_aux, bbox = model(paddle.to_tensor(x), mix_bbox=box)
    assert tuple(bbox) == tuple(ref_box) == box
    assert np.abs(x_cls.numpy() - ref_cls.numpy()).max() <= TOL
    assert x_aux.shape == list(ref_aux.shape) == [3, 196, 1000]
    assert np.abs(x_aux.numpy() - ref_aux.numpy()).max() <= TOL


@pytest.mark.slow
def test_convert_cli_turns_an_authors_checkpoint_into_paddle_weights(tmp_path):
    spec = resolve_preset("lvvit_s")
    reference = build_reference(spec, seed=3)
    ckpt = save_authors_checkpoint(reference, tmp_path / "lvvit_s-26M-224-83.3.pth.tar")
    out = tmp_path / "lvvit_s.pdparams"
    result = subprocess.run(
        [sys.executable, "-m", "lvvit.convert", str(ckpt), str(out), "--preset", "lvvit_s"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    x = _inputs(224)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    got = create_model("lvvit_s", weights=out)(paddle.to_tensor(x)).numpy()
    assert np.abs(got - expected).max() <= TOL
