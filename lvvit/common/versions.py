"""Installed versions, recorded in every artifact and report (Paddle-free)."""

from __future__ import annotations

import importlib.metadata
import platform

KIT_DISTRIBUTION = "lvvit-deploy"


def package_version(name: str) -> str:
    """The installed distribution's version, or "not installed"."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def tool_versions(*packages: str) -> dict[str, str]:
    """Versions of the kit, Python and the named distributions."""
    versions = {"kit": package_version(KIT_DISTRIBUTION), "python": platform.python_version()}
    versions.update({name: package_version(name) for name in packages})
    return versions
