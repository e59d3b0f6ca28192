"""Where every proxied request comes in: check the path, read the body, hand
it to the chat flow (chat endpoints) or the forwarder (every other /v1/ path),
and report it once it is done.

Limits, all in the dialect's error shape and with nothing sent upstream:
a path with dot segments or encoded slashes is a 400; a body over
`max_body_bytes` a 413; a body not received whole within `body_timeout` a
408. The body is read before the request waits for one of the
`max_connections` slots, at most `slot_timeout` (503 + Retry-After after).
A client that goes away before its answer is ready cancels the upstream
call (unless a coalesced follower waits for the same answer) and is counted
as 499, like one that goes away mid-upload."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import quote

import anyio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from . import flow
from .caching import OpenTap
from .clientkeys import SCOPE_KEY as CLIENT_KEY_SCOPE
from .context import Context
from .dialects import chat_dialect, dialect_for, get_dialect
from .errors import ClientClosed, NotFound, ProxyError, UpstreamError, error_response
from .forward import forward
from .incoming import ClientWatch, Incoming, read_body, respond, until_disconnected
from .observability.record import RequestRecord
from .outgoing import Slot
from .parallel.gate import UpstreamGate
from .routing import RequestPath, check_path

log = logging.getLogger("ctxwarden")

# Paths up to this long have their check remembered, the last 1024 of them:
# check_path walks a path byte by byte in Python, and a proxy is sent the same
# few paths over and over. (Longer ones are checked each time, so what is kept
# stays small.)
REMEMBERED_PATH_BYTES = 256
_remembered_check = functools.lru_cache(maxsize=1024)(check_path)


def _checked_path(raw_path: bytes) -> RequestPath:
    return _remembered_check(raw_path) if len(raw_path) <= REMEMBERED_PATH_BYTES else check_path(raw_path)

class Gateway(Context):
    """The front door over one config's Context (``Gateway.build``)."""

    async def serve(self, scope: Scope, receive: Receive, send: Send, gate: UpstreamGate) -> None:
        """Answer one proxied request; the slot it takes is held until the
        whole response has been sent."""
        request = Request(scope, receive)
        # request.url.path, without building the URL: the path until check_path has looked at it
        path = scope["path"].replace("?", "%3F").replace("#", "%23").replace("\\", "%5C")
        record = RequestRecord(route="forward", method=scope["method"], path=path,
                               dialect=dialect_for(path, request.headers).name,
                               client=scope.get(CLIENT_KEY_SCOPE, ""))
        slot, opened, watch = Slot(gate), OpenTap(), ClientWatch(receive)
        try:
            response = await self._answer(record, lambda: self._proxied(request, record, opened, slot, watch))
            if record.status != ClientClosed.status:
                await respond(response, scope, receive, send, watch)
        finally:
            watch.close()
            slot.release()
            await opened.close()
            self.telemetry.finish(record)

    async def _proxied(self, request: Request, record: RequestRecord, opened: OpenTap, slot: Slot,
                       watch: ClientWatch) -> Response:
        raw_path = request.scope.get("raw_path") or quote(request.scope["path"]).encode()
        path = _checked_path(raw_path)
        chat = chat_dialect(request.method, path.decoded)
        record.path, record.route = path.decoded, chat.route if chat else "forward"
        record.dialect = (chat or dialect_for(path.decoded, request.headers)).name
        if not path.decoded.startswith("/v1/"):
            raise NotFound(f"ctxwarden serves no path {path.decoded!r}; the provider APIs live under /v1/")
        server = self.config.server
        body = await read_body(request, server.max_body_bytes, server.body_timeout)
        incoming = Incoming(request.method, path.raw, request.scope["query_string"], request.headers.raw)

        async def work() -> Response:
            if chat is None:
                return await forward(self, incoming, body, record, slot)
            return await flow.chat(self, incoming, body, chat, record, opened, slot)

        watch.start()
        return await until_disconnected(watch, work, keep_going=opened.followed)

    async def answer_task(self, dialect: str, path: str, headers: list[tuple[bytes, bytes]],
                          body: dict) -> tuple[int, bytes, dict[str, str]]:
        """One task of a parallel run, through the same rewrite and cache as a
        single request; the answer read whole. Its slot is the caller's."""
        record = RequestRecord(route="parallel_task", method="POST", path=path, dialect=dialect)
        opened = OpenTap()
        raw = json.dumps(body, ensure_ascii=False).encode()
        request = Incoming("POST", path, b"", headers)
        try:
            response = await self._answer(record, lambda: flow.chat(self, request, raw, get_dialect(dialect),
                                                                     record, opened))
            if isinstance(response, StreamingResponse):
                content = b"".join([chunk async for chunk in response.body_iterator])
            else:
                content = bytes(response.body)
        finally:
            await opened.close()
            self.telemetry.finish(record)
        return response.status_code, content, {k.decode("latin-1"): v.decode("latin-1")
                                               for k, v in response.raw_headers}

    async def _answer(self, record: RequestRecord, answer: Callable[[], Awaitable[Response]]) -> Response:
        """Run `answer`, mapping proxy errors to the dialect's error response.
        The caller finishes the record whatever happens."""
        self.telemetry.start(record)
        try:
            response = await answer()
        except ProxyError as exc:
            log.info("%s %s -> %d: %s", record.method, record.path, exc.status, exc.message)
            record.error_kind = exc.kind if isinstance(exc, UpstreamError) else ""
            response = error_response(exc, get_dialect(record.dialect))
        except anyio.get_cancelled_exc_class():
            record.status = ClientClosed.status
            raise
        except BaseException:
            record.status = 500
            raise
        record.status = response.status_code
        return response
