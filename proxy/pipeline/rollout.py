"""Deterministic rollout buckets: the same conversation always lands in the same bucket."""
from __future__ import annotations

import hashlib
import json
from typing import Any


def _canonical(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=str)


def conversation_bucket(body: dict, dialect: str) -> int:
    """A bucket in 0..99 from a stable hash (SHA-256) of the conversation's opening:
    its system prompt and first user message.  Later turns of the same conversation
    keep the same opening, so ``bucket < rollout_percent`` picks whole conversations.
    """
    system: Any = None
    first_user: Any = None
    messages = body.get("messages") if isinstance(body, dict) else None
    if dialect == "anthropic" and isinstance(body, dict):
        system = body.get("system")
    if isinstance(messages, list):
        systems = []
        for m in messages:
            if not isinstance(m, dict):
                continue
            role = m.get("role")
            if dialect != "anthropic" and role in ("system", "developer") and first_user is None:
                systems.append(m.get("content"))
            elif role == "user":
                first_user = m.get("content")
                break
        if dialect != "anthropic":
            system = systems
    digest = hashlib.sha256(_canonical([dialect, system, first_user]).encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % 100
