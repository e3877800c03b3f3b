"""Sizes of an LV-ViT configuration: multiply-accumulates (arithmetic floors in benchmarks) and weights (memory)."""

from __future__ import annotations

from lvvit.presets import ArchConfig

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


def count_weights(arch: ArchConfig, resolution: int) -> int:
    """Elements of the state dict (parameters and BatchNorm statistics), without building the model."""
    c, k = arch.embed_dim, arch.num_classes
    grid = resolution // arch.patch_size
    if arch.stem in STEM_CHANNELS:
        s = STEM_CHANNELS[arch.stem]
        stem = 3 * s * 7 * 7 + 2 * s * s * 3 * 3 + 3 * 4 * s  # three convs (no bias), three BatchNorms
        stem += s * c * (arch.patch_size // 2) ** 2 + c  # proj conv with bias
    else:
        stem = 3 * c * arch.patch_size**2 + c
    hidden = int(c * arch.mlp_ratio)
    attention = 2 * c + c * 3 * c + (3 * c if arch.qkv_bias else 0) + c * c + c  # norm1, qkv, proj
    mlp = 2 * c + c * hidden + hidden + hidden * c + c  # norm2, fc1, fc2
    kinds = arch.order or ("tr",) * arch.depth
    blocks = sum({"tr": attention + mlp, "mha": attention, "ffn": mlp}[kind] for kind in kinds)
    tokens = c + (grid * grid + 1) * c  # cls_token, pos_embed
    heads = 2 * c + (c * k + k) * (2 if arch.return_dense else 1)  # final norm, head, aux_head
    return stem + tokens + blocks + heads
