"""Multiply-accumulate count of an LV-ViT configuration, for arithmetic floors in benchmarks."""

from __future__ import annotations

from .presets import ArchConfig

STEM_CHANNELS = {"4_2": 64, "4_2_128": 128}


def count_macs(arch: ArchConfig, resolution: int) -> int:
    """MACs of one image's inference forward (convolutions, linear layers, attention products).

    Element-wise work (LayerNorm, GELU, softmax, BatchNorm, residual adds) is a
    few percent of the total and is left out, as FLOP counters usually do.
    """
    half = resolution // 2
    grid = resolution // arch.patch_size
    tokens = grid * grid + 1
    c, k = arch.embed_dim, arch.num_classes
    if arch.stem in STEM_CHANNELS:
        s = STEM_CHANNELS[arch.stem]
        stem = half * half * s * (3 * 7 * 7 + 2 * s * 3 * 3)  # conv1 7x7/2, conv2 and conv3 3x3
        stem += grid * grid * c * s * (arch.patch_size // 2) ** 2  # proj conv
    else:
        stem = grid * grid * c * 3 * arch.patch_size**2
    hidden = int(c * arch.mlp_ratio)
    per_block = tokens * (4 * c * c + 2 * c * hidden) + 2 * tokens * tokens * c
    blocks = len(arch.order) if arch.order else arch.depth
    heads = c * k + (grid * grid * c * k if arch.return_dense else 0)
    return stem + blocks * per_block + heads
