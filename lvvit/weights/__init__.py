"""Weights readers and writers: `.pdparams`, `.safetensors` and the authors' `.pth.tar`, bounded and checked.

    from lvvit.weights import load_weights, read_state_dict, save_state_dict

`state_dict` reads every format into one Paddle-layout state dict (and writes it
back); `safe_pickle` is the restricted unpickler behind the PyTorch and Paddle
pickles.
"""

from __future__ import annotations

from lvvit.weights.state_dict import (
    CHECKPOINT_KEYS,
    TORCH_SUFFIXES,
    WeightsInfo,
    check_fit,
    linear_weight_names,
    load_weights,
    read_state_dict,
    resample_pos_embed,
    save_state_dict,
    tensors_sha256,
    torch_to_paddle,
    weights_identity,
)

__all__ = [
    "CHECKPOINT_KEYS",
    "TORCH_SUFFIXES",
    "WeightsInfo",
    "check_fit",
    "linear_weight_names",
    "load_weights",
    "read_state_dict",
    "resample_pos_embed",
    "save_state_dict",
    "tensors_sha256",
    "torch_to_paddle",
    "weights_identity",
]
