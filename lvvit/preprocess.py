"""The one preprocessing definition: image -> normalised CHW float32.

RGB (any PIL mode converted; alpha dropped as the authors' loader does), resize
the shorter side to `floor(input_size / crop_pct)` with PIL bicubic, center crop
`input_size` square, scale to [0, 1], normalise with mean/std, HWC -> CHW.
This mirrors timm's eval transform, which the authors used for their numbers.

Images come from strangers, so the work per image is bounded: a file is opened
only if it is a regular file (a FIFO named `.jpg` would block forever), an image
over `MAX_IMAGE_PIXELS` is refused before it is decoded, and so is one whose
resized copy would exceed `MAX_RESIZED_PIXELS` (a 20000x1 strip resizes to
4.96M x 248 for lvvit_s: 1.2G pixels). Both, and running out of memory, are an
`ImageError` naming the file.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from lvvit.common.regular_files import open_regular, walk_regular_files
from lvvit.errors import ImageError
from lvvit.presets import PreprocessConfig

# Encoded bytes and binary file-like objects (an upload handler's) are decoded like files.
ImageInput = Union[str, Path, Image.Image, np.ndarray, bytes, bytearray, memoryview, BinaryIO]  # noqa: UP007
ENCODED_TYPES = (bytes, bytearray, memoryview)

# PIL's own decompression-bomb limit (its default Image.MAX_IMAGE_PIXELS, 89.5M pixels, ~268 MB as RGB),
# enforced here whatever a program sets PIL's global to; PIL only warns between 1x and 2x of it.
MAX_IMAGE_PIXELS = 89_478_485
# The resized image before the center crop: 2^25 pixels (~100 MB as RGB). For lvvit_s (shorter side 248)
# this allows a 545:1 aspect ratio; for lvvit_l_512 (512), 128:1.
MAX_RESIZED_PIXELS = 1 << 25

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")

# File suffixes the kit treats as images when it walks a folder.
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def image_files(folder: Path) -> list[Path]:
    """Every regular file under `folder` (recursive) with an image suffix, sorted by path."""
    return [p for p in walk_regular_files(folder)[0] if is_image_name(p)]


def _high_bit_depth_to_l(img: Image.Image) -> Image.Image:
    """16-bit / 32-bit gray -> 8-bit L by scaling, not clipping (PIL's convert would saturate)."""
    values = np.asarray(img, dtype=np.float32)  # float32: half the memory of float64, exact for 16-bit values
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


def is_file_like(source: object) -> bool:
    """A binary file-like object: something with `read` that is not a path, an image or an array."""
    return callable(getattr(source, "read", None)) and not isinstance(source, (str, Path, Image.Image, np.ndarray))


def image_name(source: object) -> str:
    """How errors name an image: its path, a file-like object's name, or what it is."""
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, ENCODED_TYPES):
        return f"image ({len(source)} encoded bytes)"
    name = getattr(source, "name", None) if is_file_like(source) else None
    return str(name) if isinstance(name, (str, Path)) else "image"


def load_image(source: ImageInput) -> Image.Image:
    """A path, a PIL image, an HWC/HW uint8 array, encoded bytes or a binary file-like object -> a fully
    decoded RGB PIL image.

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
        return _load_file(Path(source))
    if isinstance(source, ENCODED_TYPES):
        return _decode(io.BytesIO(source), image_name(source))
    if is_file_like(source):
        return _decode(source, image_name(source))
    raise ImageError(
        f"cannot read an image from a {type(source).__name__}; give a path, a PIL image, a uint8 array, "
        "encoded bytes or a binary file-like object"
    )


# What PIL's decoders raise on crafted files besides OSError: a hostile file must be an ImageError, not a crash.
_DECODER_ERRORS = (ValueError, SyntaxError, EOFError, IndexError, KeyError, TypeError, ArithmeticError, struct.error)


def _load_file(path: Path) -> Image.Image:
    try:
        file = open_regular(path)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such image file") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot open the image file ({exc.strerror or exc})") from None
    with file:
        return _decode(file, str(path))


def _decode(file: BinaryIO, name: str) -> Image.Image:
    """Decode an open binary stream, its size checked before the pixels; `ImageError` naming `name`."""
    try:
        with Image.open(file) as img:
            width, height = img.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ImageError(
                    f"{name}: unreadable image: {width}x{height} is {width * height} pixels, over the "
                    f"decompression-bomb limit of {MAX_IMAGE_PIXELS}"
                )
            img.load()  # decode now, so a truncated file fails here and names itself
            return to_rgb(img)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image (unrecognised format)") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name}: unreadable image: over the decompression-bomb limit ({exc})") from None
    except MemoryError:
        raise ImageError(f"{name}: unreadable image: out of memory while decoding it") from None
    except (OSError, *_DECODER_ERRORS) as exc:
        raise ImageError(f"{name}: unreadable image ({type(exc).__name__}: {exc})") from exc


def _resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """Shorter side to `size`, the aspect ratio kept (timm's Resize(int))."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def check_image_size(width: int, height: int, config: PreprocessConfig, name: str = "image") -> None:
    """Refuse an image whose resized copy would exceed `MAX_RESIZED_PIXELS` (`ImageError` naming it)."""
    if width < 1 or height < 1:
        raise ImageError(f"{name}: unreadable image: it is {width}x{height} pixels (empty)")
    new_w, new_h = _resized_size(width, height, config.resize_size)
    if new_w * new_h > MAX_RESIZED_PIXELS:
        raise ImageError(
            f"{name}: unreadable image: {width}x{height} "
            f"(aspect ratio {max(width, height) / min(width, height):.0f}:1) "
            f"would resize to {new_w}x{new_h} = {new_w * new_h} pixels before the crop, over the limit of "
            f"{MAX_RESIZED_PIXELS}"
        )


def resize_and_crop(img: Image.Image, config: PreprocessConfig, name: str = "image") -> Image.Image:
    """Shorter side to `config.resize_size` (bicubic), then a centered `input_size` square."""
    w, h = img.size
    check_image_size(w, h, config, name)
    new_w, new_h = _resized_size(w, h, config.resize_size)
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
    """One image -> the model's CHW float32 input; `ImageError` (naming a file) for one it cannot use."""
    name = image_name(image)
    try:
        # One expression, no local: the decoded image is freed as soon as it is resized (keeping it alive
        # until the function returns costs 30% more CPU per image, measured, through worse memory reuse).
        return normalize(resize_and_crop(load_image(image), config, name), config)
    except MemoryError:
        raise ImageError(f"{name}: unreadable image: out of memory while preprocessing it") from None


def preprocess_batch(images: Sequence[ImageInput], config: PreprocessConfig) -> np.ndarray:
    """Images -> an NCHW float32 batch."""
    return np.stack([preprocess(image, config) for image in images])
