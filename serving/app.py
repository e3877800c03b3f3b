"""The one FastAPI application both hosts run (uvicorn here, Ray Serve on a cluster): the Open Inference Protocol
endpoints, a plain `curl --data-binary @cat.jpg` endpoint, and `/metrics`.

The host gives it a runner, the thing that batches: `DynamicBatcher` under uvicorn, the `@serve.batch` method of
the deployment under Ray Serve. Everything a stranger sends is bounded (the body before it is read, the JSON's
depth, the images' pixels, the images per request) and a bad request gets a JSON error naming the problem;
the server goes on serving.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager, asynccontextmanager
from typing import Any, Protocol

import numpy as np
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from lvvit.common.versions import package_version
from runtimes import PredictorError

from .config import Limits
from .errors import (
    BadRequestError,
    NotReadyError,
    PayloadTooLargeError,
    ServingError,
    UnknownModelError,
    UnsupportedEncodingError,
)
from .metrics import Metrics
from .model import DEFAULT_TOPK, VERSION, ServedModel
from .protocol import HEADER_LENGTH, encode_infer_response, parse_infer_request

log = logging.getLogger("serving")

INLINE_JSON_BYTES = 64 << 10
CURL_HINT = "send one encoded image as the body: curl --data-binary @cat.jpg http://HOST:PORT/predict"


class Runner(Protocol):
    """Runs NCHW batches through the predictor, batching them with other requests' as the host does."""

    async def infer(self, batch: np.ndarray) -> np.ndarray: ...

    def announced(self) -> AbstractContextManager[None]:
        """Held around each request's handler, from before its body is read (batching may wait for it)."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it is known to pass `limit` bytes: before reading when it says so."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        raise UnsupportedEncodingError(f"Content-Encoding {encoding!r} is not accepted; send the body uncompressed")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"the body is {declared} bytes, over the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"the body passes the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class ObserveMiddleware:
    """Per request: the count by endpoint and status, the latency, and a debug log line (pure ASGI: Starlette's
    BaseHTTPMiddleware adds a task and a stream per request)."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def send_observed(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            elapsed = time.perf_counter() - start
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(endpoint, str(status[0])).inc()
            self.metrics.latency.labels(endpoint).observe(elapsed)
            log.debug("%s %s -> %d in %.1f ms", scope["method"], scope["path"], status[0], elapsed * 1e3)


def _error_response(exc: ServingError | PredictorError, metrics: Metrics) -> JSONResponse:
    status = exc.status if isinstance(exc, ServingError) else 500
    kind = exc.kind if isinstance(exc, ServingError) else "predictor"
    metrics.errors.labels(kind).inc()
    headers = exc.headers if isinstance(exc, ServingError) else {}
    return JSONResponse({"error": str(exc)}, status_code=status, headers=headers)


def _model_for(model: ServedModel, name: str, version: str | None = None) -> ServedModel:
    if name != model.name or version not in (None, VERSION):
        asked = name if version is None else f"{name} version {version}"
        raise UnknownModelError(f"unknown model {asked!r}; this server serves {model.name!r} version {VERSION}")
    return model


def _lifespan(runner: Runner, state: dict[str, bool]) -> Any:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await runner.start()
        state["ready"] = True
        try:
            yield
        finally:
            state["ready"] = False  # draining: /v2/health/ready says so while the requests in flight finish
            await runner.stop()

    return lifespan


def _add_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    @app.exception_handler(ServingError)
    async def serving_error(_: Request, exc: ServingError) -> JSONResponse:
        return _error_response(exc, metrics)

    @app.exception_handler(PredictorError)
    async def predictor_error(_: Request, exc: PredictorError) -> JSONResponse:
        return _error_response(exc, metrics)

    @app.exception_handler(RequestValidationError)
    async def bad_parameters(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return _error_response(BadRequestError(problems), metrics)


def _add_metadata_routes(app: FastAPI, model: ServedModel, state: dict[str, bool], metrics: Metrics) -> None:
    """Health, server and model metadata, and /metrics."""

    @app.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> dict[str, bool]:
        if not state["ready"]:
            raise NotReadyError("not ready: starting or draining")
        return {"ready": True}

    @app.get("/v2")
    async def server_metadata() -> dict[str, Any]:
        return {
            "name": "lvvit-kit",
            "version": package_version("lvvit-deploy"),
            "extensions": ["binary_tensor_data", "classification"],
        }

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, version: str | None = None) -> dict[str, Any]:
        return _model_for(model, name, version).metadata()

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str | None = None) -> dict[str, Any]:
        await ready()
        return {"name": _model_for(model, name, version).name, "ready": True}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


async def _infer_response(served: ServedModel, runner: Runner, request: Request, limits: Limits) -> Response:
    """One OIP infer request: read and parse the body, run it through the runner's batches, encode the answer."""
    with runner.announced():
        body = await read_body(request, limits.max_body_bytes)
        header_length = request.headers.get(HEADER_LENGTH)
        # CPU work off the event loop when it is large (tensor data as JSON, images to decode); a binary
        # tensor's header is small and its data a buffer, cheaper to take here than to hand to a thread
        if header_length is None and len(body) > INLINE_JSON_BYTES:
            parsed = await run_in_threadpool(parse_infer_request, body, header_length)
        else:
            parsed = parse_infer_request(body, header_length)
        requested, topk = served.check_outputs(parsed), served.topk_of(parsed)
        if served.has_images(parsed):
            batch = await run_in_threadpool(served.batch_of, parsed)
        else:
            batch = served.batch_of(parsed)
        logits = await runner.infer(batch)
    payload, headers = encode_infer_response(served.name, VERSION, parsed.id, served.outputs(logits, requested, topk))
    return Response(payload, headers=headers)


def _add_inference_routes(app: FastAPI, model: ServedModel, runner: Runner, limits: Limits) -> None:
    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: str | None = None) -> Response:
        return await _infer_response(_model_for(model, name, version), runner, request, limits)

    @app.post("/predict")
    async def predict(request: Request, topk: int = DEFAULT_TOPK) -> dict[str, Any]:
        """One encoded image as the whole body (`curl --data-binary @cat.jpg`): its top-k as JSON."""
        topk = model.check_topk(topk)
        with runner.announced():
            body = await read_body(request, limits.max_body_bytes)
            if not body:
                raise BadRequestError(f"the body is empty; {CURL_HINT}", "image")
            batch = await run_in_threadpool(model.preprocess_images, [body])
            logits = await runner.infer(batch)
        prediction = model.predictor.top_k(logits, topk)[0]
        return {
            "model": model.name,
            "class_ids": list(prediction.class_ids),
            "labels": list(prediction.labels),
            "probabilities": list(prediction.probs),
        }


def create_app(model: ServedModel, runner: Runner, limits: Limits, metrics: Metrics | None = None) -> FastAPI:
    """The app, for either host: `runner` batches (and its `start`/`stop` run with the app's lifespan)."""
    metrics = metrics or Metrics()
    state = {"ready": False}
    app = FastAPI(title=f"LV-ViT kit: {model.name}", lifespan=_lifespan(runner, state), docs_url=None, redoc_url=None)
    app.add_middleware(ObserveMiddleware, metrics=metrics)
    _add_error_handlers(app, metrics)
    _add_metadata_routes(app, model, state, metrics)
    _add_inference_routes(app, model, runner, limits)
    return app
