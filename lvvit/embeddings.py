"""Patch embeddings of LV-ViT: the 4-layer convolutional stems, the naive one, and HybridEmbed.

Ported from the authors' `tlt/models/layers.py` (zihangJiang/TokenLabeling, Apache-2.0).
Every embedding returns a [B, C, H/16, W/16] feature map; the model flattens it to tokens.
"""

from __future__ import annotations

import paddle
import paddle.nn as nn

from lvvit.errors import ResolutionError


def _grid(layer: nn.Layer, img_size: int, patch_size: int, embed_dim: int) -> None:
    """Check and record the patch grid every stem shares: sizes, patch count, width."""
    if img_size % patch_size:
        raise ResolutionError(f"input size {img_size} is not divisible by the patch size {patch_size}")
    layer.img_size = img_size
    layer.patch_size = patch_size
    layer.num_patches = (img_size // patch_size) ** 2
    layer.embed_dim = embed_dim


class PatchEmbedNaive(nn.Layer):
    """One conv of kernel and stride `patch_size` (the plain ViT embedding)."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        _grid(self, img_size, patch_size, embed_dim)
        self.proj = nn.Conv2D(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.proj(x)


class PatchEmbed4_2(nn.Layer):
    """conv7x7/2 + BN + ReLU, two conv3x3 + BN + ReLU, then a `patch/2` conv to `embed_dim`.

    `stem_channels` is 64 for LV-ViT-S/M (`4_2`) and 128 for LV-ViT-L (`4_2_128`).
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        stem_channels: int = 64,
    ) -> None:
        super().__init__()
        _grid(self, img_size, patch_size, embed_dim)
        c = stem_channels
        self.conv1 = nn.Conv2D(in_chans, c, kernel_size=7, stride=2, padding=3, bias_attr=False)
        self.bn1 = nn.BatchNorm2D(c)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2D(c, c, kernel_size=3, stride=1, padding=1, bias_attr=False)
        self.bn2 = nn.BatchNorm2D(c)
        self.conv3 = nn.Conv2D(c, c, kernel_size=3, stride=1, padding=1, bias_attr=False)
        self.bn3 = nn.BatchNorm2D(c)
        half = patch_size // 2
        self.proj = nn.Conv2D(c, embed_dim, kernel_size=half, stride=half)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.relu(self.bn3(self.conv3(x)))
        return self.proj(x)


class PatchEmbed4_2_128(PatchEmbed4_2):
    """The LV-ViT-L stem: `PatchEmbed4_2` with 128 channels."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__(img_size, patch_size, in_chans, embed_dim, stem_channels=128)


class HybridEmbed(nn.Layer):
    """Tokens from a CNN backbone's last feature map, projected by a 1x1 conv.

    `backbone(x)` must return a sequence of feature maps; the last one is used.
    Without `feature_size` the backbone is run once on zeros to find the map's
    size and channels; with it, `feature_dim` must be given as well.
    """

    def __init__(
        self,
        backbone: nn.Layer,
        img_size: int = 224,
        feature_size: int | None = None,
        in_chans: int = 3,
        embed_dim: int = 768,
        feature_dim: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(backbone, nn.Layer):
            raise TypeError(f"HybridEmbed needs a paddle.nn.Layer backbone, got {type(backbone).__name__}")
        self.img_size = img_size
        self.backbone = backbone
        if feature_size is None:
            was_training = backbone.training
            backbone.eval()
            with paddle.no_grad():
                out = backbone(paddle.zeros([1, in_chans, img_size, img_size]))[-1]
            backbone.train() if was_training else backbone.eval()
            grid = tuple(out.shape[-2:])
            feature_dim = out.shape[1]
        else:
            if feature_dim is None:
                raise ValueError("HybridEmbed: feature_dim is required when feature_size is given")
            grid = (feature_size, feature_size)
        self.num_patches = grid[0] * grid[1]
        self.proj = nn.Conv2D(feature_dim, embed_dim, kernel_size=1)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.proj(self.backbone(x)[-1])


PATCH_EMBEDS: dict[str, type[nn.Layer]] = {
    "4_2": PatchEmbed4_2,
    "4_2_128": PatchEmbed4_2_128,
    "naive": PatchEmbedNaive,
}
