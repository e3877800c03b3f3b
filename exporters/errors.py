"""Typed export errors; the messages carry the file and the numbers."""

from __future__ import annotations

from lvvit.errors import LvvitError


class ExportError(LvvitError, RuntimeError):
    """An export that did not produce a trustworthy artifact."""


class ConversionError(ExportError):
    """paddle2onnx failed, or reported success with an empty or invalid model."""


class VerificationError(ExportError):
    """The exported model disagrees with native Paddle beyond the tolerance."""
