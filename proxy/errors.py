"""Typed errors and the one place that turns them into each dialect's error shape."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING

from starlette.responses import Response

if TYPE_CHECKING:
    from .dialects import Dialect


class ProxyError(Exception):
    """An error the proxy answers itself, never forwarded upstream."""

    status = 500
    # Extra response headers (name, value pairs or a mapping), e.g. Retry-After.
    headers: Mapping[str, str] | tuple[tuple[str, str], ...] = ()

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadRequest(ProxyError):
    status = 400


class BadPath(BadRequest):
    """A path with dot segments or encoded slashes: refused before routing,
    so no path can leave `/v1/` or an upstream's base URL."""


class Unauthorized(ProxyError):
    status = 401


class NotFound(ProxyError):
    status = 404


class PayloadTooLarge(ProxyError):
    status = 413


class BodyTimeout(ProxyError):
    """The client did not send its whole body within `server/@body_timeout`."""

    status = 408
    # The rest of the body may still arrive: the connection cannot be reused.
    headers = (("connection", "close"),)


class ClientClosed(ProxyError):
    """The client went away before its answer was ready; nothing is sent back.
    Counted as 499 (nginx's "client closed request"), not as a server error."""

    status = 499


class NoSlot(ProxyError):
    """No upstream connection slot came free within `server/@slot_timeout`."""

    status = 503
    headers = (("retry-after", "1"),)


class UpstreamUnavailable(ProxyError):
    status = 502


class UpstreamTimeout(ProxyError):
    status = 504


def error_response(exc: ProxyError, dialect: Dialect) -> Response:
    """The one place an error the proxy answers itself becomes a response, in the dialect's shape."""
    body = json.dumps(dialect.error_body(exc.status, exc.message)).encode()
    return Response(body, status_code=exc.status, media_type="application/json", headers=dict(exc.headers))
