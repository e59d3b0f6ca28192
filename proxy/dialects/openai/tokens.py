"""How OpenAI bills a Chat Completions request's tokens.

Follows the OpenAI cookbook recipe "How to count tokens with tiktoken"
(``num_tokens_from_messages``, for gpt-3.5-turbo-0613 / gpt-4 style models):
every message costs 3 tokens of framing plus the tokens of each of its string
values (``role``, ``content``, ``name`` ...), a ``name`` costs 1 extra token,
and every reply is primed with 3 tokens (``<|start|>assistant<|message|>``).
The cookbook's example conversation comes to 129 prompt tokens with cl100k;
``tests/unit/test_tokens.py`` checks exactly that.

Not covered by that recipe, so documented estimates:
- assistant ``tool_calls``: each call costs the function name + the arguments
  string + ``TOKENS_PER_TOOL_CALL`` (4) tokens of framing (the same figure the
  corpus README uses);
- ``tools`` / ``functions`` definitions: the cookbook's ``num_tokens_for_tools``
  recipe (section "6. Counting tokens for chat completions with tool calls",
  gpt-3.5-turbo / gpt-4 constants: func_init=10, prop_init=3, prop_key=3,
  enum_init=-3, enum_item=3, func_end=12).  Parts of a schema the recipe does
  not describe (nested objects, ``items``, ...) are counted as their compact
  JSON so they are never free;
- content given as a list of parts: ``text`` parts are counted as text; image
  parts use OpenAI's documented tile formula (85 base + 170 per 512px tile after
  scaling to fit 2048x2048 and the short side to 768) when the size can be
  read from a ``data:`` URL header, ``detail: low`` is always 85, and when the
  size is unknown (remote URL) the low-detail figure of 85 is used (an
  under-estimate for high-detail images; there is no way to know the size
  without fetching it).  Audio/file/unknown parts: compact JSON of the part.
"""
from __future__ import annotations

import math
from typing import Any

from ...tokens import DEFAULT_ENCODING, compact_json, count_content, count_json, count_text, data_url_size

# OpenAI cookbook, num_tokens_from_messages (gpt-3.5-turbo-0613, gpt-4-0613, gpt-4o ...)
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3
TOKENS_PER_TOOL_CALL = 4

# OpenAI cookbook, num_tokens_for_tools (gpt-3.5-turbo / gpt-4 constants)
FUNC_INIT = 10
PROP_INIT = 3
PROP_KEY = 3
ENUM_INIT = -3
ENUM_ITEM = 3
FUNC_END = 12

# OpenAI vision pricing (https://platform.openai.com/docs/guides/vision, "Calculating costs")
IMAGE_LOW_DETAIL = 85
IMAGE_TILE = 170

def image_tokens(width: int | None, height: int | None, detail: str = "auto") -> int:
    """OpenAI's documented tile formula; low detail (or unknown size) is 85."""
    if detail == "low" or not width or not height:
        return IMAGE_LOW_DETAIL
    w, h = float(width), float(height)
    if max(w, h) > 2048:
        s = 2048 / max(w, h)
        w, h = w * s, h * s
    if min(w, h) > 768:
        s = 768 / min(w, h)
        w, h = w * s, h * s
    tiles = math.ceil(w / 512) * math.ceil(h / 512)
    return IMAGE_LOW_DETAIL + IMAGE_TILE * tiles


def part_tokens(part: Any, encoding: str) -> int:
    """Tokens of one content part, of Chat Completions or the Responses API."""
    if isinstance(part, str):
        return count_text(part, encoding)
    if not isinstance(part, dict):
        return count_json(part, encoding)
    ptype = part.get("type")
    if ptype in ("text", "input_text", "output_text", "refusal"):
        text = part.get("text", part.get("refusal", ""))
        return count_text(text, encoding) if isinstance(text, str) else count_json(text, encoding)
    if ptype in ("image_url", "input_image", "image"):
        # chat: {"image_url": {"url", "detail"}}; the Responses API: {"image_url": url, "detail"}
        spec = part.get("image_url", part)
        url = spec.get("url") if isinstance(spec, dict) else spec
        detail = (spec if isinstance(spec, dict) else part).get("detail", "auto")
        size = data_url_size(url)
        if size is None:
            return image_tokens(None, None, "low")
        return image_tokens(size[0], size[1], detail if isinstance(detail, str) else "auto")
    return count_json(part, encoding)


def _content_tokens(content: Any, encoding: str) -> int:
    return count_content(content, encoding, part_tokens)


