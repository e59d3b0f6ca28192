"""The errors the proxy answers itself, and the one place that turns them
into a response in the dialect's error shape.

    ProxyError
    ├── ClientError        the request cannot be served as sent (4xx): BadRequest
    │                      (BadPath, the parallel endpoint's TaskGraphError),
    │                      Unauthorized, NotFound, BodyTimeout, PayloadTooLarge,
    │                      TooManyRequests (the parallel endpoint's TooManyRuns),
    │                      ClientClosed (499: the client left)
    ├── UpstreamError      the upstream failed (5xx): UpstreamUnavailable, UpstreamTimeout
    └── NoSlot             the proxy's own upstream pool stayed full (503)

A config that cannot be used is a :class:`ctxwarden.config.ConfigError`: it
stops ``serve`` and ``validate`` and refuses a reload, and is never a response."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Protocol

from starlette.responses import Response


class ProxyError(Exception):
    """An error the proxy answers itself, never forwarded upstream."""

    status = 500
    # Extra response headers (name, value pairs or a mapping), e.g. Retry-After.
    headers: Mapping[str, str] | tuple[tuple[str, str], ...] = ()

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ClientError(ProxyError):
    """The request cannot be served as sent."""

    status = 400


class BadRequest(ClientError):
    status = 400


class BadPath(BadRequest):
    """A path with dot segments or encoded slashes: refused before routing,
    so no path can leave `/v1/` or an upstream's base URL."""


class Unauthorized(ClientError):
    status = 401


class NotFound(ClientError):
    status = 404


class PayloadTooLarge(ClientError):
    status = 413


class BodyTimeout(ClientError):
    """The client did not send its whole body within `server/@body_timeout`."""

    status = 408
    # The rest of the body may still arrive: the connection cannot be reused.
    headers = (("connection", "close"),)


class ClientClosed(ClientError):
    """The client went away before its answer was ready; nothing is sent back.
    Counted as 499 (nginx's "client closed request"), not as a server error."""

    status = 499


class NoSlot(ProxyError):
    """No upstream connection slot came free within `server/@slot_timeout`."""

    status = 503
    headers = (("retry-after", "1"),)


class TooManyRequests(ClientError):
    status = 429


class UpstreamError(ProxyError):
    """The upstream failed; ``kind`` is what the request record and metrics call it."""

    status = 502
    kind = "upstream"


class UpstreamUnavailable(UpstreamError):
    status = 502
    kind = "connect"


class UpstreamTimeout(UpstreamError):
    status = 504
    kind = "timeout"


class ErrorShape(Protocol):
    """What of a dialect an error response needs (every Dialect has it)."""

    def error_body(self, status: int, message: str) -> dict: ...


def error_response(exc: ProxyError, dialect: ErrorShape) -> Response:
    """The one place an error the proxy answers itself becomes a response, in the dialect's shape."""
    body = json.dumps(dialect.error_body(exc.status, exc.message)).encode()
    return Response(body, status_code=exc.status, media_type="application/json", headers=dict(exc.headers))
