"""The per-conversation, append-only, priced rewrite.

A conversation is a sequence of *steps*: each assistant message of the
client's history ends one (the request that the assistant answered), and the
request itself ends the last.  The message list sent upstream is built step by
step, only ever by appending, until the budget forces a compaction:

append      the step's new original messages go after what was sent for the
            previous step, byte for byte; nothing already sent changes.
recall      when the step's latest turn names identifiers that only compacted
            messages hold, their lines come back in one recall message
            (:mod:`.recall`) before the latest user message (or after the
            pending tool results).
compact     when the appended request would exceed the budget, the pinned head
            (system messages and the task statement) stays, the newest whole
            turns stay verbatim, and everything between becomes one note
            (:mod:`.compaction`), down to the low-water mark the pricing picks
            (:func:`low_water`): deep enough that the rewrite pays before the
            next compaction, never dearer than passthrough by more than the
            savings already made.
overflow    when even that does not fit, the pending tool output is cut to its
            head, tail and focus lines (:mod:`.overflow`).

What was sent for a step is a pure function of the original messages up to
it, so a replica without the stored state replays the steps and sends the very
same bytes; the state (:class:`ConversationState`, kept per tenant in the
cache backend) only saves that replay, and the counting of messages already
seen (:mod:`.state`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ..dialects import Message, get_dialect
from ..wirejson import compact, compact_or_none
from .compaction import calls_of, compact_units, render_note
from .invariants import check_turn
from .overflow import cut_message
from .plan import RewritePlan
from .recall import RUN, Archive, recall_text
from .state import (ConversationState, Item, TurnOutcome, conversation_keys, has_markers, origin_of, plan_key,
                    without_markers)
from .text import MARKER_PREFIX

BUDGET_SLACK = 0.01        # a compaction may cost at most this share of the passthrough bill so far, beyond savings
MIN_NOTE_TOKENS = 256
LOW_WATER_STEPS = 24       # low-water levels tried, evenly up to plan.low_water of the room
PAYBACK_SHARE = 0.5        # a compaction must pay back within this share of the turns until the next
BELOW_THRESHOLD = "below the compression threshold"
LONG_REPLY_SHARE = 0.25    # a kept assistant reply longer than this share of the room is cut at compaction
TASK_SHARE = 0.25          # the task statement is pinned whole when it takes at most this share of the budget


# ------------------------------------------------------------------ one request

class _Run:
    """One request's originals, parsed on demand (each message at most once)."""

    def __init__(self, body: dict, dialect: str, plan: RewritePlan):
        self.body = body
        self.dialect = get_dialect(dialect)
        self.messages: list = self.dialect.conversation(body)
        self.plan = plan
        self.encoding = plan.encoding
        self.fixed_tokens = self.dialect.fixed_tokens(body, plan.encoding)
        self._parsed: dict[int, Message] = {}
        self.state_tokens: tuple = ()   # counts of the originals the state covers
        self._json: dict[int, bytes | None] = {}
        self._archive: Archive | None = None
        self._sent: SentText | None = None
        self.conversation = ""   # the key of its opening (system and task): one per conversation

    def parsed(self, item: Item) -> Message:
        if not isinstance(item, int):
            return self.dialect.parse_message(origin_of(item) if origin_of(item) is not None else -1,
                                          self.wire(item), self.encoding)
        message = self._parsed.get(item)
        if message is None:
            message = self._parsed[item] = self.dialect.parse_message(item, self.messages[item], self.encoding,
                                                                      self.known_tokens(item))
        return message

    def known_tokens(self, index: int) -> int | None:
        """An original's count where the state holds it (and it carries no
        cache_control marks, which its key leaves out and a dialect may count)."""
        if index >= len(self.state_tokens):
            return None
        # the JSON (kept: recall reads it too) rules out most messages in one C-speed search
        data = self.original_json(index)
        if (data is None or b'"cache_control"' in data) and has_markers(self.messages[index]):
            return None
        return self.state_tokens[index]

    def original_json(self, index: int) -> bytes | None:
        """An original message as compact JSON by orjson (None: orjson refuses it), memoised."""
        if index not in self._json:
            self._json[index] = compact_or_none(self.messages[index])
        return self._json[index]

    def sent_json(self, state: ConversationState) -> SentText | bytes:
        """What ``state`` sends after the head, ``compact([state.note] + the
        items' wire messages)``, for recall's look-ups of names: between two
        compactions a replay's steps only append items, so the text is kept
        and grows (:class:`SentText`); bytes where orjson refuses a part."""
        sent = self._sent
        if sent is None or not sent.continues(state):
            sent = self._sent = SentText(state.note, state.head)
        new = state.items[len(sent.items):]
        parts = [self.original_json(x) if isinstance(x, int) else compact_or_none(self.wire(x)) for x in new]
        if sent.blob is None or any(part is None for part in parts):
            self._sent = None
            return compact([state.note] + [self.wire(x) for x in state.items])
        sent.extend(state.items, parts)
        return sent

    def archive(self, compacted: list[int]) -> Archive:
        """The compacted originals' compact JSON, indexed: a replay compacts
        more at each compaction, so the archive is kept and only grows."""
        if self._archive is None or not self._archive.covers(compacted):
            self._archive = Archive()
        if len(self._archive.indices) != len(compacted):
            self._archive.add({i: self.original_json(i) or compact(self.messages[i]) for i in compacted
                               if i not in self._archive.indices})
        return self._archive

    def wire(self, item: Item) -> Any:
        if isinstance(item, int):
            return self.messages[item]
        return item[1] if isinstance(item, list) else item

    def role(self, item: Item) -> str:
        wire = self.wire(item)
        return wire.get("role", "") if isinstance(wire, dict) else ""

    def tokens(self, wire: Any) -> int:
        return self.dialect.message_tokens(wire, self.encoding)

    def user_words(self, item: Item) -> str:
        """What the user wrote in a message: its text outside tool results
        (empty for ctxwarden's own messages and for pure tool outputs)."""
        if origin_of(item) is None:
            return ""
        message = self.parsed(item)
        if message.role != "user":
            return ""
        return "\n".join(text for path, text in message.segments if not _in_tool_result(path))

    def user_wrote(self, item: Item) -> bool:
        if origin_of(item) is None:
            return False
        message = self.parsed(item)
        return message.role == "user" and (not message.result_ids or bool(self.user_words(item)))


