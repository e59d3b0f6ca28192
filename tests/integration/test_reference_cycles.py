"""A proxied request leaves no reference cycles behind.

What a request leaves in a cycle waits for the garbage collector, and every
request in flight stalls while a collection runs; with none, the collector
hardly ever runs (`python bench/app_path.py --gc`). The proxy is served over
loopback here, in this process, so every object its requests make can be seen.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

import httpx
from ._helpers import ANTHROPIC_HEADERS, OPENAI_HEADERS, anthropic_body, openai_body

# A few of each: the first of a kind may fill caches kept for the process.
ROUNDS = 5


@contextlib.contextmanager
def cycles_made() -> Iterator[list[object]]:
    """What the garbage collector finds unreachable, made inside the block."""
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    found: list[object] = []
    try:
        yield found
        gc.collect()
        found.extend(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def _proxy_objects(garbage: list[object]) -> list[str]:
    """The cyclic garbage the proxy's own code made: its objects, its frames."""
    made = []
    for thing in garbage:
        if type(thing).__module__.startswith("ctxwarden"):
            made.append(type(thing).__qualname__)
        elif type(thing).__name__ == "frame" and "ctxwarden" in (thing.f_globals.get("__name__") or ""):
            made.append(f"frame of {thing.f_code.co_qualname}")
    return made


def test_plain_streamed_and_cached_answers_leave_no_cycles(proxy_url, upstream) -> None:
    with httpx.Client(base_url=proxy_url, timeout=10) as client, cycles_made() as cycles:
        for round_ in range(ROUNDS):
            plain = client.post("/v1/chat/completions", headers=OPENAI_HEADERS,
                                json=openai_body(f"plain {round_}", temperature=0))
            again = client.post("/v1/chat/completions", headers=OPENAI_HEADERS,
                                json=openai_body(f"plain {round_}", temperature=0))
            assert (plain.status_code, again.status_code) == (200, 200)
            assert again.headers["x-ctxwarden-cache"] == "hit"
            with client.stream("POST", "/v1/messages", headers=ANTHROPIC_HEADERS,
                               json=anthropic_body(f"stream {round_}", stream=True)) as streamed:
                assert streamed.status_code == 200
                assert b"message_stop" in streamed.read()
            assert client.get("/v1/models", headers=OPENAI_HEADERS).status_code == 200
    assert _proxy_objects(cycles) == []
