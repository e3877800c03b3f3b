"""Dynamic batching for the uvicorn host: requests that arrive within `max_wait_ms` of the first run as one
predictor call of at most `max_batch` images.

A batch waits only when there is a sign of company: requests already announced (being read or decoded by
their handlers), or fewer requests than the last batch held (clients that were answered together come back
together). A lone client's request runs at once instead of paying the wait; under load, the requests that
arrive while a batch runs form the next one. The wait counts from when the predictor became free (or from the
first request's arrival, if later): a request that queued behind a running batch does not spend its wait there.

The queue holds at most `max_queue` images; a request that would not fit is refused at once (`QueueFullError`:
503 + Retry-After) instead of waiting without bound. One worker task forms batches and runs them on one
thread (the predictor uses every core for one call), so the event loop keeps accepting and refusing requests
while a batch runs. `stop()` lets the queued requests finish first: SIGTERM drains, it does not drop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .config import Limits
from .errors import QueueFullError


@dataclass
class _Pending:
    batch: np.ndarray
    future: asyncio.Future[np.ndarray]
    arrived: float


class DynamicBatcher:
    """`await infer(batch)` -> its logits, run together with whatever else arrived in the wait window."""

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        limits: Limits,
        on_batch: Callable[[int], None] = lambda n: None,
        on_queue: Callable[[int], None] = lambda n: None,
    ) -> None:
        self._run = run
        self._limits = limits
        self._on_batch = on_batch
        self._on_queue = on_queue
        self._pending: collections.deque[_Pending] = collections.deque()
        self._queued = 0  # images in _pending
        self._announced = 0  # requests whose handlers have started and not yet finished
        self._last_requests = 0  # how many requests the last batch held
        self._arrival = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="predictor")
        self._worker: asyncio.Task[None] | None = None

    @property
    def queued(self) -> int:
        return self._queued

    @contextlib.contextmanager
    def announced(self) -> Iterator[None]:
        """Around a request's handler, from before its body is read: batches wait for announced requests only."""
        self._announced += 1
        try:
            yield
        finally:
            self._announced -= 1
            self._arrival.set()  # a request that failed before it queued: the batch need not wait for it

    async def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._work(), name="dynamic-batcher")

    async def stop(self) -> None:
        """Finish what is queued (for at most `drain_timeout_s`), then stop the worker and its thread."""
        deadline = asyncio.get_running_loop().time() + self._limits.drain_timeout_s
        while self._pending and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def infer(self, batch: np.ndarray) -> np.ndarray:
        n = len(batch)
        limits = self._limits
        if self._queued + n > limits.max_queue:
            raise QueueFullError(
                f"the queue holds {self._queued} images and takes at most {limits.max_queue}; retry in "
                f"{limits.retry_after_s} s",
                limits.retry_after_s,
            )
        loop = asyncio.get_running_loop()
        item = _Pending(batch, loop.create_future(), loop.time())
        self._pending.append(item)
        self._queued += n
        self._on_queue(self._queued)
        self._arrival.set()
        return await item.future

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        limits = self._limits
        free_at = loop.time()  # when the predictor was last free
        while True:
            while not self._pending:  # the event also fires for requests that left before they queued
                self._arrival.clear()
                await self._arrival.wait()
            # the wait counts from when the batch could first run: a request that arrived while the last batch
            # ran has waited for the predictor, not for company (the clients answered with that batch come
            # back only after it ends; counting from its arrival, a wait shorter than a batch never saw them)
            deadline = max(self._pending[0].arrived, free_at) + limits.max_wait_ms / 1000
            while (
                self._queued < limits.max_batch
                and (self._announced > len(self._pending) or len(self._pending) < self._last_requests)
                and (left := deadline - loop.time()) > 0
            ):
                self._arrival.clear()
                try:
                    await asyncio.wait_for(self._arrival.wait(), left)
                except asyncio.TimeoutError:  # noqa: UP041 (distinct from TimeoutError on Python 3.10)
                    break
            taken: list[_Pending] = []
            size = 0
            while self._pending and size + len(self._pending[0].batch) <= limits.max_batch:
                item = self._pending.popleft()
                taken.append(item)
                size += len(item.batch)
            self._queued -= size
            self._on_queue(self._queued)
            live = [item for item in taken if not item.future.done()]  # a client that left cancelled its future
            self._last_requests = len(live)
            if not live:
                continue
            x = live[0].batch if len(live) == 1 else np.concatenate([item.batch for item in live])
            self._on_batch(len(x))
            try:
                logits = await loop.run_in_executor(self._executor, self._run, x)
            except Exception as exc:  # every waiting request gets the predictor's error
                for item in live:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            finally:
                free_at = loop.time()
            start = 0
            for item in live:
                end = start + len(item.batch)
                if not item.future.done():
                    item.future.set_result(logits[start:end])
                start = end
