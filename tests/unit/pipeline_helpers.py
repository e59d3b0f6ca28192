"""Hand-written conversations and a turn-by-turn replay for the rewrite tests.

A *request* is what a client sends on one turn: the whole history so far.  An
agent conversation grows by one assistant message (a tool call, or a short
answer) and what answers it (the tool's output, or the user's next words);
each turn's request ends with the answer.

``replay`` sends the requests of a conversation through ``rewrite_turn`` the
way the proxy does: the state is looked up under the request's conversation
keys (newest first) in a dict that stands in for the cache backend, and the
outcome's state is stored under its key.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ctxwarden.dialects import get_dialect, request_tokens
from ctxwarden.pipeline import RewritePlan, TurnOutcome, conversation_keys, rewrite_turn
from ctxwarden.tokens import DEFAULT_ENCODING

SYSTEM = "You are a careful coding agent. Use the tools to inspect and change the repository."
TASK = "Fix parse_value in src/pkg/values.py so that the failing test tests/test_values.py passes."
FILES = ["src/pkg/values.py", "src/pkg/cli.py", "src/pkg/io_utils.py", "tests/test_values.py",
         "docs/USAGE.md", "src/pkg/config_loader.py"]


# ------------------------------------------------------------------ OpenAI

def call(i, cmd):
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": f"c{i}", "type": "function", "function": {"name": "bash", "arguments": json.dumps({"command": cmd})}}]}


def result(i, text):
    return {"role": "tool", "tool_call_id": f"c{i}", "content": text}


def agent_conversation(outputs, task=TASK, final_user=None, system=SYSTEM):
    """One OpenAI request: system, task, then a call and its result per (command, output)."""
    msgs = [{"role": "system", "content": system}, {"role": "user", "content": task}]
    for i, (cmd, out) in enumerate(outputs):
        msgs += [call(i, cmd), result(i, out)]
    if final_user:
        msgs.append({"role": "user", "content": final_user})
    return {"model": "gpt-4o", "temperature": 0, "messages": msgs}


# ------------------------------------------------------------------ Anthropic

def tool_use(i, cmd, thought=None):
    blocks = [{"type": "text", "text": thought}] if thought else []
    return {"role": "assistant", "content": blocks + [
        {"type": "tool_use", "id": f"toolu_{i}", "name": "bash", "input": {"command": cmd}}]}


def tool_result(i, text, as_blocks=False):
    content = [{"type": "text", "text": text}] if as_blocks else text
    return {"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"toolu_{i}", "content": content}]}


def anthropic_conversation(outputs, task=TASK, final_user=None, system=SYSTEM):
    msgs = [{"role": "user", "content": task}]
    for i, (cmd, out) in enumerate(outputs):
        msgs += [tool_use(i, cmd), tool_result(i, out, as_blocks=i % 2 == 1)]
    if final_user:
        msgs += [{"role": "assistant", "content": "Done: the test passes now."},
                 {"role": "user", "content": final_user}]
    return {"model": "claude-sonnet-4", "max_tokens": 1024, "system": system, "messages": msgs}


# ------------------------------------------------------------------ a long agent session

def file_listing(path: str, n: int, version: int = 0) -> str:
    stem = path.rsplit("/", 1)[-1].split(".")[0]
    return "\n".join(f"{j:4d}  def {stem}_helper_{j}(value, strict=False):  # rev {version}.{j % 7}"
                     for j in range(1, n + 1))


def runner_log(n: int, step: int) -> str:
    lines = [f"tests/test_values.py::test_case_{j} PASSED" for j in range(n)]
    lines.append(f"FAILED tests/test_values.py::test_parse_{step} - AssertionError: expected {step}, got None")
    return "\n".join(lines)


def session_steps(n_steps: int, lines: int = 60, chatty_every: int = 7):
    """(assistant message kind, command or words, output or user words) of a long agent session."""
    steps = []
    for i in range(n_steps):
        if chatty_every and i % chatty_every == chatty_every - 1:
            steps.append(("say", f"I changed {FILES[i % len(FILES)]}; shall I go on with step {i}?",
                          f"Yes, go on. Keep the public API of {FILES[(i + 1) % len(FILES)]} stable."))
        elif i % 3 == 0:
            steps.append(("call", f"pytest -x tests/test_values.py -k case_{i}", runner_log(lines // 2, i)))
        else:
            path = FILES[i % len(FILES)]
            steps.append(("call", f"cat {path}", file_listing(path, lines, i)))
    return steps


def openai_session(n_steps: int, lines: int = 60, chatty_every: int = 7, system=SYSTEM, task=TASK,
                   first_output: str | None = None, final_user: str | None = None) -> list[dict]:
    """The requests of an OpenAI-dialect agent session, turn by turn."""
    msgs = [{"role": "system", "content": system}, {"role": "user", "content": task}]
    requests = []
    for i, (kind, what, answer) in enumerate(session_steps(n_steps, lines, chatty_every)):
        if i == 0 and first_output is not None:
            kind, what, answer = "call", "cat src/pkg/settings.ini", first_output
        if kind == "call":
            msgs = msgs + [call(i, what), result(i, answer)]
        else:
            msgs = msgs + [{"role": "assistant", "content": what}, {"role": "user", "content": answer}]
        requests.append({"model": "gpt-4o", "temperature": 0, "messages": msgs})
    if final_user is not None:
        msgs = msgs + [{"role": "assistant", "content": "The tests pass now."}, {"role": "user", "content": final_user}]
        requests.append({"model": "gpt-4o", "temperature": 0, "messages": msgs})
    return requests


def anthropic_session(n_steps: int, lines: int = 60, chatty_every: int = 7, system=SYSTEM, task=TASK,
                      first_output: str | None = None, final_user: str | None = None,
                      tools: list | None = None) -> list[dict]:
    """The requests of an Anthropic-dialect agent session (tool_use / tool_result), turn by turn."""
    msgs = [{"role": "user", "content": task}]
    requests = []
    for i, (kind, what, answer) in enumerate(session_steps(n_steps, lines, chatty_every)):
        if i == 0 and first_output is not None:
            kind, what, answer = "call", "cat src/pkg/settings.ini", first_output
        if kind == "call":
            thought = f"Step {i}: let me look." if i % 2 else None
            msgs = msgs + [tool_use(i, what, thought), tool_result(i, answer, as_blocks=i % 4 == 1)]
        else:
            msgs = msgs + [{"role": "assistant", "content": [{"type": "text", "text": what}]},
                           {"role": "user", "content": answer}]
        requests.append(anthropic_body(msgs, system, tools))
    if final_user is not None:
        msgs = msgs + [{"role": "assistant", "content": "The tests pass now."}, {"role": "user", "content": final_user}]
        requests.append(anthropic_body(msgs, system, tools))
    return requests


def anthropic_body(msgs, system=SYSTEM, tools=None):
    body = {"model": "claude-sonnet-4", "max_tokens": 1024, "system": system, "messages": msgs}
    if tools is not None:
        body["tools"] = tools
    return body


def interject_session(first: int = 250, second: int = 200) -> list[dict]:
    """OpenAI: a long output and the user's words after it (one unit), then another long output."""
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": TASK},
            call(0, "cat build.log"), result(0, file_listing("build.log", first)),
            {"role": "user", "content": "Also look at src/pkg/cli.py please."}]
    requests = [{"model": "gpt-4o", "messages": msgs}]
    msgs = msgs + [call(1, "cat src/pkg/cli.py"), result(1, file_listing("src/pkg/cli.py", second, 1))]
    requests.append({"model": "gpt-4o", "messages": msgs})
    return requests


