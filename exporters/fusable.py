"""An export-time rewrite of LV-ViT blocks that ONNX Runtime's transformer optimizer can fuse.

The mathematics is unchanged; only its spelling moves to the pattern that
`onnxruntime.transformers` recognises (the one a PyTorch/HF ViT export has):

- one `qkv` projection -> separate `q`, `k`, `v` projections with a zero bias
  (the fused Attention op takes a bias; adding 0.0 changes nothing);
- the scale `head_dim**-0.5` on q -> a Div of `q @ k^T` by `sqrt(head_dim)`;
- the residual `/ skip_lam` -> folded into the `proj` and `fc2` weights and
  biases, so each residual is a plain Add that fuses into SkipLayerNormalization.

Differences against the original are float rounding only (scale and 1/skip_lam
applied at another point), measured by the export verification as usual.
"""

from __future__ import annotations

import copy
import math

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from lvvit.layers import Attention, Block
from lvvit.model import LVViT


def _linear_from(weight: paddle.Tensor, bias: paddle.Tensor | None) -> nn.Linear:
    layer = nn.Linear(weight.shape[0], weight.shape[1])
    layer.weight.set_value(weight)
    layer.bias.set_value(bias if bias is not None else paddle.zeros([weight.shape[1]], dtype=weight.dtype))
    return layer


class FusableAttention(nn.Layer):
    """Self-attention spelled as separate q/k/v projections and a Div by sqrt(head_dim)."""

    def __init__(self, attn: Attention, out_scale: float) -> None:
        super().__init__()
        if attn.scale != attn.head_dim**-0.5:
            raise ValueError("a custom qk_scale cannot be expressed as ONNX Runtime's Div by sqrt(head_dim)")
        self.num_heads = attn.num_heads
        self.head_dim = attn.head_dim
        inner = attn.num_heads * attn.head_dim
        w = attn.qkv.weight  # [dim, 3 * inner], Paddle layout
        b = attn.qkv.bias
        self.q, self.k, self.v = (
            _linear_from(w[:, i * inner : (i + 1) * inner], None if b is None else b[i * inner : (i + 1) * inner])
            for i in range(3)
        )
        self.proj = _linear_from(attn.proj.weight * out_scale, attn.proj.bias * out_scale)
        self.register_buffer("sqrt_head_dim", paddle.to_tensor([math.sqrt(attn.head_dim)], dtype="float32"))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        n = x.shape[1]
        shape = [0, n, self.num_heads, self.head_dim]  # 0 copies the batch size: a constant shape for ORT
        q = self.q(x).reshape(shape).transpose([0, 2, 1, 3])
        k = self.k(x).reshape(shape).transpose([0, 2, 3, 1])
        v = self.v(x).reshape(shape).transpose([0, 2, 1, 3])
        attn = F.softmax(paddle.divide(paddle.matmul(q, k), self.sqrt_head_dim), axis=-1)
        out = paddle.matmul(attn, v).transpose([0, 2, 1, 3]).reshape([0, n, self.num_heads * self.head_dim])
        return self.proj(out)


class FusableBlock(nn.Layer):
    """`Block` with plain residual Adds: 1/skip_lam lives in the proj and fc2 weights."""

    def __init__(self, block: Block) -> None:
        super().__init__()
        scale = 1.0 / block.skip_lam
        self.norm1 = block.norm1
        self.attn = FusableAttention(block.attn, scale)
        self.norm2 = block.norm2
        self.mlp = block.mlp
        self.mlp.fc2 = _linear_from(block.mlp.fc2.weight * scale, block.mlp.fc2.bias * scale)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        # Branch first: ORT's matcher takes the first Add parent of the residual, and in block 0
        # the other input is an Add too (the position embedding).
        x = self.attn(self.norm1(x)) + x
        return self.mlp(self.norm2(x)) + x


def fusable_copy(model: LVViT) -> LVViT:
    """A copy of `model` (eval mode) whose transformer blocks are `FusableBlock`s; others are kept."""
    clone = copy.deepcopy(model)
    for i, block in enumerate(clone.blocks):
        if type(block) is Block and isinstance(block.mlp.fc2, nn.Linear):
            clone.blocks[i] = FusableBlock(block)
    clone.eval()
    return clone