class SentText:
    """The compact JSON of a note and the items after it, less the list's
    brackets, growing as items are appended, and which names it holds: a name
    (no ``,``: it cannot span two items) found stays found, and one not found
    is looked for next time only in what was appended since.

    A replay asks for names at every step: after ``INDEX_AFTER`` look-ups the
    text is indexed as the Archive is (recall.py), its distinct runs of the
    bytes a name can hold kept joined by a newline, a chunk per extension; a
    name of those bytes only occurs in the text inside one run, so it is
    looked for in that vocabulary, much shorter than the text."""

    INDEX_AFTER = 16

    def __init__(self, note: str | None, head: int):
        self.note, self.head, self.items = note, head, ()
        self.blob = compact_or_none(note)
        self._found: set[bytes] = set()
        # name -> where the text it was not in ended: a length of the blob, or
        # once indexed, a number of vocabulary chunks
        self._searched: dict[bytes, int] = {}
        self._scans = 0
        self._runs: set[bytes] | None = None
        self._vocabulary: list[bytes] = []

    def continues(self, state: ConversationState) -> bool:
        return (state.note == self.note and state.head == self.head
                and state.items[:len(self.items)] == self.items)

    def extend(self, items: tuple, parts: list[bytes]) -> None:
        if parts:
            self.blob = b",".join([self.blob, *parts])
            if self._runs is not None:
                self._index(parts)
        self.items = items

    def _index(self, parts: list[bytes]) -> None:
        runs, new = self._runs, []
        for part in parts:
            for run in RUN.findall(part):
                if run not in runs:
                    runs.add(run)
                    new.append(run)
        if new:
            self._vocabulary.append(b"\n".join(new))

    def __contains__(self, name: bytes) -> bool:
        if name in self._found:
            return True
        if RUN.fullmatch(name) is None:
            # bytes no run holds (a "," may span two items): the whole text
            found = self.blob.find(name) >= 0
        else:
            self._scans += 1
            if self._runs is None and self._scans > self.INDEX_AFTER:
                self._runs, self._searched = set(), {}
                self._index([self.blob])
            start = self._searched.get(name, 0)
            if self._runs is not None:
                found = any(name in chunk for chunk in self._vocabulary[start:])
                end = len(self._vocabulary)
            else:
                found = self.blob.find(name, start) >= 0
                end = len(self.blob)
            if not found:
                self._searched[name] = end
        if found:
            self._found.add(name)
        return found


