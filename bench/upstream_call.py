"""CPU per upstream call spent building it, outside the pool: the URL (checked
to stay under the base URL), the headers as the upstream gets them, and the
request's head as it goes on the wire; beside what building an httpx.Request
costs for the same call (what the proxy did before).

    python bench/upstream_call.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _micro import load_average, per_call_us  # noqa: E402
from ctxwarden.config import Timeouts, Upstream  # noqa: E402
from ctxwarden.routing import Target  # noqa: E402
from ctxwarden.transport import origin_of, request_head  # noqa: E402
from ctxwarden.upstream import request_headers, upstream_url  # noqa: E402

UPSTREAM = Upstream("openai", "openai", "http://127.0.0.1:9001", timeouts=Timeouts(connect=5, read=60, write=5, pool=5))
TARGET = Target(UPSTREAM, None)
HEADERS = [(b"host", b"127.0.0.1:8788"), (b"content-type", b"application/json"),
           (b"authorization", b"Bearer sk-bench"), (b"user-agent", b"ctxwarden-bench"), (b"content-length", b"90")]
BODY = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello in five words."}]}'
PATH = "/v1/chat/completions"


def httpx_request() -> None:
    httpx.Request("POST", UPSTREAM.base_url + PATH, headers=request_headers(HEADERS, UPSTREAM, None), content=BODY)


def prepared() -> None:
    origin = origin_of(upstream_url(UPSTREAM.base_url, PATH, b""))
    request_head("POST", origin.target, origin.authority, request_headers(HEADERS, UPSTREAM, None), BODY, None)
    TARGET.timeout()


def main() -> int:
    print(load_average())
    for name, call in (("httpx.Request (before)", httpx_request), ("URL, headers, head (now)", prepared)):
        print(f"  {name:30} {per_call_us(call, 20000, repeat=5):7.1f} us per call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
