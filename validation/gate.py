"""The tolerance gate on the command line and on a report; the limits and the check are `lvvit.comparison`'s.

Drift limits read `DriftStats`; accuracy limits read the per-runtime accuracy
summary (percent and percentage points). `--tolerance NAME=VALUE` replaces one
default; `NAME=none` switches it off.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from lvvit.comparison import (
    ACCURACY_LIMITS,
    DEFAULT_ACCURACY_TOLERANCE,
    DEFAULT_DRIFT_TOLERANCE,
    DRIFT_LIMITS,
    GateCheck,
    Limit,
    checked_bound,
    failed_lines,
)
from lvvit.comparison import ToleranceError as _CoreToleranceError

from .errors import GateFailure, ToleranceError

__all__ = [
    "ACCURACY_LIMITS",
    "DEFAULT_ACCURACY_TOLERANCE",
    "DEFAULT_DRIFT_TOLERANCE",
    "DRIFT_LIMITS",
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
        try:
            tolerance[name] = checked_bound(name, number)
        except _CoreToleranceError as exc:
            raise ToleranceError(str(exc)) from None
    return tolerance


def raise_if_failed(report: Mapping[str, Any]) -> None:
    """`GateFailure` listing every failed check of every runtime in `report["runtimes"]`."""
    lines = failed_lines(
        (name, [GateCheck.from_dict(c) for c in entry.get("gate", [])]) for name, entry in report["runtimes"].items()
    )
    if lines:
        raise GateFailure("outside the tolerance:\n  " + "\n  ".join(lines))
