"""The Ray Serve host: the same FastAPI app (`create_app`) as a Ray Serve deployment, with replicas,
autoscaling and `@serve.batch`.

Without an address Ray starts embedded in this process on this machine's cores and stops with it; with
`--ray-address` (auto, HOST:6379) the deployment joins a cluster, as `validation --engine ray` does. The model's
bytes travel through Ray's object store and each replica writes them into its own temporary folder after
checking their SHA-256 (`PredictorSpec.materialize`), so a replica on another node needs no shared disk.

What differs from the uvicorn host, and why: batching is Ray's `@serve.batch` (its batch counts requests, each
at most `max_batch` images, and it waits `max_wait_ms` for a full batch); the queue bound is Ray's
`max_queued_requests` (requests, per proxy), answered by Ray's own backpressure response: 503 with `Retry-After`
(its `backpressure_config`), its body Ray's message rather than the app's JSON; `/metrics` answers for the
replica that took the request, each replica counting only its own requests. SIGTERM shuts Serve down (replicas
finish their requests) and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray import serve
from ray.serve.config import BackpressureConfig

from lvvit.common.progress import Log, to_stderr
from runtimes import PredictorSpec

from .app import create_app
from .config import Limits
from .errors import ServingSetupError
from .metrics import Metrics
from .model import ServedModel
from .server import Endpoint, print_url

KIT_ROOT = str(Path(__file__).resolve().parents[1])
EMBEDDED_OBJECT_STORE_BYTES = 256 << 20  # one model's bytes pass through it once


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # None: Ray embedded here
    replicas: int = 1
    max_replicas: int | None = None  # autoscale between replicas and this
    replica_cpus: float = 1.0


@serve.deployment
@serve.ingress()
class KitDeployment:
    """One replica: the predictor, opened from shipped bytes, behind the shared app."""

    def __init__(self, spec: PredictorSpec, blobs: dict[str, Any], name: str, limits: Limits) -> None:
        self._folder = tempfile.mkdtemp(prefix="lvvit-serve-")
        local = spec.materialize({f: ray.get(ref) for f, ref in blobs.items()}, self._folder)
        self.predictor = local.open()
        self.model = ServedModel(name, self.predictor, local, limits.max_batch)
        self.limits = limits
        self.metrics = Metrics()
        self.run_batch.set_max_batch_size(limits.max_batch)
        self.run_batch.set_batch_wait_timeout_s(limits.max_wait_ms / 1000)

    def __serve_build_asgi_app__(self) -> Any:
        return create_app(self.model, self, self.limits, self.metrics)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def run_batch(self, batches: list[np.ndarray]) -> list[np.ndarray]:
        x = np.concatenate(batches)
        self.metrics.observe_batch(len(x))
        logits = await asyncio.to_thread(self.metrics.timed(self.predictor.logits), x)
        bounds = np.cumsum([len(b) for b in batches])[:-1]
        return np.split(logits, bounds)

    # the app's Runner interface
    async def infer(self, batch: np.ndarray) -> np.ndarray:
        return await self.run_batch(batch)

    def announced(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()  # @serve.batch waits by time, not for announced requests

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def __del__(self) -> None:
        self.predictor.close()
        shutil.rmtree(self._folder, ignore_errors=True)


def _free_port(host: str) -> int:
    """Ray Serve's proxy binds a fixed port: for port 0, ask the system for a free one (and release it)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def deployment_options(limits: Limits, options: RayOptions) -> dict[str, Any]:
    """The deployment's replicas (or autoscaling), concurrency and queue bound.

    A replica takes up to `2 * max_batch` requests at once (a batch running and the next one forming); the
    requests beyond wait in Ray's queue, at most `max_queue` of them per proxy; past that Ray itself answers 503,
    and `backpressure_config` makes that answer carry `Retry-After` as the uvicorn host's does.
    """
    scaling: dict[str, Any] = {"num_replicas": options.replicas}
    if options.max_replicas is not None:
        scaling = {
            "autoscaling_config": {
                "min_replicas": options.replicas,
                "max_replicas": max(options.max_replicas, options.replicas),
                "target_ongoing_requests": limits.max_batch,
            }
        }
    return {
        "max_ongoing_requests": 2 * limits.max_batch,
        "max_queued_requests": limits.max_queue,
        "backpressure_config": BackpressureConfig(status_code=503, retry_after_s=limits.retry_after_s),
        "ray_actor_options": {"num_cpus": options.replica_cpus},
        **scaling,
    }


def _start_ray(address: str | None) -> bool:
    """Start Ray embedded, or join `address`; True when started here (and so to be shut down here)."""
    if ray.is_initialized():
        return False
    options: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "runtime_env": {"env_vars": {"PYTHONPATH": KIT_ROOT}},  # replicas import this very kit
    }
    if address is None:
        options["num_cpus"] = len(os.sched_getaffinity(0))
        options["object_store_memory"] = EMBEDDED_OBJECT_STORE_BYTES
    ray.init(address=address, **options)
    return True


def serve_on_ray(
    spec: PredictorSpec,
    name: str,
    limits: Limits,
    endpoint: Endpoint,
    options: RayOptions,
    log: Log = to_stderr,
    on_listening: Callable[[str], None] = print_url,
) -> int:
    """Deploy `spec`'s model on Ray Serve and keep it up until SIGTERM/SIGINT; returns 0 after shutdown."""
    if options.address is not None and options.address.startswith("ray://"):
        raise ServingSetupError(
            f"--ray-address {options.address}: run the command on a node of the cluster with --ray-address auto"
        )
    port = endpoint.port or _free_port(endpoint.host)
    started_here = _start_ray(options.address)
    # after ray.init, whose core worker installs its own SIGTERM handler (it would end the process at once)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        serve.start(http_options={"host": endpoint.host, "port": port})
        blobs = {f: ray.put(b) for f, b in spec.read_files().items()}
        deployment = KitDeployment.options(name=name, **deployment_options(limits, options))
        serve.run(deployment.bind(spec, blobs, name, limits), name=name, route_prefix="/")
        where = options.address or "embedded"
        log(f"{name}: {spec.runtime} on Ray Serve ({where}), {options.replicas} replica(s), batch {limits.max_batch}")
        on_listening(f"http://{endpoint.host}:{port}")
        while not stop.wait(0.5):
            pass
        serve.shutdown()  # replicas finish the requests they hold
        log(f"{name}: Ray Serve shut down")
        return 0
    finally:
        for sig, handler in previous.items():
            if handler is not None:  # None: a handler installed outside Python (Ray's), which cannot be put back
                signal.signal(sig, handler)
        if started_here:
            ray.shutdown()
