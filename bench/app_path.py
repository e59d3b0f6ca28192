"""CPU per request of the app's own way, from the ASGI call to its last send,
with no server and no sockets: the upstream answers in the process, at once.
What stays is everything the proxy itself does for a small chat request
(path check, body read, parse, route, plan, cache policy, slot, the call's
building, relay, metrics, stats, log), measured to within a few percent on a
busy machine, where the end-to-end figures of bench/overhead.py move by a
quarter from run to run.

    python bench/app_path.py [--n 5000] [--stream] [--gc] [--shared] [--concurrency 1]

--gc also prints the garbage collector's runs during the measured requests
and the longest pause of each generation (every request in flight stalls
for as long as a collection takes), with the app's collector thresholds and,
in the same run, with Python's default ones.

--concurrency C keeps C requests in flight at once, as a busy server does.

--shared measures the app as one of several workers (`serve --workers 2`
or more): its metrics in prometheus-client's multiprocess files.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _micro import load_average, run  # noqa: E402
from _overhead_load import PLAIN_BODY, STREAM_BODY  # noqa: E402
from ctxwarden import app as app_module  # noqa: E402
from ctxwarden.config import load_config  # noqa: E402
from ctxwarden.observability.shared import SharedDir  # noqa: E402
from ctxwarden.transport import Http11Transport  # noqa: E402
from ctxwarden.upstream import UpstreamClient  # noqa: E402
from tests.servers import proxy_config_xml  # noqa: E402

ANSWER = b'{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hello there, how are you?"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":6,"total_tokens":18}}'
STREAM = b"".join(b'data: {"choices":[{"index":0,"delta":{"content":"w%d"}}]}\n\n' % i for i in range(6)) + b"data: [DONE]\n\n"


class _Body(httpx.AsyncByteStream):
    def __init__(self, data: bytes) -> None:
        self._data = data

    async def __aiter__(self):
        yield self._data


class AnsweringTransport(Http11Transport):
    """The pool's interface, answered in the process (the proxy's fast path is kept)."""

    async def send(self, method, url, headers, content, extensions) -> httpx.Response:
        if b'"stream": true' in (content or b""):
            return httpx.Response(200, headers=[(b"content-type", b"text/event-stream")], stream=_Body(STREAM))
        return httpx.Response(200, headers=[(b"content-type", b"application/json"),
                                            (b"content-length", str(len(ANSWER)).encode())], stream=_Body(ANSWER))


class Client(UpstreamClient):
    def __init__(self, server, transport=None) -> None:
        super().__init__(server, transport=AnsweringTransport(httpx.Limits()))


async def lifespan(app) -> tuple[asyncio.Task, asyncio.Queue]:
    inbox: asyncio.Queue = asyncio.Queue()
    started = asyncio.Event()

    async def send(message):
        if message["type"] == "lifespan.startup.complete":
            started.set()

    await inbox.put({"type": "lifespan.startup"})
    task = asyncio.ensure_future(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                                     inbox.get, send))
    await started.wait()
    return task, inbox


PYTHON_GC_THRESHOLDS = (700, 10, 10)


def _full_collection(unfrozen: bool = False) -> float:
    """Seconds one full collection takes now; with `unfrozen`, of everything,
    what the app froze at start-up included."""
    if unfrozen:
        gc.unfreeze()
    started = time.perf_counter()
    gc.collect()
    return time.perf_counter() - started


class Collections:
    """The collector's runs and longest pause per generation (gc.callbacks)."""

    def __init__(self) -> None:
        self.runs = [0, 0, 0]
        self.longest = [0.0, 0.0, 0.0]
        self._started = 0.0
        self.full = [0.0, 0.0]

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation = info["generation"]
        self.runs[generation] += 1
        self.longest[generation] = max(self.longest[generation], time.perf_counter() - self._started)

    def __str__(self) -> str:
        return ", ".join(f"generation {g}: {self.runs[g]} runs, longest {self.longest[g] * 1e3:.2f} ms"
                         for g in range(3))


