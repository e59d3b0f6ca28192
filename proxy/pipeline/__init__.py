"""The rewrite pipeline: count -> classify -> checkpoint (or prune -> compress -> budget).

Public entry points::

    rewrite_request(body, dialect, plan, *, compacted=None) -> RewriteOutcome
    checkpoint_key(body, dialect, plan) -> str | None
    explain(body, dialect, plan) -> dict        (JSON-serialisable)

Above the threshold a request is first rewritten on the stable-prefix
checkpoint path (:mod:`proxy.pipeline.checkpoint`): the old part before the
last checkpoint boundary is replaced by its compaction (a pure function of the
old part, cacheable under ``checkpoint_key``), the tail after it only gets
focus-independent compression, so the rewrite of the next turn starts with the
same bytes.  When that does not fit the budget (or no checkpoint applies) the
full pipeline (prune -> compress -> budget) runs instead.

Every stage is a pure function ``(messages, plan) -> (messages, report)`` over
the internal model (:mod:`proxy.pipeline.model`); nothing here does I/O.
The outcome is checked against the invariants before it is returned; a
rewrite that would break one is replaced by the unchanged request plus a
``warning``.
"""
from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass
from ..tokens import count_request_tokens
from .budget import assemble, budget
from .checkpoint import compact, compress_tail, count_wire, find_split, split_key
from .classify import classify, focus_terms
from .compress import compress
from .plan import RewritePlan
from .prune import prune

__all__ = ["RewritePlan", "RewriteOutcome", "MessageReport", "rewrite_request", "checkpoint_key", "explain",
           "DIALECTS"]

DIALECTS = ("openai", "anthropic")


@dataclass(frozen=True)
class MessageReport:
    index: int              # position in the original message list; -1 for an inserted marker
    role: str
    tier: str               # critical | important | supporting | cache ("" when not classified)
    hops: int | None        # hop distance from the focus (None: unreachable / not computed)
    action: str             # kept | compressed | truncated | deduplicated | pruned | dropped | compacted | marker
    tokens_before: int
    tokens_after: int


@dataclass(frozen=True)
class RewriteOutcome:
    body: dict
    changed: bool
    tokens_before: int
    tokens_after: int
    critical_tokens: int
    refused: str | None = None
    warning: str | None = None
    report: tuple = ()
    # stable-prefix checkpoint (None / 0 when the request did not take the checkpoint path)
    compacted: tuple | None = None      # the compacted old part (wire messages), cacheable under checkpoint_key
    checkpoint_key: str | None = None   # sha256 of the old part's original messages + plan figures
    stable_prefix: int = 0              # leading messages of body["messages"] that are the compacted old part


def _dialect_module(dialect: str):
    if dialect not in DIALECTS:
        raise ValueError(f"unknown dialect {dialect!r}; expected one of {DIALECTS}")
    return importlib.import_module(f"proxy.dialects.{dialect}")


def _report(messages, out_messages) -> tuple:
    rows = []
    by_index = {m.index: m for m in out_messages if m.index >= 0}
    for m in messages:
        final = by_index.get(m.index)
        action = m.action
        after = final.tokens if final is not None else 0
        if final is None and action not in ("pruned", "dropped"):
            action = "dropped"
        rows.append(MessageReport(index=m.index, role=m.role, tier=m.tier, hops=m.hops, action=action,
                                  tokens_before=m.tokens_before, tokens_after=after))
    for m in out_messages:
        if m.index < 0:
            rows.append(MessageReport(index=-1, role=m.role, tier=m.tier, hops=None, action="marker",
                                      tokens_before=0, tokens_after=m.tokens))
    return tuple(rows)


def _unchanged(body, tokens_before, critical=0, refused=None, warning=None, report=()) -> RewriteOutcome:
    return RewriteOutcome(body=body, changed=False, tokens_before=tokens_before, tokens_after=tokens_before,
                          critical_tokens=critical, refused=refused, warning=warning, report=report)


