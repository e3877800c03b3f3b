"""`create_model`: a preset (at a resolution, with optional weights) -> an LVViT in eval mode."""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import paddle

from lvvit.model import LVViT
from lvvit.presets import ArchConfig, Preset, at_resolution, get_preset
from lvvit.weights.state_dict import WeightsInfo, load_weights

_ARCH_FIELDS = {f.name for f in fields(ArchConfig)}


def resolve_preset(preset: str | Preset, resolution: int | None = None, **arch_overrides: Any) -> Preset:
    """The preset, at `resolution`, with architecture fields replaced (e.g. `depth=2` for tests)."""
    spec = get_preset(preset) if isinstance(preset, str) else preset
    unknown = sorted(set(arch_overrides) - _ARCH_FIELDS)
    if unknown:
        raise TypeError(f"unknown architecture overrides {unknown}; valid: {sorted(_ARCH_FIELDS)}")
    if arch_overrides:
        spec = replace(spec, arch=replace(spec.arch, **arch_overrides))
    return at_resolution(spec, resolution)


def create_model(
    preset: str | Preset,
    weights: str | Path | None = None,
    resolution: int | None = None,
    checkpoint_key: str | None = None,
    seed: int | None = 0,
    **arch_overrides: Any,
) -> LVViT:
    """Build a preset in eval mode.

    Args:
        preset: a registered name (see `list_presets()`) or a `Preset`.
        weights: `.pdparams`, `.safetensors` or the authors' `.pth.tar`; None keeps
            the random initialisation (deterministic for a given `seed`).
        resolution: input size other than the preset's; `pos_embed` is resampled.
        checkpoint_key: which entry of a wrapped checkpoint to load (default: the
            first of `state_dict`, `model`, `state_dict_ema` that is present).
        seed: seeds Paddle before initialising, so random weights are reproducible;
            None leaves Paddle's global generator alone.
        arch_overrides: fields of `ArchConfig` to replace (tiny models for tests).

    The model carries `.preset` (the resolved `Preset`) and `.weights_info`
    (a `WeightsInfo`, or None for random weights).
    """
    spec = resolve_preset(preset, resolution, **arch_overrides)
    if seed is not None:
        paddle.seed(seed)
    model = LVViT(img_size=spec.resolution, **spec.arch.to_kwargs())
    info: WeightsInfo | None = None
    if weights is not None:
        info = load_weights(model, weights, checkpoint_key)
    model.eval()
    model.preset = spec
    model.weights_info = info
    return model
