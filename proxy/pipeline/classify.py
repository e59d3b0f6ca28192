"""Stage 1: classify every message into a tier.

critical    system/developer messages, messages of unknown shape, the unit
            holding the latest user message, and the last unit (the pending
            tool call and its results, or the turn being answered);
important   units within ``pruning_distance`` consecutive turns of a focus unit,
            and the opening user message (it states the task);
supporting  older units still within ``pruning_distance`` hops on the hop graph;
cache       ctxwarden's own notes (omission markers, compacted summaries).

Tiers are per unit, so a tool call and its results always share one.
"""
from __future__ import annotations

import dataclasses
import math

from .model import MARKER_PREFIX, cached_terms
from .plan import RewritePlan
from .prune import hop_distances


def latest_user_index(messages) -> int:
    idx = -1
    for m in messages:
        if m.role == "user" and m.index >= 0:
            idx = m.index
    return idx


def focus_units(messages) -> tuple:
    """Units of the latest user message and of the last unit."""
    units = [m.unit for m in messages if m.unit >= 0]
    if not units:
        return ()
    focus = {max(units)}
    lu = latest_user_index(messages)
    for m in messages:
        if m.index == lu and lu >= 0:
            focus.add(m.unit)
    return tuple(sorted(focus))


def anchor_unit(messages) -> int:
    """The unit of the opening user message (the task statement), or -1."""
    for m in messages:
        if m.role == "user" and m.index >= 0:
            return m.unit
    return -1


def classify(messages: tuple, plan: RewritePlan, hops: bool = True) -> tuple:
    """Set ``tier`` and ``hops`` on every message. Returns (messages, report).

    ``hops=False`` skips the hop graph (tiers do not depend on it; ``hops`` stays None)."""
    if not messages:
        return messages, {"stage": "classify"}
    focus = focus_units(messages)
    critical_units = set(focus)
    by_unit: dict[int, list] = {}
    for m in messages:
        by_unit.setdefault(m.unit, []).append(m)
        if m.is_system or m.unknown:
            critical_units.add(m.unit)
    dist = hop_distances(messages, focus) if hops else {}
    anchor = anchor_unit(messages)
    units_sorted = sorted(by_unit)
    order = {u: i for i, u in enumerate(units_sorted)}
    focus_pos = [order[u] for u in focus]
    out = []
    counts = {"critical": 0, "important": 0, "supporting": 0, "cache": 0}
    for m in messages:
        u = m.unit
        if u in critical_units:
            tier = "critical"
        elif all(x.text.startswith(MARKER_PREFIX) for x in by_unit[u]):
            tier = "cache"
        elif u == anchor or min(abs(order[u] - p) for p in focus_pos) <= plan.pruning_distance:
            tier = "important"
        else:
            tier = "supporting"
        counts[tier] += 1
        out.append(dataclasses.replace(m, tier=tier, hops=dist.get(u)))
    return tuple(out), {"stage": "classify", "messages_per_tier": counts}


_terms = cached_terms


def document_frequencies(messages) -> tuple[dict, int]:
    """term -> number of units it occurs in; and the number of units."""
    per_unit: dict[int, set] = {}
    for m in messages:
        per_unit.setdefault(m.unit, set()).update(_terms(m.text))
    df: dict[str, int] = {}
    for terms in per_unit.values():
        for t in terms:
            df[t] = df.get(t, 0) + 1
    return df, len(per_unit)


def focus_terms(messages) -> dict:
    """Weighted terms of the focus (critical non-system units and important units).

    weight = idf over units, so words everywhere weigh ~0 and rare identifiers
    of the current task weigh most.  Deterministic: built in message order.
    """
    df, n_units = document_frequencies(messages)
    weights: dict[str, float] = {}
    for m in messages:
        if m.is_system or m.unknown:
            continue
        if m.tier in ("critical", "important"):
            for t in _terms(m.text):
                if t not in weights:
                    w = math.log((1 + n_units) / (1 + df.get(t, 1)))
                    if w > 0.05:
                        weights[t] = w
    return weights


def relevance(text: str, weights: dict) -> float:
    """Sum of focus weights of the distinct terms in ``text``."""
    if not weights or not text:
        return 0.0
    return sum(weights.get(t, 0.0) for t in _terms(text))
