"""Versions and weights provenance recorded in every artifact."""

from __future__ import annotations

import importlib.metadata
import platform
from typing import Any

KIT_DISTRIBUTION = "lvvit-deploy"


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def tool_versions(*packages: str) -> dict[str, str]:
    """Versions of the kit, Python and the named packages."""
    versions = {"kit": package_version(KIT_DISTRIBUTION), "python": platform.python_version()}
    versions.update({name: package_version(name) for name in packages})
    return versions


def weights_provenance(model: Any, seed: int | None) -> dict[str, Any]:
    """The weights' file name and SHA-256, or a loud note that they are random."""
    info = getattr(model, "weights_info", None)
    if info is not None:
        return {"source": "file", **info.to_dict()}
    return {"source": "random-init", "seed": seed, "note": "NOT TRAINED: deterministic random initialisation"}
