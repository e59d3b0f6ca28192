"""Small helpers shared by the integration tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from ctxwarden.app import create_app
from ctxwarden.config import parse_config
from tests.servers import serve_app

OPENAI_MODEL = "gpt-4o-mini"
ANTHROPIC_MODEL = "claude-test-model"
LOCAL_MODEL = "llama-3-8b"

OPENAI_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"location": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
                "required": ["location"],
            },
        },
    }
]

ANTHROPIC_TOOLS = [
    {
        "name": "get_weather",
        "description": "Current weather for a city",
        "input_schema": {
            "type": "object",
            "properties": {"location": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["location"],
        },
    }
]

# 1x1 transparent PNG
TINY_PNG_B64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
TINY_PDF_B64 = "JVBERi0xLjQKJcTl8uXrp/Og0MTGCjEgMCBvYmoKPDwvVHlwZS9DYXRhbG9nPj4KZW5kb2JqCnRyYWlsZXIKPDwvUm9vdCAxIDAgUj4+CiUlRU9GCg=="


def parse_sse(raw: bytes) -> list[dict[str, Any]]:
    """Split an SSE body into events: [{'event': name|None, 'data': str}, ...]."""
    events = []
    text = raw.decode("utf-8").replace("\r\n", "\n")
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip(" "))
        events.append({"event": name, "data": "\n".join(data)})
    return events


def sse_json(events: list[dict[str, Any]]) -> list[Any]:
    out = []
    for ev in events:
        if ev["data"] and ev["data"] != "[DONE]":
            out.append(json.loads(ev["data"]))
    return out


def assert_token_headers(headers) -> tuple[int, int]:
    before = headers.get("x-ctxwarden-tokens-before")
    after = headers.get("x-ctxwarden-tokens-after")
    assert before is not None, f"missing x-ctxwarden-tokens-before in {dict(headers)}"
    assert after is not None, f"missing x-ctxwarden-tokens-after in {dict(headers)}"
    b, a = int(before), int(after)
    assert b > 0 and 0 <= a <= b
    return b, a


def assert_openai_error(resp, status: int) -> dict:
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers
    body = resp.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert {"message", "type", "param", "code"} <= set(err), err
    assert isinstance(err["message"], str) and err["message"]
    return err


def assert_anthropic_error(resp, status: int) -> dict:
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers
    body = resp.json()
    assert body.get("type") == "error", body
    err = body["error"]
    assert isinstance(err.get("type"), str) and err["type"]
    assert isinstance(err.get("message"), str) and err["message"]
    return err


def openai_body(text: str = "hello", **extra: Any) -> dict:
    return {"model": OPENAI_MODEL, "messages": [{"role": "user", "content": text}], **extra}


def anthropic_body(text: str = "hello", **extra: Any) -> dict:
    return {
        "model": ANTHROPIC_MODEL,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


ANTHROPIC_HEADERS = {"anthropic-version": "2023-06-01", "x-api-key": "sk-ant-test"}
OPENAI_HEADERS = {"authorization": "Bearer sk-test"}


def small_budget_config(upstream_url: str, budget: int, extra: str = "") -> str:
    """A config with a small token budget (so a short conversation is rewritten),
    both dialects' upstreams at ``upstream_url``, and ``extra`` elements."""
    return f"""<performance_optimization>
  <token_management>
    <budget>{budget}</budget>
    <compression_threshold>0.7</compression_threshold>
    <pruning_distance>3</pruning_distance>
  </token_management>
  {extra}
  <upstreams>
    <upstream name="openai" dialect="openai" base_url="{upstream_url}"/>
    <upstream name="anthropic" dialect="anthropic" base_url="{upstream_url}"/>
  </upstreams>
</performance_optimization>"""


@contextlib.contextmanager
def served(xml: str) -> Iterator[tuple[str, Any]]:
    """A proxy app on its own loopback port: (base URL, the app)."""
    app = create_app(parse_config(xml))
    with serve_app(app) as url:
        yield url, app


Answer = Callable[[bytes], bytes | None]   # the request's head -> the bytes to answer, None to hang


@contextlib.asynccontextmanager
async def raw_server(answer: Answer, close_after: bool = False, context: ssl.SSLContext | None = None,
                     ) -> AsyncIterator[tuple[int, list[bytes], list[int]]]:
    """Answers each request on a connection with answer(head); records the
    heads and, per request, which connection (its number) carried it."""
    heads: list[bytes] = []
    connections: list[int] = []
    opened = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal opened
        opened += 1
        number = opened
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(h.split(b":", 1)[1]) for h in head.split(b"\r\n")
                               if h.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                heads.append(head)
                connections.append(number)
                reply = answer(head)
                if reply is None:
                    await asyncio.sleep(30)
                    return
                writer.write(reply)
                await writer.drain()
                if close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    async with server:
        yield server.sockets[0].getsockname()[1], heads, connections


def replace_file(path, text: str) -> None:
    """`path` swapped whole for a file holding `text`, as editors and config
    maps do: a reloader polling it never reads it half written."""
    temporary = path.parent / f".{path.name}.next"
    temporary.write_text(text)
    os.replace(temporary, path)
