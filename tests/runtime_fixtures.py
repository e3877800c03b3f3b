"""Shared artifacts for the runtime tests: tiny exported models (built once per session) and real photographs.

A pytest plugin, not a module to import from: the root `tests/conftest.py` registers it, so the session fixtures
exist once for the whole run and the tiny models are exported once however many modules use them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TINY

RESOLUTION = 64
# skimage.data images bundled in the wheel (no download): photographs, plus one grayscale to exercise mode conversion
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera")


def quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class TinyModels:
    onnx: Path  # dynamic batch
    onnx_fixed: Path  # fixed batch 2
    onnx_bare: Path  # no kit metadata
    paddle: Path  # the Paddle inference artifact's .pdiparams
    folder: Path


def build_tiny(folder: Path) -> TinyModels:
    import onnx

    from exporters.onnx import export_onnx, export_paddle_inference

    folder.mkdir(parents=True, exist_ok=True)
    common = {"resolution": RESOLUTION, "log": quiet, **TINY}
    dynamic = export_onnx("lvvit_s", output=folder / "tiny.onnx", **common).path
    fixed = export_onnx("lvvit_s", output=folder / "tiny_b2.onnx", batch=2, verify=False, **common).path
    proto = onnx.load(str(dynamic))
    del proto.metadata_props[:]
    bare = folder / "tiny_bare.onnx"
    onnx.save(proto, str(bare))
    paddle = export_paddle_inference("lvvit_s", output=folder / "paddle" / "tiny.pdiparams", **common).path
    return TinyModels(dynamic, fixed, bare, paddle, folder)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    return build_tiny(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def photos() -> list[np.ndarray]:
    """Real photographs (HWC uint8, one HW grayscale) from scikit-image's bundled data."""
    data = pytest.importorskip("skimage.data")
    return [getattr(data, name)() for name in PHOTOS]
