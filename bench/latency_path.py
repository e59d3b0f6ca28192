"""Where the latency a proxied request adds is spent, step by step.

One client sends small chat requests through the proxy to the fake
upstream: first back to back, then each followed by one sent to the fake
directly, as bench/overhead.py's one-client runs take turns between targets
(every process then finds less of its work in the CPU's caches). Both
servers (bench/_stamped.py) read the one clock all processes of the machine
share at each step of every request, so the time between two steps, in or
across processes, is a difference of readings. Prints, side by side, the
median of each step over N requests (after a warm-up) each way: what the
server does before the app is called, the app before the upstream call, the
upstream's own time, the app after the answer's head, and the sending.
The readings cost about a microsecond each.

    python bench/latency_path.py [--n 3000] [--stream]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _micro import load_average, run  # noqa: E402
from _overhead_load import HOST, PLAIN_BODY, STREAM_BODY, Conn, build_request  # noqa: E402
from overhead import BENCH_LOGGING  # noqa: E402
from tests.servers import free_port, proxy_config_xml, wait_for_port  # noqa: E402

WARMUP = 300

# (from, to, what happens in between), client and upstream readings included
STEPS = (
    ("client sends", "proxy: app called", "the proxy's server: read, parse, hand to the app"),
    ("proxy: app called", "proxy: body read", "the app: path, record"),
    ("proxy: body read", "proxy: body read done", "the app: body read"),
    ("proxy: body read done", "proxy: watched", "the app: the disconnect watch started"),
    ("proxy: watched", "proxy: chat flow", "the app: in the watch's cancel scope"),
    ("proxy: chat flow", "proxy: rewrite", "the app: parse, route"),
    ("proxy: rewrite", "proxy: rewrite done", "the app: the rewrite decision (counted, planned)"),
    ("proxy: rewrite done", "proxy: upstream write", "the app: cache policy, slot, the call built and written"),
    ("proxy: upstream write", "fake: app called", "the fake's server: read, parse, hand to its app"),
    ("fake: app called", "fake: response sent", "the fake's app"),
    ("fake: response sent", "proxy: upstream head parsed", "loopback, the answer parsed"),
    ("proxy: upstream head parsed", "proxy: relay", "the app: the upstream call returns"),
    ("proxy: relay", "proxy: relay done", "the app: the answer read and made a response"),
    ("proxy: relay done", "proxy: response head to send", "the app: back to the server"),
    ("proxy: response head to send", "proxy: response sent", "the proxy's server: head and body written"),
    ("proxy: response sent", "client receives", "loopback, the client reads"),
    ("proxy: response sent", "proxy: app returned", "after the answer: metrics, stats, clean-up"),
    ("client sends", "client receives", "the whole request"),
)


def start(what: str, port: int, folder: str, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "STAMPS": f"{folder}/{what}.json"}
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("_stamped.py")), what, "--port", str(port),
                             *extra], env=env)
    wait_for_port(port, timeout=30, proc=proc)
    return proc


async def drive(port: int, body: bytes, n: int, direct_port: int | None = None) -> list[tuple[float, float]]:
    """(sent, received) of each request through the proxy after the warm-up;
    with `direct_port`, each is followed by one sent there."""
    connection, direct = Conn(port), Conn(direct_port) if direct_port else None
    await connection.open()
    if direct is not None:
        await direct.open()
    raw = build_request(port, body)
    direct_raw = build_request(direct_port, body) if direct_port else b""
    times = []
    for _ in range(WARMUP + n):
        sent = time.perf_counter()
        await connection.request(raw)
        times.append((sent, time.perf_counter()))
        if direct is not None:
            await direct.request(direct_raw)
    await connection.close()
    if direct is not None:
        await direct.close()
    return times[WARMUP:]


def medians(client: list[tuple[float, float]], proxied: list[dict], upstream: list[dict]) -> list[float]:
    """Each step's median, in us, over the requests of one way of sending."""
    readings = [{"client sends": sent, "client receives": received,
                 **{f"proxy: {k}": v for k, v in p.items()}, **{f"fake: {k}": v for k, v in f.items()}}
                for (sent, received), p, f in zip(client, proxied, upstream)]
    return [statistics.median([r[then] - r[first] for r in readings if first in r and then in r]) * 1e6
            for first, then, _ in STEPS]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--stream", action="store_true", help="streamed requests (the readings end with the last event)")
    args = parser.parse_args()
    folder = tempfile.mkdtemp()
    fake_port, proxy_port = free_port(), free_port()
    config = Path(folder) / "config.xml"
    config.write_text(proxy_config_xml(f"http://{HOST}:{fake_port}/v1", port=proxy_port)
                      .replace("<server ", BENCH_LOGGING + "  <server ", 1))
    fake = start("fake", fake_port, folder)
    proxy = start("proxy", proxy_port, folder, "--config", str(config))
    body = STREAM_BODY if args.stream else PLAIN_BODY
    try:
        back_to_back = run(lambda: drive(proxy_port, body, args.n))
        taking_turns = run(lambda: drive(proxy_port, body, args.n, direct_port=fake_port))
    finally:
        for proc in (proxy, fake):
            proc.send_signal(signal.SIGINT)
        for proc in (proxy, fake):
            proc.wait(timeout=30)
    proxied = json.loads(Path(folder, "proxy.json").read_text())
    upstream = json.loads(Path(folder, "fake.json").read_text())
    first = WARMUP + args.n
    # the fake's readings in the second way alternate: the proxy's call, then the direct request
    columns = (medians(back_to_back, proxied[WARMUP:first], upstream[WARMUP:first]),
               medians(taking_turns, proxied[first + WARMUP:], upstream[first:][::2][WARMUP:]))
    print(f"latency_path.py: {args.n} {'streamed' if args.stream else 'plain'} requests each way, one client, "
          f"{load_average()}")
    print(f"  {'back to back':>12}  {'taking turns':>12}  step (median, us)")
    for (_, _, what), a, b in zip(STEPS, *columns):
        print(f"  {a:12.1f}  {b:12.1f}  {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
