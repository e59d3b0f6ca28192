"""A chat request's rewrite decision: parse, plan, rewrite or pass through.

Pure apart from logging: the gateway calls it, tests call it directly."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from .config import TokenManagement
from .errors import BadRequest
from .pipeline import RewritePlan, checkpoint_key, explain, rewrite_request
from .pipeline.rollout import conversation_bucket
from .prompt_cache import mark_stable_prefix
from .tokens import count_request_tokens

log = logging.getLogger("ctxwarden.rewrite")

TOKENS_BEFORE = b"x-ctxwarden-tokens-before"
TOKENS_AFTER = b"x-ctxwarden-tokens-after"
REWRITE = b"x-ctxwarden-rewrite"
SHADOW_TOKENS_AFTER = b"x-ctxwarden-shadow-tokens-after"
WARNING = b"x-ctxwarden-warning"


@dataclass(frozen=True)
class ChatRequest:
    """A parsed chat request, the bytes to send upstream for it, and what the
    rewrite did (`rewrite`: enforced, shadow, unchanged, off, excluded, failed)."""

    dialect: str
    body: dict
    content: bytes
    tokens_before: int
    tokens_after: int
    rewrite: str
    shadow_tokens_after: int | None = None
    warning: str | None = None
    # The compacted prefix the rewrite used, to store under checkpoint_key.
    compacted: tuple | None = None
    checkpoint_key: str | None = None

    def headers(self) -> list[tuple[bytes, bytes]]:
        headers = [(TOKENS_BEFORE, str(self.tokens_before).encode()),
                   (TOKENS_AFTER, str(self.tokens_after).encode()),
                   (REWRITE, self.rewrite.encode())]
        if self.shadow_tokens_after is not None:
            headers.append((SHADOW_TOKENS_AFTER, str(self.shadow_tokens_after).encode()))
        if self.warning:
            headers.append((WARNING, self.warning.encode("ascii", "replace")))
        return headers


def rewrite_plan(tokens: TokenManagement, body: dict) -> RewritePlan:
    """The plan for one request: the config's, with the budget capped by the
    model's context window less the output it asks for, where both are known."""
    model = body["model"]
    budget = tokens.budget
    window = tokens.context_window_for(model)
    if window:
        output = body.get("max_completion_tokens") or body.get("max_tokens") or 0
        if isinstance(output, int) and not isinstance(output, bool):
            budget = max(1, min(budget, window - output))
    return RewritePlan(
        budget=budget, compression_threshold=tokens.compression_threshold,
        pruning_distance=tokens.pruning_distance, tier_shares=tokens.tier_shares,
        critical_overflow=tokens.critical_overflow, encoding=tokens.encoding_for(model),
        checkpoint_every=tokens.checkpoint_every, checkpoint_target=tokens.checkpoint_target,
    )


def parse_chat_body(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise BadRequest("'model' is required and must be a non-empty string")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' is required and must be a non-empty array")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest(f"messages[{i}] must be an object with a string 'role'")
    return body


def rewrite_applies(tokens: TokenManagement, dialect: str, body: dict) -> bool:
    """Whether this conversation goes through the pipeline at all (mode, rollout)."""
    if tokens.rewrite_mode == "off":
        return False
    return tokens.rollout_percent >= 100 or conversation_bucket(body, dialect) < tokens.rollout_percent


def stored_checkpoint_key(tokens: TokenManagement, dialect: str, body: dict, raw: bytes) -> str | None:
    """The key of the compacted prefix this request can reuse, or None.

    A body of no more bytes than the threshold has tokens is below it (a
    token is at least a byte), so the common small request costs nothing here."""
    plan = rewrite_plan(tokens, body)
    if len(raw) <= plan.threshold_tokens or not rewrite_applies(tokens, dialect, body):
        return None
    return checkpoint_key(body, dialect, plan)


def prepare_chat(tokens: TokenManagement, dialect: str, raw: bytes, body: dict,
                 compacted: list | None = None) -> ChatRequest:
    """Decide what to send upstream for a parsed chat request: the rewrite, or
    the original bytes (below the threshold, shadow, off, excluded, failed).

    `compacted`: a stored compacted prefix for this conversation (see
    `stored_checkpoint_key`); the result is the same without it, only slower."""
    plan = rewrite_plan(tokens, body)
    if not rewrite_applies(tokens, dialect, body):
        count = count_request_tokens(body, dialect, plan.encoding)
        return ChatRequest(dialect, body, raw, count, count,
                           "off" if tokens.rewrite_mode == "off" else "excluded")
    try:
        outcome = rewrite_request(body, dialect, plan, compacted=compacted)
    except Exception:
        # The rewrite must never cost the client its request.
        log.exception("rewrite failed; sending the request unchanged")
        count = count_request_tokens(body, dialect, plan.encoding)
        return ChatRequest(dialect, body, raw, count, count, "failed",
                           warning="rewrite failed; request sent unchanged")
    before = outcome.tokens_before
    if outcome.warning:
        log.warning("rewrite passed the request through: %s", outcome.warning)
    if tokens.rewrite_mode == "shadow":
        return ChatRequest(dialect, body, raw, before, before, "shadow",
                           shadow_tokens_after=outcome.tokens_after, warning=outcome.refused or outcome.warning)
    if outcome.refused:
        raise BadRequest(outcome.refused)
    if not outcome.changed:
        return ChatRequest(dialect, body, raw, before, before, "unchanged", warning=outcome.warning)
    rewritten = outcome.body
    if dialect == "anthropic" and tokens.anthropic_cache_control:
        rewritten = mark_stable_prefix(rewritten, outcome.stable_prefix)
    content = json.dumps(rewritten, ensure_ascii=False, separators=(",", ":")).encode()
    return ChatRequest(dialect, rewritten, content, before, outcome.tokens_after, "enforced",
                       compacted=outcome.compacted, checkpoint_key=outcome.checkpoint_key)


def explain_request(tokens: TokenManagement, dialect: str, raw: bytes) -> dict:
    body = parse_chat_body(raw)
    return explain(body, dialect, rewrite_plan(tokens, body))
