"""CPU per request of reading a small request body whole (incoming.read_body:
limits, deadline), from an ASGI receive that has it in one message.

    python bench/read_body.py
"""

from __future__ import annotations

import sys
from pathlib import Path

from starlette.requests import Request

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _micro import load_average, per_await_us, run  # noqa: E402
from ctxwarden.incoming import read_body  # noqa: E402

N = 20000
BODY = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello in five words."}]}'
SCOPE = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "query_string": b"",
         "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]}


async def receive() -> dict:
    return {"type": "http.request", "body": BODY, "more_body": False}


async def main() -> None:
    per_request = await per_await_us(lambda: read_body(Request(SCOPE, receive), 1 << 20, 30), N)
    print(load_average())
    print(f"  read_body: {per_request:.1f} us per request")


if __name__ == "__main__":
    run(main)
