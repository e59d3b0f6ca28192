"""Strict request validators modelled on what the real chat APIs reject.

Pure functions, no I/O: each returns the list of reasons a body would get a 400
from the provider (an empty list means the provider would accept it).  They
check the rules a rewrite can break (roles, tool pairing, content shapes, cache
breakpoints), not every field of the API reference, and they never reject
what the provider accepts: consecutive user messages are fine in both dialects.

Sources for the rules (the providers' own 400 messages, quoted in the reasons):
- OpenAI Chat Completions: "An assistant message with 'tool_calls' must be
  followed by tool messages responding to each 'tool_call_id'", "messages with
  role 'tool' must be a response to a preceeding message with 'tool_calls'",
  content null only for an assistant message with tool_calls / function_call,
  content arrays of at least one part of a type the role allows.
- Anthropic Messages: roles user / assistant (``system`` is top level), first
  message from the user, consecutive same-role messages combined into one turn,
  "tool_use ids were found without tool_result blocks immediately after",
  "unexpected tool_use_id found in tool_result blocks", tool_result blocks first
  in the turn that answers, "text content blocks must contain non-whitespace
  text", "all messages must have non-empty content except for the optional
  final assistant message", "A maximum of 4 blocks with cache_control may be
  provided", no cache_control on thinking blocks, ``max_tokens`` required.
- OpenAI Responses: "Missing required parameter: 'model'", ``input`` a string
  or an array of items, message roles user / assistant / system / developer
  with the part types each allows, "No tool call found for function call
  output with call_id ...", "No tool output found for function call ...",
  "Item '...' of type 'reasoning' was provided without its required following
  item" (the pairing rules only when the request carries the whole history:
  no ``previous_response_id`` or ``conversation``).
"""
from __future__ import annotations

from typing import Any

# ---------------------------------------------------------------- OpenAI

OPENAI_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
# content part types each role may send in a content array
OPENAI_PART_TYPES: dict[str, frozenset[str]] = {
    "system": frozenset({"text"}),
    "developer": frozenset({"text"}),
    "user": frozenset({"text", "image_url", "input_audio", "file"}),
    "assistant": frozenset({"text", "refusal"}),
    "tool": frozenset({"text"}),
    "function": frozenset({"text"}),
}
OPENAI_TOOL_CALL_TYPES = frozenset({"function", "custom"})


def _openai_part_problems(where: str, role: str, part: Any) -> list[str]:
    if not isinstance(part, dict):
        return [f"{where}: content part is not an object"]
    ptype = part.get("type")
    if ptype not in OPENAI_PART_TYPES[role]:
        return [f"{where}: content part type {ptype!r} is not allowed in a {role} message"]
    if ptype == "text" and not isinstance(part.get("text"), str):
        return [f"{where}: text part without a string 'text'"]
    if ptype == "refusal" and not isinstance(part.get("refusal"), str):
        return [f"{where}: refusal part without a string 'refusal'"]
    return []


def _openai_content_problems(where: str, message: dict) -> list[str]:
    role = message["role"]
    content = message.get("content")
    if content is None:
        # only an assistant that calls something may leave its content out
        if role == "assistant" and (message.get("tool_calls") or message.get("function_call")):
            return []
        if role == "function":
            return []
        return [f"{where}: content is required (null only for an assistant message with tool_calls)"]
    if isinstance(content, str):
        return []
    if isinstance(content, list):
        if not content:
            return [f"{where}: content is an empty array (minimum length 1)"]
        return [p for j, part in enumerate(content)
                for p in _openai_part_problems(f"{where}.content[{j}]", role, part)]
    return [f"{where}: content must be a string or an array of content parts"]


def _openai_tool_calls(where: str, message: dict) -> tuple[list[str], list[str]]:
    """(call ids, problems) of an assistant message's tool_calls."""
    calls = message.get("tool_calls")
    if calls is None:
        return [], []
    if not isinstance(calls, list) or not calls:
        return [], [f"{where}: tool_calls must be a non-empty array"]
    ids: list[str] = []
    problems: list[str] = []
    for j, call in enumerate(calls):
        cw = f"{where}.tool_calls[{j}]"
        if not isinstance(call, dict) or not isinstance(call.get("id"), str):
            problems.append(f"{cw}: a tool call needs a string id")
            continue
        if call.get("type") not in OPENAI_TOOL_CALL_TYPES:
            problems.append(f"{cw}: unknown tool call type {call.get('type')!r}")
        fn = call.get("function")
        if call.get("type") == "function" and not (
                isinstance(fn, dict) and isinstance(fn.get("name"), str) and isinstance(fn.get("arguments"), str)):
            problems.append(f"{cw}: function needs a string name and a string arguments")
        ids.append(call["id"])
    return ids, problems


