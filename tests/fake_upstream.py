"""A fake model API that speaks the OpenAI and Anthropic wire formats.

Used by the integration tests and the overhead benchmark as the proxy's
upstream. It answers deterministically (ids and text are a function of the
request body), records every request it receives, and injects faults on
request headers the proxy forwards untouched:

    x-fake-delay: SECONDS        sleep before answering
    x-fake-status: CODE          answer with CODE and a dialect-shaped error body
    x-fake-chunks: N             number of content pieces in an answer / stream
    x-fake-chunk-delay: SECONDS  pause between streamed events
    x-fake-fault: reset-mid-stream
                                 send part of a stream, then drop the connection
                                 without the terminating chunk
    x-fake-gzip: 1               gzip the answer even when the request does not
                                 accept it (Content-Encoding: gzip)
    x-fake-script: 503,429       answer the first, second, ... request carrying the
    x-fake-script-id: ID         same ID (any path, any fake: a fallback fake goes
                                 on counting) with these statuses, later ones as usual
    x-fake-retry-after: VALUE    the Retry-After / retry-after-ms a scripted status
    x-fake-retry-after-ms: MS    carries (none unless given)

JSON answers are gzipped whenever the request's Accept-Encoding accepts gzip,
as the real APIs do (httpx and the SDKs send it and decode transparently);
event streams and downloads are not.
    x-fake-response-bytes: N     (echo paths) answer N deterministic bytes,
                                 chunked, or with Content-Length when
                                 x-fake-response-framing: length

Routes: POST /v1/chat/completions, POST /v1/messages, POST /v1/responses, GET /v1/models,
POST /v1/embeddings, POST /v1/files, and a catch-all echo for anything else.

    fake = create_fake_upstream(name="main")
    fake.app        # the ASGI app
    fake.recorder   # Recorder: .requests, .clear(), .streams_cancelled, ...

For `uvicorn --factory tests.fake_upstream:create_app`, `create_app()`
returns just the ASGI app.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import json
import logging
import re
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tests.strict_wire import chat_problems, describe

CREATED = 1_700_000_000  # fixed so that answers are byte-for-byte reproducible


class Scripts:
    """How many requests of each x-fake-script-id were seen, over every fake
    in the process (a proxy falling back to another fake continues the script)."""

    _lock = threading.Lock()
    _seen: dict[str, int] = {}

    @classmethod
    def step(cls, script: str, script_id: str) -> int | None:
        """The status this request is scripted to get, or None past the script's end."""
        with cls._lock:
            index = cls._seen.get(script_id, 0)
            cls._seen[script_id] = index + 1
        steps = [int(s) for s in script.split(",") if s.strip()]
        return steps[index] if index < len(steps) else None

    @classmethod
    def seen(cls, script_id: str) -> int:
        with cls._lock:
            return cls._seen.get(script_id, 0)


class FakeReset(Exception):
    """Raised inside a streaming response to make uvicorn drop the connection."""


