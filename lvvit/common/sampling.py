"""Choosing a few items of a sorted folder: evenly spaced, not the first ones.

Image folders sort by class (ImageNet's layout is a folder per class) or by source (crops of one photograph sit
side by side), so the first N by path are one class or a few photographs. int8 calibration, its gate and
validation's `--limit` take their images spread over the whole folder instead, deterministically.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def evenly_spaced(items: Sequence[T], count: int) -> list[T]:
    """`count` of `items` evenly spaced over them, in their order (all of them when there are no more)."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    if len(items) <= count:
        return list(items)
    return [items[k * len(items) // count] for k in range(count)]
