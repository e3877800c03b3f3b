"""What every artifact records about where its numbers came from: file hashes and the weights' provenance.

Paddle-free, so that runtimes and validation record the same spellings as the exporters.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

RANDOM_INIT = "random-init"  # the weights' "source" of a model that was not loaded from a file


def sha256_of(path: str | Path) -> str:
    """SHA-256 of a file, streamed: the one hash the kit records for weights, model files and caches."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_provenance(info: Any, seed: int | None) -> dict[str, Any]:
    """`lvvit.weights.WeightsInfo` as recorded (file name, SHA-256, layout...), or a loud note that they are random."""
    if info is not None:
        return {"source": "file", **info.to_dict()}
    return {"source": RANDOM_INIT, "seed": seed, "note": "NOT TRAINED: deterministic random initialisation"}
