"""The numbers: drift between two sets of logits, and top-k accuracy. Plain numpy, float64 arithmetic.

Definitions (one row = one image's logits; `r` reference, `x` the runtime, `d = |x - r|`):
- max / mean / median / p99 abs: over every element of `d`.
- max_rel: the largest per-image `max(d) / max(|r|)`; mean_rel: `sum(d) / sum(|r|)`.
- cosine: per image, `r . x / (|r| |x|)`; the minimum and the mean over images.
- top-1 agreement: fraction of images whose arg-max agrees. A disagreement is a
  near-tie when the reference's top-2 margin is at most twice the error the
  tolerance allows for that image (`tie_abs`, or `tie_rel * max(|r|)`): an
  error within the tolerance could flip it. Without either, no flip is excused.
- top-5 overlap: `|top5(r) & top5(x)| / 5` per image; mean and minimum.
- KL: `KL(softmax(r) || softmax(x))` per image; mean and maximum.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

# Error histogram: exact zeros, then 4 bins per decade from 1e-9 to 1e2, then everything above.
HIST_EDGES = np.logspace(-9, 2, 45)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def topk(logits: np.ndarray, k: int) -> np.ndarray:
    """[N, k] class ids, highest score first (ties broken by the lower id, as arg-max does)."""
    k = min(k, logits.shape[1])
    order = np.argsort(-logits.astype(np.float64), axis=1, kind="stable")
    return order[:, :k]


def error_histogram(abs_err: np.ndarray) -> dict[str, list[float] | list[int]]:
    """Counts of |error| per log-spaced bin: `zero`, then `[edges[i], edges[i+1])`, then `>= edges[-1]`."""
    flat = abs_err.ravel()
    zero = int((flat == 0).sum())
    nonzero = flat[flat > 0]
    below = int((nonzero < HIST_EDGES[0]).sum())
    counts, _ = np.histogram(nonzero, bins=HIST_EDGES)
    above = int((nonzero >= HIST_EDGES[-1]).sum())
    return {
        "edges": [float(e) for e in HIST_EDGES],
        "counts": [int(c) for c in counts],
        "zero": zero,
        "below": below,
        "above": above,
    }


@dataclass(frozen=True)
class DriftStats:
    samples: int
    classes: int
    max_abs: float
    mean_abs: float
    median_abs: float
    p99_abs: float
    max_rel: float
    mean_rel: float
    min_cosine: float
    mean_cosine: float
    top1_agreement: float
    top1_disagreements: int
    near_ties: int
    top5_overlap: float
    min_top5_overlap: float
    mean_kl: float
    max_kl: float
    worst: list[dict[str, Any]] = field(default_factory=list)  # images with the largest max abs error
    histogram: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def drift_stats(
    reference: np.ndarray,
    other: np.ndarray,
    names: list[str] | None = None,
    worst: int = 5,
    tie_abs: float | None = None,
    tie_rel: float | None = None,
) -> DriftStats:
    """Compare `other` with `reference`, both [N, classes] logits of the same inputs (see the module docstring)."""
    if reference.shape != other.shape or reference.ndim != 2 or reference.shape[0] == 0:
        raise ValueError(f"cannot compare logits of shapes {list(reference.shape)} and {list(other.shape)}")
    r = reference.astype(np.float64)
    x = other.astype(np.float64)
    d = np.abs(x - r)
    per_image_max = d.max(axis=1)
    scale = np.abs(r).max(axis=1)
    rel = np.divide(per_image_max, scale, out=np.where(per_image_max > 0, np.inf, 0.0), where=scale > 0)
    norms = np.linalg.norm(r, axis=1) * np.linalg.norm(x, axis=1)
    cosine = np.divide((r * x).sum(axis=1), norms, out=np.ones(len(r)), where=norms > 0)
    top_r, top_x = topk(r, 5), topk(x, 5)
    agree = top_r[:, 0] == top_x[:, 0]
    allowed = np.maximum(tie_abs or 0.0, (tie_rel or 0.0) * scale)
    if r.shape[1] >= 2:
        ordered = np.sort(r, axis=1)
        margin = ordered[:, -1] - ordered[:, -2]
        near_ties = int((~agree & (margin <= 2 * allowed)).sum())
    else:
        near_ties = 0
    k = top_r.shape[1]
    overlap = np.array([len(set(a) & set(b)) / k for a, b in zip(top_r.tolist(), top_x.tolist(), strict=True)])
    log_p, log_q = log_softmax(r), log_softmax(x)
    kl = np.maximum((np.exp(log_p) * (log_p - log_q)).sum(axis=1), 0.0)
    names = names if names is not None else [str(i) for i in range(len(r))]
    order = np.argsort(-per_image_max, kind="stable")[:worst]
    return DriftStats(
        samples=int(r.shape[0]),
        classes=int(r.shape[1]),
        max_abs=float(d.max()),
        mean_abs=float(d.mean()),
        median_abs=float(np.median(d)),
        p99_abs=float(np.percentile(d, 99)),
        max_rel=float(rel.max()),
        mean_rel=float(d.sum() / max(np.abs(r).sum(), np.finfo(np.float64).tiny)),
        min_cosine=float(cosine.min()),
        mean_cosine=float(cosine.mean()),
        top1_agreement=float(agree.mean()),
        top1_disagreements=int((~agree).sum()),
        near_ties=near_ties,
        top5_overlap=float(overlap.mean()),
        min_top5_overlap=float(overlap.min()),
        mean_kl=float(kl.mean()),
        max_kl=float(kl.max()),
        worst=[
            {
                "image": names[i],
                "max_abs": float(per_image_max[i]),
                "reference_top1": int(top_r[i, 0]),
                "top1": int(top_x[i, 0]),
            }
            for i in order
        ],  # fmt: skip
        histogram=error_histogram(d),
    )


@dataclass
class AccuracyTally:
    """Streaming top-k bookkeeping for one runtime: keeps [N, 5] class ids, never the logits."""

    num_classes: int
    top5: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    seconds: float = 0.0  # time spent inside the runtime

    def add(self, logits: np.ndarray, labels: np.ndarray, seconds: float) -> None:
        self.top5.append(topk(logits, 5).astype(np.int32))
        self.labels.append(labels.astype(np.int32))
        self.seconds += seconds

    def predictions(self) -> np.ndarray:
        k = min(5, self.num_classes)
        return np.concatenate(self.top5) if self.top5 else np.zeros((0, k), dtype=np.int32)

    def summary(self, reference: AccuracyTally | None = None) -> dict[str, Any]:
        """Top-1/top-5 in percent, per-class top-1, throughput; against `reference`: differences and agreement."""
        preds = self.predictions()
        labels = np.concatenate(self.labels)
        n = len(labels)
        if n == 0:
            raise ValueError("no images were evaluated")
        hit1 = preds[:, 0] == labels
        hit5 = (preds == labels[:, None]).any(axis=1)
        per_class_n = np.bincount(labels, minlength=self.num_classes)
        per_class_hit = np.bincount(labels, weights=hit1, minlength=self.num_classes)
        per_class = np.divide(per_class_hit, per_class_n, out=np.full(self.num_classes, np.nan), where=per_class_n > 0)
        out: dict[str, Any] = {
            "images": int(n),
            "top1": float(hit1.mean() * 100),
            "top5": float(hit5.mean() * 100),
            "correct_top1": int(hit1.sum()),
            "correct_top5": int(hit5.sum()),
            "seconds": self.seconds,
            "images_per_second": n / self.seconds if self.seconds > 0 else None,
            "per_class_top1": [None if np.isnan(v) else float(v * 100) for v in per_class],
            "per_class_images": [int(c) for c in per_class_n],
        }
        if reference is not None:
            ref = reference.predictions()
            if len(ref) != n:
                raise ValueError(f"the reference saw {len(ref)} images, this runtime {n}")
            out["top1_diff"] = out["top1"] - float((ref[:, 0] == labels).mean() * 100)
            out["top5_diff"] = out["top5"] - float((ref == labels[:, None]).any(axis=1).mean() * 100)
            out["agreement"] = float((ref[:, 0] == preds[:, 0]).mean() * 100)
            out["disagreements"] = int((ref[:, 0] != preds[:, 0]).sum())
        return out
