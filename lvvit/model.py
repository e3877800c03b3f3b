"""LV-ViT in Paddle.

Paper: "All Tokens Matter: Token Labeling for Training Better Vision Transformers",
Zi-Hang Jiang et al., NeurIPS 2021 (arXiv:2104.10858).
Original implementation: https://github.com/zihangJiang/TokenLabeling (Apache-2.0),
package `tlt` on PyPI; this is a port of `tlt/models/lvvit.py`, with the same
parameter names so that the authors' checkpoints load after layout conversion.

Inference output: `head(cls) + 0.5 * max over patch tokens of aux_head(tokens)`,
taken per sample. Training with MixToken returns `(x_cls, x_aux, bbox)`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import paddle
import paddle.nn as nn

from lvvit.embeddings import PATCH_EMBEDS, HybridEmbed
from lvvit.layers import BLOCK_TYPES, GroupLinear

BBox = tuple[int, int, int, int]


def drop_path_rates(drop_path_rate: float | Sequence[float], depth: int, decay: str = "linear") -> list[float]:
    """Stochastic-depth rate per block: `linear` from 0 to the rate, `fix` everywhere, or an explicit list."""
    if decay == "linear":
        return [float(r) for r in np.linspace(0.0, float(drop_path_rate), depth, dtype=np.float32)]
    if decay == "fix":
        return [float(drop_path_rate)] * depth
    rates = list(drop_path_rate)  # type: ignore[arg-type]
    if len(rates) != depth:
        raise ValueError(f"drop_path_rate lists {len(rates)} rates for {depth} blocks")
    return [float(r) for r in rates]


def rand_bbox(grid_size: tuple[int, int], lam: float, rng: np.random.Generator) -> BBox:
    """A CutMix box on the patch grid covering about `1 - lam` of it: (x1, y1, x2, y2).

    x indexes the grid's first spatial axis and y its second, as in the authors' code.
    """
    w, h = grid_size
    cut_rat = np.sqrt(1.0 - lam)
    cut_w, cut_h = int(w * cut_rat), int(h * cut_rat)
    cx, cy = int(rng.integers(w)), int(rng.integers(h))
    x1 = int(np.clip(cx - cut_w // 2, 0, w))
    y1 = int(np.clip(cy - cut_h // 2, 0, h))
    x2 = int(np.clip(cx + cut_w // 2, 0, w))
    y2 = int(np.clip(cy + cut_h // 2, 0, h))
    return x1, y1, x2, y2


def _box_mask(height: int, width: int, bbox: BBox) -> paddle.Tensor:
    x1, y1, x2, y2 = bbox
    mask = np.zeros((height, width), dtype=bool)
    mask[x1:x2, y1:y2] = True
    return paddle.to_tensor(mask)


def _patch_embed(
    stem: str, hybrid_backbone: nn.Layer | None, img_size: int, patch_size: int, in_chans: int, embed_dim: int
) -> nn.Layer:
    """The stem: a hybrid CNN backbone when given, else the named convolutional stem."""
    if hybrid_backbone is not None:
        return HybridEmbed(hybrid_backbone, img_size=img_size, in_chans=in_chans, embed_dim=embed_dim)
    if stem not in PATCH_EMBEDS:
        raise ValueError(f"unknown stem {stem!r}; valid: {', '.join(PATCH_EMBEDS)}")
    return PATCH_EMBEDS[stem](img_size, patch_size, in_chans, embed_dim)


def _blocks(kinds: list[str], rates: Sequence[float], block_args: dict) -> nn.LayerList:
    """One block per kind ("tr", "mha", "ffn"), each with its own drop-path rate."""
    unknown = sorted(set(kinds) - set(BLOCK_TYPES))
    if unknown:
        raise ValueError(f"unknown block types {unknown} in order; valid: {', '.join(BLOCK_TYPES)}")
    return nn.LayerList(
        [BLOCK_TYPES[kind](drop_path=rate, **block_args) for kind, rate in zip(kinds, rates, strict=True)]
    )


class LVViT(nn.Layer):
    """Vision transformer with a convolutional stem, scaled residuals and a dense aux head.

    Args mirror the authors' `LV_ViT`; `stem` replaces `p_emb` (`"4_2"`,
    `"4_2_128"` or `"naive"`), and `hybrid_backbone` selects `HybridEmbed`.
    `order` (a list of "tr" / "mha" / "ffn") overrides `depth`.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float | Sequence[float] = 0.0,
        drop_path_decay: str = "linear",
        hybrid_backbone: nn.Layer | None = None,
        norm_layer: type[nn.Layer] = nn.LayerNorm,
        stem: str = "4_2",
        head_dim: int | None = None,
        skip_lam: float = 1.0,
        order: Sequence[str] | None = None,
        mix_token: bool = False,
        return_dense: bool = False,
        mix_beta: float = 1.0,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if mix_token and not return_dense:
            raise ValueError("mix_token needs return_dense=True (the aux head scores the mixed tokens)")
        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dim
        self.img_size = img_size
        self.patch_size = patch_size
        self.patch_embed = _patch_embed(stem, hybrid_backbone, img_size, patch_size, in_chans, embed_dim)
        num_patches = self.patch_embed.num_patches
        trunc = nn.initializer.TruncatedNormal(std=0.02)
        self.cls_token = self.create_parameter([1, 1, embed_dim], default_initializer=trunc)
        self.pos_embed = self.create_parameter([1, num_patches + 1, embed_dim], default_initializer=trunc)
        self.pos_drop = nn.Dropout(drop_rate)
        kinds = list(order) if order is not None else ["tr"] * depth
        rates = drop_path_rates(drop_path_rate, len(kinds), drop_path_decay)
        block_args = dict(dim=embed_dim, num_heads=num_heads, head_dim=head_dim, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias)
        block_args.update(qk_scale=qk_scale, drop=drop_rate, attn_drop=attn_drop_rate, norm_layer=norm_layer)
        self.blocks = _blocks(kinds, rates, {**block_args, "skip_lam": skip_lam})
        self.norm = norm_layer(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.return_dense = return_dense
        self.mix_token = mix_token
        self.mix_beta = mix_beta
        self._rng = np.random.default_rng(seed)
        if return_dense:
            self.aux_head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(layer: nn.Layer) -> None:
        trunc = nn.initializer.TruncatedNormal(std=0.02)
        zeros, ones = nn.initializer.Constant(0.0), nn.initializer.Constant(1.0)
        if isinstance(layer, nn.Linear):
            trunc(layer.weight)
            if layer.bias is not None:
                zeros(layer.bias)
        elif isinstance(layer, GroupLinear):
            trunc(layer.group_weight)
            zeros(layer.group_bias)
        elif isinstance(layer, nn.LayerNorm):
            ones(layer.weight)
            zeros(layer.bias)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    def forward_embeddings(self, x: paddle.Tensor) -> paddle.Tensor:
        """Image batch -> patch feature map [B, C, H/16, W/16]."""
        return self.patch_embed(x)

    def forward_tokens(self, x: paddle.Tensor) -> paddle.Tensor:
        """Patch tokens [B, N, C] -> normalised tokens with the class token first [B, N+1, C]."""
        cls_tokens = self.cls_token.expand([x.shape[0], -1, -1])
        x = paddle.concat([cls_tokens, x], axis=1) + self.pos_embed
        x = self.pos_drop(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_features(self, x: paddle.Tensor) -> paddle.Tensor:
        """Image batch -> normalised tokens [B, N+1, C] (no MixToken)."""
        x = self.forward_embeddings(x)
        return self.forward_tokens(x.flatten(2).transpose([0, 2, 1]))

    def forward_head(self, tokens: paddle.Tensor) -> paddle.Tensor:
        """Tokens -> inference logits: class head plus half the per-sample max of the aux head."""
        x_cls = self.head(tokens[:, 0])
        if not self.return_dense:
            return x_cls
        x_aux = self.aux_head(tokens[:, 1:])
        # Paddle's max(axis) returns the values only: [B, classes], one row per sample.
        return x_cls + 0.5 * x_aux.max(axis=1)

    def forward(self, x: paddle.Tensor, mix_bbox: BBox | None = None):
        """Eval: logits [B, classes]. Training with `return_dense`: `(x_cls, x_aux, bbox)`.

        With MixToken in training, the box is drawn at random unless `mix_bbox` fixes it.
        """
        if not self.training:
            return self.forward_head(self.forward_features(x))
        x = self.forward_embeddings(x)
        grid_h, grid_w = x.shape[2], x.shape[3]
        bbox: BBox = (0, 0, 0, 0)
        if self.mix_token:
            if mix_bbox is None:
                lam = self._rng.beta(self.mix_beta, self.mix_beta)
                mix_bbox = rand_bbox((grid_h, grid_w), lam, self._rng)
            bbox = tuple(int(v) for v in mix_bbox)  # type: ignore[assignment]
            inside = _box_mask(grid_h, grid_w, bbox)
            x = paddle.where(inside, x.flip([0]), x)
        tokens = self.forward_tokens(x.flatten(2).transpose([0, 2, 1]))
        x_cls = self.head(tokens[:, 0])
        if not self.return_dense:
            return x_cls
        x_aux = self.aux_head(tokens[:, 1:])
        if self.mix_token:
            # Put each sample's own token predictions back where the box swapped them.
            b, c = x_aux.shape[0], x_aux.shape[-1]
            grid = x_aux.reshape([b, grid_h, grid_w, c])
            grid = paddle.where(inside.unsqueeze(-1), grid.flip([0]), grid)
            x_aux = grid.reshape([b, grid_h * grid_w, c])
        return x_cls, x_aux, bbox
