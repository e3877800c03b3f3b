"""What `predict` returns: the top-k classes of one image, as plain data."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .labels import Labels


@dataclass(frozen=True)
class Prediction:
    """Top-k classes of one image, most probable first.

    `probs` are softmax probabilities over all classes (so they need not sum
    to 1 over the top k); `source` is the image's path, or None for an
    in-memory image.
    """

    class_ids: tuple[int, ...]
    labels: tuple[str, ...]
    probs: tuple[float, ...]
    source: str | None = None

    @property
    def class_id(self) -> int:
        """The top-1 class id."""
        return self.class_ids[0]

    @property
    def label(self) -> str:
        """The top-1 class name."""
        return self.labels[0]

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class ImageResult:
    """One image of `predict_each`: its prediction, or the error that kept it from one (never both)."""

    source: str | None
    prediction: Prediction | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        if self.prediction is None:
            return {"source": self.source, "error": self.error}
        return {**self.prediction.to_dict(), "source": self.source, "error": None}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable for large logits)."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    return z / z.sum(axis=1, keepdims=True)


def top_k(logits: np.ndarray, k: int, labels: Labels, sources: list[str | None]) -> list[Prediction]:
    """One `Prediction` per row of `logits`; ties keep the lower class id first."""
    probs = softmax(logits)
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [
        Prediction(
            class_ids=tuple(int(i) for i in ids),
            labels=tuple(labels[int(i)] for i in ids),
            probs=tuple(float(p) for p in row[ids]),
            source=source,
        )
        for ids, row, source in zip(order, probs, sources, strict=True)
    ]
