"""Typed serving errors: each carries its HTTP status and a short kind (the `errors_total` metric's label), and
its message names the problem, so a bad request gets a JSON 4xx that says what to fix."""

from __future__ import annotations

from lvvit.errors import LvvitError


class ServingError(LvvitError):
    """Base class; `status` is the HTTP status the server answers with."""

    status = 500
    kind = "internal"
    headers: dict[str, str] = {}


class BadRequestError(ServingError, ValueError):
    """A request the server understood but cannot run: bad JSON, tensor, image or parameter."""

    status = 400

    def __init__(self, message: str, kind: str = "bad_request") -> None:
        super().__init__(message)
        self.kind = kind


class UnknownModelError(ServingError, LookupError):
    status = 404
    kind = "unknown_model"


class PayloadTooLargeError(ServingError, ValueError):
    status = 413
    kind = "body_too_large"


class UnsupportedEncodingError(ServingError, ValueError):
    status = 415
    kind = "content_encoding"


class QueueFullError(ServingError, RuntimeError):
    """The bounded queue is full: the client should retry after `retry_after_s` seconds."""

    status = 503
    kind = "queue_full"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after_s)}


class NotReadyError(ServingError, RuntimeError):
    status = 503
    kind = "not_ready"


class ServingSetupError(ServingError, RuntimeError):
    """A server that cannot start as asked: a missing extra, a bad option, a port in use."""
