"""The preset registry: architecture and preprocessing settings, kept apart.

Architecture numbers and authors' results are from the TokenLabeling README and
`tlt/models/lvvit.py`; crop_pct follows the authors' evaluation configs
(0.9 for LV-ViT-S, 1.0 for M and L).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from lvvit.errors import ResolutionError, UnknownPresetError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ArchConfig:
    """What builds the network (keyword arguments of `LVViT`)."""

    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    skip_lam: float
    stem: str
    patch_size: int = 16
    qkv_bias: bool = False
    num_classes: int = 1000
    return_dense: bool = True
    mix_token: bool = True
    order: tuple[str, ...] | None = None

    def to_kwargs(self) -> dict[str, Any]:
        kwargs = asdict(self)
        if self.order is not None:
            kwargs["order"] = list(self.order)
        return kwargs


@dataclass(frozen=True)
class PreprocessConfig:
    """How an image becomes the model's input: resize shorter side, center crop, normalise."""

    input_size: int
    crop_pct: float
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: str = "RGB"
    layout: str = "NCHW"

    def __post_init__(self) -> None:
        if not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        if self.interpolation != "bicubic":
            raise ValueError(f"only bicubic interpolation is defined for LV-ViT, got {self.interpolation!r}")

    @property
    def resize_size(self) -> int:
        """Shorter side after resizing, before the center crop (timm's rule)."""
        return math.floor(self.input_size / self.crop_pct)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "resize_size": self.resize_size}


@dataclass(frozen=True)
class Preset:
    name: str
    arch: ArchConfig
    preprocess: PreprocessConfig
    params_m: float
    top1: float
    release_file: str
    notes: str = field(default="", compare=False)

    @property
    def resolution(self) -> int:
        return self.preprocess.input_size


def _preset(
    name: str, arch: ArchConfig, img: int, crop_pct: float, params_m: float, top1: float, release: str
) -> Preset:
    return Preset(name, arch, PreprocessConfig(img, crop_pct), params_m, top1, release)


_S = ArchConfig(embed_dim=384, depth=16, num_heads=6, mlp_ratio=3.0, skip_lam=2.0, stem="4_2")
_M = ArchConfig(embed_dim=512, depth=20, num_heads=8, mlp_ratio=3.0, skip_lam=2.0, stem="4_2")
_L = ArchConfig(embed_dim=768, depth=24, num_heads=12, mlp_ratio=3.0, skip_lam=3.0, stem="4_2_128")

_PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        _preset("lvvit_s", _S, 224, 0.9, 26.15, 83.3, "lvvit_s-26M-224-83.3.pth.tar"),
        _preset("lvvit_s_384", _S, 384, 0.9, 26.30, 84.4, "lvvit_s-26M-384-84.4.pth.tar"),
        _preset("lvvit_m", _M, 224, 1.0, 55.83, 84.0, "lvvit_m-56M-224-84.0.pth.tar"),
        _preset("lvvit_m_384", _M, 384, 1.0, 56.03, 85.4, "lvvit_m-56M-384-85.4.pth.tar"),
        _preset("lvvit_m_448", _M, 448, 1.0, 56.13, 85.5, "lvvit_m-56M-448-85.5.pth.tar"),
        _preset("lvvit_l_448", _L, 448, 1.0, 150.47, 86.2, "lvvit_l-150M-448-86.2.pth.tar"),
        _preset("lvvit_l_512", _L, 512, 1.0, 150.66, 86.4, "lvvit_l-150M-512-86.4.pth.tar"),
    )
}

# A tiny architecture (an `lvvit_s` override): small enough for a 2-core CI machine and a GPU smoke run, big enough
# to exercise every path. The tests' models and `gpu/stage.py`'s tiny model use it.
TINY_ARCH: dict[str, int] = {"embed_dim": 64, "depth": 2, "num_heads": 4, "num_classes": 10}


def list_presets() -> list[str]:
    """Names of the registered presets, smallest model first."""
    return list(_PRESETS)


def get_preset(name: str) -> Preset:
    """The preset called `name`; an unknown name fails listing the valid ones."""
    try:
        return _PRESETS[name]
    except KeyError:
        raise UnknownPresetError(f"unknown preset {name!r}; valid presets: {', '.join(_PRESETS)}") from None


def at_resolution(preset: Preset, resolution: int | None) -> Preset:
    """The same preset at another input size (same crop_pct); checks divisibility by the patch size."""
    if resolution is None or resolution == preset.resolution:
        return preset
    patch = preset.arch.patch_size
    if resolution <= 0 or resolution % patch:
        raise ResolutionError(
            f"resolution {resolution} is not a positive multiple of the patch size {patch} "
            f"(try {max(patch, round(resolution / patch) * patch)})"
        )
    return replace(preset, preprocess=replace(preset.preprocess, input_size=resolution))