def shared_dir() -> SharedDir:
    """A worker's shared directory, as `serve` with several workers makes it."""
    import prometheus_client.values

    shared = SharedDir.create(tempfile.mkdtemp())
    # prometheus-client picks its value class when imported, from the variable just set
    prometheus_client.values.ValueClass = prometheus_client.values.MultiProcessValue()
    return shared


async def measure(n: int, body: bytes, collections: Collections | None = None,
                  shared: SharedDir | None = None, concurrency: int = 1,
                  thresholds: tuple[int, ...] | None = None) -> tuple[float, int]:
    """CPU seconds per request, best of three rounds of `n`, and the last status;
    `thresholds`: the collector's, in place of those the app sets at start-up."""
    folder = tempfile.mkdtemp()
    config_path = Path(folder) / "config.xml"
    config_path.write_text(proxy_config_xml("http://upstream.invalid/v1").replace(
        "<server ", '<logging level="warning" requests="false"/>\n  <server ', 1))
    app_module.UpstreamClient = Client
    app = app_module.create_app(load_config(str(config_path)), shared=shared)
    task, inbox = await lifespan(app)
    if thresholds is not None:
        gc.set_threshold(*thresholds)
    headers = [(b"host", b"127.0.0.1:8788"), (b"content-type", b"application/json"),
               (b"authorization", b"Bearer sk-bench"), (b"user-agent", b"ctxwarden-bench"),
               (b"content-length", str(len(body)).encode())]
    never = asyncio.Event()
    status = 0

    async def one() -> None:
        nonlocal status
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive():
            if messages:
                return messages.pop()
            await never.wait()

        async def send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
                 "query_string": b"", "root_path": "", "headers": headers, "client": ("127.0.0.1", 5000),
                 "server": ("127.0.0.1", 8788), "state": {}}
        await app(scope, receive, send)

    for _ in range(200):
        await one()
    if collections is not None:
        gc.callbacks.append(collections)
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        for _ in range(n // concurrency):
            await asyncio.gather(*(one() for _ in range(concurrency)))
            await asyncio.sleep(0)   # as a server's loop would: the request's cancelled watcher ends
        best = min(best, (time.process_time() - started) / (n // concurrency * concurrency))
    if collections is not None:
        gc.callbacks.remove(collections)
        collections.full = [_full_collection(), _full_collection(unfrozen=True)]
    await inbox.put({"type": "lifespan.shutdown"})
    await task
    return best, status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--stream", action="store_true", help="a streamed request (SSE answer)")
    parser.add_argument("--gc", action="store_true", help="also the garbage collector's runs and pauses")
    parser.add_argument("--shared", action="store_true", help="as one of several workers (multiprocess metrics)")
    parser.add_argument("--concurrency", type=int, default=1, help="requests in flight at once")
    args = parser.parse_args()
    body = STREAM_BODY if args.stream else PLAIN_BODY
    collections = Collections() if args.gc else None
    shared = shared_dir() if args.shared else None
    try:
        seconds, status = run(lambda: measure(args.n, body, collections, shared, args.concurrency))
        if collections is not None:
            defaults = Collections()
            default_seconds, _ = run(lambda: measure(args.n, body, defaults, shared, args.concurrency,
                                                     PYTHON_GC_THRESHOLDS))
    finally:
        if shared is not None:
            shutil.rmtree(shared.root)
    print(f"{load_average()}; {'stream' if args.stream else 'plain'} chat request, best of 3 x {args.n}, "
          f"{args.concurrency} in flight" + (", as one of several workers" if shared else ""))
    print(f"  app path: {seconds * 1e6:7.1f} us CPU per request (status {status})")
    if collections is not None:
        print(f"  collector, over {3 * args.n} requests: {collections}")
        print(f"  a full collection afterwards: {collections.full[0] * 1e3:.2f} ms; with what start-up made "
              f"unfrozen, {collections.full[1] * 1e3:.2f} ms")
        print(f"  with Python's default thresholds {PYTHON_GC_THRESHOLDS}: {default_seconds * 1e6:.1f} us CPU "
              f"per request; collector: {defaults}")
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
