"""Typed validation errors; the messages carry the files, the lines and the numbers."""

from __future__ import annotations

from lvvit.common.gate import ToleranceError as _CoreToleranceError

# CpuInfoError: raised by lvvit.common.cpuinfo, the kit's one CPU detection; named here too for validation's callers.
from lvvit.errors import CpuInfoError as CpuInfoError
from lvvit.errors import LvvitError


class ValidationError(LvvitError):
    """Base class of the errors raised by `validation`."""


class DatasetError(ValidationError, ValueError):
    """A folder that holds no usable images, or neither a label file nor class folders."""


class LabelFileError(DatasetError):
    """A label file with malformed lines or lines that point at missing files; lists them by line number."""


class ModelSourceError(ValidationError, ValueError):
    """Model settings that contradict each other (preset vs metadata, weights vs the exported file)."""


class ToleranceError(ValidationError, _CoreToleranceError):
    """An unknown tolerance name or an unreadable, non-finite or negative limit."""


class GateFailure(ValidationError, RuntimeError):
    """A runtime outside the tolerance: the message has every exceeded limit with its number.

    Raised by `check_gate` after the report is written, so the numbers are on disk too.
    """


class EngineError(ValidationError, RuntimeError):
    """An engine that cannot run: unknown, not installed, or fed runtimes whose inputs differ."""
