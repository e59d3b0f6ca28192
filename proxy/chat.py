"""A chat request's rewrite decision: parse, plan, rewrite or pass through.

Pure apart from logging: the gateway calls it, tests call it directly."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .config import Config, TokenManagement
from .dialects import Dialect, get_dialect, request_tokens
from .errors import BadRequest
from .pipeline import ConversationState, RewritePlan, explain_turn, rewrite_turn
from .pipeline.conversation import BELOW_THRESHOLD
from .pipeline.rollout import conversation_bucket
from .pricing import Pricing
from .routing import Router
from .wirejson import compact, parse_json

log = logging.getLogger("ctxwarden.rewrite")

TOKENS_BEFORE = b"x-ctxwarden-tokens-before"
TOKENS_AFTER = b"x-ctxwarden-tokens-after"
REWRITE = b"x-ctxwarden-rewrite"
REASON = b"x-ctxwarden-reason"
COST_SENT = b"x-ctxwarden-cost-sent"
COST_PASSTHROUGH = b"x-ctxwarden-cost-passthrough"
SHADOW_TOKENS_AFTER = b"x-ctxwarden-shadow-tokens-after"
WARNING = b"x-ctxwarden-warning"


@dataclass(frozen=True)
class ChatRequest:
    """A parsed chat request, the bytes to send upstream for it, and what the
    rewrite did (`rewrite`: append, compact, passthrough, unchanged, shadow,
    off, excluded, failed) and why."""

    dialect: str
    body: dict
    content: bytes
    tokens_before: int
    tokens_after: int
    rewrite: str
    reason: str = ""
    shadow_tokens_after: int | None = None
    warning: str | None = None
    # estimated input cost (input-token units, the prompt cache priced in), None when not priced
    cost_sent: float | None = None
    cost_passthrough: float | None = None
    # the conversation's state after this request, to store for the next
    state: ConversationState | None = None

    def headers(self) -> list[tuple[bytes, bytes]]:
        headers = [(TOKENS_BEFORE, str(self.tokens_before).encode()),
                   (TOKENS_AFTER, str(self.tokens_after).encode()),
                   (REWRITE, self.rewrite.encode())]
        if self.reason:
            headers.append((REASON, self.reason.encode("ascii", "replace")))
        if self.cost_sent is not None and self.cost_passthrough is not None:
            headers += [(COST_SENT, f"{self.cost_sent:.0f}".encode()),
                        (COST_PASSTHROUGH, f"{self.cost_passthrough:.0f}".encode())]
        if self.shadow_tokens_after is not None:
            headers.append((SHADOW_TOKENS_AFTER, str(self.shadow_tokens_after).encode()))
        if self.warning:
            headers.append((WARNING, self.warning.encode("ascii", "replace")))
        return headers


def requested_output(body: dict, dialect: str) -> int | None:
    """The output tokens the request asks room for, or None when it names none."""
    output = next((body[f] for f in get_dialect(dialect).output_fields if body.get(f) is not None), None)
    return output if isinstance(output, int) and not isinstance(output, bool) and output >= 0 else None


def budget_for(tokens: TokenManagement, body: dict, dialect: str) -> int:
    """The config's budget, capped by the model's context window less the
    output the request asks for, where the window is known (the config's
    <models>, else the built-in table in proxy/models.py).

    A request that names no output keeps room for the model's max output.  The
    room left is cut by the model's margin (Anthropic: its counts are estimates)."""
    model = body["model"]
    window = tokens.context_window_for(model)
    if not window:
        return tokens.budget
    output = requested_output(body, dialect)
    if output is None:
        output = tokens.max_output_for(model) or 0
    room = int((window - output) * (1 - tokens.margin_for(model, dialect)))
    return max(1, min(tokens.budget, room))


# Plans made, by (settings, model, dialect, output asked for, pricing): a client
# uses a few models, and a plan costs more to make (the model's settings looked
# up by pattern, the plan checked) than the rest of a small request's rewrite.
# Each entry holds its settings and pricing, so their ids in the key stay theirs;
# model names come from clients, so the map is emptied when it is full.  A dict,
# not an LRU: worker threads make plans too, and a dict's get and set are atomic.
_PLANS: dict[tuple, tuple[TokenManagement, Pricing, RewritePlan]] = {}
MAX_PLANS = 512


def rewrite_plan(tokens: TokenManagement, body: dict, pricing: Pricing, dialect: str) -> RewritePlan:
    """The plan for one request: the config's, with the budget of `budget_for`,
    priced as the upstream bills."""
    model = body["model"]
    key = (id(tokens), model, dialect, requested_output(body, dialect), id(pricing))
    known = _PLANS.get(key)
    if known is not None and known[0] is tokens and known[1] is pricing:
        return known[2]
    plan = RewritePlan(
        budget=budget_for(tokens, body, dialect), compression_threshold=tokens.compression_threshold,
        pruning_distance=tokens.pruning_distance, tier_shares=tokens.tier_shares,
        critical_overflow=tokens.critical_overflow, encoding=tokens.encoding_for(model),
        pricing=pricing, low_water=tokens.low_water_for(model),
    )
    if len(_PLANS) >= MAX_PLANS:
        _PLANS.clear()
    _PLANS[key] = (tokens, pricing, plan)
    return plan


