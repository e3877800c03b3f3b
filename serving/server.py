"""The embedded host: the app under uvicorn in this process, batching with `DynamicBatcher`.

SIGTERM (and Ctrl-C) drain: uvicorn stops accepting, the requests in flight and in the queue finish (up to
`drain_timeout_s`), the predictor closes, and the process exits 0. uvicorn re-raises the signal it caught once
it is done; the handler installed here takes it, so the exit status stays 0 rather than "killed by SIGTERM".
"""

from __future__ import annotations

import importlib.util
import logging
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lvvit.common.progress import Log, to_stderr
from runtimes import PredictorSpec

from .app import create_app
from .batcher import DynamicBatcher
from .config import Limits
from .errors import ServingSetupError
from .metrics import Metrics
from .model import ServedModel


@dataclass(frozen=True)
class Endpoint:
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"  # "debug": one line per request


def default_name(model: str | Path) -> str:
    """The model's name in URLs: its file stem (`lvvit_s.onnx` -> `lvvit_s`; a Paddle artifact's folder stem)."""
    return Path(model).stem.removesuffix(".pdiparams") or "model"


def bind(endpoint: Endpoint) -> socket.socket:
    """Bind before the model loads, so a port in use fails at once and port 0 is known to print."""
    family = socket.AF_INET6 if ":" in endpoint.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((endpoint.host, endpoint.port))
        sock.listen(2048)  # connections wait in the backlog while the model loads
    except OSError as exc:
        sock.close()
        raise ServingSetupError(f"cannot listen on {endpoint.host}:{endpoint.port}: {exc.strerror or exc}") from None
    return sock


def _log_requests(level: str) -> None:
    """The app's per-request lines (logger `serving`, debug level) to stderr, beside uvicorn's own."""
    logger = logging.getLogger("serving")
    logger.setLevel(level.upper())
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        logger.addHandler(handler)


def http_stack() -> tuple[str, str]:
    """uvicorn's event loop and HTTP parser: uvloop and httptools (both in the `[serve]` extra) when
    installed, since they take less of the cores the model needs; else asyncio and h11."""
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return loop, http


def print_url(url: str) -> None:
    """The first line on stdout once the server listens (`serving.child` waits for it)."""
    print(f"serving on {url}", flush=True)


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def serve(
    spec: PredictorSpec,
    name: str,
    limits: Limits,
    endpoint: Endpoint,
    log: Log = to_stderr,
    on_listening: Callable[[str], None] = print_url,
) -> int:
    """Serve `spec`'s model until SIGTERM/SIGINT; returns the exit status (0 after a drain)."""
    import uvicorn

    sock = bind(endpoint)
    predictor = spec.open()
    try:
        metrics = Metrics()
        model = ServedModel(name, predictor, spec, limits.max_batch)
        batcher = DynamicBatcher(metrics.timed(predictor.logits), limits, metrics.observe_batch, metrics.queued.set)
        app = create_app(model, batcher, limits, metrics)
        _log_requests(endpoint.log_level)
        loop, http = http_stack()
        config = uvicorn.Config(
            app,
            loop=loop,
            http=http,
            log_level=endpoint.log_level,
            timeout_graceful_shutdown=limits.drain_timeout_s,
            access_log=False,  # the app logs each request itself, with its latency (at debug level)
        )
        server = uvicorn.Server(config)
        caught: list[int] = []
        previous: dict[int, Any] = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda signum, frame: caught.append(signum))
        log(
            f"{name}: {spec.runtime} on {model.metadata()['parameters']['device']}, max batch {limits.max_batch}, "
            f"wait {limits.max_wait_ms} ms, queue {limits.max_queue} images; uvicorn on {loop} and {http}"
        )
        on_listening(url_of(sock))
        server.run(sockets=[sock])
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if caught or server.should_exit:
            log(f"{name}: drained and stopped")
        return 0 if server.started else 1
    finally:
        predictor.close()
        sock.close()
