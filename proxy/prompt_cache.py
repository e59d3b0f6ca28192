"""Anthropic prompt-cache breakpoints: mark the end of the stable prefix a
checkpoint produced, so the provider bills it as a cache read next turn."""

from __future__ import annotations

from typing import Any

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


def mark_stable_prefix(body: dict, stable_messages: int) -> dict:
    """`body` with a cache_control breakpoint on the last markable block of its
    first `stable_messages` messages; unchanged when there is no such block,
    the client already marked that spot, or all breakpoints are in use (the
    client's own are always kept)."""
    messages = body.get("messages")
    if stable_messages <= 0 or not isinstance(messages, list) or count_breakpoints(body) >= MAX_BREAKPOINTS:
        return body
    for index in range(min(stable_messages, len(messages)) - 1, -1, -1):
        message = messages[index]
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str) and content:
            blocks = [{"type": "text", "text": content, "cache_control": EPHEMERAL}]
        elif isinstance(content, list):
            position = next((i for i in range(len(content) - 1, -1, -1)
                             if isinstance(content[i], dict) and content[i].get("type") in _MARKABLE), None)
            if position is None:
                continue
            if "cache_control" in content[position]:
                return body
            blocks = list(content)
            blocks[position] = {**content[position], "cache_control": EPHEMERAL}
        else:
            continue
        new_messages = list(messages)
        new_messages[index] = {**message, "content": blocks}
        return {**body, "messages": new_messages}
    return body
