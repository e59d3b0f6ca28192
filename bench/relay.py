"""CPU of relaying an upstream's answer to the client, from the upstream's
httpx.Response (its body arriving in the process at once) to the app's last
ASGI send: a small answer read whole, and an SSE stream of 200 events (per
event). Beside them, what reading the three header fields a relay needs
costs through httpx.Headers, against a scan of the raw head (upstream.py).

    python bench/relay.py
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _micro import load_average, per_await_us, per_call_us, run  # noqa: E402
from ctxwarden.dialects import get_dialect  # noqa: E402
from ctxwarden.incoming import ClientWatch, first_value, respond  # noqa: E402
from ctxwarden.observability.record import RequestRecord  # noqa: E402
from ctxwarden.upstream import relay  # noqa: E402

N = 20000
EVENTS = 200
ANSWER = (b'{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant",'
          b'"content":"Hello there, how are you?"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,'
          b'"completion_tokens":6,"total_tokens":18}}')
EVENT = (b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[{"index":0,'
         b'"delta":{"content":"Hello"},"finish_reason":null}]}\n\n')
WHOLE_HEAD = [(b"date", b"Mon, 30 Nov 2026 16:00:00 GMT"), (b"server", b"uvicorn"),
              (b"content-length", str(len(ANSWER)).encode()), (b"content-type", b"application/json"),
              (b"x-request-id", b"req_1")]
STREAM_HEAD = [(b"date", b"Mon, 30 Nov 2026 16:00:00 GMT"), (b"content-type", b"text/event-stream"),
               (b"transfer-encoding", b"chunked")]
OURS = [(b"x-ctxwarden-tokens-before", b"12"), (b"x-ctxwarden-tokens-after", b"12"),
        (b"x-ctxwarden-rewrite", b"unchanged"), (b"x-ctxwarden-cache", b"bypass")]
SCOPE = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []}


class Body(httpx.AsyncByteStream):
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def __aiter__(self):
        for chunk in self.chunks:
            yield chunk

    async def aclose(self) -> None:
        pass


async def _receive() -> dict:
    await asyncio.Event().wait()
    return {}


async def _send(message: dict) -> None:
    pass


async def relayed(head: list[tuple[bytes, bytes]], chunks: list[bytes]) -> None:
    upstream = httpx.Response(200, headers=head, stream=Body(chunks))
    record = RequestRecord(route="chat_completions", method="POST", path="/v1/chat/completions")
    response = await relay(upstream, OURS, get_dialect("openai"), record)
    watch = ClientWatch(_receive)
    watch.start()
    await respond(response, SCOPE, _receive, _send, watch)
    watch.close()


def through_httpx_headers(response: httpx.Response) -> tuple:
    headers = response.headers
    return headers.get("content-length"), headers.get("content-type", ""), "content-encoding" in headers


def from_the_raw_head(response: httpx.Response) -> tuple:
    raw = response.headers.raw
    return (first_value(raw, b"content-length"), first_value(raw, b"content-type"),
            first_value(raw, b"content-encoding") is None)


async def main() -> None:
    print(load_average())
    whole = await per_await_us(lambda: relayed(WHOLE_HEAD, [ANSWER]), N)
    stream = await per_await_us(lambda: relayed(STREAM_HEAD, [EVENT] * EVENTS), N // EVENTS * 5)
    print(f"  a small answer relayed whole         {whole:6.1f} us (the upstream's httpx.Response included)")
    print(f"  an SSE stream, per event             {stream / EVENTS:6.2f} us ({EVENTS} events)")
    response = httpx.Response(200, headers=WHOLE_HEAD)
    print(f"  three fields through httpx.Headers   {per_call_us(lambda: through_httpx_headers(response), N):6.2f} us")
    print(f"  three fields from the raw head       {per_call_us(lambda: from_the_raw_head(response), N):6.2f} us")


if __name__ == "__main__":
    run(main)
