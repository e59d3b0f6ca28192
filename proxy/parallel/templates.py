"""Placeholders: ``{{ID}}`` in a task's conversation, filled with task ID's answer.

Substitution happens in the request's conversation only: ``messages`` (Chat
Completions, Anthropic Messages) or ``input`` (Responses):

* ``input`` itself when it is a string;
* a message's ``content`` when it is a string;
* the ``text`` of every text part in a ``content`` list (``text``, and the
  Responses API's ``input_text`` and ``output_text``), including the parts
  (or string ``content``) of Anthropic ``tool_result`` blocks and the
  ``output`` of Responses ``function_call_output`` items.

Nothing else is touched: not roles, names, tool calls, image blocks, the
Anthropic top-level ``system`` field, the Responses ``instructions`` nor any
other request field.

Syntax, scanned left to right in one pass (inserted answers are never
re-scanned):

* ``{{ID}}`` with ``ID`` one or more characters that are not whitespace, ``{``
  or ``}`` is a placeholder;
* ``{{{{`` is a literal ``{{``, so ``{{{{name}}`` yields the text ``{{name}}``;
* anything else stays as written, in particular ``{{ name }}`` (spaces inside)
  and a lone ``{{`` or ``}}``, so most template snippets (Jinja, Handlebars)
  need no escaping.

The size of a filled request is computed from the template and the answers'
sizes (:func:`filled_size`), so an answer inserted many times is refused
before a huge body is ever built.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

# one pass: an escaped '{{' or a placeholder; anything else is literal
_TOKEN_RE = re.compile(r"\{\{\{\{|\{\{([^\s{}]+)\}\}")


@dataclass(frozen=True)
class Template:
    """What filling a request's messages involves, found once at parse time."""

    #: (id, occurrences) of every placeholder, in order of first appearance
    counts: tuple[tuple[str, int], ...] = ()
    #: how many '{{{{' escapes there are (each becomes '{{')
    escapes: int = 0
    #: the request field holding the conversation (the dialect's)
    field: str = "messages"

    @property
    def names(self) -> frozenset[str]:
        return frozenset(name for name, _ in self.counts)

    @property
    def templated(self) -> bool:
        """Whether filling changes anything (else the request is sent as it is)."""
        return bool(self.counts) or self.escapes > 0


def scan(conversation: Any, field: str = "messages") -> Template:
    """The placeholders and escapes of a request's ``conversation``, the value
    of its ``field`` (see the module doc)."""
    counts: dict[str, int] = {}
    escapes = 0
    for s in _conversation_strings(conversation):
        for m in _TOKEN_RE.finditer(s):
            name = m.group(1)
            if name is None:
                escapes += 1
            else:
                counts[name] = counts.get(name, 0) + 1
    return Template(tuple(counts.items()), escapes, field)


# the parts of a content list whose "text" is text (Responses: input_text, output_text)
_TEXT_PARTS = frozenset({"text", "input_text", "output_text"})


def _conversation_strings(conversation: Any) -> Iterator[str]:
    if isinstance(conversation, str):
        yield conversation
    elif isinstance(conversation, list):
        for item in conversation:
            if isinstance(item, dict):
                yield from _content_strings(item.get(_text_field(item)))


def _text_field(item: dict) -> str:
    """Where an item of the conversation keeps its text: a Responses tool
    output in ``output``, every message in ``content``."""
    return "output" if item.get("type") == "function_call_output" else "content"


def _content_strings(content: Any) -> Iterator[str]:
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for block in content:
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            if kind in _TEXT_PARTS and isinstance(block.get("text"), str):
                yield block["text"]
            elif kind == "tool_result":
                yield from _content_strings(block.get("content"))


def fill_placeholders(request: Mapping[str, Any], template: Template, answers: Mapping[str, str]) -> dict[str, Any]:
    """``request`` with its placeholders replaced by ``answers[id]``.

    Returns a new top-level dict (and new item dicts where something
    changed); ``request`` itself is never modified. ``answers`` must hold every
    id in ``template.names``.
    """
    body = dict(request)
    if not template.templated:
        return body
    conversation = request[template.field]
    if isinstance(conversation, str):
        body[template.field] = _substitute(conversation, answers)
        return body
    items = []
    for item in conversation:
        if isinstance(item, dict) and (field := _text_field(item)) in item:
            new = _fill_content(item[field], answers)
            if new is not item[field]:
                item = {**item, field: new}
        items.append(item)
    body[template.field] = items
    return body


def _fill_content(content: Any, answers: Mapping[str, str]) -> Any:
    if isinstance(content, str):
        return _substitute(content, answers)
    if not isinstance(content, list):
        return content
    out = []
    for block in content:
        if isinstance(block, dict):
            kind = block.get("type")
            if kind in _TEXT_PARTS and isinstance(block.get("text"), str) and "{{" in block["text"]:
                block = {**block, "text": _substitute(block["text"], answers)}
            elif kind == "tool_result" and "content" in block:
                block = {**block, "content": _fill_content(block["content"], answers)}
        out.append(block)
    return out


def _substitute(s: str, answers: Mapping[str, str]) -> str:
    if "{{" not in s:
        return s
    return _TOKEN_RE.sub(lambda m: "{{" if m.group(1) is None else answers[m.group(1)], s)


def json_string_size(s: str) -> int:
    """Bytes ``s`` takes inside a JSON document written with
    ``json.dumps(..., ensure_ascii=False)`` and UTF-8, quotes excluded.

    JSON escapes each character on its own, so the size of a concatenation is
    the sum of the sizes of its parts.
    """
    return len(json.dumps(s, ensure_ascii=False).encode("utf-8", "surrogatepass")) - 2


def request_size(request: Mapping[str, Any]) -> int:
    """Bytes of a request body as the proxy sends it (``json.dumps(body,
    ensure_ascii=False)`` in UTF-8)."""
    return len(json.dumps(request, ensure_ascii=False).encode("utf-8", "surrogatepass"))


def filled_size(request: Mapping[str, Any], template: Template, answer_sizes: Mapping[str, int]) -> int:
    """Bytes of ``fill_placeholders(request, template, answers)`` once
    serialized, computed without building it: the request's size, plus for
    each placeholder occurrence the size of its answer (``answer_sizes[id]``,
    as :func:`json_string_size` gives it) minus that of the placeholder, minus
    2 bytes per ``{{{{`` escape."""
    size = request_size(request)
    for name, count in template.counts:
        size += count * (answer_sizes[name] - json_string_size("{{" + name + "}}"))
    return size - 2 * template.escapes