def mixed_turn_session(big: int = 250, small: int = 60, turns: int = 4) -> list[dict]:
    """Anthropic: a user turn of a long tool result and the user's words, then more tool calls."""
    msgs = [{"role": "user", "content": TASK}, tool_use(0, "cat build.log"), {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_0", "content": file_listing("build.log", big)},
        {"type": "text", "text": "Also look at src/pkg/cli.py please."}]}]
    requests = [anthropic_body(msgs)]
    for i in range(1, turns + 1):
        msgs = msgs + [tool_use(i, f"cat {FILES[i]}"), tool_result(i, file_listing(FILES[i], small, i))]
        requests.append(anthropic_body(msgs))
    return requests


def session(dialect: str, *args, **kwargs) -> list[dict]:
    return (anthropic_session if dialect == "anthropic" else openai_session)(*args, **kwargs)


# ------------------------------------------------------------------ replay

@dataclass
class Turn:
    body: dict                    # what the client sent
    outcome: TurnOutcome          # what the stateful rewrite made of it
    state_found: bool             # whether a stored state was found for it


def lookup(store: dict, keys: list[str]):
    return next((store[k] for k in reversed(keys) if k in store), None)


def replay(requests: Iterable[dict], dialect: str, plan: RewritePlan, store: dict | None = None) -> Iterator[Turn]:
    """Each request rewritten with the state stored for its conversation."""
    store = {} if store is None else store
    for body in requests:
        keys = conversation_keys(body, dialect)
        state = lookup(store, keys)
        outcome = rewrite_turn(body, dialect, plan, state, keys)
        if outcome.state is not None:
            store[outcome.state.key] = outcome.state
        yield Turn(body, outcome, state is not None)