class _DropFakeReset(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:  # pragma: no cover - logging glue
        exc = record.exc_info[1] if record.exc_info else None
        while exc is not None:
            if isinstance(exc, FakeReset):
                return False
            exc = exc.__cause__ or exc.__context__
        return True


# uvicorn logs "Exception in ASGI application" for the deliberate reset; keep the
# test output clean.
logging.getLogger("uvicorn.error").addFilter(_DropFakeReset())


# --------------------------------------------------------------------------- recorder


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: str  # raw query string, without '?'
    raw_headers: tuple[tuple[str, str], ...]  # as received, in order, names lower-cased
    body: bytes
    received_at: float = 0.0

    def header(self, name: str, default: str | None = None) -> str | None:
        name = name.lower()
        for k, v in self.raw_headers:
            if k == name:
                return v
        return default

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.raw_headers if k == name]

    @property
    def headers(self) -> dict[str, str]:
        """Lower-cased names -> value (the last one wins for repeats)."""
        return {k: v for k, v in self.raw_headers}

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(repr=False)
class Recorder:
    """Thread-safe record of what the fake upstream received."""

    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _requests: list[RecordedRequest] = field(default_factory=list)
    streams_started: int = 0
    streams_completed: int = 0
    streams_cancelled: int = 0  # client (the proxy) went away before the stream ended
    streams_reset: int = 0  # deliberate x-fake-fault: reset-mid-stream
    # streams being sent now, whichever test started them: clear() keeps it
    streams_open: int = 0
    gzipped: int = 0  # answers sent with Content-Encoding: gzip

    def __repr__(self) -> str:
        with self._lock:
            paths = [f"{r.method} {r.path}" for r in self._requests[-5:]]
            return (
                f"Recorder(requests={len(self._requests)}, last={paths}, streams_started={self.streams_started}, "
                f"completed={self.streams_completed}, cancelled={self.streams_cancelled}, reset={self.streams_reset})"
            )

    def add(self, req: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(req)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def __len__(self) -> int:
        with self._lock:
            return len(self._requests)

    @property
    def last(self) -> RecordedRequest:
        with self._lock:
            if not self._requests:
                raise AssertionError("the fake upstream received no request")
            return self._requests[-1]

    def matching(self, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == path]

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()
            self.streams_started = 0
            self.streams_completed = 0
            self.streams_cancelled = 0
            self.streams_reset = 0
            self.gzipped = 0

    def bump(self, counter: str, by: int = 1) -> None:
        with self._lock:
            setattr(self, counter, getattr(self, counter) + by)

    def wait_for(self, predicate: Callable[["Recorder"], bool], timeout: float = 5.0) -> bool:
        """Poll (from a test thread) until predicate(self) holds or timeout passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.01)
        return predicate(self)


# --------------------------------------------------------------------------- helpers


def _sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _approx_tokens(text: str) -> int:
    return max(1, len(text) // 4)


def _text_of(content: Any) -> str:
    """Text of an OpenAI or Anthropic message content (string or block list)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, dict):
                if block.get("type") == "text" and isinstance(block.get("text"), str):
                    parts.append(block["text"])
                elif block.get("type") == "tool_result":
                    parts.append(_text_of(block.get("content")))
            elif isinstance(block, str):
                parts.append(block)
        return " ".join(parts)
    return ""


def reply_pieces(prompt: str, n: int | None = None) -> list[str]:
    """The pieces of the fake's answer; joined they form the full text.

    With n (x-fake-chunks) the answer is n pieces 'tok0 ', 'tok1 ', ...;
    otherwise it is 'Echo: <first 60 chars of the prompt>' split into words.
    """
    if n is not None:
        return [f"tok{i} " for i in range(n)]
    words = f"Echo: {prompt[:60]}".split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def expected_reply(prompt: str, n: int | None = None) -> str:
    return "".join(reply_pieces(prompt, n))


