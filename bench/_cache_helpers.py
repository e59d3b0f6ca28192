"""Helpers for bench/cache.py: the servers it starts and the figures it computes.

Servers (each its own process, one uvicorn worker, uvloop + httptools, no
access log), started by bench/cache.py:

    python bench/_cache_helpers.py fake  --port 9001
    python bench/_cache_helpers.py proxy --port 9002 --config cfg.xml

``proxy`` logs one JSON line per request on stderr, as ``ctxwarden serve``
does. ``fake`` is tests/fake_upstream.py's FakeUpstream with its Recorder readable
over HTTP, so the benchmark sees exactly what the upstream received while the
fake still runs in a process of its own:

    POST /_bench/take   -> {"requests": [{"path", "body"}...]}: every request
                           recorded since the last take (body as text), then
                           the record is cleared

Every other path is the fake upstream itself.

Figures: message serialisation and token counts, the longest byte-identical
prefix of two requests, a provider prompt cache (a trie of every prefix sent
so far), and the naive sliding window the benchmark compares against.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# --------------------------------------------------------------------------- servers


class RecordingFake:
    """ASGI app: /_bench/take over the fake upstream's Recorder, else the fake."""

    def __init__(self) -> None:
        from tests.fake_upstream import create_fake_upstream

        self.fake = create_fake_upstream("bench-cache")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] == "/_bench/take":
            recorder = self.fake.recorder
            with recorder._lock:  # take and clear atomically
                taken = list(recorder._requests)
                recorder._requests.clear()
            payload = json.dumps({"requests": [
                {"path": r.path, "body": r.body.decode("utf-8", "replace")} for r in taken
            ]}, ensure_ascii=False).encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(payload)).encode())]})
            await send({"type": "http.response.body", "body": payload})
            return
        await self.fake.app(scope, receive, send)


def serve_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["fake", "proxy"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--config")
    args = parser.parse_args(argv)

    import uvicorn

    if args.what == "fake":
        app = RecordingFake()
    else:
        from ctxwarden.app import create_app
        from ctxwarden.config import load_config
        from ctxwarden.observability.logs import configure_logging

        cfg = load_config(args.config)
        # as `ctxwarden serve` does: one JSON line per request on stderr (the
        # benchmark reads each request's rewrite time from it)
        configure_logging(dataclasses.replace(cfg.logging, format="json", requests=True))
        app = create_app(cfg)
    config = uvicorn.Config(app, host=args.host, port=args.port, loop="uvloop", http="httptools", ws="none",
                            lifespan="on", access_log=False, log_level="warning", log_config=None,
                            workers=1, backlog=4096)
    uvicorn.Server(config).run()
    return 0


# --------------------------------------------------------------------------- figures


def serialise(message) -> str:
    """One message as the proxy puts it on the wire (compact JSON, UTF-8)."""
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"))


class Tokens:
    """Token counts of serialised messages (ctxwarden.tokens.count_text, memoised)."""

    def __init__(self) -> None:
        from ctxwarden.tokens import count_text

        self._count = count_text

    def __call__(self, text: str) -> int:
        return self._count(text)


def common_prefix_len(a: str, b: str) -> int:
    """Length of the longest common prefix of two strings (C-speed slice compares)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


class Request:
    """A request as the upstream would see it: its messages serialised, with token counts."""

    __slots__ = ("parts", "tokens", "total")

    def __init__(self, messages: list, count: Tokens, interned: dict[str, str]):
        parts = []
        for m in messages:
            s = serialise(m)
            parts.append(interned.setdefault(s, s))  # equal strings share one object: fast compares
        self.parts = parts
        self.tokens = [count(s) for s in parts]
        self.total = sum(self.tokens)


def prefix_tokens(cur: Request, prev: Request, count: Tokens, partial: bool = True) -> int:
    """Tokens of ``cur`` that are a byte-identical prefix of ``prev``: the leading
    messages identical in both, plus (``partial``) the common prefix of the first
    message that differs."""
    n = min(len(cur.parts), len(prev.parts))
    i = 0
    while i < n and (cur.parts[i] is prev.parts[i] or cur.parts[i] == prev.parts[i]):
        i += 1
    tokens = sum(cur.tokens[:i])
    if partial and i < n:
        c = common_prefix_len(cur.parts[i], prev.parts[i])
        tokens += count(cur.parts[i][:c]) if c else 0
    return tokens


class PromptCache:
    """An idealised provider prompt cache: every prefix of every request sent so
    far (message by message, and within the first differing message) is cached.
    ``send`` returns (cached tokens, tokens written) for a request and caches it."""

    def __init__(self, count: Tokens) -> None:
        self.count = count
        self.root: dict[str, dict] = {}

    def send(self, req: Request) -> tuple[int, int]:
        node = self.root
        cached = 0
        i = 0
        while i < len(req.parts) and req.parts[i] in node:
            node = node[req.parts[i]]
            cached += req.tokens[i]
            i += 1
        if i < len(req.parts) and node:
            best = max(common_prefix_len(req.parts[i], other) for other in node)
            if best:
                cached += self.count(req.parts[i][:best])
        # cache the whole request
        node = self.root
        for part in req.parts:
            node = node.setdefault(part, {})
        return cached, req.total - cached


def naive_window(messages: list, budget: int) -> list:
    """The naive sliding window at ``budget`` tokens: the same recent window
    bench/economy.py compares against (system + task, then the most recent
    whole turns that fit)."""
    from bench.economy import recent_window
    from ctxwarden.dialects import openai
    from ctxwarden.tokens import DEFAULT_ENCODING

    tokens = [openai.message_tokens(m, DEFAULT_ENCODING) for m in messages]
    return [messages[k] for k in recent_window(messages, tokens, budget)]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    data = sorted(values)
    k = max(0, min(len(data) - 1, math.ceil(q / 100 * len(data)) - 1))
    return data[k]


if __name__ == "__main__":
    sys.exit(serve_main())
