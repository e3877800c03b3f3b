"""Real photographs that ship with scikit-image, written as an image folder.

scikit-image bundles a few public-domain / CC photographs in its wheel (no
download). The kit uses them where real images matter and no data set is at
hand: int8 calibration and agreement checks, benchmarks, examples.
`python -m validation photos DIR [--variants N]` writes them; each variant is a
deterministic crop (and mirror) of a photo, so more images can be had than photos.
scikit-image comes with the `photos` extra (the `test` extra includes it); without
it the command says how to install it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from lvvit.common.install import install_command
from lvvit.errors import LvvitError

# Colour photographs bundled in scikit-image's wheel (they load offline).
PHOTOS = (
    "astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
    "retina", "colorwheel", "stereo_motorcycle", "camera", "coins", "moon", "grass", "gravel",
    "brick", "clock", "text", "page", "cell",
)  # fmt: skip


class PhotosUnavailableError(LvvitError, RuntimeError):
    """scikit-image, whose wheel holds the photographs, is not installed."""


def load_photos() -> dict[str, Image.Image]:
    """name -> RGB PIL image, for every bundled photo that loads."""
    try:
        import skimage.data
    except ImportError as exc:
        raise PhotosUnavailableError(
            f"the sample photographs ship in scikit-image's wheel, which is not installed: "
            f"{install_command('photos')} (or use any folder of your own JPEG/PNG images) ({exc})"
        ) from None

    photos = {}
    for name in PHOTOS:
        array = getattr(skimage.data, name)()
        array = array[0] if isinstance(array, tuple) else array  # stereo pairs
        photos[name] = Image.fromarray(np.asarray(array, dtype=np.uint8)).convert("RGB")
    return photos


def _variant(img: Image.Image, index: int) -> Image.Image:
    if index == 0:
        return img
    rng = np.random.default_rng(index)
    w, h = img.size
    scale = rng.uniform(0.55, 0.9)
    cw, ch = int(w * scale), int(h * scale)
    left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    crop = img.crop((left, top, left + cw, top + ch))
    return ImageOps.mirror(crop) if index % 2 else crop


def write_sample_photos(folder: str | Path, variants: int = 1) -> list[Path]:
    """Write every photo (and `variants - 1` crops of each) as JPEG under `folder`; returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, img in load_photos().items():
        for index in range(variants):
            path = folder / (f"{name}.jpg" if index == 0 else f"{name}_v{index}.jpg")
            _variant(img, index).save(path, quality=92)
            written.append(path)
    return written
