"""The one evaluation core, its numbers: how two sets of logits differ, and top-k accuracy. numpy only.

Export verification (`exporters.onnx.verify`), drift, accuracy and bench all
call this module and its gate (`lvvit.common.gate`); they sit in `lvvit` so that `exporters` and `validation` can
both use it without importing each other, and it never imports Paddle.

Everything is computed per image first (`ImageErrors`), then summarised
(`summarize_drift`). Per-image records concatenate, so a run cut into shards
merges exactly: the summary of the merged records equals the single-run one.

Definitions (one row = one image's logits; `r` reference, `x` the runtime, `d = |x - r|`):
- max / mean abs: over every element of `d` (the mean is `sum(d) / (N * classes)`).
- median / p99 abs: over images, of each image's largest error `max(d)` (per image so that shards
  merge exactly; an element-level p99 would need every element of every image kept).
- max_rel: the largest per-image `max(d) / max(|r|)`; mean_rel: `sum(d) / sum(|r|)`.
- cosine: per image, `r . x / (|r| |x|)`; the minimum and the mean over images.
- top-1 agreement: fraction of images whose arg-max agrees. A disagreement is a
  near-tie when the reference's top-2 margin is at most twice the error the
  tolerance allows for that image (`tie_abs`, or `tie_rel * max(|r|)`): an
  error within the tolerance could flip it. Without either, no flip is excused.
- top-5 overlap: `|top5(r) & top5(x)| / 5` per image; mean and minimum.
- KL: `KL(softmax(r) || softmax(x))` per image; mean and maximum.
- histogram: counts of every element of `d` per log-spaced bin (counts add, so they merge exactly).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from lvvit.errors import LvvitError

TOPK = 5
# Error histogram: exact zeros, then 4 bins per decade from 1e-9 to 1e2, then everything above.
HIST_EDGES = np.logspace(-9, 2, 45)


class ComparisonError(LvvitError, ValueError):
    """Logits that cannot be compared (shapes differ, no images), or records that do not fit together."""


# -- logits ---------------------------------------------------------------------------------------------------------


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def topk(logits: np.ndarray, k: int) -> np.ndarray:
    """[N, k] class ids, highest score first (ties broken by the lower id, as arg-max does)."""
    k = min(k, logits.shape[1])
    order = np.argsort(-logits.astype(np.float64), axis=1, kind="stable")
    return order[:, :k]


def top_predictions(logits: np.ndarray, k: int = TOPK) -> tuple[np.ndarray, np.ndarray]:
    """([N, k] class ids, [N, k] softmax probabilities of those ids): what a per-image record keeps."""
    ids = topk(logits, k)
    probs = np.take_along_axis(np.exp(log_softmax(logits)), ids, axis=1)
    return ids, probs


def error_histogram(abs_err: np.ndarray) -> np.ndarray:
    """Counts of |error|: [zero, below edges[0], one per bin `[edges[i], edges[i+1])`, at or above edges[-1]]."""
    flat = abs_err.ravel()
    nonzero = flat[flat > 0]
    counts, _ = np.histogram(nonzero, bins=HIST_EDGES)
    zero, below, above = (flat == 0).sum(), (nonzero < HIST_EDGES[0]).sum(), (nonzero >= HIST_EDGES[-1]).sum()
    return np.concatenate([[zero, below], counts, [above]]).astype(np.int64)


def histogram_dict(counts: np.ndarray) -> dict[str, Any]:
    return {
        "edges": [float(e) for e in HIST_EDGES],
        "counts": [int(c) for c in counts[2:-1]],
        "zero": int(counts[0]),
        "below": int(counts[1]),
        "above": int(counts[-1]),
    }


# -- per-image errors (the unit that merges) -------------------------------------------------------------------------

_COLUMNS = ("max_abs", "sum_abs", "ref_max_abs", "ref_sum_abs", "cosine", "kl", "ref_margin", "ref_top5", "top5")


@dataclass(frozen=True)
class ImageErrors:
    """One runtime against the reference, per image ([N] columns, [N, 5] top-5 ids), and the element histogram."""

    classes: int
    max_abs: np.ndarray
    sum_abs: np.ndarray
    ref_max_abs: np.ndarray
    ref_sum_abs: np.ndarray
    cosine: np.ndarray
    kl: np.ndarray
    ref_margin: np.ndarray  # the reference's top-1 minus top-2 logit (inf with one class)
    ref_top5: np.ndarray
    top5: np.ndarray
    histogram: np.ndarray

    def __len__(self) -> int:
        return len(self.max_abs)

    def row(self, i: int) -> dict[str, Any]:
        """Image `i` as plain data (floats, lists of ints): one record of a shard."""
        return {c: getattr(self, c)[i].tolist() for c in _COLUMNS}

    @classmethod
    def from_rows(cls, rows: Sequence[Mapping[str, Any]], classes: int, histogram: Sequence[int]) -> ImageErrors:
        """The inverse of `row` over a shard's records; checks every column is there and has the right shape."""
        try:
            columns = {c: np.asarray([r[c] for r in rows], dtype=np.float64) for c in _COLUMNS}
        except (KeyError, TypeError, ValueError) as exc:
            raise ComparisonError(f"per-image error records are malformed ({type(exc).__name__}: {exc})") from None
        k = min(TOPK, classes)
        for name in ("ref_top5", "top5"):
            columns[name] = columns[name].astype(np.int64).reshape(len(rows), k)
        hist = np.asarray(histogram, dtype=np.int64)
        if hist.shape != (len(HIST_EDGES) + 2,):
            raise ComparisonError(f"an error histogram has {hist.size} counts, expected {len(HIST_EDGES) + 2}")
        return cls(classes, **columns, histogram=hist)

    @classmethod
    def concat(cls, parts: Sequence[ImageErrors]) -> ImageErrors:
        if not parts:
            raise ComparisonError("no per-image errors to merge")
        classes = {p.classes for p in parts}
        if len(classes) != 1:
            raise ComparisonError(f"cannot merge errors of models with {sorted(classes)} classes")
        merged = {c: np.concatenate([getattr(p, c) for p in parts]) for c in _COLUMNS}
        return cls(parts[0].classes, **merged, histogram=np.sum([p.histogram for p in parts], axis=0))


