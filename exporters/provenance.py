"""Versions and weights provenance recorded in every artifact."""

from __future__ import annotations

from typing import Any

from lvvit.common import provenance
from lvvit.common.versions import tool_versions

__all__ = ["tool_versions", "weights_provenance"]


def weights_provenance(model: Any, seed: int | None) -> dict[str, Any]:
    """The provenance of `model`'s weights (`lvvit.common.provenance.weights_provenance` of its `weights_info`)."""
    return provenance.weights_provenance(getattr(model, "weights_info", None), seed)
