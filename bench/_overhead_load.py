"""Load generator and statistics for bench/overhead.py.

A minimal raw-asyncio HTTP/1.1 client (run on uvloop by the caller), so that
it costs far less CPU than the servers it measures; per-process CPU time is
read from /proc.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

HOST = "127.0.0.1"
# the one-client runs' order of targets within each round (single_client)
ROTATION_SEED = 13

PLAIN_BODY = json.dumps(
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello in five words."}]}
).encode()
STREAM_BODY = json.dumps(
    {
        "model": "gpt-4o-mini",
        "stream": True,
        "messages": [{"role": "user", "content": "Say hello in five words."}],
    }
).encode()


def build_request(port: int, body: bytes, path: str = "/v1/chat/completions") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\n"
        f"Host: {HOST}:{port}\r\n"
        "Content-Type: application/json\r\n"
        "Authorization: Bearer sk-bench\r\n"
        "User-Agent: ctxwarden-bench\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    ).encode() + body


# --------------------------------------------------------------------------- client


class Conn:
    """One keep-alive HTTP/1.1 connection, minimal parsing."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(HOST, self.port, limit=1 << 20)
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except Exception:
                pass

    async def request(self, raw: bytes) -> tuple[int, float, float, int]:
        """Send; return (status, seconds to first body byte, seconds total, body bytes)."""
        assert self.reader is not None and self.writer is not None
        reader = self.reader
        t0 = time.perf_counter()
        self.writer.write(raw)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        m = re.search(rb"\r\ncontent-length:\s*(\d+)", lower)
        ttfb = 0.0
        size = 0
        if m:
            n = int(m.group(1))
            body = await reader.readexactly(n)
            ttfb = time.perf_counter() - t0
            size = len(body)
        elif b"\r\ntransfer-encoding: chunked" in lower:
            first = True
            while True:
                line = await reader.readuntil(b"\r\n")
                n = int(line.split(b";", 1)[0], 16)
                if n == 0:
                    await reader.readuntil(b"\r\n")
                    break
                await reader.readexactly(n + 2)
                if first:
                    ttfb = time.perf_counter() - t0
                    first = False
                size += n
        else:
            raise RuntimeError(f"cannot frame response: {head!r}")
        return status, ttfb, time.perf_counter() - t0, size


async def send_on(conn: Conn, raw: bytes, result: Result) -> tuple[int, float, float, int]:
    """`conn.request(raw)`; when the server closed the keep-alive connection
    before answering (LiteLLM's does now and then), the request is sent again
    on a new connection, as HTTP clients do, and counted in
    `result.reconnects`. A connection broken mid-answer still fails the run."""
    try:
        return await conn.request(raw)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise
    except ConnectionResetError:
        pass
    result.reconnects += 1
    await conn.close()
    await conn.open()
    return await conn.request(raw)


async def probe(port: int, body: bytes) -> int:
    """One request on a fresh connection; its status."""
    conn = Conn(port)
    await conn.open()
    try:
        status, *_ = await conn.request(build_request(port, body))
        return status
    finally:
        await conn.close()


# --------------------------------------------------------------------------- stats


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    ttfbs: list[float] = field(default_factory=list)
    wall: float = 0.0
    errors: int = 0
    reconnects: int = 0  # keep-alive connections the server closed before answering (send_on)
    cpu_server: float = 0.0  # seconds of CPU of the measured server (proxy, or fake when direct)
    cpu_fake: float = 0.0  # seconds of CPU of the fake upstream behind a proxy
    cpu_loadgen: float = 0.0

    def pct(self, q: float, ttfb: bool = False) -> float:
        data = sorted(self.ttfbs if ttfb else self.latencies)
        if not data:
            return float("nan")
        k = min(len(data) - 1, max(0, int(round(q / 100 * (len(data) - 1)))))
        return data[k]

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.wall if self.wall else float("nan")

    def per_request(self, seconds: float) -> float:
        """Microseconds of `seconds` per measured request."""
        return seconds / len(self.latencies) * 1e6 if self.latencies else float("nan")


