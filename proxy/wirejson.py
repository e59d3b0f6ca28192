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


def parse_json(raw: bytes) -> Any:
    """A request body as JSON, or a BadRequest saying why not."""
    try:
        value = json.loads(raw, parse_float=_finite, parse_constant=_not_a_number)
    except RecursionError as exc:
        raise BadRequest(f"request body is nested deeper than {MAX_DEPTH} levels") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from exc
    if _depth_exceeds(value, MAX_DEPTH):
        raise BadRequest(f"request body is nested deeper than {MAX_DEPTH} levels")
    return value


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
