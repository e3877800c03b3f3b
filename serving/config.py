"""The server's limits: what one request, the queue and a batch may hold. One frozen value, checked once."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import ServingSetupError

MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class Limits:
    max_batch: int = 8  # images per predictor call; also the most one request may hold (Triton's max_batch_size)
    max_wait_ms: float = 5.0  # how long the first request of a batch waits for others
    max_queue: int = 64  # images waiting for the predictor; beyond it, 503 + Retry-After
    max_body_bytes: int = 32 << 20  # a request body (a batch of 8 at 448px is 19 MB as FP32)
    retry_after_s: int = 1
    drain_timeout_s: float = 30.0  # SIGTERM: how long the requests in flight may take to finish

    def __post_init__(self) -> None:
        checks = {
            "max_batch": 1 <= self.max_batch <= 1024,
            "max_wait_ms": 0 <= self.max_wait_ms <= 10_000,
            "max_queue": self.max_batch <= self.max_queue <= 1_000_000,
            "max_body_bytes": 1024 <= self.max_body_bytes <= 1 << 31,
            "retry_after_s": 1 <= self.retry_after_s <= 3600,
            "drain_timeout_s": 0 < self.drain_timeout_s <= 3600,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ServingSetupError(
                f"server limits out of range: {', '.join(f'{n}={getattr(self, n)!r}' for n in bad)} "
                "(max_batch 1..1024, max_wait_ms 0..10000, max_queue max_batch..1000000, max_body_bytes >= 1024, "
                "retry_after_s 1..3600, drain_timeout_s 0..3600)"
            )


def check_model_name(name: str) -> str:
    if not MODEL_NAME.fullmatch(name):
        raise ServingSetupError(
            f"model name {name!r}: use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    return name
