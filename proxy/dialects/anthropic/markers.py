"""Anthropic's prompt-cache breakpoints, which make it bill a repeated prefix
as a cache read.

Anthropic caches only at ``cache_control`` breakpoints: one goes at the end of
the stable prefix (what stays until the next compaction) and one at the end
of the request (what the next turn appends to), never more than 4 with the
client's own, which are never moved."""

from __future__ import annotations

from typing import Any

from ...pricing import Pricing

MAX_BREAKPOINTS = 4  # Anthropic's limit per request, over tools, system and messages
EPHEMERAL = {"type": "ephemeral"}
# Block types that may carry cache_control (thinking blocks may not).
_MARKABLE = frozenset({"text", "image", "document", "tool_use", "tool_result", "search_result"})


def _marked(blocks: Any) -> int:
    if not isinstance(blocks, list):
        return 0
    return sum(1 for b in blocks if isinstance(b, dict) and "cache_control" in b)


def count_breakpoints(body: dict) -> int:
    count = _marked(body.get("tools")) + _marked(body.get("system"))
    for message in body.get("messages") or ():
        if isinstance(message, dict):
            count += _marked(message.get("content"))
    return count


def cache_hints(body: dict, pricing: Pricing, stable_messages: int, conversation: str) -> dict:
    """``body`` with the breakpoints its upstream's pricing asks for: the end
    of the request first (the next turn's breakpoint finds it within its
    lookback, so everything sent is read back), then the end of the stable
    prefix (found even when a turn adds more blocks than the lookback), while
    the client's own leave room.  ``conversation`` is not needed here."""
    if pricing.cache != "anthropic" or not pricing.markers:
        return body
    marked = mark_stable_prefix(body, len(body.get("messages") or ()), pricing.lookback_blocks)
    return mark_stable_prefix(marked, stable_messages, pricing.lookback_blocks)


def mark_stable_prefix(body: dict, stable_messages: int, lookback: int = 20) -> dict:
    """`body` with a cache_control breakpoint on the last markable block of its
    first `stable_messages` messages (looking back at most `lookback`
    messages); unchanged when there is no such block, the client already
    marked that spot, or all breakpoints are in use (the client's own are
    always kept).  Content given as a string is never rewritten into blocks:
    the same message must keep its bytes on the next turn, unmarked."""
    messages = body.get("messages")
    if stable_messages <= 0 or not isinstance(messages, list) or count_breakpoints(body) >= MAX_BREAKPOINTS:
        return body
    last = min(stable_messages, len(messages)) - 1
    for index in range(last, max(-1, last - lookback), -1):
        message = messages[index]
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        position = next((i for i in range(len(content) - 1, -1, -1)
                         if isinstance(content[i], dict) and content[i].get("type") in _MARKABLE), None)
        if position is None:
            continue
        if "cache_control" in content[position]:
            return body
        blocks = list(content)
        blocks[position] = {**content[position], "cache_control": EPHEMERAL}
        new_messages = list(messages)
        new_messages[index] = {**message, "content": blocks}
        return {**body, "messages": new_messages}
    return body
