"""Transformer building blocks of LV-ViT, in Paddle.

Ported from the authors' `tlt/models/layers.py` (zihangJiang/TokenLabeling,
Apache-2.0): `Block` (pre-norm, residuals scaled by 1/skip_lam), `MHABlock` and
`FFNBlock` (the residual branch normalises `x * skip_lam`), `GroupLinear`, and
an attention whose scale is applied to q before `q @ k^T`.
"""

from __future__ import annotations

import paddle
import paddle.nn as nn
import paddle.nn.functional as F


class DropPath(nn.Layer):
    """Stochastic depth per sample (identity in eval mode or with rate 0)."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        shape = [x.shape[0]] + [1] * (x.ndim - 1)
        mask = paddle.floor(keep + paddle.rand(shape, dtype=x.dtype))
        return x / keep * mask

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class GroupLinear(nn.Layer):
    """Block-diagonal linear layer: `groups` independent [in/g, out/g] matrices.

    Input is [T, B, D] as in the authors' code; the parameter is named
    `group_weight` with shape [groups, in/g, out/g] in both frameworks.
    """

    def __init__(self, in_planes: int, out_channels: int, groups: int = 1, bias: bool = True) -> None:
        super().__init__()
        if in_planes % groups or out_channels % groups:
            raise ValueError(
                f"GroupLinear: in_planes={in_planes} and out_channels={out_channels} "
                f"must both be divisible by groups={groups}"
            )
        self.in_dim = in_planes
        self.out_dim = out_channels
        self.groups = groups
        self.group_in_dim = in_planes // groups
        self.group_out_dim = out_channels // groups
        self.group_weight = self.create_parameter(
            [groups, self.group_in_dim, self.group_out_dim], default_initializer=nn.initializer.Constant(0.0)
        )
        # The authors always create the bias, whatever `bias` says; keep the same state dict.
        self.group_bias = self.create_parameter([out_channels], default_initializer=nn.initializer.Constant(0.0))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        t, b, d = x.shape
        x = x.reshape([t * b, self.groups, d // self.groups]).transpose([1, 0, 2])  # [g, tb, d/g]
        out = paddle.bmm(x, self.group_weight)  # [g, tb, f]
        return out.transpose([1, 0, 2]).reshape([t, b, self.out_dim]) + self.group_bias


class Mlp(nn.Layer):
    """fc1 -> GELU (exact) -> dropout -> fc2 -> dropout; GroupLinear when group > 1."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: type[nn.Layer] = nn.GELU,
        drop: float = 0.0,
        group: int = 1,
    ) -> None:
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        if group == 1:
            self.fc1 = nn.Linear(in_features, hidden_features)
            self.fc2 = nn.Linear(hidden_features, out_features)
        else:
            self.fc1 = GroupLinear(in_features, hidden_features, group)
            self.fc2 = GroupLinear(hidden_features, out_features, group)
        self.act = act_layer()
        self.drop = nn.Dropout(drop)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self.drop(self.act(self.fc1(x)))
        return self.drop(self.fc2(x))


class Attention(nn.Layer):
    """Multi-head self-attention with one bias-free qkv projection by default."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        head_dim: int | None = None,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim if head_dim is not None else dim // num_heads
        self.scale = qk_scale or self.head_dim**-0.5
        inner = self.head_dim * num_heads
        self.qkv = nn.Linear(dim, inner * 3, bias_attr=None if qkv_bias else False)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(inner, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: paddle.Tensor, padding_mask: paddle.Tensor | None = None) -> paddle.Tensor:
        b, n = x.shape[0], x.shape[1]
        qkv = self.qkv(x).reshape([b, n, 3, self.num_heads, self.head_dim]).transpose([2, 0, 3, 1, 4])
        q, k, v = qkv[0], qkv[1], qkv[2]
        # The authors scale q before the product ("to make q@k.t more stable").
        attn = paddle.matmul(q * self.scale, k, transpose_y=True)
        if padding_mask is not None:
            masked = padding_mask.astype("bool").unsqueeze([1, 2])
            attn = paddle.where(masked, paddle.full_like(attn, float("-inf")), attn)
        attn = self.attn_drop(F.softmax(attn, axis=-1))
        x = paddle.matmul(attn, v).transpose([0, 2, 1, 3]).reshape([b, n, self.head_dim * self.num_heads])
        return self.proj_drop(self.proj(x))


def _drop_path(rate: float) -> nn.Layer:
    return DropPath(rate) if rate > 0.0 else nn.Identity()


class _ResidualBlock(nn.Layer):
    """The three block kinds share the authors' signature; each builds the halves it has (attention, MLP), in the
    authors' order, so parameters are created (and randomly initialised) as in their code."""

    has_attn = True
    has_mlp = True

    def __init__(
        self,
        dim: int,
        num_heads: int,
        head_dim: int | None = None,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        act_layer: type[nn.Layer] = nn.GELU,
        norm_layer: type[nn.Layer] = nn.LayerNorm,
        group: int = 1,
        skip_lam: float = 1.0,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.mlp_hidden_dim = int(dim * mlp_ratio)
        self.skip_lam = skip_lam
        if self.has_attn:
            self.norm1 = norm_layer(dim)
            self.attn = Attention(dim, num_heads, head_dim, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = _drop_path(drop_path)
        if self.has_mlp:
            self.norm2 = norm_layer(dim)
            self.mlp = Mlp(dim, self.mlp_hidden_dim, act_layer=act_layer, drop=drop, group=group)


class Block(_ResidualBlock):
    """Pre-norm transformer block: `x + attn(norm1(x)) / skip_lam`, then the MLP likewise."""

    def forward(self, x: paddle.Tensor, padding_mask: paddle.Tensor | None = None) -> paddle.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), padding_mask)) / self.skip_lam
        return x + self.drop_path(self.mlp(self.norm2(x))) / self.skip_lam


class MHABlock(_ResidualBlock):
    """Attention-only residual block: `x + attn(norm1(x * skip_lam)) / skip_lam`."""

    has_mlp = False

    def forward(self, x: paddle.Tensor, padding_mask: paddle.Tensor | None = None) -> paddle.Tensor:
        return x + self.drop_path(self.attn(self.norm1(x * self.skip_lam), padding_mask)) / self.skip_lam


class FFNBlock(_ResidualBlock):
    """MLP-only residual block: `x + mlp(norm2(x * skip_lam)) / skip_lam`."""

    has_attn = False

    def forward(self, x: paddle.Tensor, padding_mask: paddle.Tensor | None = None) -> paddle.Tensor:
        # padding_mask is accepted so every block type has one call signature.
        return x + self.drop_path(self.mlp(self.norm2(x * self.skip_lam))) / self.skip_lam


BLOCK_TYPES: dict[str, type[nn.Layer]] = {"tr": Block, "mha": MHABlock, "ffn": FFNBlock}
