"""How Anthropic bills a Messages request's tokens: an estimate.

Anthropic publishes no tokenizer, so this is an ESTIMATE with the same tiktoken
encoding: ``system`` (string or text blocks), every message's text, tool_use
(name + compact JSON input), tool_result content, thinking text and tool
definitions (name + description + compact JSON input_schema), plus
``TOKENS_PER_MESSAGE`` per message and ``TOKENS_PER_BLOCK``
per non-text block.  Images: Anthropic's documented ``width*height/750``
when the size can be read from base64 data, else ``IMAGE_DEFAULT``
(1600, roughly the cap for a full-size image).
"""
from __future__ import annotations

import math
from typing import Any

from ...tokens import DEFAULT_ENCODING, b64_image_size, count_content, count_json, count_text

TOKENS_PER_MESSAGE = 4
TOKENS_PER_BLOCK = 3
REQUEST_OVERHEAD = 3
IMAGE_DEFAULT = 1600
DOCUMENT_DEFAULT = 1600


def image_tokens(width: int | None, height: int | None) -> int:
    """Anthropic's documented estimate: width * height / 750 (after its 1568px cap)."""
    if not width or not height:
        return IMAGE_DEFAULT
    w, h = float(width), float(height)
    if max(w, h) > 1568:
        s = 1568 / max(w, h)
        w, h = w * s, h * s
    return max(1, int(math.ceil(w * h / 750)))


def _block_tokens(block: Any, encoding: str) -> int:
    if isinstance(block, str):
        return count_text(block, encoding)
    if not isinstance(block, dict):
        return count_json(block, encoding)
    btype = block.get("type")
    if btype == "text":
        text = block.get("text", "")
        return count_text(text, encoding) if isinstance(text, str) else count_json(text, encoding)
    if btype == "tool_use" or btype == "server_tool_use":
        return (TOKENS_PER_BLOCK + count_json(block.get("name", ""), encoding)
                + count_json(block.get("input", {}), encoding))
    if btype == "tool_result" or (isinstance(btype, str) and btype.endswith("_tool_result")):
        content = block.get("content")
        if isinstance(content, list):
            inner = sum(_block_tokens(b, encoding) for b in content)
        else:
            inner = count_json(content, encoding)
        return TOKENS_PER_BLOCK + inner
    if btype == "thinking":
        return TOKENS_PER_BLOCK + count_json(block.get("thinking", ""), encoding)
    if btype == "redacted_thinking":
        return TOKENS_PER_BLOCK + count_json(block.get("data", ""), encoding) // 4
    if btype == "image":
        src = block.get("source")
        size = None
        if isinstance(src, dict) and src.get("type") == "base64":
            size = b64_image_size(src.get("data", ""))
        return TOKENS_PER_BLOCK + image_tokens(*(size or (None, None)))
    if btype == "document":
        src = block.get("source")
        if isinstance(src, dict) and src.get("type") == "text":
            return TOKENS_PER_BLOCK + count_json(src.get("data", ""), encoding)
        if isinstance(src, dict) and src.get("type") == "content":
            return TOKENS_PER_BLOCK + _content_tokens(src.get("content"), encoding)
        return TOKENS_PER_BLOCK + DOCUMENT_DEFAULT
    return TOKENS_PER_BLOCK + count_json(block, encoding)


def _content_tokens(content: Any, encoding: str) -> int:
    return count_content(content, encoding, _block_tokens)


def message_tokens(message: Any, encoding: str = DEFAULT_ENCODING) -> int:
    """Estimated tokens of one Anthropic message (no public tokenizer)."""
    if not isinstance(message, dict):
        return TOKENS_PER_MESSAGE + count_json(message, encoding)
    return TOKENS_PER_MESSAGE + _content_tokens(message.get("content"), encoding)


def tools_tokens(tools: Any, encoding: str = DEFAULT_ENCODING) -> int:
    if not isinstance(tools, list):
        return 0 if tools is None else count_json(tools, encoding)
    total = 0
    for tool in tools:
        if not isinstance(tool, dict):
            total += count_json(tool, encoding)
            continue
        total += TOKENS_PER_BLOCK
        total += count_json(tool.get("name", ""), encoding)
        total += count_json(tool.get("description", ""), encoding)
        rest = {k: v for k, v in tool.items() if k not in ("name", "description", "cache_control")}
        if rest:
            total += count_json(rest, encoding)
    return total


def fixed_tokens(body: dict, encoding: str = DEFAULT_ENCODING) -> int:
    """Estimated tokens of an Anthropic request outside ``messages``: system + tools."""
    n = REQUEST_OVERHEAD
    if not isinstance(body, dict):
        return n
    system = body.get("system")
    if system is not None:
        n += _content_tokens(system, encoding)
    n += tools_tokens(body.get("tools"), encoding)
    return n