def _in_tool_result(path: tuple) -> bool:
    # Anthropic: ("content", i, "content", ...) addresses a tool_result's own content
    return len(path) >= 3 and path[2] == "content"


def rewrite_turn(body: dict, dialect: str, plan: RewritePlan, state: ConversationState | None = None,
                 keys: Sequence[str] | None = None) -> TurnOutcome:
    """What to send upstream for this request, and the state to keep for the next.

    ``state``: what was stored for this conversation, found under one of
    ``conversation_keys(body, dialect)`` (its ``covered`` messages are a prefix
    of this request's); None for a conversation seen for the first time.  The
    result is the same either way, byte for byte: the state only saves work."""
    run = _Run(body, dialect, plan)
    n = len(run.messages)
    # a state continues only from a step's end (before an assistant message, or
    # the end): one ending elsewhere (the client since added to a message it had
    # sent as the last) would give other bytes than the replay of the steps
    if state is not None and not (0 < state.covered <= n and (state.covered == n
                                                              or run.role(state.covered) == "assistant")):
        state = None
    if state is not None and state.plan != plan_key(plan):
        state = None
    state = state or ConversationState()
    run.state_tokens = state.original_tokens
    counts = list(state.original_tokens) + [run.parsed(i).tokens for i in range(state.covered, n)]
    tokens_before = run.fixed_tokens + sum(counts)
    if tokens_before <= plan.threshold_tokens:
        return TurnOutcome(body, False, "unchanged", BELOW_THRESHOLD, tokens_before,
                           tokens_before)
    problems = run.dialect.check_structure(run.messages)
    if problems:
        return _passthrough(body, tokens_before, f"its message order is not valid for the {dialect} "
                                                 f"dialect ({problems[0]})")
    if any(run.parsed(i).unknown for i in range(state.covered, n)):
        return _passthrough(body, tokens_before, "it holds a message of a shape ctxwarden does not know")
    keys = keys if keys is not None else conversation_keys(body, dialect)
    run.conversation = keys[min(n, _head_of(run, counts) or 1) - 1]
    previous = state
    if state.covered == n and state.outcome:
        # the same request again (a retry): the same bytes and the same account of them
        decision, reason, *costs = state.outcome
    else:
        steps = [p for p in range(state.covered + 1, n) if run.role(p) == "assistant"] + [n]
        for end in steps:
            previous = state
            state = _step(run, state, end, counts)
        cut = [x[0] for x in state.items if isinstance(x, list) and x[0] >= previous.covered]
        decision = "append" if _keeps_prefix(previous, state) and not cut else "compact"
        if not _keeps_prefix(previous, state):
            reason = f"compacted {state.compacted} original messages into a note"
        elif cut:
            reason = f"the latest turn alone exceeded the budget: message {cut[0]} was cut to fit"
        else:
            reason = "appended to what was sent last turn"
        costs = [state.ledger[0] - previous.ledger[0], state.ledger[1] - previous.ledger[1]]
        state = replace(state, key=keys[n - 1], outcome=(decision, reason, *costs))
    if state.failure:
        if plan.critical_overflow == "reject":
            return TurnOutcome(body, False, "refused", state.failure, tokens_before, tokens_before,
                               warning=state.failure)
        return _passthrough(body, tokens_before, state.failure, state)
    new_body, stable = _render(run, state)
    tokens_after = _total(run, state)
    # the originals sent as they came keep their counts: those counted now, and
    # the state's (made when they were new) for messages without cache_control
    # marks, which the key leaves out and a dialect may count; only the rest and
    # what the rewrite made are recounted
    known = {id(run.messages[i]): counts[i] for i in range(n)
             if i >= len(run.state_tokens) or run.known_tokens(i) is not None}
    problems = check_turn(body, new_body, dialect, plan, tokens_after, known)
    if problems:
        return _passthrough(body, tokens_before, "the rewrite would break an invariant: " + problems[0])
    return TurnOutcome(new_body, new_body is not body, decision, reason, tokens_before, tokens_after, state,
                       stable, cost_sent=costs[1], cost_passthrough=costs[0])


