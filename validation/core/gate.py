"""The tolerance gate on the command line and on a report; the limits and the check are `lvvit.common.metrics`'s.

Drift limits read `DriftStats`; accuracy limits read the per-runtime accuracy
summary (percent and percentage points). `--tolerance NAME=VALUE` replaces one
default; `NAME=none` switches it off.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from lvvit.common.gate import (
    ACCURACY_LIMITS,
    DEFAULT_ACCURACY_TOLERANCE,
    DEFAULT_DRIFT_TOLERANCE,
    DRIFT_LIMITS,
    GateCheck,
    Limit,
    check_gate,
    checked_bound,
    default_drift_tolerance,
    failed_lines,
)
from lvvit.common.gate import ToleranceError as _CoreToleranceError
from validation.errors import GateFailure, ToleranceError

__all__ = [
    "ACCURACY_LIMITS",
    "DEFAULT_ACCURACY_TOLERANCE",
    "DEFAULT_DRIFT_TOLERANCE",
    "DRIFT_LIMITS",
    "check",
    "check_tolerance",
    "default_drift_tolerance",
    "parse_tolerance",
    "raise_if_failed",
]


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
            number = float(value)
        except ValueError:
            raise ToleranceError(f"tolerance {name}: {value!r} is not a number (or 'none')") from None
        tolerance[name] = number
    return check_tolerance(tolerance, limits)


def check_tolerance(tolerance: Mapping[str, float], limits: Mapping[str, Limit]) -> dict[str, float]:
    """The limits in force, each a known name with a finite value >= 0 (a NaN limit would switch its gate off)."""
    try:
        return {name: checked_bound(name, value) for name, value in _known(tolerance, limits).items()}
    except _CoreToleranceError as exc:
        raise ToleranceError(str(exc)) from None


def _known(tolerance: Mapping[str, float], limits: Mapping[str, Limit]) -> Mapping[str, float]:
    unknown = [name for name in tolerance if name not in limits]
    if unknown:
        raise ToleranceError(f"unknown tolerance {unknown[0]!r}; valid: {', '.join(limits)}")
    return tolerance


def check(
    limits: Mapping[str, Limit], tolerance: Mapping[str, float], stats: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """`lvvit.common.gate.check_gate` as the plain data a report stores (never passed by a NaN or infinite value)."""
    return [c.to_dict() for c in check_gate(limits, check_tolerance(tolerance, limits), stats)]


def raise_if_failed(report: Mapping[str, Any]) -> None:
    """`GateFailure` listing every failed check of every runtime in `report["runtimes"]`."""
    lines = failed_lines(
        (name, [GateCheck.from_dict(c) for c in entry.get("gate", [])]) for name, entry in report["runtimes"].items()
    )
    if lines:
        raise GateFailure("outside the tolerance:\n  " + "\n  ".join(lines))