def without_markers(value):
    """``value`` without cache_control keys (markers move between turns)."""
    if isinstance(value, dict):
        return {k: without_markers(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [without_markers(v) for v in value]
    return value


def dumps(value) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def latest_user_text(body: dict):
    """The latest message the user wrote (not a tool result)."""
    for message in reversed(body["messages"] if "messages" in body else body["input"]):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, list) and content and all(b.get("type") == "tool_result" for b in content):
            continue
        return message
    return None


# ------------------------------------------------------------------ conversations from a spec

# The property tests draw a conversation as a small spec and build it here, so
# that a failing example can be replayed by a unit test.  A spec is
#   {"system": 0..3, "task": 0..2, "steps": [(kind, [(lines, style, as_blocks), ...], flag), ...]}
# kind: "call" (tool calls and their outputs), "interject" (the same, then the
# user's words: a message of their own in the OpenAI dialect, text after the
# tool results in the Anthropic one), "say" (the assistant says something, the
# user answers), "ask" (the same, and the user asks about a value an earlier
# config output held), "users" (two user messages in a row: OpenAI after
# "say", Anthropic after the tool results); flag: the assistant also writes
# text / the user's words as blocks.

SPEC_FILES = ["src/app/core.py", "src/app/util.py", "lib/parser_impl.py", "docs/README.md", "config/settings.toml"]
STEP_KINDS = ["call", "call", "call", "call", "say", "ask", "users", "interject"]
STYLES = ["file", "log", "config", "prose"]
EPHEMERAL = {"type": "ephemeral"}


def output_text(step: int, call: int, lines: int, style: str) -> str:
    """A tool output of ``lines`` lines; every line names identifiers unique to it."""
    if lines == 0:
        return ""
    path = SPEC_FILES[(step + call) % len(SPEC_FILES)]
    if style == "file":
        rows = [f"{j:5d}\tdef fn_{step}_{call}_{j}(value):  # {path}" for j in range(lines)]
    elif style == "log":
        rows = [f"[{j:04d}] worker_{j % 7} handled req_{step}x{j} in {j * 3 % 101} ms" for j in range(lines)]
        rows[-1] = f"ERROR E{step}{call}: timeout in {path} after {lines} retries"
    elif style == "config":
        rows = [f"key_{step}_{call}_{j} = {(step * 7919 + j * 104729) % 100003}" for j in range(lines)]
    else:  # prose with unicode and special-token text
        rows = [f"Zeile {j} – résumé ✓ of {path} <|endoftext|> step {step}" for j in range(lines)]
    return "\n".join(rows)


TASKS = ["Fix the bug in src/app/core.py", "Why does lib/parser_impl.py fail?", "hello"]
ANTHROPIC_SYSTEMS = [
    None, "You are a careful coding agent.",
    [{"type": "text", "text": "You are careful.", "cache_control": EPHEMERAL}],
    [{"type": "text", "text": "You are careful.", "cache_control": EPHEMERAL},
     {"type": "text", "text": "Prefer small diffs.", "cache_control": EPHEMERAL}]]


def question(step: int, earlier: list[tuple[int, int, int]]) -> str:
    """A user turn that asks about a value the oldest config output held (or a plain reply)."""
    if earlier:
        s, c, lines = earlier[0]
        return f"What value did key_{s}_{c}_{lines // 2} have? Then go on."
    return f"Go on with step {step}."


def config_lines(step: int, specs) -> list[tuple[int, int, int]]:
    return [(step, c, lines) for c, (lines, style, _) in enumerate(specs) if style == "config" and lines]


def openai_requests(spec: dict) -> list[dict]:
    """The requests of one OpenAI-dialect conversation, turn by turn."""
    msgs: list = []
    if spec["system"] in (1, 3):
        msgs.append({"role": "system", "content": "You are a careful coding agent."})
    if spec["system"] >= 2:
        msgs.append({"role": "developer", "content": "Prefer small diffs."})
    msgs.append({"role": "user", "content": TASKS[spec["task"]]})
    requests, configs = [], []
    for step, (kind, specs, flag) in enumerate(spec["steps"]):
        if kind in ("call", "interject"):
            calls = [{"id": f"call_{step}_{c}", "type": "function",
                      "function": {"name": "bash", "arguments": json.dumps({"command": f"cat {SPEC_FILES[c]}"})}}
                     for c in range(len(specs))]
            msgs.append({"role": "assistant", "content": "Let me look." if flag else None, "tool_calls": calls})
            msgs.extend({"role": "tool", "tool_call_id": call["id"], "content": output_text(step, c, lines, style)}
                        for c, (call, (lines, style, _)) in enumerate(zip(calls, specs)))
            configs.extend(config_lines(step, specs))
            if kind == "interject":
                msgs.append({"role": "user", "content": f"Also check {SPEC_FILES[step % len(SPEC_FILES)]}."})
        else:
            msgs.append({"role": "assistant", "content": f"Step {step} is done."})
            msgs.append({"role": "user", "content": question(step, configs) if kind == "ask" else "Continue."})
            if kind == "users":   # two user messages in a row: valid in this dialect
                msgs.append({"role": "user", "content": [{"type": "text", "text": "And keep the tests green."}]})
        requests.append({"model": "gpt-4o", "temperature": 0.2, "messages": list(msgs), "stream": False})
    return requests


def _response_items(message: dict, step: int) -> list[dict]:
    """A chat message as the Responses input items that say the same: an
    assistant's tool calls come after a reasoning item of its own."""
    role, content = message["role"], message.get("content")
    if role == "tool":
        return [{"type": "function_call_output", "call_id": message["tool_call_id"], "output": content}]
    if role != "assistant":
        if isinstance(content, list):
            content = [{"type": "input_text", "text": part["text"]} for part in content]
        return [{"role": role, "content": content}]
    items = []
    if message.get("tool_calls"):
        items.append({"id": f"rs_{step}", "type": "reasoning", "encrypted_content": f"gAAA{step:04d}" + "QUJD" * 20,
                      "summary": [{"type": "summary_text", "text": "Which file holds the failing value?"}]})
    if content:
        items.append({"id": f"msg_{step}", "type": "message", "role": "assistant", "status": "completed",
                      "content": [{"type": "output_text", "text": content, "annotations": []}]})
    items.extend({"id": f"fc_{call['id']}", "type": "function_call", "call_id": call["id"],
                  "name": call["function"]["name"], "arguments": call["function"]["arguments"]}
                 for call in message.get("tool_calls") or ())
    return items


def responses_request(chat: dict) -> dict:
    """A chat request of ``openai_requests`` as the Responses request that says
    the same: its first system message as ``instructions``, its messages as items."""
    messages = chat["messages"]
    instructions = messages[0]["content"] if messages[0]["role"] == "system" else None
    rest = messages[1:] if instructions is not None else messages
    items = [item for step, message in enumerate(rest) for item in _response_items(message, step)]
    body = {"model": chat["model"], "temperature": chat["temperature"], "input": items, "store": False}
    return {**body, "instructions": instructions} if instructions is not None else body


def anthropic_requests(spec: dict) -> list[dict]:
    """The requests of one Anthropic-dialect conversation, turn by turn."""
    task = TASKS[spec["task"]]
    msgs: list = [{"role": "user", "content": [{"type": "text", "text": task}] if spec["task"] == 1 else task}]
    system = ANTHROPIC_SYSTEMS[spec["system"]]
    requests, configs = [], []
    for step, (kind, specs, flag) in enumerate(spec["steps"]):
        if kind in ("call", "interject", "users"):
            ids = [f"toolu_{step}_{c}" for c in range(len(specs))]
            blocks = [{"type": "text", "text": "Checking."}] if flag else []
            blocks += [{"type": "tool_use", "id": i, "name": "bash", "input": {"command": f"cat {SPEC_FILES[c]}"}}
                       for c, i in enumerate(ids)]
            msgs.append({"role": "assistant", "content": blocks})
            results = []
            for c, (i, (lines, style, as_blocks)) in enumerate(zip(ids, specs)):
                text = output_text(step, c, lines, style)
                content = [{"type": "text", "text": text}] if as_blocks and text else text
                results.append({"type": "tool_result", "tool_use_id": i, "content": content})
            words = f"Also check {SPEC_FILES[step % len(SPEC_FILES)]}."
            if kind == "interject":   # the user's words after the results, in the same message
                results.append({"type": "text", "text": words})
            msgs.append({"role": "user", "content": results})
            if kind == "users":       # the user's words in a message of their own: one turn, two messages
                msgs.append({"role": "user", "content": [{"type": "text", "text": words}] if flag else words})
            configs.extend(config_lines(step, specs))
        else:
            msgs.append({"role": "assistant", "content": [{"type": "text", "text": f"Step {step} is done."}]})
            words = question(step, configs) if kind == "ask" else "Continue."
            msgs.append({"role": "user", "content": [{"type": "text", "text": words}] if flag else words})
        body = {"model": "claude-sonnet-4", "max_tokens": 1024, "messages": list(msgs)}
        if system is not None:
            body["system"] = system
        requests.append(body)
    return requests


def words(content) -> list:
    """What the user wrote in a message: its blocks but tool results, markers removed."""
    blocks = [{"type": "text", "text": content}] if isinstance(content, str) else without_markers(content)
    return [b for b in blocks if b.get("type") != "tool_result"]


def system_kept(body: dict, sent: dict, dialect: str) -> bool:
    if dialect == "anthropic":
        return sent.get("system") is body.get("system")
    if dialect == "responses":
        system = [m for m in body["input"] if m.get("role") in ("system", "developer")]
        return (sent.get("instructions") is body.get("instructions")
                and [m for m in sent["input"] if m.get("role") in ("system", "developer")] == system)
    system = [m for m in body["messages"] if m["role"] in ("system", "developer")]
    return sent["messages"][:len(system)] == system


def latest_user_kept(body: dict, sent: dict, dialect: str) -> bool:
    latest = latest_user_text(body)
    if latest is None:
        return True
    if dialect in ("openai", "responses"):
        return any(m is latest or m == latest for m in sent["messages" if dialect == "openai" else "input"])
    # Anthropic: the user's blocks (not tool results, which may be cut to fit), in one
    # user turn that may also hold a note of ctxwarden's (turns alternate)
    wanted = words(latest["content"])
    for message in sent["messages"]:
        have = words(message["content"]) if message["role"] == "user" else []
        if any(have[i:i + len(wanted)] == wanted for i in range(len(have) - len(wanted) + 1)):
            return True
    return False


def count_request_tokens(body: dict, dialect: str, encoding: str = DEFAULT_ENCODING) -> int:
    """Tokens of a request in the named dialect, as the rewrite counts them."""
    return request_tokens(body, get_dialect(dialect), encoding)