def _tool_call_tokens(call: Any, encoding: str) -> int:
    if not isinstance(call, dict):
        return TOKENS_PER_TOOL_CALL + count_json(call, encoding)
    fn = call.get("function")
    if isinstance(fn, dict):
        n = TOKENS_PER_TOOL_CALL + count_json(fn.get("name", ""), encoding)
        n += count_json(fn.get("arguments", ""), encoding)
        return n
    # custom tools ({"type": "custom", "custom": {"name", "input"}}) and unknown shapes
    return TOKENS_PER_TOOL_CALL + count_json({k: v for k, v in call.items() if k != "id"}, encoding)


def message_tokens(message: Any, encoding: str = DEFAULT_ENCODING) -> int:
    """Tokens one OpenAI chat message costs (cookbook recipe + tool-call estimate)."""
    if not isinstance(message, dict):
        return TOKENS_PER_MESSAGE + count_json(message, encoding)
    n = TOKENS_PER_MESSAGE
    for key, value in message.items():
        if key == "content":
            n += _content_tokens(value, encoding)
        elif key == "tool_calls":
            if isinstance(value, list):
                n += sum(_tool_call_tokens(c, encoding) for c in value)
            else:
                n += count_json(value, encoding)
        elif key == "function_call":
            n += _tool_call_tokens({"function": value}, encoding)
        elif key == "tool_call_id":
            # ids are not shown to the model as text in a way the recipe covers; the
            # cookbook recipe would count them as a string value, so do that.
            n += count_json(value, encoding)
        elif isinstance(value, str):
            n += count_text(value, encoding)
            if key == "name":
                n += TOKENS_PER_NAME
        elif value is None or isinstance(value, bool):
            continue
        else:
            n += count_json(value, encoding)
    return n


def _tool_function(tool: Any) -> dict | None:
    if not isinstance(tool, dict):
        return None
    fn = tool.get("function") if tool.get("type", "function") == "function" else None
    if fn is None and "name" in tool and "parameters" in tool:
        fn = tool  # legacy `functions` entries
    return fn if isinstance(fn, dict) else None


def tools_tokens(tools: Any, encoding: str = DEFAULT_ENCODING) -> int:
    """Cookbook ``num_tokens_for_tools`` (gpt-3.5-turbo / gpt-4 constants), made total."""
    if not isinstance(tools, list) or not tools:
        return 0 if not tools else count_json(tools, encoding)
    total = 0
    for tool in tools:
        fn = _tool_function(tool)
        if fn is None:
            total += FUNC_INIT + count_json(tool, encoding)
            continue
        total += FUNC_INIT
        name = fn.get("name", "")
        desc = fn.get("description", "") or ""
        if not isinstance(name, str):
            name = compact_json(name)
        if not isinstance(desc, str):
            desc = compact_json(desc)
        if desc.endswith("."):
            desc = desc[:-1]
        total += count_text(name + ":" + desc, encoding)
        params = fn.get("parameters")
        if not isinstance(params, dict):
            total += count_json(params, encoding)
            continue
        props = params.get("properties")
        if isinstance(props, dict) and props:
            total += PROP_INIT
            for key, prop in props.items():
                total += PROP_KEY
                if not isinstance(prop, dict):
                    total += count_text(f"{key}:", encoding) + count_json(prop, encoding)
                    continue
                p_type = prop.get("type", "")
                if not isinstance(p_type, str):
                    p_type = compact_json(p_type)
                p_desc = prop.get("description", "") or ""
                if not isinstance(p_desc, str):
                    p_desc = compact_json(p_desc)
                enum = prop.get("enum")
                if isinstance(enum, list):
                    total += ENUM_INIT
                    for item in enum:
                        total += ENUM_ITEM + count_json(item if isinstance(item, str) else compact_json(item), encoding)
                if p_desc.endswith("."):
                    p_desc = p_desc[:-1]
                total += count_text(f"{key}:{p_type}:{p_desc}", encoding)
                rest = {k: v for k, v in prop.items() if k not in ("type", "description", "enum")}
                if rest:
                    total += count_json(rest, encoding)
        rest = {k: v for k, v in params.items() if k not in ("type", "properties")}
        if rest:
            total += count_json(rest, encoding)
    total += FUNC_END
    return total


def fixed_tokens(body: dict, encoding: str = DEFAULT_ENCODING) -> int:
    """Tokens of an OpenAI request that are not in ``messages``: reply priming + tools."""
    n = REPLY_PRIMING
    if not isinstance(body, dict):
        return n
    n += tools_tokens(body.get("tools"), encoding)
    n += tools_tokens(body.get("functions"), encoding)
    return n
