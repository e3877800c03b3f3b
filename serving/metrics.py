"""Prometheus metrics of one server: requests, latency, batch sizes, errors by kind, queue depth.

Each app has its own registry (two apps in one process, as in the tests, never share counters); `/metrics`
renders it in Prometheus' text format. Under Ray Serve each replica has its own, and `/metrics` answers for
the replica that took the request (and counts only what that replica did): Prometheus should scrape each
replica, not the proxy's address.

`lvvit_predictor_seconds` (each predictor call, as the batch runs) beside `lvvit_request_seconds` (each request,
from its first byte to its answer) shows where a request's time goes: at concurrency 1 their difference is the
server's own overhead (reading, parsing, the hop into the predictor's thread, answering), measured by the server
itself and so unaffected by how fast the machine happens to be at the time.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "lvvit_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "lvvit_request_seconds",
            "Request latency, body read to response",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "lvvit_batch_size", "Images per predictor call", buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.predictor_seconds = Histogram(
            "lvvit_predictor_seconds",
            "Time in the predictor per call (one batch)",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.images = Counter("lvvit_images", "Images run through the predictor", registry=self.registry)
        self.errors = Counter("lvvit_errors", "Failed requests by kind", ["kind"], registry=self.registry)
        self.queued = Gauge("lvvit_queue_images", "Images waiting for the predictor", registry=self.registry)

    def observe_batch(self, size: int) -> None:
        self.batch_size.observe(size)
        self.images.inc(size)

    def timed(self, run: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
        """`run` (the predictor's `logits`), its calls observed in `lvvit_predictor_seconds`."""

        def timed_run(batch: np.ndarray) -> np.ndarray:
            start = time.perf_counter()
            try:
                return run(batch)
            finally:
                self.predictor_seconds.observe(time.perf_counter() - start)

        return timed_run

    def render(self) -> bytes:
        return generate_latest(self.registry)
