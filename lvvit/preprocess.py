"""The one preprocessing definition: image -> normalised CHW float32.

RGB (any PIL mode converted; alpha dropped as the authors' loader does), resize
the shorter side to `floor(input_size / crop_pct)` with PIL bicubic, center crop
`input_size` square, scale to [0, 1], normalise with mean/std, HWC -> CHW.
This mirrors timm's eval transform, which the authors used for their numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import ImageError
from .presets import PreprocessConfig

ImageInput = Union[str, Path, Image.Image, np.ndarray]  # noqa: UP007 (a runtime alias)

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")

# File suffixes the kit treats as images when it walks a folder.
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)


def image_files(folder: Path) -> list[Path]:
    """Every file under `folder` (recursive) with an image suffix, sorted by path."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _high_bit_depth_to_l(img: Image.Image) -> Image.Image:
    """16-bit / 32-bit gray -> 8-bit L by scaling, not clipping (PIL's convert would saturate)."""
    values = np.asarray(img, dtype=np.float64)
    if img.mode in _SIXTEEN_BIT_MODES or values.max(initial=0) > 255:
        values = values / 257.0
    elif img.mode == "F" and values.max(initial=0) <= 1.0:
        values = values * 255.0
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB."""
    if img.mode == "RGB":
        return img
    if img.mode in _SIXTEEN_BIT_MODES or img.mode in ("I", "F"):
        return _high_bit_depth_to_l(img).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # PIL warns when a palette image with transparency goes straight to RGB
    return img.convert("RGB")


def load_image(source: ImageInput) -> Image.Image:
    """A path, a PIL image or an HWC/HW uint8 array -> a fully decoded RGB PIL image.

    Raises `ImageError` naming the file for anything that is not a readable image.
    """
    if isinstance(source, Image.Image):
        return to_rgb(source)
    if isinstance(source, np.ndarray):
        if (
            source.dtype != np.uint8
            or source.ndim not in (2, 3)
            or (source.ndim == 3 and source.shape[2] not in (1, 3, 4))
        ):
            raise ImageError(
                "an image array must be HxW or HxWxC (C in 1, 3, 4) uint8, "
                f"got shape {source.shape} dtype {source.dtype}"
            )
        array = source[:, :, 0] if source.ndim == 3 and source.shape[2] == 1 else source
        return to_rgb(Image.fromarray(array))
    if isinstance(source, (str, Path)):
        path = Path(source)
        try:
            with Image.open(path) as img:
                img.load()  # decode now, so a truncated file fails here and names itself
                return to_rgb(img)
        except FileNotFoundError:
            raise ImageError(f"{path}: no such image file") from None
        except UnidentifiedImageError:
            raise ImageError(f"{path}: not an image (unrecognised format)") from None
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise ImageError(f"{path}: unreadable image ({exc})") from exc
    raise ImageError(f"cannot read an image from a {type(source).__name__}; give a path, a PIL image or a uint8 array")


def resize_and_crop(img: Image.Image, config: PreprocessConfig) -> Image.Image:
    """Shorter side to `config.resize_size` (bicubic), then a centered `input_size` square."""
    w, h = img.size
    size = config.resize_size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
    crop = config.input_size
    top = int(round((new_h - crop) / 2.0))
    left = int(round((new_w - crop) / 2.0))
    return img.crop((left, top, left + crop, top + crop))


def normalize(img: Image.Image, config: PreprocessConfig) -> np.ndarray:
    """RGB uint8 image -> (x/255 - mean) / std as CHW float32."""
    x = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    x = (x - np.asarray(config.mean, dtype=np.float32)) / np.asarray(config.std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess(image: ImageInput, config: PreprocessConfig) -> np.ndarray:
    """One image -> the model's CHW float32 input."""
    return normalize(resize_and_crop(load_image(image), config), config)


def preprocess_batch(images: Sequence[ImageInput], config: PreprocessConfig) -> np.ndarray:
    """Images -> an NCHW float32 batch."""
    return np.stack([preprocess(image, config) for image in images])