def rewrite_request(body: dict, dialect: str, plan: RewritePlan, *, force: bool = False,
                    compacted: list | tuple | None = None) -> RewriteOutcome:
    """Rewrite a chat request body to fit ``plan.budget``.

    ``dialect`` is "openai" or "anthropic".  Requests at or below
    ``plan.compression_threshold * plan.budget`` tokens come back unchanged
    (the same ``body`` object, ``changed=False``) unless ``force`` is set.
    Never raises on odd message shapes: a body the pipeline cannot handle is
    returned unchanged with a ``warning``.

    ``compacted``: the ``outcome.compacted`` of an earlier request with the same
    ``checkpoint_key`` (from a memory or Redis store); it is used instead of
    recomputing the compaction.  The result is the same either way.
    """
    mod = _dialect_module(dialect)
    tokens_before = count_request_tokens(body, dialect, plan.encoding)
    if tokens_before <= plan.threshold_tokens and not force:
        return _unchanged(body, tokens_before)
    try:
        conv = mod.to_conversation(body, plan.encoding)
    except ValueError as exc:
        return _unchanged(body, tokens_before, warning=f"not rewritten: {exc}")

    messages, _ = classify(conv.messages, plan, hops=False)
    critical = conv.fixed_tokens + sum(m.tokens for m in messages if m.tier == "critical")
    if critical > plan.budget:
        reason = (f"the critical part of this request (system prompt, tool definitions, latest user turn "
                  f"and pending tool calls/results) needs {critical} tokens, more than the budget of "
                  f"{plan.budget} tokens")
        report = _report(messages, messages)
        if plan.critical_overflow == "reject":
            return _unchanged(body, tokens_before, critical, refused=reason, report=report)
        return _unchanged(body, tokens_before, critical, warning=f"passed through unchanged: {reason}",
                          report=report)

    cp = _checkpoint_rewrite(body, dialect, plan, conv, messages, mod, tokens_before, critical, compacted)
    if cp is not None:
        return cp
    messages, _ = classify(conv.messages, plan)   # with hop distances, for pruning

    if conv.structure_ok:
        messages, _ = prune(messages, plan)
    weights = focus_terms(messages)
    messages, _ = compress(messages, plan, weights)
    if conv.structure_ok:
        messages, _ = budget(messages, plan, conv.fixed_tokens, dialect, weights)
    out = assemble(messages, dialect, plan.encoding)
    tokens_after = conv.fixed_tokens + sum(m.tokens for m in out)
    if tokens_after > plan.budget:
        out = assemble(messages, dialect, plan.encoding, markers=False)
        tokens_after = conv.fixed_tokens + sum(m.tokens for m in out)
    report = _report(messages, out)

    original = body["messages"]
    unchanged = len(out) == len(original) and all(m.wire is w for m, w in zip(out, original))
    if unchanged and tokens_before <= plan.budget:
        return _unchanged(body, tokens_before, critical, report=report)
    if unchanged or tokens_after > plan.budget:
        if not conv.structure_ok:
            return _unchanged(body, tokens_before, critical, report=report,
                              warning=(f"passed through unchanged: its message order / tool-call pairing is not "
                                       f"valid for the {dialect} dialect, so no message could be dropped, and "
                                       f"compression alone leaves {tokens_after} tokens (budget {plan.budget})"))
        return _unchanged(body, tokens_before, critical, report=report,
                          warning=(f"passed through unchanged: could not bring the request under the budget "
                                   f"of {plan.budget} tokens without touching its critical part "
                                   f"({tokens_after} tokens after rewriting)"))
    new_body = mod.render(body, out)
    problems = _post_check(body, new_body, conv, mod)
    if problems:
        return _unchanged(body, tokens_before, critical, report=report,
                          warning="passed through unchanged: rewrite would break " + "; ".join(problems[:3]))
    return RewriteOutcome(body=new_body, changed=True, tokens_before=tokens_before, tokens_after=tokens_after,
                          critical_tokens=critical, report=report)


def _usable_compacted(compacted, old_wire: list):
    """A caller-supplied compacted old part as a tuple of wire messages, with messages
    equal to an original old message replaced by that very object; None if unusable."""
    if not isinstance(compacted, (list, tuple)) or not compacted:
        return None
    out = []
    for c in compacted:
        if not isinstance(c, dict) or not isinstance(c.get("role"), str):
            return None
        same = next((w for w in old_wire if w is c or w == c), None)
        out.append(same if same is not None else c)
    return tuple(out)


