"""The plan of a request is made once per settings, model, dialect, output and
pricing; a small body is counted without the rewrite's machinery, with the same
account of it."""

from __future__ import annotations

import base64
import dataclasses
import json
import struct

from ctxwarden import chat
from ctxwarden.chat import budget_for, parse_chat_body, prepare_chat, rewrite_plan
from ctxwarden.config import TokenManagement
from ctxwarden.dialects import get_dialect
from ctxwarden.pipeline import rewrite_turn
from ctxwarden.pricing import ANTHROPIC_PRICING, OPENAI_PRICING


def body(model: str = "gpt-4o-mini", **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "Say hello in one word."}], **extra}


def test_a_plan_is_made_once_and_follows_its_inputs():
    tokens = TokenManagement()
    first = rewrite_plan(tokens, body(), OPENAI_PRICING, "openai")
    assert rewrite_plan(tokens, body(), OPENAI_PRICING, "openai") is first
    assert first.budget == budget_for(tokens, body(), "openai")
    # another output asked for, model, pricing or config (a reload) is another plan
    assert rewrite_plan(tokens, body(max_tokens=100_000), OPENAI_PRICING, "openai").budget < first.budget
    assert rewrite_plan(tokens, body(), ANTHROPIC_PRICING, "openai").pricing is ANTHROPIC_PRICING
    assert rewrite_plan(tokens, body("gpt-3.5-turbo"), OPENAI_PRICING, "openai").encoding == "cl100k_base"
    reloaded = dataclasses.replace(tokens, budget=5000)
    assert rewrite_plan(reloaded, body(), OPENAI_PRICING, "openai").budget == 5000


def test_the_plans_kept_are_bounded_whatever_models_clients_name():
    tokens = TokenManagement()
    for i in range(3 * chat.MAX_PLANS):
        rewrite_plan(tokens, body(f"made-up-model-{i}"), OPENAI_PRICING, "openai")
    assert len(chat._PLANS) <= chat.MAX_PLANS


def test_a_small_body_gets_the_account_the_rewrite_would_give():
    tokens = TokenManagement()
    request = body(max_tokens=16)
    raw = json.dumps(request).encode()
    parsed = parse_chat_body(raw, get_dialect("openai"))
    quick = prepare_chat(tokens, "openai", raw, parsed, OPENAI_PRICING)
    full = rewrite_turn(parsed, "openai", rewrite_plan(tokens, parsed, OPENAI_PRICING, "openai"))
    assert (quick.rewrite, quick.reason, quick.tokens_before, quick.tokens_after) == (
        full.decision, full.reason, full.tokens_before, full.tokens_after)
    assert quick.content is raw


def test_a_small_body_over_the_threshold_still_goes_through_the_rewrite():
    # a few bytes that bill more tokens than they have bytes: a PNG's header
    # declaring 2000 x 2000 pixels, in high detail
    png = b"\x89PNG\r\n\x1a\n" + struct.pack(">I4sII5B", 13, b"IHDR", 2000, 2000, 8, 6, 0, 0, 0) + b"\0" * 4
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    image = {"type": "image_url", "image_url": {"url": url, "detail": "high"}}
    raw = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": [image]}]}).encode()
    tokens = TokenManagement(budget=2 * len(raw), compression_threshold=0.5)
    parsed = parse_chat_body(raw, get_dialect("openai"))
    result = prepare_chat(tokens, "openai", raw, parsed, OPENAI_PRICING)
    assert result.tokens_before > len(raw), "the image bills more tokens than the body has bytes"
    assert result.reason != "below the compression threshold"
