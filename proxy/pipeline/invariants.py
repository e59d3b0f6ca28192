"""The one checker of the rewrite's invariants, run on every rewrite.

``check_turn(body, sent, dialect, plan, tokens_after)`` lists what the body to
send breaks (empty when everything holds):

* it fits the budget (recounted, not trusted);
* every top-level field but ``messages`` (and the cache hints ctxwarden may
  add: ``prompt_cache_key``) is the client's, in its order;
* the system prompt (OpenAI system/developer messages, Anthropic ``system``)
  is byte-identical, and so is the latest message the user wrote (in the
  Anthropic dialect: its blocks other than tool results, which may share the
  turn with a ctxwarden note since that dialect's turns alternate);
* roles and tool-call pairing are valid for the dialect.
"""

from __future__ import annotations

import json
from typing import Any

from ..tokens import count_request_tokens

HINT_FIELDS = frozenset({"prompt_cache_key"})


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _blocks(content: Any) -> list:
    """Content as a list of blocks, without cache markers (which move between turns)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        return []
    return [{k: v for k, v in b.items() if k != "cache_control"} if isinstance(b, dict) else b for b in content]


def _words(content: Any) -> list:
    return [b for b in _blocks(content) if not (isinstance(b, dict) and b.get("type") == "tool_result")]


def _is_user_text(message: Any) -> bool:
    if not isinstance(message, dict) or message.get("role") != "user":
        return False
    content = message.get("content")
    return not (isinstance(content, list) and content and all(
        isinstance(b, dict) and b.get("type") == "tool_result" for b in content))


def _latest_user_kept(original: list, sent: list, dialect: str) -> bool:
    latest = next((m for m in reversed(original) if _is_user_text(m)), None)
    if latest is None:
        return True
    if dialect != "anthropic":
        return any(m is latest or _dumps(m) == _dumps(latest) for m in sent)
    # tool results in the user's turn may be cut to fit; what the user wrote may not
    wanted = _words(latest.get("content"))
    for message in sent:
        if isinstance(message, dict) and message.get("role") == "user":
            have = _words(message.get("content"))
            for start in range(len(have) - len(wanted) + 1):
                if have[start:start + len(wanted)] == wanted:
                    return True
    return False


def check_turn(body: dict, sent: dict, dialect: str, plan, tokens_after: int | None = None) -> list[str]:
    from ..dialects import anthropic, openai

    problems: list[str] = []
    if sent is body:
        return problems
    mod = anthropic if dialect == "anthropic" else openai
    if [k for k in sent if k not in HINT_FIELDS or k in body] != list(body):
        problems.append("top-level fields changed")
    for key, value in body.items():
        if key != "messages" and sent.get(key) is not value:
            problems.append(f"top-level field {key!r} changed")
    actual = count_request_tokens(sent, dialect, plan.encoding)
    if actual > plan.budget:
        problems.append(f"over the budget: {actual} > {plan.budget} tokens")
    if tokens_after is not None and tokens_after < actual:
        problems.append(f"counted {tokens_after} tokens, the body has {actual}")
    original, messages = body["messages"], sent["messages"]
    if dialect == "openai":
        system = [m for m in original if isinstance(m, dict) and m.get("role") in ("system", "developer")]
        kept = [m for m in messages if isinstance(m, dict) and m.get("role") in ("system", "developer")]
        if [_dumps(m) for m in system] != [_dumps(m) for m in kept]:
            problems.append("the system messages changed")
    if not _latest_user_kept(original, messages, dialect):
        problems.append("the latest user message changed")
    problems.extend(f"structure: {p}" for p in mod.check_structure(messages))
    return problems
