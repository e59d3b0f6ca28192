"""CPU per request of deciding what to do with a small chat request (parse, the
plan, the count below the threshold): what every request pays before it is sent.

    python bench/small_request.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _micro import load_average, per_call_us  # noqa: E402
from ctxwarden.chat import parse_chat_body, prepare_chat, rewrite_plan  # noqa: E402
from ctxwarden.config import TokenManagement  # noqa: E402
from ctxwarden.dialects import get_dialect  # noqa: E402
from ctxwarden.pricing import OPENAI_PRICING  # noqa: E402

N = 20000
RAW = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello in five words."}], "max_tokens": 16}'


def main() -> None:
    tokens, wire = TokenManagement(), get_dialect("openai")
    body = parse_chat_body(RAW, wire)
    print(f"{load_average()}; {N} calls each, best of 3; CPU µs per call")
    print(f"  parse_chat_body  {per_call_us(lambda: parse_chat_body(RAW, wire), N):7.1f}")
    print(f"  rewrite_plan     {per_call_us(lambda: rewrite_plan(tokens, body, OPENAI_PRICING, 'openai'), N):7.1f}")
    print(f"  prepare_chat     {per_call_us(lambda: prepare_chat(tokens, 'openai', RAW, body, OPENAI_PRICING), N):7.1f}")


if __name__ == "__main__":
    main()
