"""What the rewrite does to a request, and why, message by message (for the
explain endpoint and `ctxwarden explain`)."""

from __future__ import annotations

from ..dialects import get_dialect
from .conversation import is_recall, rewrite_turn
from .plan import RewritePlan


def explain_turn(body: dict, dialect: str, plan: RewritePlan) -> dict:
    """What the rewrite does to ``body`` (as a conversation seen for the first
    time) and why, message by message, as JSON-serialisable data."""
    outcome = rewrite_turn(body, dialect, plan)
    state = outcome.state
    messages = get_dialect(dialect).conversation(body)
    verbatim = set(range(state.head)) | {x for x in state.items if isinstance(x, int)} if state else set()
    cut = {x[0] for x in state.items if isinstance(x, list)} if state else set()
    rows = []
    for i, wire in enumerate(messages):
        role = wire.get("role", "") if isinstance(wire, dict) else ""
        if state is None or state.note is None:
            action, why = "kept", "nothing had to be compacted"
        elif i < state.head:
            action, why = "kept", "pinned: system prompt or the task statement"
        elif i in cut:
            action, why = "cut", "a long output cut to its head, tail and focus lines to fit the budget"
        elif i in verbatim:
            action, why = "kept", "a recent turn, or the latest message the user wrote"
        elif i < state.covered:
            action, why = "compacted", "older than the low-water mark: a step in the note"
        else:
            action, why = "kept", "new this turn"
        rows.append({"index": i, "role": role, "action": action, "reason": why})
    return {
        "request": outcome.body,
        "decision": outcome.decision,
        "reason": outcome.reason,
        "warning": outcome.warning,
        "changed": outcome.changed,
        "tokens_before": outcome.tokens_before,
        "tokens_after": outcome.tokens_after,
        "cost_sent": round(outcome.cost_sent, 1),
        "cost_passthrough": round(outcome.cost_passthrough, 1),
        "pricing": {"cache": plan.pricing.cache, "read": plan.pricing.read, "write": plan.pricing.write},
        "note": state.note if state else None,
        "recalled": [x["content"] for x in state.items if is_recall(x)] if state else [],
        "cut_outputs": sorted(cut),
        "messages": rows,
    }
