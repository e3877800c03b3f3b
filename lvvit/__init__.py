"""LV-ViT in Paddle: model, presets, weights and the one preprocessing definition.

Presets, preprocessing and errors import without Paddle, so that a runtime that
only needs preprocessing (ONNX Runtime, OpenVINO) never loads it; the model,
`create_model` and weight loading import Paddle on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from lvvit.errors import (
    ImageError,
    LvvitError,
    ResolutionError,
    UnknownPresetError,
    UnsafeWeightsError,
    WeightsError,
    WeightsMismatchError,
)
from lvvit.preprocess import load_image, preprocess, preprocess_batch
from lvvit.presets import ArchConfig, PreprocessConfig, Preset, get_preset, list_presets

# name -> module that defines it; these need Paddle and load lazily.
_PADDLE_EXPORTS = {
    "create_model": ".factory",
    "resolve_preset": ".factory",
    "LVViT": ".model",
    "WeightsInfo": ".weights",
    "load_weights": ".weights",
    "read_state_dict": ".weights",
}


def __getattr__(name: str) -> Any:
    if name in _PADDLE_EXPORTS:
        return getattr(importlib.import_module(_PADDLE_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ArchConfig",
    "ImageError",
    "LvvitError",
    "Preset",
    "PreprocessConfig",
    "ResolutionError",
    "UnknownPresetError",
    "UnsafeWeightsError",
    "WeightsError",
    "WeightsMismatchError",
    "get_preset",
    "list_presets",
    "load_image",
    "preprocess",
    "preprocess_batch",
    *_PADDLE_EXPORTS,
]