def openai_chat_problems(body: dict) -> list[str]:
    """Why OpenAI's /v1/chat/completions would answer 400 to ``body`` (empty: valid)."""
    if not isinstance(body, dict):
        return ["body must be a JSON object"]
    problems: list[str] = []
    if not isinstance(body.get("model"), str) or not body["model"]:
        problems.append("model: a model is required")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return problems + ["messages: must be a non-empty array"]
    pending: list[str] = []   # ids of the last assistant's calls still waiting for a tool message
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or message.get("role") not in OPENAI_ROLES:
            role = message.get("role") if isinstance(message, dict) else None
            problems.append(f"{where}: unknown role {role!r}")
            continue
        role = message["role"]
        problems += _openai_content_problems(where, message)
        if role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str):
                problems.append(f"{where}: a tool message needs a string tool_call_id")
            elif call_id not in pending:
                problems.append(f"{where}: messages with role 'tool' must be a response to a preceding "
                                f"message with 'tool_calls' ({call_id!r} is not pending)")
            else:
                pending.remove(call_id)
            continue
        if pending:
            problems.append(f"{where}: an assistant message with 'tool_calls' must be followed by tool "
                            f"messages responding to each 'tool_call_id' (missing: {', '.join(pending)})")
            pending = []
        if role == "function" and not isinstance(message.get("name"), str):
            problems.append(f"{where}: a function message needs a name")
        if role == "assistant":
            pending, call_problems = _openai_tool_calls(where, message)
            problems += call_problems
    if pending:
        problems.append("an assistant message with 'tool_calls' must be followed by tool messages responding "
                        f"to each 'tool_call_id' (missing: {', '.join(pending)})")
    return problems


# ---------------------------------------------------------------- Anthropic

ANTHROPIC_ROLES = frozenset({"user", "assistant"})
ANTHROPIC_BLOCK_TYPES = frozenset({
    "text", "image", "document", "search_result", "tool_use", "tool_result", "thinking", "redacted_thinking",
    "server_tool_use", "mcp_tool_use", "mcp_tool_result", "container_upload",
})
ASSISTANT_ONLY = frozenset({"tool_use", "server_tool_use", "mcp_tool_use", "thinking", "redacted_thinking"})
NO_CACHE_CONTROL = frozenset({"thinking", "redacted_thinking"})
MAX_CACHE_BREAKPOINTS = 4


def _known_block_type(btype: Any) -> bool:
    # server tools answer with *_tool_result blocks (web_search_tool_result, code_execution_tool_result, ...)
    return btype in ANTHROPIC_BLOCK_TYPES or (isinstance(btype, str) and btype.endswith("_tool_result"))


def _blank(text: Any) -> bool:
    return not isinstance(text, str) or not text.strip()


def _cache_marks(value: Any) -> int:
    """Blocks carrying cache_control anywhere inside ``value`` (tool_result content included)."""
    if isinstance(value, list):
        return sum(_cache_marks(v) for v in value)
    if not isinstance(value, dict):
        return 0
    inner = value.get("content")
    return ("cache_control" in value and value["cache_control"] is not None) + (
        _cache_marks(inner) if isinstance(inner, list) else 0)


def _text_block_problems(where: str, block: dict) -> list[str]:
    if _blank(block.get("text")):
        return [f"{where}: text content blocks must contain non-whitespace text"]
    return []


def _block_problems(where: str, role: str, block: Any) -> list[str]:
    if not isinstance(block, dict):
        return [f"{where}: a content block must be an object"]
    btype = block.get("type")
    if not _known_block_type(btype):
        return [f"{where}: unknown content block type {btype!r}"]
    problems: list[str] = []
    if btype in ASSISTANT_ONLY and role != "assistant":
        problems.append(f"{where}: {btype} blocks are only allowed in assistant messages")
    if btype == "tool_result" and role != "user":
        problems.append(f"{where}: tool_result blocks are only allowed in user messages")
    if btype in NO_CACHE_CONTROL and "cache_control" in block:
        problems.append(f"{where}.cache_control: cache_control cannot be set on {btype} blocks")
    if btype == "text":
        problems += _text_block_problems(where, block)
    elif btype == "tool_use" and not (isinstance(block.get("id"), str) and isinstance(block.get("name"), str)
                                      and isinstance(block.get("input"), dict)):
        problems.append(f"{where}: tool_use needs a string id, a string name and an object input")
    elif btype == "tool_result":
        if not isinstance(block.get("tool_use_id"), str):
            problems.append(f"{where}: tool_result needs a string tool_use_id")
        content = block.get("content")
        if isinstance(content, list):
            for j, inner in enumerate(content):
                if isinstance(inner, dict) and inner.get("type") == "text":
                    problems += _text_block_problems(f"{where}.content[{j}]", inner)
        elif content is not None and not isinstance(content, str):
            problems.append(f"{where}: tool_result content must be a string or an array of blocks")
    return problems