def message_counts(body: dict, dialect: str, plan: RewritePlan) -> tuple[list[int], int]:
    """Each original message's tokens as its dialect bills it, and where the
    latest turn starts: the last message the user wrote (0 when none)."""
    run = _Run(body, dialect, plan)
    n = len(run.messages)
    latest = next((i for i in reversed(range(n)) if run.user_wrote(i)), 0)
    return [run.parsed(i).tokens for i in range(n)], latest


def _passthrough(body: dict, tokens: int, reason: str, state: ConversationState | None = None) -> TurnOutcome:
    warning = f"passed through unchanged: {reason}"
    return TurnOutcome(body, False, "passthrough", reason, tokens, tokens, state, warning=warning)


def _total(run: _Run, state: ConversationState) -> int:
    head = sum(state.original_tokens[:state.head])
    return run.fixed_tokens + head + state.note_tokens + sum(state.item_tokens)


# ------------------------------------------------------------------ one step

def _step(run: _Run, state: ConversationState, end: int, counts: list[int]) -> ConversationState:
    """The state after appending originals [state.covered, end), with its
    estimated costs in the ledger; ``failure`` says why it could not fit the
    budget (the step then goes out as the client sent it)."""
    plan, pricing = run.plan, run.plan.pricing
    new = list(range(state.covered, end))
    prior_sent = _total(run, state) if state.covered else 0
    prior_original = run.fixed_tokens + sum(counts[:state.covered]) if state.covered else 0
    items = list(state.items) + new
    item_tokens = list(state.item_tokens) + counts[state.covered:end]
    if state.note is not None:
        recalled = _recall(run, state, new)
        if recalled is not None:
            last = run.parsed(items[-1])
            at = len(items) - 1 if last.role == "user" and not last.result_ids else len(items)
            items.insert(at, recalled)
            item_tokens.insert(at, run.tokens(recalled))
    grown = replace(state, covered=end, items=tuple(items), item_tokens=tuple(item_tokens),
                    original_tokens=tuple(counts[:end]))
    failure = ""
    if _total(run, grown) > plan.budget:
        grown, failure = _compact(run, grown, prior_original, counts, end, state.covered)
        if failure:
            # this step's request goes out as the client sent it; the next appends to that
            grown = ConversationState(covered=end, items=tuple(range(end)), item_tokens=tuple(counts[:end]),
                                      original_tokens=tuple(counts[:end]))
    grown = replace(grown, failure=failure or "", outcome=(), plan=plan_key(plan))
    sent = _total(run, grown)
    original = run.fixed_tokens + sum(counts[:end])
    appended = pricing.appended_token
    pass_cost = pricing.read * prior_original + appended * (original - prior_original)
    if not _keeps_prefix(state, grown):
        cached = run.fixed_tokens + sum(counts[:min(grown.head, state.head or grown.head)])
        sent_cost = pricing.read * cached + appended * (sent - cached)
    else:
        sent_cost = pricing.read * prior_sent + appended * (sent - prior_sent)
    return replace(grown, ledger=(state.ledger[0] + pass_cost, state.ledger[1] + sent_cost))


