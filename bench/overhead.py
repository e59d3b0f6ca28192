"""How much latency and throughput does ctxwarden cost?

Starts the fake upstream (tests/fake_upstream.py) and the proxy in front of it
as separate processes (uvicorn, one worker each, uvloop + httptools), then
sends the same requests to the fake directly and through the proxy, side by
side in one run, and prints p50/p99 latency, req/s and the added latency for:

  (a) one client sending back to back (plain and streaming; direct and proxied
      requests alternate, so drift affects both alike),
  (b) 50 concurrent clients (keep-alive connections),
  (c) time to first byte of a stream (first SSE event), direct vs proxied.

The load generator is a minimal raw-asyncio HTTP/1.1 client on uvloop, so that
it costs far less CPU than the servers it measures (wrk is used for the
50-client plain figure when it is installed). The proxy's CPU time per request
is read from /proc.

    python bench/overhead.py                 # N=2000 per scenario
    python bench/overhead.py --n 5000 --concurrency 50
    python bench/overhead.py --profile /tmp/proxy.prof   # cProfile the proxy
    python bench/overhead.py --via-cli       # start the proxy with `ctxwarden serve`
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import ctxwarden_command, free_port, proxy_config_xml, wait_for_port  # noqa: E402

HOST = "127.0.0.1"

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


# --------------------------------------------------------------------------- stats


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    ttfbs: list[float] = field(default_factory=list)
    wall: float = 0.0
    errors: int = 0
    cpu_proxy: float = 0.0  # seconds of proxy CPU during the run
    cpu_fake: float = 0.0
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


def self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def proc_cpu(pid: int | None) -> float:
    """CPU seconds of a process and of its children (the workers of `serve`
    with workers > 1), alive or already waited for."""
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


# --------------------------------------------------------------------------- scenarios


async def single_client(
    direct_port: int, proxy_port: int, body: bytes, n: int, warmup: int, proxy_pid: int | None = None
) -> tuple[Result, Result]:
    """Alternate direct and proxied requests on two keep-alive connections."""
    d, p = Conn(direct_port), Conn(proxy_port)
    await d.open()
    await p.open()
    rd, rp = Result(), Result()
    raw_d, raw_p = build_request(direct_port, body), build_request(proxy_port, body)
    for _ in range(warmup):
        await d.request(raw_d)
        await p.request(raw_p)
    cpu0 = proc_cpu(proxy_pid)
    for i in range(n):
        # alternate which goes first so neither always benefits from a warm cache
        order = ((d, raw_d, rd), (p, raw_p, rp)) if i % 2 == 0 else ((p, raw_p, rp), (d, raw_d, rd))
        for conn, raw, res in order:
            status, ttfb, total, _ = await conn.request(raw)
            if status != 200:
                res.errors += 1
            res.latencies.append(total)
            res.ttfbs.append(ttfb)
    rp.cpu_proxy = proc_cpu(proxy_pid) - cpu0
    rd.wall = sum(rd.latencies)
    rp.wall = sum(rp.latencies)
    await d.close()
    await p.close()
    return rd, rp


async def concurrent(port: int, body: bytes, n: int, clients: int, pids: tuple[int | None, int | None]) -> Result:
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
            status, ttfb, total, _ = await conn.request(raw)
            if status != 200:
                res.errors += 1
            res.latencies.append(total)
            res.ttfbs.append(ttfb)

    cpu0 = (proc_cpu(pids[0]), proc_cpu(pids[1]), self_cpu())
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    res.wall = time.perf_counter() - t0
    res.cpu_loadgen = self_cpu() - cpu0[2]
    res.cpu_proxy = proc_cpu(pids[0]) - cpu0[0]
    res.cpu_fake = proc_cpu(pids[1]) - cpu0[1]
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


# --------------------------------------------------------------------------- processes


def start(cmd: list[str], port: int, log_dir: str, name: str, env: dict | None = None) -> subprocess.Popen:
    """Start a server; its output goes to a file (a pipe nobody reads would
    fill up and block the server once it logs enough)."""
    log_path = Path(log_dir) / f"{name}.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    try:
        wait_for_port(port, timeout=30, proc=proc)
    except Exception:
        proc.kill()
        proc.wait(timeout=5)
        raise SystemExit(f"could not start {' '.join(cmd)}:\n{log_path.read_text(errors='replace')}")
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


# --------------------------------------------------------------------------- report


def ms(x: float) -> str:
    return f"{x * 1000:8.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="requests per scenario and target (default 2000)")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--profile", help="run the proxy under cProfile and write the stats here")
    parser.add_argument("--via-cli", action="store_true", help="start the proxy with `ctxwarden serve`")
    parser.add_argument("--server-attrs", default="",
                        help='extra attributes for the config\'s <server> element, e.g. \'max_keepalive_connections="100"\'')
    args = parser.parse_args()

    try:
        import uvloop
    except ImportError:  # pragma: no cover
        uvloop = None

    fake_port, proxy_port = free_port(), free_port()
    tmp = tempfile.TemporaryDirectory()
    cfg = Path(tmp.name) / "bench.xml"
    xml = proxy_config_xml(f"http://{HOST}:{fake_port}", port=proxy_port)
    if args.server_attrs:
        xml = xml.replace("<server ", f"<server {args.server_attrs} ", 1)
    cfg.write_text(xml)

    fake = start([sys.executable, str(ROOT / "bench" / "_serve.py"), "fake", "--port", str(fake_port)], fake_port,
                 tmp.name, "fake")
    if args.via_cli:
        if args.profile:
            raise SystemExit("--profile needs the uvicorn launcher, drop --via-cli")
        cmd = ctxwarden_command() + [
            "serve", "--config", str(cfg), "--host", HOST, "--port", str(proxy_port), "--log-level", "warning",
        ]
    else:
        cmd = [sys.executable, str(ROOT / "bench" / "_serve.py"), "proxy", "--port", str(proxy_port),
               "--config", str(cfg)]
        if args.profile:
            cmd += ["--profile", args.profile]
    proxy = start(cmd, proxy_port, tmp.name, "proxy")
    pids = (proxy.pid, fake.pid)

    def run(coro):
        if uvloop is not None:
            return uvloop.run(coro)
        return asyncio.run(coro)

    rows: list[tuple[str, Result, Result, bool]] = []
    try:
        plain_d, plain_p = run(single_client(fake_port, proxy_port, PLAIN_BODY, args.n, args.warmup, proxy.pid))
        rows.append(("1 client, plain", plain_d, plain_p, False))
        stream_d, stream_p = run(single_client(fake_port, proxy_port, STREAM_BODY, args.n, args.warmup, proxy.pid))
        rows.append(("1 client, stream (whole)", stream_d, stream_p, False))
        rows.append(("1 client, stream TTFB", stream_d, stream_p, True))
        c_plain_d = run(concurrent(fake_port, PLAIN_BODY, args.n, args.concurrency, (None, fake.pid)))
        c_plain_p = run(concurrent(proxy_port, PLAIN_BODY, args.n, args.concurrency, pids))
        rows.append((f"{args.concurrency} clients, plain", c_plain_d, c_plain_p, False))
        c_stream_d = run(concurrent(fake_port, STREAM_BODY, args.n, args.concurrency, (None, fake.pid)))
        c_stream_p = run(concurrent(proxy_port, STREAM_BODY, args.n, args.concurrency, pids))
        rows.append((f"{args.concurrency} clients, stream", c_stream_d, c_stream_p, False))
        c_stream_ttfb = (c_stream_d, c_stream_p)
        wrk_d = run_wrk(fake_port, PLAIN_BODY, args.concurrency, 10)
        wrk_p = run_wrk(proxy_port, PLAIN_BODY, args.concurrency, 10) if wrk_d is not None else None
    finally:
        stop(proxy)
        stop(fake)
        tmp.cleanup()

    print()
    print(f"ctxwarden overhead: N={args.n} per scenario, {os.cpu_count()} CPUs, "
          f"proxy launched via {'ctxwarden serve' if args.via_cli else 'uvicorn (uvloop, httptools)'}"
          f"{', under cProfile (figures inflated)' if args.profile else ''}"
          f"{', <server ' + args.server_attrs + '>' if args.server_attrs else ''}")
    print("latencies in ms; 'added' = proxied percentile - direct percentile")
    header = (f"{'scenario':28} | {'direct p50':>10} {'p99':>8} {'req/s':>8} | {'proxy p50':>10} {'p99':>8} "
              f"{'req/s':>8} | {'added p50':>9} {'p99':>8} | err")
    print(header)
    print("-" * len(header))
    for name, d, p, ttfb in rows:
        d50, d99, p50, p99 = d.pct(50, ttfb), d.pct(99, ttfb), p.pct(50, ttfb), p.pct(99, ttfb)
        d_rps = "" if ttfb else f"{d.rps:8.0f}"
        p_rps = "" if ttfb else f"{p.rps:8.0f}"
        print(f"{name:28} | {ms(d50):>10} {ms(d99):>8} {d_rps:>8} | {ms(p50):>10} {ms(p99):>8} {p_rps:>8} | "
              f"{ms(p50 - d50):>9} {ms(p99 - d99):>8} | {d.errors + p.errors}")
    d, p = c_stream_ttfb
    print(f"{f'{args.concurrency} clients, stream TTFB':28} | {ms(d.pct(50, True)):>10} {ms(d.pct(99, True)):>8} "
          f"{'':>8} | {ms(p.pct(50, True)):>10} {ms(p.pct(99, True)):>8} {'':>8} | "
          f"{ms(p.pct(50, True) - d.pct(50, True)):>9} {ms(p.pct(99, True) - d.pct(99, True)):>8} |")
    print()
    print("CPU time per proxied request (from /proc):")
    for label, res in (("1 client, plain", plain_p), ("1 client, stream", stream_p)):
        print(f"  {label:22} proxy {res.cpu_proxy / len(res.latencies) * 1e6:6.0f} us")
    for label, res in ((f"{args.concurrency} clients, plain", c_plain_p), (f"{args.concurrency} clients, stream", c_stream_p)):
        n = len(res.latencies)
        print(f"  {label:22} proxy {res.cpu_proxy / n * 1e6:6.0f} us, fake upstream {res.cpu_fake / n * 1e6:5.0f} us, "
              f"load generator {res.cpu_loadgen / n * 1e6:4.0f} us  (proxy busy {res.cpu_proxy / res.wall * 100:3.0f}% of a core)")
    if wrk_d is not None:
        print(f"wrk -c{args.concurrency} plain, 10 s: direct {wrk_d:.0f} req/s, proxied {wrk_p:.0f} req/s")
    else:
        print("wrk not installed: 50-client figures come from the built-in asyncio load generator")

    print()
    print("targets:")
    checks = [
        ("added latency p50 < 1 ms (1 client, plain)", plain_p.pct(50) - plain_d.pct(50) < 0.001),
        ("added latency p99 < 3 ms (1 client, plain)", plain_p.pct(99) - plain_d.pct(99) < 0.003),
        (f">= 1500 req/s proxied at {args.concurrency} clients (plain)", (wrk_p or c_plain_p.rps) >= 1500),
        ("stream TTFB within 1 ms of direct (1 client, p50)",
         stream_p.pct(50, True) - stream_d.pct(50, True) < 0.001),
    ]
    for text, ok in checks:
        print(f"  [{'PASS' if ok else 'MISS'}] {text}")
    if args.profile:
        print(f"\nproxy profile written to {args.profile}; inspect with:\n"
              f"  python -c \"import pstats; pstats.Stats('{args.profile}').sort_stats('cumulative').print_stats(40)\"")
    return 0


if __name__ == "__main__":
    sys.exit(main())
