"""Typed export errors; the messages carry the file and the numbers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lvvit.errors import LvvitError

# `checks` hold exporters.onnx.verify.DriftCheck records; not imported here, so that the errors module stays below
# every module that raises them (no import circle, not even a type-only one).


class ExportError(LvvitError, RuntimeError):
    """An export that did not produce a trustworthy artifact."""


class ConversionError(ExportError):
    """paddle2onnx failed, or reported success with an empty or invalid model."""


class VerificationError(ExportError):
    """The exported model disagrees with native Paddle beyond the tolerance; `checks` are the failed checks."""

    def __init__(self, message: str, checks: Sequence[object] = ()) -> None:
        super().__init__(message)
        self.checks = list(checks)


class Int8GateError(VerificationError):
    """An int8 file below the least top-1 agreement: kept beside the target as `rejected` (not at the target)."""

    def __init__(self, message: str, checks: Sequence[object], rejected: Path) -> None:
        super().__init__(message, checks)
        self.rejected = rejected