def _recall(run: _Run, state: ConversationState, new: list[int]) -> dict | None:
    """A recall message for the step's latest turn, or None."""
    # what the user wrote last comes first: its names are what the turn is about
    names_from = [run.user_words(i) for i in reversed(new)]
    names_from += [call for i in new if run.role(i) == "assistant" for call in calls_of(run.parsed(i))]
    if not any(names_from):
        return None
    kept = set(range(state.head)) | {origin_of(x) for x in state.items}
    compacted = [i for i in range(state.head, state.covered) if i not in kept]
    # names are looked for in the messages' JSON first (one C-speed pass);
    # only the compacted messages that hold one are parsed
    text = recall_text(names_from, run.sent_json(state), lambda: run.archive(compacted),
                       run.parsed, lambda m: _call_of(run, m.index),
                       run.plan.share_tokens()[3], run.encoding, run.plan.pruning_distance)
    return None if text is None else {"role": "user", "content": text}


def _call_of(run: _Run, index: int) -> str | None:
    """The call a result message answers: the nearest assistant message before it."""
    for i in range(index - 1, max(-1, index - 64), -1):
        if run.role(i) == "assistant":
            calls = calls_of(run.parsed(i))
            return calls[0] if calls else None
    return None


def _head_of(run: _Run, counts: list[int]) -> int:
    """Originals pinned at the start: leading system messages and the task
    statement (unless it is too long to carry whole: then it is compacted too)."""
    head = 0
    while head < len(run.messages) and run.role(head) in ("system", "developer"):
        head += 1
    if (head < len(run.messages) and run.user_wrote(head)
            and counts[head] <= run.plan.budget * TASK_SHARE):
        head += 1
    return head


def _units(run: _Run, items: Sequence[Item]) -> list[list[int]]:
    """Positions of ``items`` grouped into units: an assistant message and what answers it."""
    units: list[list[int]] = []
    for pos, item in enumerate(items):
        if run.role(item) == "assistant" or not units:
            units.append([pos])
        else:
            units[-1].append(pos)
    return units


def low_water(run: _Run, state: ConversationState, pinned: int, prior_original: int, original: int,
              growth: float) -> int:
    """How many tokens a compaction leaves, from the pricing.

    A compaction writes everything after the pinned head to the provider's
    cache again (``appended`` per token) where appending would have read the
    previous request back (``read`` per token); every turn after it then
    reads ``budget - L`` fewer tokens than appending to the full window would.
    So it pays back after (W(L-P) + rP - rS) / r(B-L) turns, and the window
    refills after (B-L)/growth turns.  The low-water mark L is the shallowest
    (most kept verbatim) that pays back within half of that refill, and that
    the savings made so far (plus a small slack) can pay for at once, so no
    conversation ends up dearer than passthrough; never deeper than the
    pinned head and a note, never shallower than ``plan.low_water`` of the room."""
    plan, pricing = run.plan, run.plan.pricing
    read, appended, budget = pricing.read, pricing.appended_token, plan.budget
    passthrough_step = read * prior_original + appended * (original - prior_original)
    allowed = state.ledger[0] - state.ledger[1] + BUDGET_SLACK * state.ledger[0]
    affordable = pinned + (allowed + passthrough_step - read * pinned) / appended
    deepest = pinned + MIN_NOTE_TOKENS
    best = deepest
    for step in range(1, LOW_WATER_STEPS + 1):
        level = pinned + (budget - pinned) * plan.low_water * step / LOW_WATER_STEPS
        extra = appended * (level - pinned) + read * pinned - read * prior_original
        payback = extra / max(1e-9, read * (budget - level))
        refill = (budget - level) / max(1.0, growth)
        if level > affordable or payback > PAYBACK_SHARE * refill:
            break
        best = level
    return int(best)