def top2_margin(logits: np.ndarray) -> np.ndarray:
    """Per image, the top-1 minus the top-2 logit: how far an error must move it to flip (inf with one class)."""
    if logits.shape[1] < 2:
        return np.full(len(logits), np.inf)
    ordered = np.sort(logits, axis=1)
    return ordered[:, -1] - ordered[:, -2]


def image_errors(reference: np.ndarray, other: np.ndarray) -> ImageErrors:
    """Compare `other` with `reference`, both [N, classes] logits of the same inputs, image by image."""
    if reference.shape != other.shape or reference.ndim != 2 or reference.shape[0] == 0:
        raise ComparisonError(f"cannot compare logits of shapes {list(reference.shape)} and {list(other.shape)}")
    r = reference.astype(np.float64)
    x = other.astype(np.float64)
    d = np.abs(x - r)
    norms = np.linalg.norm(r, axis=1) * np.linalg.norm(x, axis=1)
    with np.errstate(invalid="ignore"):  # NaN logits give NaN statistics, which no gate passes
        cosine = np.divide((r * x).sum(axis=1), norms, out=np.ones(len(r)), where=norms != 0)  # NaN stays NaN
        log_p, log_q = log_softmax(r), log_softmax(x)
        kl = np.maximum((np.exp(log_p) * (log_p - log_q)).sum(axis=1), 0.0)
        kl[np.isnan(log_q).any(axis=1) | np.isnan(log_p).any(axis=1)] = np.nan
    return ImageErrors(
        classes=int(r.shape[1]),
        max_abs=d.max(axis=1),
        sum_abs=d.sum(axis=1),
        ref_max_abs=np.abs(r).max(axis=1),
        ref_sum_abs=np.abs(r).sum(axis=1),
        cosine=cosine,
        kl=kl,
        ref_margin=top2_margin(r),
        ref_top5=topk(r, TOPK),
        top5=topk(x, TOPK),
        histogram=error_histogram(d),
    )


@dataclass(frozen=True)
class DriftStats:
    """The summary of one runtime's drift (see the module docstring); round-trips through `to_dict`/`from_dict`."""

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

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DriftStats:
        names = {f.name for f in fields(cls)}
        missing = sorted(names - set(data))
        if missing:
            raise ComparisonError(f"drift statistics lack {missing}")
        return cls(**{k: data[k] for k in names})


