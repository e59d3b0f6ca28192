"""CPU per request of reading a small request body whole (incoming.read_body:
limits, deadline), from an ASGI receive that has it in one message.

    python bench/read_body.py
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

from starlette.requests import Request

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ctxwarden.incoming import read_body  # noqa: E402

N = 20000
BODY = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello in five words."}]}'
SCOPE = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "query_string": b"",
         "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]}


async def receive() -> dict:
    return {"type": "http.request", "body": BODY, "more_body": False}


async def main() -> None:
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        for _ in range(N):
            await read_body(Request(SCOPE, receive), 1 << 20, 30)
        best = min(best, (time.process_time() - started) / N)
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"  read_body: {best * 1e6:.1f} us per request")


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        sys.exit(asyncio.run(main()))
    sys.exit(uvloop.run(main()))
