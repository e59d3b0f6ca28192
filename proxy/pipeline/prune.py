"""Stage 2: prune by focus distance on the hop graph.

Nodes are units (an assistant message with the results/user messages that
follow it).  Consecutive units are one hop apart; units that share a salient
identifier (file path, dotted/snake/camel name, error code, URL, long number)
are one hop apart too, through an inverted index (identifier -> units), so the
graph costs O(total identifiers), never a pairwise comparison.  Identifiers that
appear in too many units are not salient and make no edges.
"""
from __future__ import annotations

import dataclasses
from collections import deque
from functools import lru_cache

from .model import Message, cached_terms, is_salient
from .plan import RewritePlan


@lru_cache(maxsize=8192)
def _salient_terms(text: str) -> tuple:
    return tuple(t for t in cached_terms(text) if is_salient(t))


def unit_terms(messages) -> dict:
    """unit -> tuple of salient terms (first-seen order, deterministic)."""
    out: dict[int, dict] = {}
    for m in messages:
        if m.unit < 0:
            continue
        bucket = out.setdefault(m.unit, {})
        for t in _salient_terms(m.text):
            bucket[t] = None
    return {u: tuple(d) for u, d in out.items()}


def hop_distances(messages, focus_units, max_df_share: float = 0.2, terms: dict | None = None) -> dict:
    """BFS distance (in hops) from any focus unit to every unit.

    ``terms``: unit -> salient terms, when the caller already has them (else :func:`unit_terms`)."""
    if terms is None:
        terms = unit_terms(messages)
    units = sorted({m.unit for m in messages if m.unit >= 0})
    if not units:
        return {}
    index: dict[str, list] = {}
    for u in units:
        for t in terms.get(u, ()):
            index.setdefault(t, []).append(u)
    max_df = max(2, int(max_df_share * len(units)))
    first, last = units[0], units[-1]
    dist: dict[int, int] = {}
    queue: deque = deque()
    for u in sorted(set(focus_units)):
        dist[u] = 0
        queue.append(u)
    expanded: set = set()
    while queue:
        u = queue.popleft()
        d = dist[u] + 1
        neighbours = []
        if u - 1 >= first:
            neighbours.append(u - 1)
        if u + 1 <= last:
            neighbours.append(u + 1)
        for t in terms.get(u, ()):
            if t in expanded:
                continue
            expanded.add(t)
            posting = index[t]
            if 2 <= len(posting) <= max_df:
                neighbours.extend(posting)
        for v in neighbours:
            if v not in dist:
                dist[v] = d
                queue.append(v)
    return dist


def prune(messages: tuple, plan: RewritePlan) -> tuple:
    """Drop every non-critical unit more than ``plan.pruning_distance`` hops from the focus.

    Expects ``tier`` and ``hops`` set by :func:`classify.classify`. Returns
    (messages, report); dropped messages stay in the tuple with action "pruned".
    """
    out = []
    pruned = 0
    saved = 0
    for m in messages:
        if (m.tier not in ("critical",) and m.action != "pruned"
                and (m.hops is None or m.hops > plan.pruning_distance)):
            out.append(dataclasses.replace(m, action="pruned"))
            pruned += 1
            saved += m.tokens
        else:
            out.append(m)
    return tuple(out), {"stage": "prune", "pruned_messages": pruned, "pruned_tokens": saved}


def is_dropped(m: Message) -> bool:
    return m.action in ("pruned", "dropped")
