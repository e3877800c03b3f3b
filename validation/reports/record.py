"""Typed records that read themselves from a JSON object and write themselves back: one `to_json`/`from_json` pair.

A record is a frozen dataclass whose fields say how each value is read (`load`) and written (`dump`) in their
metadata (see `item`). Keys a record does not know are kept in its `extra` field, when it has one, so that a
report from a newer or older kit round-trips without losing them. A value that JSON stored as null where a number
belongs (NaN and infinities are written so) reads back as None; `is_number` tells such values apart.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import MISSING, field, fields
from pathlib import PurePath
from typing import Any, TypeVar

from lvvit.common.gate import GateCheck
from lvvit.common.metrics import DriftStats

R = TypeVar("R", bound="Record")
Load = Callable[[Any], Any]


def item(load: Load | None = None, dump: Callable[[Any], Any] | None = None, *, omit_none: bool = False,
         **kwargs: Any) -> Any:  # fmt: skip
    """A record field: `load` reads its JSON value, `dump` writes it; `omit_none` leaves the key out when None."""
    return field(metadata={"load": load, "dump": dump, "omit_none": omit_none}, **kwargs)


def optional(load: Load | None = None, **kwargs: Any) -> Any:
    """A field that may be absent from the JSON (None then), and is left out when None."""
    return item(none_or(load) if load else None, omit_none=True, default=None, **kwargs)


class Record:
    """The `to_json`/`from_json` pair every report record shares (see the module docstring)."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if value is None and f.metadata.get("omit_none"):
                continue
            dump = f.metadata.get("dump")
            out[f.name] = dump(value) if dump else plain(value)
        out.update(getattr(self, "extra", None) or {})
        return out

    @classmethod
    def from_json(cls: type[R], data: Any) -> R:
        data = mapping(data, cls.__name__)
        values: dict[str, Any] = {}
        known = set()
        for f in fields(cls):  # type: ignore[arg-type]
            known.add(f.name)
            if f.name == "extra":
                continue
            if f.name not in data:
                if f.default is MISSING and f.default_factory is MISSING:
                    raise KeyError(f"{cls.__name__} lacks {f.name!r}")
                continue
            load = f.metadata.get("load")
            values[f.name] = load(data[f.name]) if load else as_json(data[f.name])
        if "extra" in known:
            values["extra"] = {k: as_json(v) for k, v in data.items() if k not in known}
        return cls(**values)


def plain(value: Any) -> Any:
    """A value as JSON-ready data: records, drift statistics and gate checks as objects, tuples as lists."""
    if isinstance(value, Record):
        return value.to_json()
    if isinstance(value, (DriftStats, GateCheck)):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def as_json(value: Any) -> Any:
    """A value as JSON would give it back: tuples as lists, keys as strings, paths as strings, numpy scalars as
    Python numbers; so that a report built by a run equals the same report read from its file (and renders the
    same page)."""
    if isinstance(value, Mapping):
        return {str(k): as_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_json(v) for v in value]
    if isinstance(value, PurePath):
        return str(value)
    if type(value).__module__ == "numpy" and hasattr(value, "item"):  # numpy scalars (np.float64 is a float)
        return value.item()
    return value


# -- loaders ---------------------------------------------------------------------------------------------------------


def mapping(data: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise TypeError(f"{what}: expected a JSON object, got {type(data).__name__}")
    return data


def sequence(data: Any, what: str = "list") -> list[Any]:
    if not isinstance(data, list):
        raise TypeError(f"{what}: expected a JSON list, got {type(data).__name__}")
    return data


def none_or(load: Load) -> Load:
    return lambda data: None if data is None else load(data)


def records(cls: type[Record]) -> Load:
    return lambda data: [cls.from_json(v) for v in sequence(data, cls.__name__)]


def by_name(load: Load) -> Load:
    return lambda data: {str(k): load(v) for k, v in mapping(data, "table").items()}


def number(data: Any) -> float | None:
    """A JSON number as a float; null (a NaN or infinity the JSON could not hold) stays None."""
    if data is None:
        return None
    if isinstance(data, bool) or not isinstance(data, (int, float)):
        raise TypeError(f"expected a number, got {type(data).__name__}")
    return float(data)


def numbers(data: Any) -> dict[str, float | None]:
    return {str(k): number(v) for k, v in mapping(data, "numbers").items()}


def gate_checks(data: Any) -> list[GateCheck]:
    return [GateCheck.from_dict(mapping(c, "gate check")) for c in sequence(data, "gate")]


def drift_stats(data: Any) -> DriftStats:
    return DriftStats.from_dict(mapping(data, "drift statistics"))


def is_number(value: Any) -> bool:
    """A finite number (None is a NaN or an infinity the JSON could not hold)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def failed_checks(checks: list[GateCheck] | None) -> list[GateCheck]:
    """The checks that fail: over their limit, or with a value that is not a finite number."""
    return [c for c in checks or [] if not (c.passed and is_number(c.value))]
