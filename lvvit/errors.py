"""The kit's own exception types: narrow, typed, and carrying the numbers."""

from __future__ import annotations


class LvvitError(Exception):
    """Base class of every error the kit raises on purpose."""


class UnknownPresetError(LvvitError, ValueError):
    """A preset name that is not in the registry."""


class WeightsError(LvvitError, ValueError):
    """A weights file that cannot be read or does not fit the model."""


class UnsafeWeightsError(WeightsError):
    """A weights file whose pickle would import or call something beyond plain data."""


class WeightsMismatchError(WeightsError):
    """A state dict whose keys or shapes differ from the model's."""


class ImageError(LvvitError, ValueError):
    """An image that cannot be read or converted."""


class ResolutionError(LvvitError, ValueError):
    """An input resolution the model cannot take."""


class CpuInfoError(LvvitError, ValueError):
    """A cpuinfo file (LVVIT_CPUINFO) that is missing, unreadable or too large."""
