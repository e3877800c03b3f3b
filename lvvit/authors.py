"""The authors' PyTorch LV-ViT (`tlt` on PyPI, zihangJiang/TokenLabeling) built with a kit preset's settings.

The kit's Paddle model is a port of `tlt/models/lvvit.py`; this is the one place that maps a preset's
`ArchConfig` onto the authors' constructor. The tests' oracle fills it with non-trivial weights
(`tests/tlt_oracle.py`); the GPU benchmark times it with its own initialisation (`gpu/bench.py`). `torch` and
`tlt` are imported only here, when called (the `reference` extra).
"""

from __future__ import annotations

import importlib
from typing import Any

from lvvit.common.install import install_command
from lvvit.errors import LvvitError
from lvvit.presets import Preset


class AuthorsModelUnavailableError(LvvitError, ImportError):
    """`torch` or `tlt` is not installed."""


def authors_model(preset: Preset) -> Any:
    """tlt's `LV_ViT` with `preset`'s architecture and input size (its own random initialisation, train mode)."""
    try:  # the module: `tlt.models` exports a function of the same name
        tlt_lvvit = importlib.import_module("tlt.models.lvvit")
    except ImportError as exc:
        raise AuthorsModelUnavailableError(
            f"the authors' model needs torch and tlt ({exc}): {install_command('reference')}"
        ) from exc
    arch = preset.arch
    return tlt_lvvit.LV_ViT(
        img_size=preset.resolution,
        patch_size=arch.patch_size,
        num_classes=arch.num_classes,
        embed_dim=arch.embed_dim,
        depth=arch.depth,
        num_heads=arch.num_heads,
        mlp_ratio=arch.mlp_ratio,
        qkv_bias=arch.qkv_bias,
        p_emb=arch.stem,
        skip_lam=arch.skip_lam,
        order=list(arch.order) if arch.order else None,
        return_dense=arch.return_dense,
        mix_token=arch.mix_token,
    )
