"""JSON in and out of the proxy.

Parsing refuses what would break later: nesting deeper than MAX_DEPTH (the
rewrite walks bodies recursively) and numbers that are not finite (`1e400`
or `NaN` cannot be written back as JSON).  Writing uses orjson, about ten
times faster than the standard library, which matters when a request carries
a whole conversation; what orjson refuses (lone surrogates, integers beyond
64 bits) takes the standard library with ASCII escapes, so a lone surrogate
goes upstream escaped as the client sent it."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

from .errors import BadRequest

MAX_DEPTH = 128


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text} is out of range")
    return value


def _not_a_number(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


# Bodies larger than this are parsed a piece at a time (see _in_pieces)
PIECES_BYTES = 1024 * 1024
_DECODER = json.JSONDecoder(parse_float=_finite, parse_constant=_not_a_number)
_WS = re.compile(r"[ \t\n\r]*")


def parse_json(raw: bytes) -> Any:
    """A request body as JSON, or a BadRequest saying why not."""
    value = _NOT_PARSED
    if len(raw) > PIECES_BYTES:
        try:
            value = _in_pieces(raw)
        except (RecursionError, ValueError, UnicodeDecodeError):
            value = _NOT_PARSED    # parsed whole below, for the error it gives
    if value is _NOT_PARSED:
        value = _whole(raw)
    # fewer brackets than the limit cannot nest deeper (the common small body: no walk)
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and _depth_exceeds(value, MAX_DEPTH):
        raise BadRequest(f"request body is nested deeper than {MAX_DEPTH} levels")
    return value


_NOT_PARSED = object()


def _whole(raw: bytes) -> Any:
    try:
        # json.loads would build a decoder per call for these hooks
        return _DECODER.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))
    except RecursionError as exc:
        raise BadRequest(f"request body is nested deeper than {MAX_DEPTH} levels") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from exc


# the conversations' lists (chat ``messages``, Responses ``input``): the bulk of a big body
_LISTS_IN_PIECES = frozenset({"messages", "input"})


def _in_pieces(raw: bytes) -> Any:
    """``json.loads(raw)`` for a body that is an object, with each of its
    values, and each item of its ``messages`` or ``input`` list, parsed by a call of its
    own: one call over a 30 MB body holds the GIL for a few hundred ms, and a
    worker thread parsing it would stall the event loop that long.  Raises
    ValueError where the body is anything else (or not JSON)."""
    text = raw.decode(json.detect_encoding(raw), "surrogatepass")
    value, skip = _DECODER.raw_decode, _WS.match
    i = skip(text, 0).end()
    if text[i:i + 1] != "{":
        raise ValueError("not an object")
    i = skip(text, i + 1).end()
    body: dict = {}
    if text[i:i + 1] == "}":
        i += 1
    else:
        while True:
            if text[i:i + 1] != '"':
                raise ValueError("a key expected")
            key, i = value(text, i)
            i = skip(text, i).end()
            if text[i:i + 1] != ":":
                raise ValueError("':' expected")
            i = skip(text, i + 1).end()
            if key in _LISTS_IN_PIECES and text[i:i + 1] == "[":
                body[key], i = _list_in_pieces(text, i)
            else:
                body[key], i = value(text, i)
            i = skip(text, i).end()
            if text[i:i + 1] == ",":
                i = skip(text, i + 1).end()
            elif text[i:i + 1] == "}":
                i += 1
                break
            else:
                raise ValueError("',' or '}' expected")
    if skip(text, i).end() != len(text):
        raise ValueError("extra data")
    return body


def _list_in_pieces(text: str, i: int) -> tuple[list, int]:
    value, skip = _DECODER.raw_decode, _WS.match
    i = skip(text, i + 1).end()
    items: list = []
    if text[i:i + 1] == "]":
        return items, i + 1
    while True:
        item, i = value(text, i)
        items.append(item)
        i = skip(text, i).end()
        if text[i:i + 1] == ",":
            i = skip(text, i + 1).end()
        elif text[i:i + 1] == "]":
            return items, i + 1
        else:
            raise ValueError("',' or ']' expected")


def _depth_exceeds(value: Any, limit: int) -> bool:
    # iterative (a recursive walk would itself hit the interpreter's limit),
    # one level at a time: a list comprehension per level, not a push and pop per node
    level = [value] if isinstance(value, (dict, list)) else []
    depth = 1
    while level:
        if depth > limit:
            return True
        level = [child for node in level for child in (node.values() if isinstance(node, dict) else node)
                 if isinstance(child, (dict, list))]
        depth += 1
    return False


def compact(value: Any) -> bytes:
    """``value`` as compact JSON bytes (UTF-8, keys in their order)."""
    try:
        return orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(value, separators=(",", ":")).encode("ascii")


def compact_or_none(value: Any) -> bytes | None:
    """``value`` as compact JSON bytes by orjson, or None where orjson refuses it
    (``compact`` then takes the standard library, with other escapes)."""
    try:
        return orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        return None


def canonical(value: Any) -> bytes:
    """``value`` as deterministic JSON bytes (sorted keys), for hashing."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"),
                          default=str).encode("utf-8", "surrogatepass")
