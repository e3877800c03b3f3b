"""Behaviour of the Paddle model that does not need the PyTorch oracle."""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from lvvit import create_model
from lvvit.layers import FFNBlock, GroupLinear, MHABlock
from lvvit.model import LVViT, drop_path_rates, rand_bbox
from tests.conftest import TINY


def _images(batch: int, size: int = 64, seed: int = 0) -> paddle.Tensor:
    return paddle.to_tensor(np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32))


def test_each_output_depends_only_on_its_own_image():
    # The seed article's `x_aux.max(1)[0]` gave every sample the first sample's aux maximum.
    model = create_model("lvvit_s", resolution=64, **TINY)
    batch = _images(4)
    together = model(batch).numpy()
    alone = np.concatenate([model(batch[i : i + 1]).numpy() for i in range(4)])
    shuffled = model(paddle.concat([batch[2:], batch[:2]])).numpy()
    np.testing.assert_allclose(together, alone, atol=1e-5)
    np.testing.assert_allclose(shuffled, np.concatenate([together[2:], together[:2]]), atol=1e-5)


def test_inference_output_is_cls_plus_half_the_aux_maximum():
    model = create_model("lvvit_s", resolution=64, **TINY)
    x = _images(3)
    tokens = model.forward_features(x)
    cls = model.head(tokens[:, 0]).numpy()
    aux = model.aux_head(tokens[:, 1:]).numpy()
    np.testing.assert_allclose(model(x).numpy(), cls + 0.5 * aux.max(axis=1), atol=1e-5)


def test_order_overrides_depth_and_builds_each_block_type():
    model = LVViT(img_size=32, embed_dim=32, depth=12, num_heads=2, num_classes=5, order=["tr", "mha", "ffn"])
    assert [type(b).__name__ for b in model.blocks] == ["Block", "MHABlock", "FFNBlock"]
    assert model(_images(2, 32)).shape == [2, 5]
    with pytest.raises(ValueError, match=r"unknown block types \['conv'\]"):
        LVViT(img_size=32, embed_dim=32, num_heads=2, order=["tr", "conv"])


def test_mha_and_ffn_blocks_scale_inside_the_branch():
    x = paddle.to_tensor(np.random.default_rng(1).standard_normal((2, 5, 16)).astype(np.float32))
    mha = MHABlock(16, num_heads=2, skip_lam=2.0)
    expected = x + mha.attn(mha.norm1(x * 2.0)) / 2.0
    np.testing.assert_allclose(mha(x).numpy(), expected.numpy(), atol=1e-6)
    ffn = FFNBlock(16, num_heads=2, mlp_ratio=2.0, skip_lam=3.0)
    expected = x + ffn.mlp(ffn.norm2(x * 3.0)) / 3.0
    np.testing.assert_allclose(ffn(x).numpy(), expected.numpy(), atol=1e-6)


def test_group_linear_is_block_diagonal():
    layer = GroupLinear(8, 6, groups=2)
    rng = np.random.default_rng(2)
    layer.group_weight.set_value(rng.standard_normal((2, 4, 3)).astype(np.float32))
    layer.group_bias.set_value(rng.standard_normal(6).astype(np.float32))
    x = rng.standard_normal((3, 2, 8)).astype(np.float32)
    w, b = layer.group_weight.numpy(), layer.group_bias.numpy()
    expected = np.concatenate([x[..., :4] @ w[0], x[..., 4:] @ w[1]], axis=-1) + b
    np.testing.assert_allclose(layer(paddle.to_tensor(x)).numpy(), expected, atol=1e-5)
    with pytest.raises(ValueError, match="divisible by groups=3"):
        GroupLinear(8, 6, groups=3)


def test_drop_path_rates_follow_the_decay_rule():
    assert drop_path_rates(0.3, 4) == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert drop_path_rates(0.1, 3, "fix") == [0.1, 0.1, 0.1]
    assert drop_path_rates([0.0, 0.5], 2, "list") == [0.0, 0.5]
    with pytest.raises(ValueError, match="lists 1 rates for 2 blocks"):
        drop_path_rates([0.1], 2, "list")
    model = LVViT(img_size=32, embed_dim=32, depth=3, num_heads=2, drop_path_rate=0.2)
    assert [getattr(b.drop_path, "drop_prob", 0.0) for b in model.blocks] == pytest.approx([0.0, 0.1, 0.2])


def test_mixtoken_training_forward_swaps_and_restores_the_box():
    model = create_model("lvvit_s", resolution=64, **TINY)
    model.train()
    x = _images(2)
    # A box over the whole 4x4 grid swaps every patch token with the other sample's.
    x_cls, x_aux, bbox = model(x, mix_bbox=(0, 0, 4, 4))
    assert bbox == (0, 0, 4, 4) and x_cls.shape == [2, 10] and x_aux.shape == [2, 16, 10]
    model.mix_token = False
    plain_cls, plain_aux, no_box = model(x)
    assert no_box == (0, 0, 0, 0)
    # The class token is shared, so sample 0's class output is now sample 1's ...
    np.testing.assert_allclose(x_cls.numpy(), plain_cls.numpy()[::-1], atol=1e-4)
    # ... while the restored token outputs are back with the image they came from.
    np.testing.assert_allclose(x_aux.numpy(), plain_aux.numpy(), atol=1e-4)
    model.mix_token = True
    x1, y1, x2, y2 = model(x)[2]  # a random box from the model's own generator
    assert 0 <= x1 <= x2 <= 4 and 0 <= y1 <= y2 <= 4


def test_rand_bbox_covers_about_one_minus_lambda():
    rng = np.random.default_rng(0)
    x1, y1, x2, y2 = rand_bbox((14, 14), 0.75, rng)
    assert 0 <= x1 <= x2 <= 14 and 0 <= y1 <= y2 <= 14
    assert (x2 - x1) <= 7 and (y2 - y1) <= 7