def self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def proc_cpu(pid: int | None) -> float:
    """CPU seconds of a process (all its threads) and of its children (workers),
    alive or already waited for."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        own = sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(c) for c in f.read().split()]
    except OSError:
        return 0.0
    return own + sum(proc_cpu(child) for child in children)


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


# --------------------------------------------------------------------------- scenarios


async def single_client(
    ports: list[int], pids: list[int | None], body: bytes, n: int, warmup: int
) -> list[Result]:
    """One keep-alive connection per target; one request to each target in
    turn, in an order shuffled every round (seeded: the same every run), so
    that drift and warm caches affect all alike. Shuffled rather than rotated:
    with three targets a rotation (0 1 2, 1 2 0, 2 0 1, ...) puts the third
    after the second twice as often as after the first, and a proxy that
    follows the other proxy finds more of the interpreter's work warm. Run
    both ways round (`--baseline`, three runs each), the second column
    measured about 10 us less added latency at p50 than the same code would
    in the first; shuffled, about 2 us.
    pids[i] is the process whose CPU is charged to target i."""
    conns = [Conn(port) for port in ports]
    for conn in conns:
        await conn.open()
    raws = [build_request(port, body) for port in ports]
    results = [Result() for _ in ports]
    for _ in range(warmup):
        for conn, raw in zip(conns, raws):
            await conn.request(raw)
    cpu0 = [proc_cpu(pid) for pid in pids]
    order, shuffle = list(range(len(ports))), random.Random(ROTATION_SEED).shuffle
    for i in range(n):
        shuffle(order)
        for t in order:
            try:
                status, ttfb, total, _ = await send_on(conns[t], raws[t], results[t])
            except (OSError, asyncio.IncompleteReadError) as exc:
                raise RuntimeError(f"request {i} to port {ports[t]} failed: {exc!r}") from exc
            if status != 200:
                results[t].errors += 1
            results[t].latencies.append(total)
            results[t].ttfbs.append(ttfb)
    for res, pid, c0 in zip(results, pids, cpu0):
        res.cpu_server = proc_cpu(pid) - c0
        res.wall = sum(res.latencies)
    for conn in conns:
        await conn.close()
    return results


async def concurrent(port: int, body: bytes, n: int, clients: int, server_pid: int | None,
                     fake_pid: int | None) -> Result:
    """`clients` keep-alive connections sending back to back until n answers."""
    conns = [Conn(port) for _ in range(clients)]
    await asyncio.gather(*(c.open() for c in conns))
    raw = build_request(port, body)
    res = Result()
    # warm every connection once
    await asyncio.gather(*(c.request(raw) for c in conns))
    remaining = n

    async def worker(conn: Conn) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            status, ttfb, total, _ = await send_on(conn, raw, res)
            if status != 200:
                res.errors += 1
            res.latencies.append(total)
            res.ttfbs.append(ttfb)

    fake = fake_pid if fake_pid != server_pid else None
    cpu0 = (proc_cpu(server_pid), proc_cpu(fake), self_cpu())
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    res.wall = time.perf_counter() - t0
    res.cpu_loadgen = self_cpu() - cpu0[2]
    res.cpu_server = proc_cpu(server_pid) - cpu0[0]
    res.cpu_fake = proc_cpu(fake) - cpu0[1]
    await asyncio.gather(*(c.close() for c in conns))
    return res


def run_wrk(port: int, body: bytes, clients: int, seconds: int) -> float | None:
    wrk = shutil.which("wrk")
    if not wrk:
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(
            'wrk.method = "POST"\n'
            f"wrk.body = {json.dumps(body.decode())}\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
            'wrk.headers["Authorization"] = "Bearer sk-bench"\n'
        )
        script = f.name
    try:
        out = subprocess.run(
            [wrk, "-t2", f"-c{clients}", f"-d{seconds}s", "-s", script, f"http://{HOST}:{port}/v1/chat/completions"],
            capture_output=True,
            text=True,
            timeout=seconds + 30,
        ).stdout
    finally:
        os.unlink(script)
    m = re.search(r"Requests/sec:\s*([\d.]+)", out)
    return float(m.group(1)) if m else None
