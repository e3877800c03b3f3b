"""Versions and weights provenance recorded in every artifact."""

from __future__ import annotations

from typing import Any

from lvvit.versions import tool_versions

__all__ = ["tool_versions", "weights_provenance"]


def weights_provenance(model: Any, seed: int | None) -> dict[str, Any]:
    """The weights' file name and SHA-256, or a loud note that they are random."""
    info = getattr(model, "weights_info", None)
    if info is not None:
        return {"source": "file", **info.to_dict()}
    return {"source": "random-init", "seed": seed, "note": "NOT TRAINED: deterministic random initialisation"}
