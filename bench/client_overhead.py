"""What does the upstream HTTP client alone cost per request?

Starts the fake upstream (one uvicorn worker) and drives it from this process
with (1) httpx.AsyncHTTPTransport, (2) aiohttp's ClientSession (when aiohttp
is installed: it is not a dependency), (3) the proxy's UpstreamClient (its own
HTTP/1.1 pool under httpx's interface, proxy/transport.py), and (4) a minimal
keep-alive pool on asyncio protocols + the httptools response parser (no
timeouts, limits, TLS or proxies: the floor), at concurrency 1 and 50. Prints req/s and this process's CPU per request: the
floor the proxy's own upstream leg costs with each client.

    python bench/client_overhead.py [--n 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httptools
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import free_port, wait_for_port  # noqa: E402

BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello in five words."}]}).encode()


def cpu() -> float:
    t = os.times()
    return t.user + t.system


class _Proto(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future | None = None
        self.body: list[bytes] = []
        self.headers: list[tuple[bytes, bytes]] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        waiter, self.waiter = self.waiter, None
        waiter.set_result((self.parser.get_status_code(), self.headers, b"".join(self.body)))
        self.body, self.headers = [], []

    def connection_lost(self, exc) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection lost"))


class LeanPool:
    """LIFO idle pool: O(1) checkout, no per-request scan of every connection."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: collections.deque[_Proto] = collections.deque()

    async def request(self, raw: bytes):
        loop = asyncio.get_running_loop()
        proto = self.idle.pop() if self.idle else (await loop.create_connection(_Proto, self.host, self.port))[1]
        proto.waiter = loop.create_future()
        proto.transport.write(raw)
        result = await proto.waiter
        self.idle.append(proto)
        return result

    def close(self) -> None:
        for p in self.idle:
            p.transport.close()


async def drive(one, conc: int, n: int) -> tuple[float, float]:
    await asyncio.gather(*(one() for _ in range(conc)))
    left = n

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await one()

    c0, t0 = cpu(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    return n / (time.perf_counter() - t0), (cpu() - c0) / n


async def bench_httpx(port: int, conc: int, n: int, keepalive: int) -> tuple[float, float]:
    transport = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=100, max_keepalive_connections=keepalive))
    url = f"http://127.0.0.1:{port}/v1/chat/completions"

    async def one() -> None:
        request = httpx.Request("POST", url, content=BODY, headers={"content-type": "application/json"})
        response = await transport.handle_async_request(request)
        await response.aread()
        await response.aclose()

    try:
        return await drive(one, conc, n)
    finally:
        await transport.aclose()


async def bench_aiohttp(port: int, conc: int, n: int) -> tuple[float, float] | None:
    try:
        import aiohttp
    except ImportError:
        return None

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100), skip_auto_headers=("User-Agent",),
                                    auto_decompress=False)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"

    async def one() -> None:
        async with session.post(url, data=BODY, headers={"content-type": "application/json"}) as response:
            await response.read()

    try:
        return await drive(one, conc, n)
    finally:
        await session.close()


async def bench_ctxwarden(port: int, conc: int, n: int) -> tuple[float, float]:
    from ctxwarden.config import ServerSettings, Upstream
    from ctxwarden.routing import Target
    from ctxwarden.upstream import UpstreamClient

    client = UpstreamClient(ServerSettings(max_connections=100, max_keepalive_connections=100))
    target = Target(Upstream("fake", "openai", f"http://127.0.0.1:{port}"), None)
    headers = [(b"content-type", b"application/json")]

    async def one() -> None:
        response = await client.send(target, "POST", "/v1/chat/completions", b"", headers, BODY)
        await response.aread()
        await response.aclose()

    try:
        return await drive(one, conc, n)
    finally:
        await client.aclose()


async def bench_lean(port: int, conc: int, n: int) -> tuple[float, float]:
    pool = LeanPool("127.0.0.1", port)
    raw = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY

    async def one() -> None:
        await pool.request(raw)

    try:
        return await drive(one, conc, n)
    finally:
        pool.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=3000)
    args = parser.parse_args()
    import uvloop

    port = free_port()
    fake = subprocess.Popen([sys.executable, str(ROOT / "bench" / "_serve.py"), "fake", "--port", str(port)], cwd=ROOT)
    try:
        wait_for_port(port, timeout=30, proc=fake)
        print(f"{'client':44} {'conc':>4} {'req/s':>7} {'client CPU/req':>15}")
        for label, conc, coro in [
            ("httpx transport (keepalive 20)", 1, lambda: bench_httpx(port, 1, args.n, 20)),
            ("httpx transport (keepalive 20)", 50, lambda: bench_httpx(port, 50, args.n, 20)),
            ("httpx transport (keepalive 100)", 50, lambda: bench_httpx(port, 50, args.n, 100)),
            ("aiohttp ClientSession", 1, lambda: bench_aiohttp(port, 1, args.n)),
            ("aiohttp ClientSession", 50, lambda: bench_aiohttp(port, 50, args.n)),
            ("ctxwarden UpstreamClient (own pool)", 1, lambda: bench_ctxwarden(port, 1, args.n)),
            ("ctxwarden UpstreamClient (own pool)", 50, lambda: bench_ctxwarden(port, 50, args.n)),
            ("asyncio protocol + httptools, LIFO pool", 1, lambda: bench_lean(port, 1, args.n)),
            ("asyncio protocol + httptools, LIFO pool", 50, lambda: bench_lean(port, 50, args.n)),
        ]:
            measured = uvloop.run(coro())
            if measured is None:
                print(f"{label:44} {conc:>4}  not installed (pip install aiohttp to compare)")
                continue
            rps, cpu_per = measured
            print(f"{label:44} {conc:>4} {rps:>7.0f} {cpu_per * 1e6:>12.0f} us")
    finally:
        fake.terminate()
        fake.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