def _tool_args(schema: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    props = schema.get("properties") if isinstance(schema, dict) else None
    if isinstance(props, dict):
        for name, spec in props.items():
            t = spec.get("type") if isinstance(spec, dict) else None
            if isinstance(spec, dict) and spec.get("enum"):
                out[name] = spec["enum"][0]
            elif t == "string":
                out[name] = "Paris" if "location" in name or "city" in name else "fake"
            elif t in ("number", "integer"):
                out[name] = 1
            elif t == "boolean":
                out[name] = True
            elif t == "array":
                out[name] = []
            elif t == "object":
                out[name] = {}
            else:
                out[name] = None
    return out


def _responses_text(content: Any) -> str:
    """Text of a Responses message's content or a call's output (string or parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _responses_events(answer: dict, pieces: list[str], n: int | None) -> list[bytes]:
    """The events of a Responses stream of ``answer``, its text in ``pieces``, as the API sends them."""
    events: list[bytes] = []

    def event(kind: str, **fields: Any) -> None:
        events.append(_sse_event(kind, {"type": kind, "sequence_number": len(events), **fields}))

    started = {**answer, "status": "in_progress", "output": [], "usage": None}
    event("response.created", response=started)
    event("response.in_progress", response=started)
    for index, item in enumerate(answer["output"]):
        ids = {"item_id": item["id"], "output_index": index}
        if item["type"] == "function_call":
            event("response.output_item.added", output_index=index,
                  item={**item, "status": "in_progress", "arguments": ""})
            for fragment in _split(item["arguments"], n or 4):
                event("response.function_call_arguments.delta", **ids, delta=fragment)
            event("response.function_call_arguments.done", **ids, arguments=item["arguments"])
        else:
            event("response.output_item.added", output_index=index,
                  item={**item, "status": "in_progress", "content": []})
            part = item["content"][0]
            event("response.content_part.added", **ids, content_index=0,
                  part={"type": "output_text", "annotations": [], "logprobs": [], "text": ""})
            for piece in pieces:
                event("response.output_text.delta", **ids, content_index=0, delta=piece, logprobs=[])
            event("response.output_text.done", **ids, content_index=0, text=part["text"], logprobs=[])
            event("response.content_part.done", **ids, content_index=0, part=part)
        event("response.output_item.done", output_index=index, item=item)
    event("response.completed", response=answer)
    return events


def _split(s: str, n: int) -> list[str]:
    """Split s into up to n non-empty fragments."""
    n = max(1, min(n, len(s))) if s else 1
    size = -(-len(s) // n) if s else 1
    return [s[i : i + size] for i in range(0, len(s), size)] or [""]




def _float_header(request: Request, name: str, default: float = 0.0) -> float:
    v = request.headers.get(name)
    try:
        return float(v) if v is not None else default
    except ValueError:
        return default


def _int_header(request: Request, name: str) -> int | None:
    v = request.headers.get(name)
    try:
        return int(v) if v is not None else None
    except ValueError:
        return None


def _dialect(request: Request) -> str:
    if request.url.path.startswith("/v1/messages") or "anthropic-version" in request.headers:
        return "anthropic"
    return "openai"


_OPENAI_ERR = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    409: ("invalid_request_error", None),
    422: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    502: ("server_error", None),
    503: ("server_error", None),
}
_ANTHROPIC_ERR = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def error_body(dialect: str, status: int, message: str | None = None) -> bytes:
    """The exact error body the fake answers with for x-fake-status: status."""
    message = message or f"fake upstream error {status}"
    if dialect == "anthropic":
        body = {"type": "error", "error": {"type": _ANTHROPIC_ERR.get(status, "api_error"), "message": message}}
    else:
        etype, code = _OPENAI_ERR.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
        body = {"error": {"message": message, "type": etype, "param": None, "code": code}}
    return json.dumps(body, separators=(",", ":")).encode()


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(data, separators=(",", ":")).encode(),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


# --------------------------------------------------------------------------- streaming


class SSEResponse:
    """A text/event-stream response that notices the client going away.

    Events are produced by an async iterator of bytes. While streaming, a watcher
    waits for http.disconnect; if it arrives before the stream finished, the
    producer is cancelled and the recorder counts a cancelled stream. A FakeReset
    raised by the producer propagates, so uvicorn closes the connection without
    the terminating chunk.
    """

    def __init__(
        self,
        events: AsyncIterator[bytes],
        recorder: Recorder,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.events = events
        self.recorder = recorder
        self.headers = headers or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.recorder.bump("streams_started")
        self.recorder.bump("streams_open")
        try:
            await self._stream(receive, send)
        finally:
            self.recorder.bump("streams_open", -1)

    async def _stream(self, receive: Receive, send: Send) -> None:
        rec = self.recorder
        raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
        ] + [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()]

        async def produce() -> None:
            await send({"type": "http.response.start", "status": 200, "headers": raw_headers})
            async for chunk in self.events:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def watch() -> None:
            while True:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    return

        producer = asyncio.ensure_future(produce())
        watcher = asyncio.ensure_future(watch())
        try:
            await asyncio.wait({producer, watcher}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            producer.cancel()
            watcher.cancel()
            rec.bump("streams_cancelled")
            raise
        if producer.done():
            watcher.cancel()
            exc = producer.exception()
            if exc is None:
                rec.bump("streams_completed")
                return
            if isinstance(exc, FakeReset):
                rec.bump("streams_reset")
                raise exc
            if isinstance(exc, OSError):  # send after the client went away
                rec.bump("streams_cancelled")
                return
            raise exc
        # the client disconnected first
        producer.cancel()
        try:
            await producer
        except BaseException:
            pass
        rec.bump("streams_cancelled")


def _sse_data(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _sse_event(name: str, obj: Any) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


async def _paced(
    events: list[bytes], delay: float, reset_after: int | None = None, first_delay: float = 0.0
) -> AsyncIterator[bytes]:
    if first_delay:
        await asyncio.sleep(first_delay)
    for i, ev in enumerate(events):
        if reset_after is not None and i == reset_after:
            raise FakeReset("x-fake-fault: reset-mid-stream")
        if i and delay:
            await asyncio.sleep(delay)
        yield ev


# --------------------------------------------------------------------------- the app


def _accepts_gzip(value: bytes) -> bool:
    """Whether an Accept-Encoding value accepts gzip (``q=0`` refuses it)."""
    for part in value.decode("latin-1").lower().split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip() not in ("gzip", "x-gzip", "*"):
            continue
        q = params.strip()
        if q.startswith("q="):
            try:
                return float(q[2:]) > 0
            except ValueError:
                return False
        return True
    return False


class _GzipOnRequest:
    """Compress answers with gzip (Content-Encoding: gzip), as the real APIs do.

    * ``Accept-Encoding`` that accepts gzip: JSON answers (not event streams,
      not downloads) are gzipped, as OpenAI and Anthropic do; httpx and the SDKs
      decode them transparently.
    * ``x-fake-gzip: 1``: gzip the answer whatever the request accepts.

    Answers that already carry a Content-Encoding are left alone. The
    recorder's ``gzipped`` counts the answers compressed.
    """

    def __init__(self, app, recorder: "Recorder | None" = None) -> None:
        self.app = app
        self.recorder = recorder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        forced = any(k == b"x-fake-gzip" for k, _ in scope["headers"])
        accepted = any(k == b"accept-encoding" and _accepts_gzip(v) for k, v in scope["headers"])
        if not forced and not accepted:
            await self.app(scope, receive, send)
            return
        start: dict = {}
        chunks: list[bytes] = []
        passthrough = False

        async def wrapped(message) -> None:
            nonlocal start, passthrough
            if passthrough:
                await send(message)
                return
            if message["type"] == "http.response.start":
                headers = {k.lower(): v for k, v in message.get("headers", [])}
                ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
                if b"content-encoding" in headers or not (forced or ctype == b"application/json"):
                    passthrough = True
                    await send(message)
                    return
                start = dict(message)
                return
            if message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if message.get("more_body"):
                    return
                body = gzip.compress(b"".join(chunks), mtime=0)
                headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
                headers += [(b"content-encoding", b"gzip"), (b"content-length", str(len(body)).encode())]
                if not forced:
                    headers.append((b"vary", b"accept-encoding"))
                await send({**start, "headers": headers})
                await send({"type": "http.response.body", "body": body, "more_body": False})
                if self.recorder is not None:
                    self.recorder.bump("gzipped")
                return
            await send(message)

        await self.app(scope, receive, wrapped)


class FakeUpstream:
    def __init__(self, name: str = "fake") -> None:
        self.name = name
        self.recorder = Recorder()
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
                Route("/v1/messages", self.messages, methods=["POST"]),
                Route("/v1/responses", self.responses, methods=["POST"]),
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/v1/embeddings", self.embeddings, methods=["POST"]),
                Route("/v1/files", self.files, methods=["POST"]),
                Route(
                    "/{path:path}",
                    self.echo,
                    methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"],
                ),
            ]
        )
        self.app.add_middleware(_GzipOnRequest, recorder=self.recorder)

    # -- common

    def _headers(self, body: bytes) -> dict[str, str]:
        return {"x-fake-upstream": self.name, "x-request-id": "req_" + _sha(body)[:16]}

    async def _record(self, request: Request) -> bytes:
        chunks = []
        async for chunk in request.stream():
            chunks.append(chunk)
        body = b"".join(chunks)
        raw = tuple((k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in request.scope["headers"])
        self.recorder.add(
            RecordedRequest(
                method=request.method,
                path=request.url.path,
                query=request.scope.get("query_string", b"").decode("latin-1"),
                raw_headers=raw,
                body=body,
                received_at=time.monotonic(),
            )
        )
        return body

    async def _faults(self, request: Request, body: bytes) -> Response | None:
        delay = _float_header(request, "x-fake-delay")
        if delay:
            await asyncio.sleep(delay)
        status = _int_header(request, "x-fake-status")
        headers = self._headers(body)
        script = request.headers.get("x-fake-script")
        if script:
            status = Scripts.step(script, request.headers.get("x-fake-script-id", ""))
            for name in ("retry-after", "retry-after-ms"):
                if f"x-fake-{name}" in request.headers:
                    headers[name] = request.headers[f"x-fake-{name}"]
        elif status == 429:
            headers["retry-after"] = "1"
        if status:
            return Response(
                error_body(_dialect(request), status),
                status_code=status,
                media_type="application/json",
                headers=headers,
            )
        return None

    def _bad_request(self, request: Request, message: str) -> Response:
        return Response(error_body(_dialect(request), 400, message), status_code=400, media_type="application/json")

    async def _parse(self, request: Request, body: bytes) -> tuple[dict | None, Response | None]:
        try:
            data = json.loads(body)
        except ValueError:
            return None, self._bad_request(request, "fake upstream: body is not JSON")
        if not isinstance(data, dict):
            return None, self._bad_request(request, "fake upstream: body is not an object")
        return data, None

    async def _json_body(self, request: Request) -> tuple[dict, bytes] | Response:
        """The parsed and raw body of a JSON request (recorded), or the fault / error to answer with."""
        body = await self._record(request)
        fault = await self._faults(request, body)
        if fault is not None:
            return fault
        data, err = await self._parse(request, body)
        return err if err is not None else (data, body)

    async def _chat_body(self, request: Request) -> tuple[dict, bytes] | Response:
        """The parsed and raw body of a chat request, or the fault / error to answer with."""
        accepted = await self._json_body(request)
        if isinstance(accepted, Response):
            return accepted
        data, body = accepted
        if not isinstance(data.get("messages"), list) or not data.get("model"):
            return self._bad_request(request, "fake upstream: 'model' and 'messages' are required")
        # reject what the real API rejects, so a rewrite that breaks the wire rules fails the tests
        problems = chat_problems(_dialect(request), data)
        if problems:
            return self._bad_request(request, "fake upstream (strict): " + describe(problems))
        return data, body

    # -- OpenAI chat completions

    async def chat_completions(self, request: Request) -> Response:
        parsed = await self._chat_body(request)
        if isinstance(parsed, Response):
            return parsed
        data, body = parsed
        messages = data["messages"]
        model = data["model"]
        last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
        prompt_text = " ".join(_text_of(m.get("content")) for m in messages if isinstance(m, dict))
        prompt_tokens = _approx_tokens(prompt_text)
        n = _int_header(request, "x-fake-chunks")
        tools = data.get("tools")
        tool_call = None
        if tools and last.get("role") == "user" and "call a tool" in _text_of(last.get("content")).lower():
            fn = tools[0].get("function", {}) if isinstance(tools[0], dict) else {}
            tool_call = {
                "id": "call_fake_" + _sha(body)[:12],
                "type": "function",
                "function": {
                    "name": fn.get("name", "tool"),
                    "arguments": json.dumps(_tool_args(fn.get("parameters"))),
                },
            }
        if last.get("role") == "tool":
            pieces = reply_pieces("tool result " + _text_of(last.get("content")), n)
        else:
            pieces = reply_pieces(_text_of(last.get("content")), n)
        text = "".join(pieces)
        completion_tokens = len(pieces)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        cid = "chatcmpl-" + _sha(body)[:24]
        headers = self._headers(body)

        if not data.get("stream"):
            if tool_call:
                message = {"role": "assistant", "content": None, "tool_calls": [tool_call], "refusal": None}
                finish = "tool_calls"
            else:
                message = {"role": "assistant", "content": text, "refusal": None}
                finish = "stop"
            return _json(
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": CREATED,
                    "model": model,
                    "system_fingerprint": "fp_fake",
                    "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                    "usage": usage,
                },
                headers=headers,
            )

        include_usage = bool((data.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict, finish: str | None = None) -> bytes:
            obj: dict[str, Any] = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": CREATED,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
            if include_usage:
                obj["usage"] = None
            return _sse_data(obj)

        events: list[bytes] = []
        if tool_call:
            fragments = _split(tool_call["function"]["arguments"], n or 4)
            events.append(
                chunk(
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": tool_call["id"],
                                "type": "function",
                                "function": {"name": tool_call["function"]["name"], "arguments": ""},
                            }
                        ],
                    }
                )
            )
            for frag in fragments:
                events.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": frag}}]}))
            events.append(chunk({}, "tool_calls"))
        else:
            events.append(chunk({"role": "assistant", "content": "", "refusal": None}))
            for p in pieces:
                events.append(chunk({"content": p}))
            events.append(chunk({}, "stop"))
        if include_usage:
            events.append(
                _sse_data(
                    {
                        "id": cid,
                        "object": "chat.completion.chunk",
                        "created": CREATED,
                        "model": model,
                        "system_fingerprint": "fp_fake",
                        "choices": [],
                        "usage": usage,
                    }
                )
            )
        events.append(b"data: [DONE]\n\n")
        return self._stream(request, events, headers)

    def _stream(self, request: Request, events: list[bytes], headers: dict[str, str]) -> SSEResponse:
        delay = _float_header(request, "x-fake-chunk-delay")
        reset_after = None
        if request.headers.get("x-fake-fault") == "reset-mid-stream":
            reset_after = max(1, min(3, len(events) - 1))
        return SSEResponse(_paced(events, delay, reset_after), self.recorder, headers)

    # -- Anthropic messages

    async def messages(self, request: Request) -> Response:
        parsed = await self._chat_body(request)
        if isinstance(parsed, Response):
            return parsed
        data, body = parsed
        messages = data["messages"]
        model = data["model"]
        last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
        system = data.get("system")
        prompt_text = _text_of(system) + " " + " ".join(
            _text_of(m.get("content")) for m in messages if isinstance(m, dict)
        )
        input_tokens = _approx_tokens(prompt_text)
        n = _int_header(request, "x-fake-chunks")
        last_content = last.get("content")
        has_tool_result = isinstance(last_content, list) and any(
            isinstance(b, dict) and b.get("type") == "tool_result" for b in last_content
        )
        tools = data.get("tools")
        tool_use = None
        if (
            tools
            and last.get("role") == "user"
            and not has_tool_result
            and "call a tool" in _text_of(last_content).lower()
        ):
            t0 = tools[0] if isinstance(tools[0], dict) else {}
            tool_use = {
                "type": "tool_use",
                "id": "toolu_fake_" + _sha(body)[:12],
                "name": t0.get("name", "tool"),
                "input": _tool_args(t0.get("input_schema")),
            }
        if has_tool_result:
            pieces = reply_pieces("tool result " + _text_of(last_content), n)
        elif tool_use:
            pieces = reply_pieces("", n) if n else ["Calling", " a", " tool."]
        else:
            pieces = reply_pieces(_text_of(last_content), n)
        text = "".join(pieces)
        output_tokens = len(pieces) + (5 if tool_use else 0)
        mid = "msg_fake_" + _sha(body)[:20]
        stop_reason = "tool_use" if tool_use else "end_turn"
        headers = self._headers(body)
        headers["request-id"] = headers["x-request-id"]

        if not data.get("stream"):
            content: list[dict] = [{"type": "text", "text": text}]
            if tool_use:
                content.append(tool_use)
            return _json(
                {
                    "id": mid,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": content,
                    "stop_reason": stop_reason,
                    "stop_sequence": None,
                    "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
                },
                headers=headers,
            )

        events = [
            _sse_event(
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": mid,
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": {"input_tokens": input_tokens, "output_tokens": 1},
                    },
                },
            ),
            _sse_event(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            ),
            _sse_event("ping", {"type": "ping"}),
        ]
        for p in pieces:
            events.append(
                _sse_event(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}},
                )
            )
        events.append(_sse_event("content_block_stop", {"type": "content_block_stop", "index": 0}))
        if tool_use:
            events.append(
                _sse_event(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": 1,
                        "content_block": {
                            "type": "tool_use",
                            "id": tool_use["id"],
                            "name": tool_use["name"],
                            "input": {},
                        },
                    },
                )
            )
            for frag in _split(json.dumps(tool_use["input"]), n or 4):
                events.append(
                    _sse_event(
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": 1,
                            "delta": {"type": "input_json_delta", "partial_json": frag},
                        },
                    )
                )
            events.append(_sse_event("content_block_stop", {"type": "content_block_stop", "index": 1}))
        events.append(
            _sse_event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                    "usage": {"output_tokens": output_tokens},
                },
            )
        )
        events.append(_sse_event("message_stop", {"type": "message_stop"}))
        return self._stream(request, events, headers)

    # -- OpenAI responses

    async def responses(self, request: Request) -> Response:
        accepted = await self._json_body(request)
        if isinstance(accepted, Response):
            return accepted
        data, body = accepted
        problems = chat_problems("responses", data)
        if problems:
            return self._bad_request(request, "fake upstream (strict): " + describe(problems))
        items = data.get("input")
        items = [{"role": "user", "content": items}] if isinstance(items, str) else items or []
        last = items[-1] if items else {}
        n = _int_header(request, "x-fake-chunks")
        tools = [t for t in data.get("tools") or () if isinstance(t, dict) and t.get("type") == "function"]
        rid = _sha(body)[:24]
        output: list[dict[str, Any]] = []
        if last.get("type") == "function_call_output":
            pieces = reply_pieces("tool result " + _responses_text(last.get("output")), n)
        else:
            pieces = reply_pieces(_responses_text(last.get("content")), n)
        if tools and last.get("role") == "user" and "call a tool" in _responses_text(last.get("content")).lower():
            output.append({"id": "fc_" + rid, "type": "function_call", "status": "completed",
                           "arguments": json.dumps(_tool_args(tools[0].get("parameters"))),
                           "call_id": "call_fake_" + rid[:12], "name": tools[0].get("name", "tool")})
        else:
            output.append({"id": "msg_" + rid, "type": "message", "status": "completed", "role": "assistant",
                           "content": [{"type": "output_text", "annotations": [], "logprobs": [],
                                        "text": "".join(pieces)}]})
        prompt_text = " ".join([data.get("instructions") or ""] + [
            _responses_text(i.get("content", i.get("output", i.get("arguments")))) for i in items if isinstance(i, dict)])
        input_tokens, output_tokens = _approx_tokens(prompt_text), len(pieces)
        answer = {
            "id": "resp_" + rid, "object": "response", "created_at": CREATED, "status": "completed",
            "background": False, "error": None, "incomplete_details": None,
            "instructions": data.get("instructions"), "max_output_tokens": data.get("max_output_tokens"),
            "model": data["model"], "output": output, "parallel_tool_calls": True,
            "previous_response_id": data.get("previous_response_id"), "reasoning": {"effort": None, "summary": None},
            "store": data.get("store", True), "temperature": data.get("temperature", 1.0),
            "text": {"format": {"type": "text"}}, "tool_choice": data.get("tool_choice", "auto"),
            "tools": data.get("tools") or [], "top_p": 1.0, "truncation": "disabled",
            "usage": {"input_tokens": input_tokens, "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                      "total_tokens": input_tokens + output_tokens},
            "user": None, "metadata": data.get("metadata") or {},
        }
        headers = self._headers(body)
        if not data.get("stream"):
            return _json(answer, headers=headers)
        return self._stream(request, _responses_events(answer, pieces, n), headers)

    # -- models, embeddings, files

    async def models(self, request: Request) -> Response:
        body = await self._record(request)
        fault = await self._faults(request, body)
        if fault is not None:
            return fault
        ids = ["gpt-4o-mini", "gpt-4o", "claude-sonnet-4-5", "llama-3-8b"]
        if "anthropic-version" in request.headers:
            data = [
                {"type": "model", "id": i, "display_name": i, "created_at": "2024-10-22T00:00:00Z"}
                for i in ids
                if i.startswith("claude")
            ]
            return _json(
                {"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]},
                headers=self._headers(body),
            )
        return _json(
            {
                "object": "list",
                "data": [{"id": i, "object": "model", "created": CREATED, "owned_by": self.name} for i in ids],
            },
            headers=self._headers(body),
        )

    async def embeddings(self, request: Request) -> Response:
        accepted = await self._json_body(request)
        if isinstance(accepted, Response):
            return accepted
        data, body = accepted
        inputs = data.get("input")
        if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and isinstance(inputs[0], int)):
            inputs = [inputs]
        inputs = inputs or []
        dims = int(data.get("dimensions") or 8)
        out = []
        for i, item in enumerate(inputs):
            seed = hashlib.sha256(json.dumps(item).encode()).digest()
            vec = [round((seed[j % 32] - 128) / 128.0, 6) for j in range(dims)]
            emb: Any = vec
            if data.get("encoding_format") == "base64":
                emb = base64.b64encode(struct.pack(f"<{dims}f", *vec)).decode()
            out.append({"object": "embedding", "index": i, "embedding": emb})
        tokens = sum(_approx_tokens(json.dumps(x)) for x in inputs)
        return _json(
            {
                "object": "list",
                "data": out,
                "model": data.get("model"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
            headers=self._headers(body),
        )

    async def files(self, request: Request) -> Response:
        body = await self._record(request)
        fault = await self._faults(request, body)
        if fault is not None:
            return fault
        filename = "upload"
        m = re.search(rb'name="file"; filename="([^"]*)"', body)
        if m:
            filename = m.group(1).decode("utf-8", "replace")
        purpose = None
        m = re.search(rb'name="purpose"\r\n\r\n([^\r]*)\r\n', body)
        if m:
            purpose = m.group(1).decode()
        return _json(
            {
                "id": "file-fake-" + _sha(body)[:16],
                "object": "file",
                "bytes": len(body),
                "created_at": CREATED,
                "filename": filename,
                "purpose": purpose or "assistants",
                "status": "processed",
                "body_sha256": _sha(body),
            },
            headers=self._headers(body),
        )

    # -- catch-all echo

    async def echo(self, request: Request) -> Response:
        body = await self._record(request)
        fault = await self._faults(request, body)
        if fault is not None:
            return fault
        size = _int_header(request, "x-fake-response-bytes")
        if size is not None:
            return self._download(request, size)
        raw = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.scope["headers"]]
        return _json(
            {
                "echo": True,
                "upstream": self.name,
                "method": request.method,
                "path": request.url.path,
                "query": request.scope.get("query_string", b"").decode("latin-1"),
                "headers": raw,
                "body_length": len(body),
                "body_sha256": _sha(body),
            },
            headers=self._headers(body),
        )


    def _download(self, request: Request, size: int) -> Response:
        """x-fake-response-bytes: N -> N deterministic bytes (download_bytes(N)),
        chunked in 64 KiB pieces, or with a Content-Length when
        x-fake-response-framing: length."""
        data = download_bytes(size)
        headers = {"x-fake-upstream": self.name, "x-body-sha256": _sha(data)}
        if request.headers.get("x-fake-response-framing") == "length":
            return Response(data, media_type="application/octet-stream", headers=headers)

        async def pieces() -> AsyncIterator[bytes]:
            for i in range(0, len(data), 65536):
                yield data[i : i + 65536]

        return StreamingResponse(pieces(), media_type="application/octet-stream", headers=headers)


def download_bytes(size: int) -> bytes:
    block = hashlib.sha256(b"ctxwarden-fake").digest() * 2048  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


def create_fake_upstream(name: str = "fake") -> FakeUpstream:
    return FakeUpstream(name)


def create_app() -> Starlette:
    """uvicorn --factory entry point (used by the benchmark)."""
    return FakeUpstream("bench").app
