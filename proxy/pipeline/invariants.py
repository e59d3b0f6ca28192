"""Checks of the rewrite invariants (used by the property tests and the corpus bench).

``check_outcome(body, dialect, plan, outcome)`` returns a list of violated
invariants (empty when everything holds):

* the result fits the budget, or the request was refused / passed through
  because its critical part alone exceeds it (or it was at/below threshold);
* every top-level field other than ``messages`` is the client's, in order;
* the system prompt (OpenAI system/developer messages, Anthropic ``system``)
  and the latest user message are byte-identical;
* tool calls and results stay paired and roles stay valid for the dialect
  (when the input was valid);
* kept original messages stay in their original order;
* an unchanged outcome returns the very same body object.
"""
from __future__ import annotations

import importlib
import json

from ..tokens import count_request_tokens


def _dumps(value) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=False, separators=(",", ":"))


def _latest_user(messages):
    last = None
    for m in messages:
        if isinstance(m, dict) and m.get("role") == "user":
            last = m
    return last


def check_outcome(body: dict, dialect: str, plan, outcome) -> list:
    problems: list[str] = []
    mod = importlib.import_module(f"proxy.dialects.{dialect}")
    if not outcome.changed:
        if outcome.body is not body:
            problems.append("unchanged outcome is not the input object")
        if (outcome.refused is None and outcome.warning is None
                and outcome.tokens_before > plan.budget):
            problems.append(f"over budget ({outcome.tokens_before} > {plan.budget}) but not rewritten, "
                            "refused or warned")
        if outcome.refused is not None and outcome.critical_tokens <= plan.budget:
            problems.append("refused although the critical part fits")
        return problems

    new = outcome.body
    if outcome.refused is not None:
        problems.append("changed and refused at once")
    if list(new.keys()) != list(body.keys()):
        problems.append("top-level keys changed")
    for key, value in body.items():
        if key != "messages" and new.get(key) is not value:
            problems.append(f"top-level field {key!r} changed")
    actual = count_request_tokens(new, dialect, plan.encoding)
    if actual != outcome.tokens_after:
        problems.append(f"tokens_after {outcome.tokens_after} != recount {actual}")
    if actual > plan.budget:
        problems.append(f"over budget: {actual} > {plan.budget}")
    old_msgs = body["messages"]
    new_msgs = new["messages"]
    # system prompt
    if dialect == "openai":
        old_sys = [_dumps(m) for m in old_msgs if isinstance(m, dict) and m.get("role") in ("system", "developer")]
        new_sys = [_dumps(m) for m in new_msgs if isinstance(m, dict) and m.get("role") in ("system", "developer")]
        if old_sys != new_sys:
            problems.append("system/developer messages changed")
    elif "system" in body and _dumps(new.get("system")) != _dumps(body.get("system")):
        problems.append("system prompt changed")
    # latest user message
    lu_old = _latest_user(old_msgs)
    lu_new = _latest_user(new_msgs)
    if lu_old is not None and (lu_new is None or _dumps(lu_old) != _dumps(lu_new)):
        problems.append("latest user message changed")
    # structure
    if not mod.check_structure(old_msgs):
        for p in mod.check_structure(new_msgs):
            problems.append(f"structure: {p}")
    # order of kept originals
    pos = {id(m): i for i, m in enumerate(old_msgs)}
    last = -1
    for m in new_msgs:
        i = pos.get(id(m))
        if i is not None:
            if i <= last:
                problems.append("kept messages out of order")
                break
            last = i
    # every unknown-shape message kept untouched
    known = getattr(mod, "KNOWN_ROLES", getattr(mod, "ROLES", frozenset()))
    new_ids = {id(m) for m in new_msgs}
    for m in old_msgs:
        if not isinstance(m, dict) or m.get("role") not in known:
            if id(m) not in new_ids:
                problems.append("a message of unknown shape was dropped or edited")
                break
    return problems
