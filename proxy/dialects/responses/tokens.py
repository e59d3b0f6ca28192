"""How OpenAI bills a Responses request's tokens, by the Chat Completions
recipe of ``dialects/openai/tokens.py`` (the Responses API renders its items
into the same model input):

- a message item costs like a chat message (3 tokens of framing, its role,
  its content); ``id``, ``type`` and ``status`` are bookkeeping the model does
  not see;
- a ``function_call`` costs like a chat tool call (name, arguments and 4
  tokens of framing), a ``function_call_output`` like a chat tool message
  (framing, ``call_id``, output);
- a ``reasoning`` item: its summary texts, plus its ``encrypted_content`` at one
  token per 4 characters (an estimate on the high side: the hidden reasoning it
  carries is not readable, and its base64 is longer than the text);
- ``instructions`` cost like a system message; ``tools`` as the cookbook's
  recipe (the Responses API's function tools are flat: ``name`` and
  ``parameters`` at the top); items of other types as their compact JSON.

A message the rewrite works on may be a group of items (see ``conversation``
in this package): it costs the sum of its items.
"""
from __future__ import annotations

from typing import Any

from ...tokens import DEFAULT_ENCODING, count_content, count_json, count_text
from ..openai.tokens import (REPLY_PRIMING, TOKENS_PER_MESSAGE, TOKENS_PER_TOOL_CALL, part_tokens,
                             tools_tokens)
from .items import group_items

ENCRYPTED_CHARS_PER_TOKEN = 4
_BOOKKEEPING = frozenset({"id", "type", "status"})


def _part_tokens(part: Any, encoding: str) -> int:
    if isinstance(part, dict) and part.get("type") == "summary_text" and isinstance(part.get("text"), str):
        return count_text(part["text"], encoding)   # a reasoning item's summary
    return part_tokens(part, encoding)


def _content_tokens(content: Any, encoding: str) -> int:
    return count_content(content, encoding, _part_tokens)


def item_tokens(item: Any, encoding: str = DEFAULT_ENCODING) -> int:
    """Tokens one input item costs."""
    if not isinstance(item, dict):
        return TOKENS_PER_MESSAGE + count_json(item, encoding)
    kind = item.get("type", "message")
    if kind == "message":
        n = TOKENS_PER_MESSAGE
        for key, value in item.items():
            if key == "content":
                n += _content_tokens(value, encoding)
            elif key in _BOOKKEEPING:
                continue
            elif isinstance(value, str):
                n += count_text(value, encoding)
            elif value is not None and not isinstance(value, bool):
                n += count_json(value, encoding)
        return n
    if kind == "function_call":
        return TOKENS_PER_TOOL_CALL + count_json(item.get("name", ""), encoding) + count_json(
            item.get("arguments", ""), encoding)
    if kind == "function_call_output":
        return (TOKENS_PER_MESSAGE + count_json(item.get("call_id", ""), encoding)
                + _content_tokens(item.get("output"), encoding))
    if kind == "reasoning":
        n = sum(_part_tokens(part, encoding) for part in item.get("summary") or () if isinstance(part, dict))
        n += _content_tokens(item.get("content"), encoding)
        encrypted = item.get("encrypted_content")
        if isinstance(encrypted, str):
            n += -(-len(encrypted) // ENCRYPTED_CHARS_PER_TOKEN)
        return n
    return TOKENS_PER_MESSAGE + count_json(item, encoding)


def message_tokens(message: Any, encoding: str = DEFAULT_ENCODING) -> int:
    """Tokens of one message the rewrite works on: an item, or a group of items."""
    items = group_items(message)
    if items is None:
        return item_tokens(message, encoding)
    return sum(item_tokens(item, encoding) for item in items)


def fixed_tokens(body: dict, encoding: str = DEFAULT_ENCODING) -> int:
    """Tokens of a Responses request outside ``input``: reply priming, instructions, tools."""
    n = REPLY_PRIMING
    if not isinstance(body, dict):
        return n
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        n += TOKENS_PER_MESSAGE + count_text("system", encoding) + count_text(instructions, encoding)
    elif instructions is not None:
        n += count_json(instructions, encoding)
    n += tools_tokens(body.get("tools"), encoding)
    return n
