"""The one preprocessing definition: parity with timm's eval transform, every PIL mode, clear errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from lvvit import ImageError, get_preset, load_image, preprocess, preprocess_batch


def _photo(width: int = 320, height: int = 240, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 / width, yy * 255 / height, (xx + yy) * 127 / (width + height)], axis=-1)
    noisy = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(noisy)


@pytest.mark.parametrize("preset", ["lvvit_s", "lvvit_m_384"])
@pytest.mark.parametrize("size", [(320, 240), (200, 300), (500, 500)])
def test_matches_timm_eval_transform(preset, size):
    transforms = pytest.importorskip("timm.data")
    config = get_preset(preset).preprocess
    timm_transform = transforms.create_transform(
        input_size=(3, config.input_size, config.input_size),
        crop_pct=config.crop_pct,
        interpolation="bicubic",
        mean=config.mean,
        std=config.std,
    )
    image = _photo(*size)
    expected = timm_transform(image).numpy()
    got = preprocess(image, config)
    assert got.dtype == np.float32 and got.shape == (3, config.input_size, config.input_size)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def _as_mode(mode: str) -> Image.Image:
    rgb = _photo(120, 90)
    gray = np.asarray(rgb.convert("L"))
    if mode == "I;16":
        return Image.fromarray(gray.astype(np.uint16) * 257)
    if mode == "I":
        return Image.fromarray(gray.astype(np.int32) * 257)
    if mode == "F":
        return Image.fromarray(gray.astype(np.float32) / 255.0)
    if mode == "P+transparency":
        img = rgb.convert("P")
        img.info["transparency"] = 0
        return img
    return rgb.convert(mode)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "P+transparency", "RGBA", "CMYK", "1", "I;16", "I", "F", "YCbCr"])
def test_every_pil_mode_becomes_rgb(mode):
    config = get_preset("lvvit_s").preprocess
    img = _as_mode(mode)
    out = preprocess(img, config)
    assert out.shape == (3, 224, 224) and out.dtype == np.float32 and np.isfinite(out).all()


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_high_bit_depth_gray_is_scaled_not_clipped(mode):
    assert _as_mode(mode).mode == mode
    reference = np.asarray(load_image(_as_mode("L")), dtype=np.int16)
    converted = np.asarray(load_image(_as_mode(mode)), dtype=np.int16)
    assert np.abs(converted - reference).max() <= 1


def test_sixteen_bit_png_file(tmp_path):
    path = tmp_path / "deep.png"
    _as_mode("I;16").save(path)
    assert preprocess(path, get_preset("lvvit_s").preprocess).shape == (3, 224, 224)


def test_arrays_and_batches():
    config = get_preset("lvvit_s").preprocess
    photo = _photo()
    array = np.asarray(photo)
    batch = preprocess_batch([photo, array, array[:, :, :1]], config)
    assert batch.shape == (3, 3, 224, 224)
    np.testing.assert_array_equal(batch[0], batch[1])
    with pytest.raises(ImageError, match=r"uint8, got shape \(90, 120, 3\) dtype float64"):
        load_image(np.zeros((90, 120, 3)))


def test_unreadable_files_name_themselves(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    buffer = io.BytesIO()
    _photo().save(buffer, format="JPEG")
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(buffer.getvalue()[:2000])
    for path, reason in ((empty, "not an image"), (text, "not an image"), (truncated, "unreadable image")):
        with pytest.raises(ImageError, match=rf"{path.name}: {reason}"):
            load_image(path)
    with pytest.raises(ImageError, match=r"missing.png: no such image file"):
        load_image(tmp_path / "missing.png")


def test_in_memory_images_are_bounded_too():
    """A PIL image or array handed over by an app meets the same limits as a file (named 'image')."""
    config = get_preset("lvvit_s").preprocess
    with pytest.raises(ImageError, match=r"image: unreadable image: 100000x1 \(aspect ratio 100000:1\)"):
        preprocess(Image.new("L", (100_000, 1)), config)
    with pytest.raises(ImageError, match=r"image: unreadable image: it is 0x5 pixels \(empty\)"):
        preprocess(np.zeros((5, 0, 3), dtype=np.uint8), config)
    assert preprocess(Image.new("RGB", (500, 1)), config).shape == (3, 224, 224)  # 500:1 is within the limit
