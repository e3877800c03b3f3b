"""Tolerance gates: named limits on a runtime's numbers, checked after the report is written.

Drift limits read `metrics.DriftStats`; accuracy limits read the per-runtime
accuracy summary (percent and percentage points). `--tolerance NAME=VALUE`
replaces one default; `NAME=none` switches it off.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import GateFailure, ToleranceError


@dataclass(frozen=True)
class Limit:
    name: str
    kind: str  # "max": the value must not exceed the limit; "min": it must reach it
    help: str
    value_of: Callable[[Mapping[str, Any]], float]


def _field(name: str) -> Callable[[Mapping[str, Any]], float]:
    return lambda stats: float(stats[name])


def _top1_excusing_ties(stats: Mapping[str, Any]) -> float:
    return 1.0 - (stats["top1_disagreements"] - stats["near_ties"]) / stats["samples"]


DRIFT_LIMITS: dict[str, Limit] = {
    limit.name: limit
    for limit in (
        Limit("max_abs", "max", "largest absolute logit error", _field("max_abs")),
        Limit("p99_abs", "max", "99th percentile of the absolute logit error", _field("p99_abs")),
        Limit("mean_abs", "max", "mean absolute logit error", _field("mean_abs")),
        Limit("max_rel", "max", "largest per-image max error / max |reference logit|", _field("max_rel")),
        Limit("min_cosine", "min", "smallest per-image cosine similarity", _field("min_cosine")),
        Limit(
            "top1_agreement", "min", "fraction of images with the same top-1, near-ties excused", _top1_excusing_ties
        ),
        Limit("top5_overlap", "min", "mean fraction of shared top-5 classes", _field("top5_overlap")),
        Limit("max_kl", "max", "largest per-image KL divergence of the softmax", _field("max_kl")),
    )
}
DEFAULT_DRIFT_TOLERANCE: dict[str, float] = {"max_rel": 1e-3, "min_cosine": 0.9999, "top1_agreement": 1.0}

ACCURACY_LIMITS: dict[str, Limit] = {
    limit.name: limit
    for limit in (
        Limit(
            "top1_diff", "max", "|top-1 - native Paddle's top-1| in percentage points", lambda s: abs(s["top1_diff"])
        ),
        Limit(
            "top5_diff", "max", "|top-5 - native Paddle's top-5| in percentage points", lambda s: abs(s["top5_diff"])
        ),
        Limit("agreement", "min", "percent of images whose top-1 equals native Paddle's", _field("agreement")),
        Limit("top1", "min", "top-1 accuracy in percent", _field("top1")),
    )
}
DEFAULT_ACCURACY_TOLERANCE: dict[str, float] = {"top1_diff": 0.2, "agreement": 99.5}


def check_tolerance(tolerance: Mapping[str, float], limits: Mapping[str, Limit]) -> dict[str, float]:
    """The limits in force, each a known name with a finite value >= 0 (a NaN limit would switch its gate off)."""
    for name, value in tolerance.items():
        if name not in limits:
            raise ToleranceError(f"unknown tolerance {name!r}; valid: {', '.join(limits)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 <= value < math.inf):
            raise ToleranceError(f"tolerance {name}: {value!r} is not a finite number >= 0 (or 'none')")
    return {name: float(value) for name, value in tolerance.items()}


def parse_tolerance(
    items: Iterable[str], limits: Mapping[str, Limit], defaults: Mapping[str, float]
) -> dict[str, float]:
    """`["max_abs=1e-4", "min_cosine=none"]` over `defaults` -> the limits in force."""
    tolerance = dict(defaults)
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep:
            raise ToleranceError(f"tolerance {item!r}: expected NAME=VALUE (e.g. max_abs=1e-4)")
        if name not in limits:
            raise ToleranceError(f"unknown tolerance {name!r}; valid: {', '.join(limits)}")
        if value.strip().lower() == "none":
            tolerance.pop(name, None)
            continue
        try:
            tolerance[name] = float(value)
        except ValueError:
            raise ToleranceError(f"tolerance {name}: {value!r} is not a number (or 'none')") from None
    return check_tolerance(tolerance, limits)


def check(
    limits: Mapping[str, Limit], tolerance: Mapping[str, float], stats: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """One entry per limit in force: name, kind, limit, value, passed (never for a NaN or an infinite value)."""
    checks = []
    for name, bound in check_tolerance(tolerance, limits).items():
        limit = limits[name]
        value = limit.value_of(stats)
        within = value <= bound if limit.kind == "max" else value >= bound
        passed = math.isfinite(value) and within
        checks.append({"name": name, "kind": limit.kind, "limit": bound, "value": value, "passed": bool(passed)})
    return checks


def _shown(value: Any, spec: str) -> str:
    """A number as `spec`; the JSON report stores NaN and infinities as null."""
    return format(value, spec) if isinstance(value, (int, float)) else "not a number"


def describe_check(entry: Mapping[str, Any]) -> str:
    sign = "<=" if entry["kind"] == "max" else ">="
    return f"{entry['name']} = {_shown(entry['value'], '.6g')} (limit {sign} {_shown(entry['limit'], 'g')})"


def raise_if_failed(report: Mapping[str, Any]) -> None:
    """`GateFailure` listing every failed check of every runtime in `report["runtimes"]`."""
    lines = []
    for name, entry in report["runtimes"].items():
        failed = [c for c in entry.get("gate", []) if not c["passed"]]
        if failed:
            lines.append(f"{name}: " + "; ".join(describe_check(c) for c in failed))
    if lines:
        raise GateFailure("outside the tolerance:\n  " + "\n  ".join(lines))
