"""Stage 4: enforce the token budget by tier.

Each tier gets its share of ``plan.budget`` (default 20/40/30/10 percent for
critical / important / supporting / cache).  Critical is never cut: what it
uses beyond its share is taken from the last tiers first (cache, supporting,
important); what it leaves unused flows to important, and so on down the
tiers.  Within a tier whole units are kept in priority order (important: the
task statement, then most recent first; supporting: most relevant to the focus
first; cache: most recent first).  A unit that does not fit is first squeezed
harder, then dropped.  Dropping whole units keeps every tool call with its
results.  Finally omission markers are placed where the dialect allows one,
and units are dropped until the assembled request fits.
"""
from __future__ import annotations

import dataclasses
import importlib

from .classify import anchor_unit, focus_terms, relevance
from .compress import compress_message
from .model import MARKER_PREFIX, Message
from .plan import RewritePlan
from .prune import is_dropped

TIER_ORDER = ("important", "supporting", "cache")
RECENCY_DECAY = 0.0   # supporting priority: relevance to the focus, discounted by age in units


def _dialect(name: str):
    return importlib.import_module(f"proxy.dialects.{name}")


def assemble(messages, dialect: str, encoding: str, markers: bool = True) -> list:
    """Kept messages in order, with an omission marker per removed run where the
    dialect allows one (never a user-role note after the latest user message)."""
    from ..tokens import count_message_tokens

    mod = _dialect(dialect)
    latest_user = -1
    for m in messages:
        if m.role == "user" and m.index >= 0 and not is_dropped(m):
            latest_user = m.index
    out: list = []
    gap = 0
    prev_role = None
    past_latest_user = False
    for m in messages:
        if is_dropped(m):
            gap += 1
            continue
        if gap and markers:
            role = mod.marker_role(prev_role, m.role)
            if role is not None and not (role == "user" and past_latest_user):
                text = f"{MARKER_PREFIX} {gap} earlier message{'s' if gap != 1 else ''} omitted]"
                wire = mod.make_marker(text, role)
                out.append(Message(index=-1, role=role, wire=wire, dialect=dialect,
                                   tokens=count_message_tokens(wire, dialect, encoding), text=text,
                                   tier="cache", action="marker"))
        gap = 0
        out.append(m)
        prev_role = m.role
        if m.index == latest_user:
            past_latest_user = True
    return out


def _unit_tokens(msgs) -> int:
    return sum(m.tokens for m in msgs)


def budget(messages: tuple, plan: RewritePlan, fixed_tokens: int = 0, dialect: str = "openai",
           weights: dict | None = None) -> tuple:
    """Drop / squeeze units until every tier is within its share. Returns (messages, report)."""
    B = plan.budget
    if weights is None:
        weights = focus_terms(messages)
    live_positions = [i for i, m in enumerate(messages) if not is_dropped(m)]
    critical = fixed_tokens + sum(messages[i].tokens for i in live_positions if messages[i].tier == "critical")
    report = {"stage": "budget", "critical_tokens": critical}
    if critical > B:
        report["overflow"] = True
        return messages, report

    units: dict[int, list] = {}
    for i in live_positions:
        units.setdefault(messages[i].unit, []).append(i)
    tier_of = {u: messages[pos[0]].tier for u, pos in units.items()}
    shares = plan.share_tokens()
    caps = {"important": shares[1], "supporting": shares[2], "cache": shares[3]}
    carry = shares[0] - critical
    if carry < 0:
        deficit = -carry
        for t in ("cache", "supporting", "important"):
            take = min(caps[t], deficit)
            caps[t] -= take
            deficit -= take
        carry = 0

    anchor = anchor_unit(messages)
    work = list(messages)

    def priority(u: int):
        tier = tier_of[u]
        if tier == "important":
            return (0 if u == anchor else 1, -u)
        if tier == "supporting":
            text = "\n".join(work[i].text for i in units[u])
            return (-relevance(text, weights) / (1.0 + RECENCY_DECAY * (max_unit - u)), -u)
        return (0, -u)

    max_unit = max(units) if units else 0
    kept_units: list[int] = []
    dropped_units: list[int] = []
    used_by_tier = {}
    for tier in TIER_ORDER:
        cap = caps[tier] + carry
        used = 0
        members = sorted((u for u in units if tier_of[u] == tier), key=priority)
        for u in members:
            t = _unit_tokens(work[i] for i in units[u])
            if used + t <= cap:
                used += t
                kept_units.append(u)
                continue
            fitted = False
            for level in ("light", "heavy", "minimal"):
                squeezed = {i: compress_message(work[i], level, weights, plan.encoding) for i in units[u]}
                t2 = _unit_tokens(squeezed.values())
                if t2 < t and used + t2 <= cap:
                    for i, m in squeezed.items():
                        work[i] = m
                    used += t2
                    kept_units.append(u)
                    fitted = True
                    break
            if not fitted:
                dropped_units.append(u)
                for i in units[u]:
                    work[i] = dataclasses.replace(work[i], action="dropped")
        used_by_tier[tier] = used
        carry = cap - used

    # markers cost tokens too: drop lowest-priority units until the whole fits
    drop_order = sorted((u for u in kept_units if tier_of[u] != "critical"),
                        key=lambda u: (TIER_ORDER.index(tier_of[u]), priority(u)), reverse=True)
    while True:
        assembled = assemble(work, dialect, plan.encoding)
        total = fixed_tokens + sum(m.tokens for m in assembled)
        if total <= B or not drop_order:
            break
        u = drop_order.pop(0)
        dropped_units.append(u)
        for i in units[u]:
            work[i] = dataclasses.replace(work[i], action="dropped")
    report.update({"dropped_units": len(dropped_units), "used_by_tier": used_by_tier, "tokens_after": total})
    return tuple(work), report
