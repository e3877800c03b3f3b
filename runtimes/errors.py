"""Typed predictor errors; the messages carry the file, the shapes and the numbers.

Errors from the preprocessing (`ImageError`) and from reading a model's kit
metadata (`MetadataError`) are `lvvit`'s own and pass through unchanged.
"""

from __future__ import annotations

from lvvit.errors import LvvitError


class PredictorError(LvvitError):
    """Base class of the errors raised by `runtimes`."""


class ModelFileError(PredictorError, ValueError):
    """A model file that is missing, empty, truncated, not ONNX, or that the runtime cannot load."""


class ConfigurationError(PredictorError, ValueError):
    """Predictor arguments that contradict each other or the model (preset, resolution, labels, batch size)."""


class InputError(PredictorError, ValueError):
    """A batch of the wrong type, shape or dtype, or with NaN/inf values."""


class OutputError(PredictorError, RuntimeError):
    """A runtime that returned logits of the wrong shape or with NaN/inf values."""


class DeviceUnavailableError(PredictorError, RuntimeError):
    """A device, execution provider or precision that was asked for but cannot be used here."""


class BackendNotInstalledError(PredictorError, RuntimeError):
    """The Python package of a runtime is not installed."""


class PredictorClosedError(PredictorError, RuntimeError):
    """A predictor used after `close()` (or after its `with` block)."""
