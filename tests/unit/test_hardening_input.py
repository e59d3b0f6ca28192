"""Input that once froze, exhausted or broke the rewrite: it now passes, fast
and bounded, or is refused with a clear reason."""
from __future__ import annotations

import ctypes.util
import json
import os
import platform
import signal
from contextlib import contextmanager

import pytest

from ctxwarden.chat import parse_chat_body, prepare_chat
from ctxwarden.config import TokenManagement
from ctxwarden.dialects import get_dialect
from ctxwarden.errors import BadRequest
from ctxwarden.pipeline import RewritePlan, rewrite_turn
from ctxwarden.tokens import _CountCache, count_text
from ctxwarden.wirejson import MAX_DEPTH, parse_json

from .pipeline_helpers import agent_conversation


@contextmanager
def hang_guard(seconds: int):
    """Fail instead of hanging the suite: a guard against quadratic blow-ups,
    far above the milliseconds these inputs take (not a speed test)."""
    def fail(*_):
        raise AssertionError(f"still running after {seconds} s")
    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_out_of_range_numbers_and_constants_are_refused():
    for raw in (b'{"a": 1e400}', b'{"a": -1e999}', b'{"a": NaN}', b'{"a": Infinity}'):
        with pytest.raises(BadRequest, match="not valid JSON"):
            parse_json(raw)
    assert parse_json(b'{"a": 1e300, "b": 12345678901234567890123}')["b"] == 12345678901234567890123


def test_nesting_is_bounded_without_recursing():
    assert parse_json(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH)
    for depth in (MAX_DEPTH + 1, 5000):
        with pytest.raises(BadRequest, match="nested deeper"):
            parse_json(b"[" * depth + b"]" * depth)


def test_a_lone_surrogate_goes_upstream_escaped_as_sent():
    body = agent_conversation([(f"cat f{i}.py", "x = 1\n" * 400) for i in range(12)],
                              final_user="why is \udfff in the file?")
    raw = json.dumps(body).encode()          # the client's escaped \\udfff
    parsed = parse_chat_body(raw, get_dialect("openai"))
    chat = prepare_chat(TokenManagement(budget=3000), "openai", raw, parsed)
    assert chat.rewrite in ("append", "compact")
    sent = json.loads(chat.content)          # valid JSON, the surrogate intact
    assert sent["messages"][-1]["content"] == "why is \udfff in the file?"


@pytest.mark.parametrize("text", [
    " " * 80_000 + "x",                       # trailing-whitespace patterns were quadratic on this
    "\r" * 50_000 + "x",
    "```x\n" * 20_000,                        # fences without end
    "a." * 200_000,                           # one identifier-like run of 400k characters
    "<output>" * 50_000,
])
def test_pathological_text_is_rewritten_in_bounded_time(text):
    outputs = [(f"cat f{i}.py", "line\n" * 300) for i in range(10)] + [("cat big.txt", text)]
    body = agent_conversation(outputs, final_user="and " + text[:2000])
    with hang_guard(30):
        out = rewrite_turn(body, "openai", RewritePlan(budget=4000))
    assert out.decision in ("append", "compact", "passthrough")
    assert out.tokens_after <= 4000 or out.warning


def test_token_count_cache_is_bounded_by_bytes():
    cache = _CountCache(max_bytes=64 * 1024)
    for i in range(2000):
        text = f"{i} " + "word " * 400         # long texts: keyed by digest, never held
        cache.put(cache.key(text, "enc"), 1)
        short = f"short text {i}"
        cache.put(cache.key(short, "enc"), 1)
    assert cache._data.currsize <= 64 * 1024
    assert count_text("hello world") == 2


def test_the_mmap_threshold_is_fixed_for_this_process_and_its_workers(monkeypatch):
    from ctxwarden.heap import ENV, MMAP_THRESHOLD, fix_mmap_threshold

    monkeypatch.delenv(ENV, raising=False)
    took = fix_mmap_threshold()
    assert os.environ[ENV] == str(MMAP_THRESHOLD)
    assert took is (ctypes.util.find_library("c") is not None and "glibc" in platform.libc_ver()[0])