def _message_blocks(where: str, message: dict, final: bool) -> tuple[list[dict], list[str]]:
    """(content as a list of blocks, problems) of one message."""
    role, content = message["role"], message.get("content")
    # only the optional final assistant message (a prefill) may be empty
    may_be_empty = final and role == "assistant"
    if isinstance(content, str):
        if _blank(content) and not (may_be_empty and content == ""):
            return [], [f"{where}: all messages must have non-empty content except for the optional final "
                        "assistant message"]
        return [{"type": "text", "text": content}], []
    if not isinstance(content, list):
        return [], [f"{where}: content must be a string or an array of content blocks"]
    if not content and not may_be_empty:
        return [], [f"{where}: all messages must have non-empty content except for the optional final "
                    "assistant message"]
    problems = [p for j, b in enumerate(content) for p in _block_problems(f"{where}.content[{j}]", role, b)]
    return [b for b in content if isinstance(b, dict)], problems


def _turns(messages: list, problems: list[str]) -> list[tuple[str, int, list[dict]]]:
    """Consecutive messages of one role combined, as the API does: (role, first index, blocks)."""
    turns: list[tuple[str, int, list[dict]]] = []
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(message, dict) or message.get("role") not in ANTHROPIC_ROLES:
            role = message.get("role") if isinstance(message, dict) else None
            hint = " (the Messages API takes a top-level `system` parameter)" if role == "system" else ""
            problems.append(f"{where}: unexpected role {role!r}{hint}")
            continue
        blocks, block_problems = _message_blocks(where, message, i == len(messages) - 1)
        problems += block_problems
        if turns and turns[-1][0] == message["role"]:
            turns[-1][2].extend(blocks)
        else:
            turns.append((message["role"], i, list(blocks)))
    return turns


def _tool_pairing_problems(turns: list[tuple[str, int, list[dict]]]) -> list[str]:
    problems: list[str] = []
    seen: set[str] = set()
    pending: list[str] = []   # tool_use ids of the previous assistant turn
    for role, first, blocks in turns:
        where = f"messages.{first}"
        if role == "assistant":
            if pending:
                problems.append(f"{where}: `tool_use` ids were found without `tool_result` blocks immediately "
                                f"after: {', '.join(pending)}")
            pending = [b["id"] for b in blocks if b.get("type") == "tool_use" and isinstance(b.get("id"), str)]
            duplicates = sorted({x for x in pending if x in seen or pending.count(x) > 1})
            if duplicates:
                problems.append(f"{where}: `tool_use` ids must be unique: {', '.join(duplicates)}")
            seen.update(pending)
            continue
        results = [b.get("tool_use_id") for b in blocks if b.get("type") == "tool_result"]
        unexpected = [r for r in results if r not in pending]
        if unexpected:
            problems.append(f"{where}: unexpected `tool_use_id` found in `tool_result` blocks: "
                            f"{', '.join(map(str, unexpected))}. Each `tool_result` block must have a "
                            "corresponding `tool_use` block in the previous message.")
        # the answering turn must open with the tool_result blocks, text only after them
        leading = []
        for b in blocks:
            if b.get("type") != "tool_result":
                break
            leading.append(b.get("tool_use_id"))
        missing = [p for p in pending if p not in leading]
        if missing:
            problems.append(f"{where}: `tool_use` ids were found without `tool_result` blocks immediately "
                            f"after: {', '.join(missing)}. Each `tool_use` block must have a corresponding "
                            "`tool_result` block at the start of the next message.")
        pending = []
    if pending:
        problems.append(f"`tool_use` ids were found without `tool_result` blocks immediately after: "
                        f"{', '.join(pending)}")
    return problems


def _system_problems(system: Any) -> list[str]:
    if system is None or isinstance(system, str):
        return []
    if not isinstance(system, list):
        return ["system: must be a string or an array of text blocks"]
    problems = []
    for j, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            problems.append(f"system.{j}: system blocks must be text blocks")
        else:
            problems += _text_block_problems(f"system.{j}", block)
    return problems