def _compact(run: _Run, state: ConversationState, prior_original: int, counts: list[int],
             end: int, pending_from: int) -> tuple[ConversationState, str | None]:
    plan = run.plan
    head, items, item_tokens = state.head, list(state.items), list(state.item_tokens)
    if state.note is None:
        head = _head_of(run, counts)
        items, item_tokens = items[head:], item_tokens[head:]
    pinned = run.fixed_tokens + sum(counts[:head])
    units = _units(run, items)
    growth = (sum(counts[:end]) - sum(counts[:head])) / max(1, sum(1 for i in range(head, end)
                                                                    if run.role(i) == "assistant"))
    target = low_water(run, state, pinned, prior_original, run.fixed_tokens + sum(counts[:end]), growth)
    room = max(0, target - pinned)
    important, supporting = plan.share_tokens()[1:3]
    recent_budget = room * important // max(1, important + supporting)
    keep = max(0, len(units) - 1)
    recent = sum(item_tokens[p] for p in units[-1]) if units else 0
    while keep > 0 and recent + sum(item_tokens[p] for p in units[keep - 1]) <= recent_budget:
        keep -= 1
        recent += sum(item_tokens[p] for p in units[keep])
    # the latest message the user wrote is never compacted: its whole unit stays
    user_unit = next((u for u in range(len(units) - 1, -1, -1)
                      if any(run.user_wrote(items[p]) for p in units[u])), None)
    pinned_units = [user_unit] if user_unit is not None and user_unit < keep else []
    middle = [p for u in range(keep) if u not in pinned_units for p in units[u]]
    middle_messages = [run.parsed(items[p]) for p in middle if not is_recall(items[p])]
    if any(m.unknown for m in middle_messages):
        return state, "a message to compact has a shape ctxwarden does not know"
    kept_positions = [p for u in pinned_units + list(range(keep, len(units))) for p in units[u]]
    result = state
    if middle:
        focus = [run.parsed(items[p]).text for p in kept_positions]
        if head:
            focus.append(run.parsed(head - 1).text)
        entries = list(state.entries) + compact_units(_group(middle_messages), focus)
        compacted = state.compacted + sum(1 for p in middle if origin_of(items[p]) is not None)
        kept_items, kept_tokens = _shorten_long_replies(run, [items[p] for p in kept_positions],
                                                        [item_tokens[p] for p in kept_positions], room)
        note, shown = render_note(entries, max(MIN_NOTE_TOKENS, room - sum(kept_tokens)), compacted, run.encoding)
        result = replace(state, head=head, note=note, entries=shown, compacted=compacted,
                         items=tuple(kept_items), item_tokens=tuple(kept_tokens))
        result = replace(result, note_tokens=_note_tokens(run, result))
    if _total(run, result) > plan.budget and plan.critical_overflow == "fit":
        result = _cut_pending(run, result, pending_from)
    if _total(run, result) > plan.budget:
        return state, _overflow(run)
    return result, None


def _shorten_long_replies(run: _Run, items: list, tokens: list, room: int) -> tuple[list, list]:
    """Kept turns, with the assistant's own replies that would take more than
    LONG_REPLY_SHARE of the room cut to their head, tail and the lines naming
    what its calls name (its calls are never cut): a 7k-token monologue
    would otherwise hold the window until the next compaction."""
    limit = int(room * LONG_REPLY_SHARE)
    items, tokens = list(items), list(tokens)
    for pos, item in enumerate(items):
        if isinstance(item, int) and run.role(item) == "assistant" and tokens[pos] > limit:
            message = run.parsed(item)
            cut = cut_message(message, limit, calls_of(message), run.encoding, run.tokens)
            if cut is not message:
                items[pos], tokens[pos] = [item, without_markers(cut.wire)], cut.tokens
    return items, tokens


