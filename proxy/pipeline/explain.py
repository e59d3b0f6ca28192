"""What the rewrite does to a request, and why, message by message (for the
explain endpoint and `ctxwarden explain`)."""

from __future__ import annotations

from ..dialects import get_dialect
from .conversation import is_recall, message_counts, rewrite_turn
from .plan import RewritePlan

# The tiers of the design, as the rewrite gives them room: what is never
# compacted (system prompt, pinned task, the latest message the user wrote and
# what the next reply answers), the recent turns kept verbatim, what the note
# carries, and what recall brings back.
CRITICAL, IMPORTANT, SUPPORTING, CACHE = "critical", "important", "supporting", "cache"


def explain_turn(body: dict, dialect: str, plan: RewritePlan) -> dict:
    """What the rewrite does to ``body`` (as a conversation seen for the first
    time) and why, message by message, as JSON-serialisable data."""
    outcome = rewrite_turn(body, dialect, plan)
    state = outcome.state
    messages = get_dialect(dialect).conversation(body)
    counts, latest = message_counts(body, dialect, plan)
    system = {id(m) for m in get_dialect(dialect).system_messages(messages)}
    verbatim = set(range(state.head)) | {x for x in state.items if isinstance(x, int)} if state else set()
    cut = {x[0]: t for x, t in zip(state.items, state.item_tokens) if isinstance(x, list)} if state else {}
    # what the next reply answers: the latest message the user wrote, and what came after the last reply
    pending = max((i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "assistant"),
                  default=-1)
    rows = []
    for i, wire in enumerate(messages):
        role = wire.get("role", "") if isinstance(wire, dict) else ""
        after = counts[i]
        if i in cut:
            action, why, after = "cut", "a long output cut to its head, tail and focus lines to fit the budget", cut[i]
        elif state is None or state.note is None:
            action, why = "kept", "nothing had to be compacted"
        elif i < state.head:
            action, why = "kept", "pinned: system prompt or the task statement"
        elif i in verbatim:
            action, why = "kept", "the latest message the user wrote" if i == latest else "a recent turn, kept verbatim"
        elif i < state.covered:
            action, why, after = "compacted", "older than the low-water mark: a step in the note", 0
        else:
            action, why = "kept", "new this turn"
        pinned = id(wire) in system or (state is not None and state.note is not None and i < state.head)
        tier = (SUPPORTING if action == "compacted" else
                CRITICAL if pinned or i == latest or i > pending or action == "cut" else IMPORTANT)
        rows.append({"index": i, "role": role, "tier": tier, "action": action, "reason": why,
                     "tokens_before": counts[i], "tokens_after": after})
    recalled = [(x["content"], t) for x, t in zip(state.items, state.item_tokens) if is_recall(x)] if state else []
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
        "note_tokens": state.note_tokens if state and state.note else 0,
        "recalled": [text for text, _ in recalled],
        "recalled_tokens": sum(t for _, t in recalled),
        "cut_outputs": sorted(cut),
        "messages": rows,
    }
