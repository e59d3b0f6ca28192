"""Deterministic rollout buckets: the same conversation always lands in the same bucket."""
from __future__ import annotations

import hashlib
import json
from typing import Any

from ..dialects import get_dialect


def _canonical(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=str)


def conversation_bucket(body: dict, dialect: str) -> int:
    """A bucket in 0..99 from a stable hash (SHA-256) of the conversation's opening:
    its system prompt and first user message.  Later turns of the same conversation
    keep the same opening, so ``bucket < rollout_percent`` picks whole conversations.
    """
    system, first_user = get_dialect(dialect).opening(body) if isinstance(body, dict) else (None, None)
    digest = hashlib.sha256(_canonical([dialect, system, first_user]).encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % 100
