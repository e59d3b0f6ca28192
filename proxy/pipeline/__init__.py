"""The rewrite: pure functions over a conversation, no I/O.

Public entry points::

    conversation_keys(body, dialect) -> list[str]
    rewrite_turn(body, dialect, plan, state=None, keys=None) -> TurnOutcome
    explain_turn(body, dialect, plan) -> dict        (JSON-serialisable)

See :mod:`ctxwarden.pipeline.conversation` for how a conversation is appended to,
compacted when the budget forces it (priced against the provider's prompt
cache), and recalled from.
"""
from __future__ import annotations

from .conversation import rewrite_turn
from .state import ConversationState, TurnOutcome, conversation_keys
from .explain import explain_turn
from .plan import RewritePlan

__all__ = ["RewritePlan", "ConversationState", "TurnOutcome", "conversation_keys", "rewrite_turn",
           "explain_turn"]