def parse_chat_body(raw: bytes, dialect: Dialect) -> dict:
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise BadRequest("'model' is required and must be a non-empty string")
    dialect.check_body(body)
    return body


def rewrite_applies(tokens: TokenManagement, dialect: str, body: dict) -> bool:
    """Whether this conversation goes through the pipeline at all (mode, rollout,
    and the dialect: not when the server holds the conversation)."""
    if tokens.rewrite_mode == "off" or get_dialect(dialect).unmanaged(body):
        return False
    return tokens.rollout_percent >= 100 or conversation_bucket(body, dialect) < tokens.rollout_percent


def manages(tokens: TokenManagement, dialect: str, body: dict, raw: bytes) -> bool:
    """Whether this request's conversation state is worth looking up: it goes
    through the rewrite and may be above the threshold.  A body of no more bytes
    than the threshold has tokens is below it (a token is at least a byte), so
    the common small request costs nothing here."""
    pricing = get_dialect(dialect).default_pricing   # the budget does not depend on it
    return (len(raw) > rewrite_plan(tokens, body, pricing, dialect).threshold_tokens
            and rewrite_applies(tokens, dialect, body))


def prepare_chat(tokens: TokenManagement, dialect: str, raw: bytes, body: dict, pricing: Pricing | None = None,
                 state: ConversationState | None = None, keys: list[str] | None = None) -> ChatRequest:
    """Decide what to send upstream for a parsed chat request: the rewrite, or
    the original bytes (below the threshold, shadow, off, excluded, failed).

    `state`: what was stored for this conversation (see `pipeline.conversation_keys`);
    the result is the same without it, only slower."""
    wire = get_dialect(dialect)
    plan = rewrite_plan(tokens, body, pricing or wire.default_pricing, dialect)
    if not rewrite_applies(tokens, dialect, body):
        count = request_tokens(body, wire, plan.encoding)
        if tokens.rewrite_mode == "off":
            return ChatRequest(dialect, body, raw, count, count, "off")
        reason = wire.unmanaged(body)
        return ChatRequest(dialect, body, raw, count, count, "unchanged" if reason else "excluded", reason)
    if state is None and len(raw) <= plan.threshold_tokens:
        # a small body (a token is at least a byte, give or take the per-message
        # overheads): counted as the provider bills it, it is usually below the
        # threshold, and then that is all the rewrite would have done
        count = request_tokens(body, wire, plan.encoding)
        if count <= plan.threshold_tokens:
            return ChatRequest(dialect, body, raw, count, count, "unchanged", BELOW_THRESHOLD)
    try:
        outcome = rewrite_turn(body, dialect, plan, state, keys)
    except Exception:
        # The rewrite must never cost the client its request.
        log.exception("rewrite failed; sending the request unchanged")
        count = request_tokens(body, get_dialect(dialect), plan.encoding)
        return ChatRequest(dialect, body, raw, count, count, "failed",
                           warning="rewrite failed; request sent unchanged")
    before = outcome.tokens_before
    costs = ({"cost_sent": outcome.cost_sent, "cost_passthrough": outcome.cost_passthrough}
             if outcome.state is not None else {})
    if outcome.warning:
        log.warning("rewrite passed the request through: %s", outcome.warning)
    if tokens.rewrite_mode == "shadow":
        return ChatRequest(dialect, body, raw, before, before, "shadow", outcome.reason,
                           shadow_tokens_after=outcome.tokens_after, warning=outcome.warning)
    if outcome.decision == "refused":
        raise BadRequest(outcome.reason)
    if not outcome.changed:
        return ChatRequest(dialect, body, raw, before, before, outcome.decision, outcome.reason,
                           warning=outcome.warning, state=outcome.state, **costs)
    content = compact(outcome.body)
    return ChatRequest(dialect, outcome.body, content, before, outcome.tokens_after, outcome.decision,
                       outcome.reason, state=outcome.state, **costs)


def explain_request(config: Config, dialect: str, raw: bytes) -> dict:
    """What the rewrite does to a request, priced as the upstream it would go to bills."""
    wire = get_dialect(dialect)
    body = parse_chat_body(raw, wire)
    pricing = Router(config.upstreams).choose(wire.upstream, body["model"]).pricing_for(body["model"])
    return explain_turn(body, dialect, rewrite_plan(config.token_management, body, pricing, dialect))