def summarize_drift(
    errors: ImageErrors,
    names: Sequence[str] | None = None,
    worst: int = 5,
    tie_abs: float | None = None,
    tie_rel: float | None = None,
) -> DriftStats:
    """The drift summary of per-image errors (of one run, or of shards merged with `ImageErrors.concat`)."""
    n = len(errors)
    if n == 0:
        raise ComparisonError("no images to summarise")
    per_image_max = errors.max_abs
    scale = errors.ref_max_abs
    rel = np.divide(per_image_max, scale, out=np.where(per_image_max > 0, np.inf, 0.0), where=scale > 0)
    agree = errors.ref_top5[:, 0] == errors.top5[:, 0]
    allowed = np.maximum(tie_abs or 0.0, (tie_rel or 0.0) * scale)
    near_ties = int((~agree & (errors.ref_margin <= 2 * allowed)).sum())
    k = errors.top5.shape[1]
    overlap = np.array(
        [len(set(a) & set(b)) / k for a, b in zip(errors.ref_top5.tolist(), errors.top5.tolist(), strict=True)]
    )
    names = list(names) if names is not None else [str(i) for i in range(n)]
    order = np.argsort(-np.nan_to_num(per_image_max, nan=np.inf), kind="stable")[:worst]
    ref_total = float(errors.ref_sum_abs.sum())
    with np.errstate(invalid="ignore"):  # NaN errors give NaN percentiles, which no gate passes
        median, p99 = float(np.median(per_image_max)), float(np.percentile(per_image_max, 99))
    return DriftStats(
        samples=n,
        classes=errors.classes,
        max_abs=float(per_image_max.max()),
        mean_abs=float(errors.sum_abs.sum() / (n * errors.classes)),
        median_abs=median,
        p99_abs=p99,
        max_rel=float(rel.max()),
        mean_rel=float(errors.sum_abs.sum() / max(ref_total, np.finfo(np.float64).tiny)),
        min_cosine=float(errors.cosine.min()),
        mean_cosine=float(errors.cosine.mean()),
        top1_agreement=float(agree.mean()),
        top1_disagreements=int((~agree).sum()),
        near_ties=near_ties,
        top5_overlap=float(overlap.mean()),
        min_top5_overlap=float(overlap.min()),
        mean_kl=float(errors.kl.mean()),
        max_kl=float(errors.kl.max()),
        worst=[
            {
                "image": names[i],
                "max_abs": float(per_image_max[i]),
                "reference_top1": int(errors.ref_top5[i, 0]),
                "top1": int(errors.top5[i, 0]),
            }
            for i in order
        ],
        histogram=histogram_dict(errors.histogram),
    )


def drift_stats(
    reference: np.ndarray,
    other: np.ndarray,
    names: Sequence[str] | None = None,
    worst: int = 5,
    tie_abs: float | None = None,
    tie_rel: float | None = None,
) -> DriftStats:
    """`summarize_drift(image_errors(reference, other))`: the drift of one batch of logits."""
    return summarize_drift(image_errors(reference, other), names, worst, tie_abs, tie_rel)


# -- accuracy ---------------------------------------------------------------------------------------------------------


def accuracy_summary(
    top5: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    seconds: float = 0.0,
    reference_top5: np.ndarray | None = None,
) -> dict[str, Any]:
    """Top-1/top-5 in percent, per-class top-1, throughput; against `reference_top5`: differences and agreement.

    `top5` is [N, k] class ids per image (highest first), `labels` [N]; `seconds` the time inside the runtime.
    """
    n = len(labels)
    if n == 0:
        raise ComparisonError("no images were evaluated")
    if len(top5) != n:
        raise ComparisonError(f"{len(top5)} predictions for {n} labels")
    hit1 = top5[:, 0] == labels
    hit5 = (top5 == labels[:, None]).any(axis=1)
    per_class_n = np.bincount(labels, minlength=num_classes)
    per_class_hit = np.bincount(labels, weights=hit1, minlength=num_classes)
    per_class = np.divide(per_class_hit, per_class_n, out=np.full(num_classes, np.nan), where=per_class_n > 0)
    out: dict[str, Any] = {
        "images": int(n),
        "top1": float(hit1.mean() * 100),
        "top5": float(hit5.mean() * 100),
        "correct_top1": int(hit1.sum()),
        "correct_top5": int(hit5.sum()),
        "seconds": seconds,
        "images_per_second": n / seconds if seconds > 0 else None,
        "per_class_top1": [None if np.isnan(v) else float(v * 100) for v in per_class],
        "per_class_images": [int(c) for c in per_class_n],
    }
    if reference_top5 is not None:
        if len(reference_top5) != n:
            raise ComparisonError(f"the reference saw {len(reference_top5)} images, this runtime {n}")
        out["top1_diff"] = out["top1"] - float((reference_top5[:, 0] == labels).mean() * 100)
        out["top5_diff"] = out["top5"] - float((reference_top5 == labels[:, None]).any(axis=1).mean() * 100)
        out["agreement"] = float((reference_top5[:, 0] == top5[:, 0]).mean() * 100)
        out["disagreements"] = int((reference_top5[:, 0] != top5[:, 0]).sum())
    return out
