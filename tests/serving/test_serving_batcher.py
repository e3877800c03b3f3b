"""Dynamic batching, in process and deterministic: who waits for whom, the bounded queue, errors, the drain."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from serving.batcher import DynamicBatcher
from serving.config import Limits
from serving.errors import QueueFullError, ServingSetupError


class Recorder:
    """A stand-in predictor (logits = the per-sample mean, so answers show whose rows they are), recording
    the batch sizes it ran; `gate` holds a call until the test releases it."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.sizes: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.seconds = seconds  # what a call takes

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.gate.wait(10)
        time.sleep(self.seconds)
        self.sizes.append(len(x))
        return x.reshape(len(x), -1).mean(axis=1, keepdims=True)


def rows(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32).reshape(-1, 1, 1, 1)


async def request(batcher: DynamicBatcher, x: np.ndarray, delay: float = 0.0) -> np.ndarray:
    with batcher.announced():
        await asyncio.sleep(delay)  # the handler reading and decoding its body
        return await batcher.infer(x)


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 30))


def test_announced_requests_run_as_one_batch_each_with_its_own_rows():
    recorder = Recorder()

    async def scenario():
        batcher = DynamicBatcher(recorder, Limits(max_batch=8, max_wait_ms=2000))
        await batcher.start()
        answers = await asyncio.gather(
            request(batcher, rows(1.0)), request(batcher, rows(2.0, 3.0), 0.05), request(batcher, rows(4.0), 0.1)
        )
        await batcher.stop()
        return answers

    started = time.monotonic()
    answers = run(scenario())
    assert recorder.sizes == [4]
    assert [a.ravel().tolist() for a in answers] == [[1.0], [2.0, 3.0], [4.0]]
    assert time.monotonic() - started < 1.5, "the batch waited for the full max_wait instead of the last arrival"


def test_a_lone_request_does_not_wait():
    recorder = Recorder()

    async def scenario():
        batcher = DynamicBatcher(recorder, Limits(max_batch=8, max_wait_ms=5000))
        await batcher.start()
        started = time.monotonic()
        await request(batcher, rows(1.0))
        elapsed = time.monotonic() - started
        await batcher.stop()
        return elapsed

    assert run(scenario()) < 1.0
    assert recorder.sizes == [1]


def test_clients_answered_together_come_back_to_one_batch():
    recorder = Recorder(seconds=0.03)

    async def client(batcher: DynamicBatcher, i: int) -> None:
        for _ in range(6):
            # a closed-loop client: the next request starts a little after the answer, and is announced only then
            await asyncio.sleep(0.002 * i)
            await request(batcher, rows(float(i)))

    async def scenario():
        batcher = DynamicBatcher(recorder, Limits(max_batch=8, max_wait_ms=200))
        await batcher.start()
        await asyncio.gather(*(client(batcher, i) for i in range(4)))
        await batcher.stop()

    run(scenario())
    assert sum(recorder.sizes) == 24
    # the first client runs alone and is one request ahead from then on; every batch between is full
    assert recorder.sizes[0] == 1 and set(recorder.sizes[1:-1]) == {4}, recorder.sizes


def test_batches_never_pass_max_batch():
    recorder = Recorder()

    async def scenario():
        batcher = DynamicBatcher(recorder, Limits(max_batch=4, max_wait_ms=100, max_queue=64))
        await batcher.start()
        answers = await asyncio.gather(*(request(batcher, rows(i, i)) for i in range(5)))
        await batcher.stop()
        return answers

    answers = run(scenario())
    assert max(recorder.sizes) <= 4 and sum(recorder.sizes) == 10
    assert [a.ravel().tolist() for a in answers] == [[i, i] for i in range(5)]


def test_a_full_queue_refuses_at_once_with_retry_after():
    recorder = Recorder()
    recorder.gate.clear()  # the predictor is busy

    async def scenario():
        batcher = DynamicBatcher(recorder, Limits(max_batch=2, max_wait_ms=0, max_queue=3, retry_after_s=2))
        await batcher.start()
        running = asyncio.ensure_future(request(batcher, rows(0.0, 0.0)))  # taken by the worker, blocks in the gate
        await asyncio.sleep(0.2)
        queued = [asyncio.ensure_future(request(batcher, rows(1.0))) for _ in range(3)]  # the queue's 3 images
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFullError, match="the queue holds 3 images and takes at most 3; retry in 2 s") as info:
            await request(batcher, rows(9.0))
        assert info.value.headers == {"Retry-After": "2"} and info.value.status == 503
        recorder.gate.set()
        done = await asyncio.gather(running, *queued)
        await batcher.stop()
        return done

    done = run(scenario())
    assert [a.ravel().tolist() for a in done] == [[0.0, 0.0], [1.0], [1.0], [1.0]]


def test_a_predictor_error_reaches_every_request_of_the_batch():
    def broken(x: np.ndarray) -> np.ndarray:
        raise RuntimeError("the runtime fell over")

    async def scenario():
        batcher = DynamicBatcher(broken, Limits(max_batch=8, max_wait_ms=500))
        await batcher.start()
        results = await asyncio.gather(*(request(batcher, rows(i)) for i in range(3)), return_exceptions=True)
        answer_after = None
        try:
            await request(batcher, rows(1.0))
        except RuntimeError as exc:
            answer_after = str(exc)
        await batcher.stop()
        return results, answer_after

    results, after = run(scenario())
    assert [str(r) for r in results] == ["the runtime fell over"] * 3
    assert after == "the runtime fell over"  # the worker survived the error and ran the next batch


def test_stop_finishes_what_is_queued():
    recorder = Recorder()
    recorder.gate.clear()

    async def scenario():
        batcher = DynamicBatcher(recorder, Limits(max_batch=1, max_wait_ms=0))
        await batcher.start()
        pending = [asyncio.ensure_future(request(batcher, rows(float(i)))) for i in range(3)]
        await asyncio.sleep(0.1)
        stopping = asyncio.ensure_future(batcher.stop())
        await asyncio.sleep(0.1)
        assert not stopping.done()
        recorder.gate.set()
        await stopping
        return [p.result().item() for p in pending]

    assert run(scenario()) == [0.0, 1.0, 2.0]


def test_limits_are_checked():
    with pytest.raises(ServingSetupError, match=r"max_queue=4 .*max_queue max_batch\.\.1000000"):
        Limits(max_batch=8, max_queue=4)
    with pytest.raises(ServingSetupError, match="max_wait_ms=-1"):
        Limits(max_wait_ms=-1)


def test_the_wait_counts_from_when_the_predictor_is_free():
    """A wait shorter than a batch: the request that queued behind the running batch still waits for the clients
    answered with that batch, since its wait starts when the batch ends (not when it arrived)."""
    recorder = Recorder(seconds=0.05)

    async def client(batcher: DynamicBatcher, i: int) -> None:
        for _ in range(6):
            await asyncio.sleep(0.002 * i)
            await request(batcher, rows(float(i)))

    async def scenario():
        batcher = DynamicBatcher(recorder, Limits(max_batch=8, max_wait_ms=20))
        await batcher.start()
        await asyncio.gather(*(client(batcher, i) for i in range(4)))
        await batcher.stop()

    run(scenario())
    assert sum(recorder.sizes) == 24
    assert recorder.sizes[0] == 1 and set(recorder.sizes[1:-1]) == {4}, recorder.sizes