def is_recall(item: Item) -> bool:
    return isinstance(item, dict) and str(item.get("content", "")).startswith(f"{MARKER_PREFIX} recalled]")


def _group(messages: list[Message]) -> list[list[Message]]:
    units: list[list[Message]] = []
    for message in messages:
        if message.role == "assistant" or not units:
            units.append([message])
        else:
            units[-1].append(message)
    return units


def _cut_pending(run: _Run, state: ConversationState, pending_from: int) -> ConversationState:
    """The largest outputs cut to fit, this turn's first (originals from
    ``pending_from`` on): tool outputs and the assistant's own long messages,
    never what the user wrote (an Anthropic user turn keeps its text blocks;
    only its tool results are cut)."""
    excess = _total(run, state) - run.plan.budget
    items, tokens = list(state.items), list(state.item_tokens)
    focus = [run.parsed(x).text for x in items if run.role(x) == "assistant"][-1:]
    order = sorted(range(len(items)), key=lambda p: ((origin_of(items[p]) or -1) < pending_from, -tokens[p]))
    for pos in order:
        if excess <= 0:
            break
        item = items[pos]
        message = run.parsed(item)
        if origin_of(item) is None or message.role not in ("tool", "user", "function", "assistant"):
            continue
        if run.user_wrote(item) and not message.result_ids:
            continue
        cut = cut_message(message, max(64, tokens[pos] - excess), focus, run.encoding, run.tokens,
                          editable=lambda path: message.role != "user" or _in_tool_result(path))
        if cut is message:
            continue
        excess -= tokens[pos] - cut.tokens
        # the copy keeps no cache_control of the client's: those belong to the
        # request they came in, and the replay cuts a message that carries none
        items[pos], tokens[pos] = [origin_of(item), without_markers(cut.wire)], cut.tokens
    return replace(state, items=tuple(items), item_tokens=tuple(tokens))


def _keeps_prefix(before: ConversationState, after: ConversationState) -> bool:
    """Whether ``after`` sends everything ``before`` sent, unchanged, first."""
    return (before.head == after.head and before.note == after.note
            and after.items[:len(before.items)] == before.items)


def _overflow(run: _Run) -> str:
    if run.plan.critical_overflow != "fit":
        return (f"its latest turn alone needs more than the budget of {run.plan.budget} tokens "
                f"(critical_overflow is {run.plan.critical_overflow})")
    return (f"the part of this request that is never cut (system prompt, task statement and the latest "
            f"message the user wrote) needs more than the budget of {run.plan.budget} tokens")


# ------------------------------------------------------------------ rendering

def _with_note(run: _Run, state: ConversationState) -> list:
    """The pinned head, then the note as a user message of its own: the head's
    bytes stay as they were, so the provider still reads them from its cache
    (consecutive user messages form one turn in either dialect)."""
    head = [run.messages[i] for i in range(state.head)]
    return head + [_note_message(run, state.note)] if state.note else head


def _note_message(run: _Run, note: str) -> dict:
    return run.dialect.note_message(note)


def _note_tokens(run: _Run, state: ConversationState) -> int:
    return run.tokens(_note_message(run, state.note)) if state.note else 0


def _render(run: _Run, state: ConversationState) -> tuple[dict, int]:
    """The body to send and how many leading messages form its stable prefix."""
    head = _with_note(run, state)
    tail = [run.wire(x) for x in state.items]
    tail = run.dialect.join_turns(tail, {p for p, x in enumerate(state.items) if is_recall(x)})
    messages = head + tail
    stable = len(head) if state.note else 0
    if len(messages) == len(run.messages) and all(a is b for a, b in zip(messages, run.messages)):
        messages = run.messages
    body = run.body if messages is run.messages else run.dialect.with_conversation(run.body, messages)
    return run.dialect.cache_hints(body, run.plan.pricing, stable, run.conversation), stable
