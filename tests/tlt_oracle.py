"""The authors' PyTorch implementation (`tlt` on PyPI) as a test oracle.

Builds `tlt`'s LV_ViT with the same settings as a kit preset, fills every
parameter and BatchNorm statistic with non-trivial values, and saves it as
the authors' release files are saved (`.pth.tar`, optionally wrapped).
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
tlt_lvvit = pytest.importorskip("tlt.models.lvvit")


def build_reference(preset, seed: int = 0):
    """tlt's LV_ViT with `preset`'s architecture and input size, non-trivial weights, eval mode."""
    from lvvit.authors import authors_model

    torch.manual_seed(seed)
    model = authors_model(preset)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if name.endswith("running_var"):
                tensor.copy_(0.5 + noise.abs())
            elif name.endswith(
                ("norm1.weight", "norm2.weight", "norm.weight", "bn1.weight", "bn2.weight", "bn3.weight")
            ):
                tensor.copy_(1.0 + 0.1 * noise)
            elif name.endswith("running_mean"):
                tensor.copy_(0.2 * noise)
            elif name.endswith(".bias"):
                tensor.copy_(0.02 * noise)
            elif name in ("cls_token", "pos_embed"):
                tensor.copy_(0.02 * noise)
    return model.eval()


def save_authors_checkpoint(model, path: Path, wrap: str | None = "state_dict", prefix: str = "") -> Path:
    state = {prefix + k: v for k, v in model.state_dict().items()}
    torch.save({wrap: state, "epoch": 300} if wrap else state, path)
    return path
