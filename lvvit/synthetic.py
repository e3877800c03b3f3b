"""Deterministic photo-like test images (smooth gradients, shapes, texture, noise).

Used where real images are not at hand (export verification, drift checks
without a folder): they go through the real preprocessing, so the model sees
inputs with the statistics of normalised photographs, not white noise.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from lvvit.preprocess import preprocess
from lvvit.presets import PreprocessConfig


def synthetic_image(seed: int, width: int = 320, height: int = 256) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = []
    for _ in range(3):
        fx, fy, phase = rng.uniform(0.5, 4.0), rng.uniform(0.5, 4.0), rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * (fx * xx / width + fy * yy / height) + phase)
        channels.append(127 + 100 * wave * rng.uniform(0.3, 1.0))
    base = np.stack(channels, axis=-1) + rng.normal(0, 12, (height, width, 3))
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 8))):
        x0, y0 = int(rng.integers(0, width - 20)), int(rng.integers(0, height - 20))
        x1, y1 = x0 + int(rng.integers(10, width // 2)), y0 + int(rng.integers(10, height // 2))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=color)
    return img


def synthetic_batch(count: int, config: PreprocessConfig, seed: int = 0) -> np.ndarray:
    """`count` preprocessed synthetic images as an NCHW float32 batch."""
    return np.stack([preprocess(synthetic_image(seed + i), config) for i in range(count)])
