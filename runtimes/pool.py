"""A pool of per-thread runtime objects (inference requests, cloned predictors).

Runtimes whose request objects are not thread-safe hand each concurrent caller
its own: a caller borrows a free one or makes a new one, and gives it back. The
pool grows to the largest number of concurrent callers and no further.
"""

from __future__ import annotations

import contextlib
import queue
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Pool(Generic[T]):
    def __init__(self, factory: Callable[[], T], first: T | None = None) -> None:
        self._factory = factory
        self._free: queue.SimpleQueue[T] = queue.SimpleQueue()
        if first is not None:
            self._free.put(first)

    @contextlib.contextmanager
    def borrow(self) -> Iterator[T]:
        try:
            item = self._free.get_nowait()
        except queue.Empty:
            item = self._factory()
        try:
            yield item
        finally:
            self._free.put(item)