def anthropic_messages_problems(body: dict) -> list[str]:
    """Why Anthropic's /v1/messages would answer 400 to ``body`` (empty: valid)."""
    if not isinstance(body, dict):
        return ["body must be a JSON object"]
    problems: list[str] = []
    if not isinstance(body.get("model"), str) or not body["model"]:
        problems.append("model: Field required")
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        problems.append("max_tokens: Field required (a positive integer)")
    problems += _system_problems(body.get("system"))
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return problems + ["messages: at least one message is required"]
    turns = _turns(messages, problems)
    if turns and turns[0][0] != "user":
        problems.append('messages: first message must use the "user" role')
    problems += _tool_pairing_problems(turns)
    marks = _cache_marks(body.get("tools")) + _cache_marks(body.get("system")) + _cache_marks(messages)
    if marks > MAX_CACHE_BREAKPOINTS:
        problems.append(f"A maximum of {MAX_CACHE_BREAKPOINTS} blocks with cache_control may be provided. "
                        f"Found {marks}.")
    return problems


# ---------------------------------------------------------------- OpenAI Responses

RESPONSES_ROLES = ("assistant", "system", "developer", "user")
RESPONSES_PART_TYPES: dict[str, frozenset[str]] = {
    "user": frozenset({"input_text", "input_image", "input_file"}),
    "system": frozenset({"input_text"}),
    "developer": frozenset({"input_text"}),
    "assistant": frozenset({"output_text", "refusal"}),
}


def _responses_item_problems(where: str, item: Any) -> list[str]:
    if not isinstance(item, dict):
        return [f"Invalid type for '{where}': expected an input item object"]
    kind = item.get("type", "message" if "role" in item else None)
    if kind == "message":
        role = item.get("role")
        if role not in RESPONSES_ROLES:
            return [f"Invalid value for '{where}.role': {role!r}. Supported values are: {', '.join(RESPONSES_ROLES)}"]
        content = item.get("content")
        if isinstance(content, str):
            return []
        if not isinstance(content, list):
            return [f"Invalid type for '{where}.content': expected a string or an array of content parts"]
        return [f"Invalid value for '{where}.content[{j}].type' (role {role})" for j, part in enumerate(content)
                if not isinstance(part, dict) or part.get("type") not in RESPONSES_PART_TYPES[role]]
    if kind == "function_call":
        return [f"Missing required parameter: '{where}.{f}'" for f in ("call_id", "name", "arguments")
                if not isinstance(item.get(f), str)]
    if kind == "function_call_output":
        problems = [] if isinstance(item.get("call_id"), str) else [f"Missing required parameter: '{where}.call_id'"]
        if not isinstance(item.get("output"), (str, list)):
            problems.append(f"Invalid type for '{where}.output'")
        return problems
    if not isinstance(kind, str):
        return [f"Missing required parameter: '{where}.type'"]
    return []


def openai_responses_problems(body: Any) -> list[str]:
    if not isinstance(body, dict):
        return ["body must be a JSON object"]
    problems: list[str] = []
    if not isinstance(body.get("model"), str) or not body["model"]:
        problems.append("Missing required parameter: 'model'.")
    items = body.get("input")
    if items is None or isinstance(items, str):
        return problems
    if not isinstance(items, list):
        return problems + ["Invalid type for 'input': expected one of a string or array of input items"]
    for i, item in enumerate(items):
        problems.extend(_responses_item_problems(f"input[{i}]", item))
    if problems or body.get("previous_response_id") is not None or body.get("conversation") is not None:
        return problems
    calls: dict[str, bool] = {}     # call_id -> answered
    for i, item in enumerate(items):
        kind = item.get("type")
        if kind == "function_call":
            calls[item["call_id"]] = False
        elif kind == "function_call_output":
            if item["call_id"] not in calls:
                problems.append(f"No tool call found for function call output with call_id {item['call_id']}.")
            calls[item["call_id"]] = True
        elif kind == "reasoning" and (i + 1 == len(items) or items[i + 1].get("type") == "function_call_output"):
            problems.append(f"Item {item.get('id')!r} of type 'reasoning' was provided without its required "
                            f"following item.")
    problems.extend(f"No tool output found for function call {call_id}."
                    for call_id, answered in calls.items() if not answered)
    return problems


def chat_problems(dialect: str, body: Any) -> list[str]:
    """The validator of ``dialect`` ("openai" | "anthropic" | "responses") applied to ``body``."""
    if dialect == "anthropic":
        return anthropic_messages_problems(body)
    if dialect == "responses":
        return openai_responses_problems(body)
    return openai_chat_problems(body)


def describe(problems: list[str], limit: int = 3) -> str:
    """One line for an error message: the first problems, and how many more."""
    more = f" (+{len(problems) - limit} more)" if len(problems) > limit else ""
    return "; ".join(problems[:limit]) + more


__all__ = ["openai_chat_problems", "anthropic_messages_problems", "openai_responses_problems", "chat_problems",
           "describe"]

