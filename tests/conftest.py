"""Shared fixtures: tiny model settings and the authors' reference implementation (`tlt`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from lvvit.presets import TINY_ARCH

# the tiny exported models and the photographs, shared by the runtime, serving and validation tests
pytest_plugins = ["tests.runtime_fixtures"]

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Small enough for a 2-core CI machine, big enough to exercise every path (shared with gpu/stage.py).
TINY = dict(TINY_ARCH)

# Stored /proc/cpuinfo of each CPU kind the kit runs on; the kit's CPU detection reads the file named by
# LVVIT_CPUINFO (its one override), so every branch is checked on any machine.
CPUINFO_DIR = ROOT / "tests" / "data" / "cpuinfo"
CPU_KINDS = ("skylake_sp", "ice_lake", "sapphire_rapids", "zen3", "zen4", "zen5")


@pytest.fixture(params=CPU_KINDS)
def cpu_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each CPU kind in turn, as the kit's CPU detection sees it."""
    monkeypatch.setenv("LVVIT_CPUINFO", str(CPUINFO_DIR / f"{request.param}.txt"))
    return request.param


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: real presets at full size (run in CI, skip with -m 'not slow')")
    config.addinivalue_line("markers", "gpu: needs a usable CUDA device")
    os.environ.setdefault("FLAGS_use_mkldnn", "0")


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """A folder of 38 real photographs and crops (scikit-image's bundled data): calibration and
    agreement sets; one per test module, which may add files to it."""
    pytest.importorskip("skimage")
    from validation.datasets.photos import write_sample_photos

    folder = tmp_path_factory.mktemp("photos")
    write_sample_photos(folder, variants=2)
    return folder