def checkpoint_key(body: dict, dialect: str, plan: RewritePlan) -> str | None:
    """The key the compacted old part of this request is stored under, or None when the
    request does not take the checkpoint path (below the threshold, no boundary yet,
    invalid structure).  Pure: sha256 over the old part's original messages (canonical
    JSON) and the plan figures the compaction depends on."""
    mod = _dialect_module(dialect)
    tokens_before = count_request_tokens(body, dialect, plan.encoding)
    if tokens_before <= plan.threshold_tokens:
        return None
    try:
        conv = mod.to_conversation(body, plan.encoding)
    except ValueError:
        return None
    split = find_split(conv, plan)
    return None if split is None else split_key(body, dialect, plan, split)


def _checkpoint_rewrite(body, dialect, plan, conv, messages, mod, tokens_before, critical, compacted):
    """The checkpoint path, or None when it does not apply / does not fit (full pipeline then)."""
    split = find_split(conv, plan)
    if split is None:
        return None
    key = split_key(body, dialect, plan, split)
    b = split.boundary
    old = conv.messages[:b]
    original = body["messages"]
    comp = _usable_compacted(compacted, original[:b]) if compacted is not None else None
    if comp is None:
        comp = compact(old, dialect, plan, split.latest_user_in_old)
    tail_in = messages[b:]
    critical_units = {m.unit for m in tail_in if m.tier == "critical"}
    tail = compress_tail(tail_in, critical_units, plan)
    comp_tokens = count_wire(comp, dialect, plan.encoding)
    tokens_after = conv.fixed_tokens + comp_tokens + sum(m.tokens for m in tail)
    if tokens_after > plan.budget:
        return None
    new_messages = list(comp) + [m.wire for m in tail]
    new_body = {k: (new_messages if k == "messages" else v) for k, v in body.items()}
    problems = _post_check(body, new_body, conv, mod)
    if problems:
        if compacted is not None:   # a stale or foreign stored compaction: recompute it
            return _checkpoint_rewrite(body, dialect, plan, conv, messages, mod, tokens_before, critical, None)
        return None
    # report: old messages compacted (pinned ones kept as they are), the note as a marker, then the tail
    comp_ids = {id(w) for w in comp}
    rows = []
    for m in messages[:b]:
        kept = id(m.wire) in comp_ids
        rows.append(MessageReport(index=m.index, role=m.role, tier=m.tier, hops=m.hops,
                                  action="kept" if kept else "compacted", tokens_before=m.tokens_before,
                                  tokens_after=m.tokens if kept else 0))
    for w in comp:
        if id(w) not in {id(x) for x in original[:b]}:
            rows.append(MessageReport(index=-1, role=w.get("role", ""), tier="cache", hops=None, action="marker",
                                      tokens_before=0,
                                      tokens_after=count_wire((w,), dialect, plan.encoding)))
    for m in tail:
        rows.append(MessageReport(index=m.index, role=m.role, tier=m.tier, hops=m.hops, action=m.action,
                                  tokens_before=m.tokens_before, tokens_after=m.tokens))
    return RewriteOutcome(body=new_body, changed=True, tokens_before=tokens_before, tokens_after=tokens_after,
                          critical_tokens=critical, report=tuple(rows), compacted=tuple(comp),
                          checkpoint_key=key, stable_prefix=len(comp))


def _post_check(body: dict, new_body: dict, conv, mod) -> list:
    problems = []
    if conv.structure_ok:
        problems.extend(mod.check_structure(new_body["messages"]))
    lu = conv.latest_user
    if lu >= 0:
        original = body["messages"][lu]
        last = None
        for w in new_body["messages"]:
            if isinstance(w, dict) and w.get("role") == "user":
                last = w
        if last is not original:
            problems.append("the latest user message")
    return problems


def explain(body: dict, dialect: str, plan: RewritePlan) -> dict:
    """What the pipeline does to ``body``, as a JSON-serialisable dict."""
    outcome = rewrite_request(body, dialect, plan)
    report = outcome.report
    if not report:
        try:
            conv = _dialect_module(dialect).to_conversation(body, plan.encoding)
            messages, _ = classify(conv.messages, plan)
            report = _report(messages, messages)
        except ValueError:
            report = ()
    return {
        "request": outcome.body,
        "tokens_before": outcome.tokens_before,
        "tokens_after": outcome.tokens_after,
        "critical_tokens": outcome.critical_tokens,
        "changed": outcome.changed,
        "refused": outcome.refused,
        "warning": outcome.warning,
        "messages": [asdict(r) for r in report],
    }
