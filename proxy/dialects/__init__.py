"""The providers' dialects and how a request finds its own.

A dialect is a module whose names follow :class:`~ctxwarden.dialects.base.Dialect`
(``openai`` for Chat Completions, ``anthropic`` for Messages, ``responses`` for
OpenAI's Responses API, which the ``openai`` dialect's upstreams serve).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import BadRequest
from ..tokens import count_json
from . import anthropic, openai, responses
from .base import Dialect, Message

__all__ = ["DIALECTS", "Dialect", "Message", "chat_dialect", "dialect_for", "dialect_of_body", "get_dialect",
           "request_tokens"]

#: by name; the first is the default.  An upstream (the config's upstream/@dialect) speaks
#: openai or anthropic; a dialect's `upstream` names which serves it
DIALECTS: dict[str, Dialect] = {openai.name: openai, anthropic.name: anthropic, responses.name: responses}
DEFAULT: Dialect = openai
#: request headers that change the answer, in any dialect (part of the response cache key)
ANSWER_HEADERS: frozenset[bytes] = frozenset().union(*(d.answer_headers for d in DIALECTS.values()))


def get_dialect(name: str) -> Dialect:
    """The dialect called ``name`` (a KeyError names the unknown one)."""
    return DIALECTS[name]


def chat_dialect(method: str, path: str) -> Dialect | None:
    """The dialect whose chat endpoint this is, or None (a plain forward)."""
    if method != "POST":
        return None
    return next((d for d in DIALECTS.values() if path == d.chat_path), None)


def dialect_for(path: str, headers: Mapping[str, str]) -> Dialect:
    """The dialect a request speaks: the provider whose endpoint the path is;
    on paths every provider serves (/v1/models ...), the one whose SDK the
    headers show; else the default."""
    for dialect in DIALECTS.values():
        if dialect.owns_path(path):
            return dialect
    return next((d for d in DIALECTS.values() if d.recognises(headers)), DEFAULT)


def dialect_of_body(body: Any) -> Dialect:
    """The dialect a chat body is written in, told by its shape (what only one
    provider's API takes), where no path or header says it.  A BadRequest says
    what was seen when the shape fits more than one dialect, or none."""
    if not isinstance(body, dict):
        raise BadRequest("a chat request body must be a JSON object")
    signs = {d.name: d.body_signs(body) for d in DIALECTS.values()}
    found = [name for name, seen in signs.items() if seen]
    if len(found) == 1:
        return DIALECTS[found[0]]
    if found:
        both = "; ".join(f"{name}: {', '.join(signs[name])}" for name in found)
        raise BadRequest(f"the body has features of more than one dialect ({both})")
    raise BadRequest("nothing in the body tells its dialect: no field, role or content block that only one "
                     "provider's API takes")


def request_tokens(body: Any, dialect: Dialect, encoding: str) -> int:
    """Input tokens of a chat request as the provider bills it.  Never raises
    on odd shapes: what is not a message list is counted as its compact JSON."""
    if not isinstance(body, dict):
        return 0
    n = dialect.fixed_tokens(body, encoding)
    field = body.get(dialect.conversation_field)
    if field is None:
        return n
    messages = dialect.conversation(body)
    if isinstance(messages, list):
        n += sum(dialect.message_tokens(m, encoding) for m in messages)
    else:
        n += count_json(field, encoding)
    return n
