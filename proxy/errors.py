"""Typed errors and the one place that turns them into each dialect's error shape."""

from __future__ import annotations

import json
from collections.abc import Mapping

from starlette.responses import Response


class ProxyError(Exception):
    """An error the proxy answers itself, never forwarded upstream."""

    status = 500
    openai_type = "api_error"
    anthropic_type = "api_error"
    # Extra response headers (name, value pairs or a mapping), e.g. Retry-After.
    headers: Mapping[str, str] | tuple[tuple[str, str], ...] = ()

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadRequest(ProxyError):
    status = 400
    openai_type = "invalid_request_error"
    anthropic_type = "invalid_request_error"


class BadPath(BadRequest):
    """A path with dot segments or encoded slashes: refused before routing,
    so no path can leave `/v1/` or an upstream's base URL."""


class Unauthorized(ProxyError):
    status = 401
    openai_type = "invalid_request_error"
    anthropic_type = "authentication_error"


class NotFound(ProxyError):
    status = 404
    openai_type = "invalid_request_error"
    anthropic_type = "not_found_error"


class PayloadTooLarge(ProxyError):
    status = 413
    openai_type = "invalid_request_error"
    anthropic_type = "request_too_large"


class BodyTimeout(ProxyError):
    """The client did not send its whole body within `server/@body_timeout`."""

    status = 408
    openai_type = "invalid_request_error"
    anthropic_type = "invalid_request_error"
    # The rest of the body may still arrive: the connection cannot be reused.
    headers = (("connection", "close"),)


class ClientClosed(ProxyError):
    """The client went away before its answer was ready; nothing is sent back.
    Counted as 499 (nginx's "client closed request"), not as a server error."""

    status = 499


class NoSlot(ProxyError):
    """No upstream connection slot came free within `server/@slot_timeout`."""

    status = 503
    openai_type = "api_error"
    anthropic_type = "overloaded_error"
    headers = (("retry-after", "1"),)


class UpstreamUnavailable(ProxyError):
    status = 502
    openai_type = "api_error"
    anthropic_type = "api_error"


class UpstreamTimeout(ProxyError):
    status = 504
    openai_type = "timeout"
    anthropic_type = "timeout_error"


def error_body(dialect: str, error_type: str, message: str) -> dict:
    if dialect == "anthropic":
        return {"type": "error", "error": {"type": error_type, "message": message}}
    return {"error": {"message": message, "type": error_type, "param": None, "code": None}}


def error_response(exc: ProxyError, dialect: str) -> Response:
    error_type = exc.anthropic_type if dialect == "anthropic" else exc.openai_type
    body = json.dumps(error_body(dialect, error_type, exc.message)).encode()
    return Response(body, status_code=exc.status, media_type="application/json", headers=dict(exc.headers))


def stream_error_event(dialect: str, message: str) -> bytes:
    """The event that ends a relayed SSE stream when the upstream broke it off.

    OpenAI's SDKs raise on a `data:` event carrying an `error` object; Anthropic's
    on a named `error` event.
    """
    if dialect == "anthropic":
        payload = json.dumps(error_body("anthropic", "api_error", message))
        return f"event: error\ndata: {payload}\n\n".encode()
    payload = json.dumps(error_body("openai", "api_error", message))
    return f"data: {payload}\n\n".encode()
