"""The rewrite pipeline: count -> classify -> prune -> compress -> budget.

Public entry points::

    rewrite_request(body, dialect, plan) -> RewriteOutcome
    explain(body, dialect, plan) -> dict        (JSON-serialisable)

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
from .classify import classify, focus_terms
from .compress import compress
from .plan import RewritePlan
from .prune import prune

__all__ = ["RewritePlan", "RewriteOutcome", "MessageReport", "rewrite_request", "explain", "DIALECTS"]

DIALECTS = ("openai", "anthropic")


@dataclass(frozen=True)
class MessageReport:
    index: int              # position in the original message list; -1 for an inserted marker
    role: str
    tier: str               # critical | important | supporting | cache ("" when not classified)
    hops: int | None        # hop distance from the focus (None: unreachable / not computed)
    action: str             # kept | compressed | truncated | deduplicated | pruned | dropped | marker
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


def rewrite_request(body: dict, dialect: str, plan: RewritePlan, *, force: bool = False) -> RewriteOutcome:
    """Rewrite a chat request body to fit ``plan.budget``.

    ``dialect`` is "openai" or "anthropic".  Requests at or below
    ``plan.compression_threshold * plan.budget`` tokens come back unchanged
    (the same ``body`` object, ``changed=False``) unless ``force`` is set.
    Never raises on odd message shapes: a body the pipeline cannot handle is
    returned unchanged with a ``warning``.
    """
    mod = _dialect_module(dialect)
    tokens_before = count_request_tokens(body, dialect, plan.encoding)
    if tokens_before <= plan.threshold_tokens and not force:
        return _unchanged(body, tokens_before)
    try:
        conv = mod.to_conversation(body, plan.encoding)
    except ValueError as exc:
        return _unchanged(body, tokens_before, warning=f"not rewritten: {exc}")

    messages, _ = classify(conv.messages, plan)
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
