"""What a provider's dialect is: every fact of its wire format, in one place;
and the :class:`Message` every dialect parses a wire message into.

A dialect is a module (``dialects/openai``, ``dialects/anthropic``) whose
names match :class:`Dialect`; the registry in ``dialects/__init__`` picks one
by name, by path or by the headers its SDK sends.  Nothing outside
``dialects/`` (and the config, which names them) knows a provider's shapes.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import BadRequest

if TYPE_CHECKING:
    from ..pricing import Pricing

SSEEvent = tuple[str | None, str]   # (event name or None, data)
Path = tuple                        # tuple[str | int, ...]: keys from a wire message to a text leaf


class StreamInvalid(Exception):
    """A stream cannot be turned into an answer (raised inside a dialect's assembly)."""


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON, as streams carry it."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass(frozen=True)
class Message:
    """A wire message as the rewrite sees it.  ``wire`` is the original, so an
    unchanged message is sent as the very same object, byte for byte; what the
    rewrite may edit is ``segments``, (path, text) pairs addressing plain-text
    leaves inside ``wire`` (``("content",)``, ``("content", 2, "text")``)."""

    index: int                      # position in the original list; -1 for inserted markers
    role: str                       # wire role (or "" when unknown)
    wire: Any                       # the wire message (same object when unchanged)
    tokens: int                     # tokens of ``wire`` as billed in its dialect
    text: str = ""                  # text used for scoring (content + tool-call names/args)
    segments: tuple = ()            # ((path, text), ...) editable plain-text leaves
    call_ids: tuple = ()            # tool-call ids this message makes
    result_ids: tuple = ()          # tool-call ids whose results this message carries
    calls: tuple = ()               # the arguments of each call it makes (a string or a JSON value)
    opaque: bool = False            # images/documents/thinking: kept as is, never edited
    unknown: bool = False           # unknown role/shape: critical, never touched


def unknown_message(index: int, wire: Any, tokens: int) -> Message:
    """A message of a shape the dialect does not know: carried as it came and
    never rewritten (its role kept when it names one)."""
    role = wire.get("role") if isinstance(wire, dict) and isinstance(wire.get("role"), str) else ""
    return Message(index=index, role=role, wire=wire, tokens=tokens, unknown=True)


def _set_path(obj: Any, path: Path, value: Any) -> Any:
    if not path:
        return value
    key = path[0]
    if isinstance(obj, dict):
        new = dict(obj)  # keeps key order
    else:
        new = list(obj)
    new[key] = _set_path(obj[key], path[1:], value)
    return new


def with_segments(msg: Message, texts: tuple, count_tokens: Callable[[Any], int]) -> Message:
    """A copy of ``msg`` whose editable segments are replaced by ``texts``,
    recounted with ``count_tokens`` (its dialect's, for one wire message)."""
    if len(texts) != len(msg.segments):
        raise ValueError("segment count mismatch")
    wire = msg.wire
    new_segments = []
    changed = False
    for (path, old), new in zip(msg.segments, texts):
        if new != old:
            wire = _set_path(wire, path, new)
            changed = True
        new_segments.append((path, new))
    if not changed:
        return msg
    return dataclasses.replace(msg, wire=wire, tokens=count_tokens(wire), segments=tuple(new_segments),
                               text="\n".join(t for _, t in new_segments))


# The Dialect functions of the dialects whose conversation is a ``messages`` list.

def check_messages_body(body: dict) -> None:
    """A non-empty ``messages`` array of objects with a string ``role``."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' is required and must be a non-empty array")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest(f"messages[{i}] must be an object with a string 'role'")


def no_reason(body: dict) -> str:
    """The whole conversation is in the request: the rewrite may manage every one."""
    return ""


def messages_of(body: dict) -> list:
    return body["messages"]


def with_messages(body: dict, messages: list) -> dict:
    return {k: (messages if k == "messages" else v) for k, v in body.items()}


class Dialect(Protocol):
    name: str                        # the label in logs and metrics
    upstream: str                    # the config's upstream/@dialect of the upstreams that serve it
    chat_path: str                   # the chat endpoint the rewrite applies to
    conversation_field: str          # the body's field holding the conversation (what the rewrite changes)
    key_fields: tuple[str, ...]      # other fields that tell one conversation from another (with the model)
    output_fields: tuple[str, ...]   # where a request names the output it asks room for, first found wins
    route: str                       # the route label of that endpoint
    sdk_key_env: str                 # where the provider's SDK reads its key
    default_pricing: Pricing         # how the provider bills input with its prompt cache
    hint_fields: frozenset[str]      # top-level fields the cache hints may add
    answer_headers: frozenset[bytes]  # request headers that change the answer (part of the cache key)
    required_headers: tuple[tuple[bytes, bytes], ...]   # what a request must carry (added when absent)
    deferred_answer_fields: tuple[str, ...]   # request flags that, true, keep the answer out of the response

    # --- requests
    def check_body(self, body: dict) -> None:
        """Raise BadRequest when a parsed body (an object with a model) is not a
        well-formed request of this dialect; nothing is sent upstream then."""

    def unmanaged(self, body: dict) -> str:
        """Why the rewrite must leave this request alone ("" when it may rewrite it)."""

    def conversation(self, body: dict) -> list:
        """The message list the rewrite works on (a checked body's)."""

    def with_conversation(self, body: dict, messages: list) -> dict:
        """``body`` carrying ``messages`` instead of its own conversation, every other field as it was."""

    def owns_path(self, path: str) -> bool:
        """The path is one of this provider's own endpoints."""

    def recognises(self, headers: Mapping[str, str]) -> bool:
        """The headers are what this provider's SDK sends on any path."""

    def body_signs(self, body: dict) -> list[str]:
        """What in a chat body only this provider's API takes, in words (empty:
        nothing); for telling a body's dialect when no path or header says it."""

    def parse_message(self, index: int, wire: Any, encoding: str, tokens: int | None = None) -> Message:
        """One wire message as the rewrite sees it (never raises); ``tokens``: its
        count where already known (else counted)."""

    def check_structure(self, messages: Any) -> list[str]:
        """Problems with role order and tool-call pairing (empty: valid)."""

    def join_turns(self, messages: list, ours: set[int]) -> list:
        """The message list with ctxwarden's own messages (positions in ``ours``) placed
        where the dialect allows them."""

    def note_message(self, text: str) -> dict:
        """A message of ctxwarden's own (a note, a recall) carrying ``text``."""

    def system_messages(self, messages: list) -> list:
        """The system prompt's messages inside the message list (never changed)."""

    def opening(self, body: dict) -> tuple[Any, Any]:
        """The conversation's system prompt and first user message, as sent."""

    def latest_user_kept(self, original: list, sent: list) -> bool:
        """What the user last wrote reached ``sent`` unchanged."""

    def message_tokens(self, message: Any, encoding: str) -> int:
        """Tokens the provider bills for one message."""

    def fixed_tokens(self, body: dict, encoding: str) -> int:
        """Tokens the provider bills outside the message list."""

    def cache_hints(self, body: dict, pricing: Pricing, stable_messages: int, conversation: str) -> dict:
        """``body`` with the prompt-cache hints its pricing asks for."""

    def credential_headers(self, api_key: str) -> list[tuple[bytes, bytes]]:
        """How a request presents ``api_key``."""

    # --- answers
    def error_body(self, status: int, message: str) -> dict:
        """The provider's error object for an HTTP status."""

    def stream_error_event(self, message: str) -> bytes:
        """The SSE event that ends a stream the upstream broke off."""

    def assemble_stream(self, events: Iterable[SSEEvent]) -> dict | None:
        """The complete answer a finished stream adds up to, or None."""

    def replay_stream(self, answer: dict, include_usage: bool = False) -> list[bytes]:
        """The events of a live stream of a stored complete answer."""

    def answer_text(self, body: Any) -> str:
        """The text of a complete answer (``""`` when it has none, e.g. only tool calls)."""
