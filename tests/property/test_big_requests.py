"""Property tests of what makes big requests cheap, against the plain way:

* a known conversation's turn counts only its new messages, and its counts
  (``tokens_before``, and the invariant check's recount from known per-message
  counts) equal a full count of the request and of the body sent;
* recall's joined archive finds the messages holding a name as a scan of each
  message does, and a name's UTF-8 is in a text's exactly when the name is;
* the depth check one level at a time agrees with a recursive walk.

Each counts the examples that reached what it checks and asserts a floor
(``test_floors``, the last test of the module).
"""
from __future__ import annotations

from collections import Counter

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from ctxwarden.dialects import get_dialect, request_tokens
from ctxwarden.pipeline import ConversationState, RewritePlan, conversation_keys, rewrite_turn
from ctxwarden.pipeline.conversation import SentText
from ctxwarden.pipeline.invariants import sent_tokens
from ctxwarden.pipeline.recall import Archive
from ctxwarden.pipeline.state import has_markers
from ctxwarden.tokens import DEFAULT_ENCODING
from ctxwarden.wirejson import _depth_exceeds, compact, compact_or_none
from tests.unit.pipeline_helpers import STEP_KINDS, STYLES, anthropic_requests, openai_requests

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
REACHED: Counter = Counter()

output_spec = st.tuples(st.sampled_from([0, 1, 3, 8, 25, 60, 120]), st.sampled_from(STYLES), st.booleans())
step_spec = st.tuples(st.sampled_from(STEP_KINDS), st.lists(output_spec, min_size=1, max_size=3), st.booleans())
conversation_spec = st.fixed_dictionaries({
    "system": st.integers(0, 3), "task": st.integers(0, 2),
    "steps": st.lists(step_spec, min_size=2, max_size=14)})


@SETTINGS
@given(spec=conversation_spec, dialect=st.sampled_from(["openai", "anthropic"]),
       budget=st.integers(1500, 6000), threshold=st.sampled_from([0.0, 0.5]))
def test_a_known_conversation_counts_only_its_new_messages_and_the_same(spec, dialect, budget, threshold):
    requests = openai_requests(spec) if dialect == "openai" else anthropic_requests(spec)
    plan = RewritePlan(budget=budget, compression_threshold=threshold)
    wire = get_dialect(dialect)
    store: dict[str, bytes] = {}
    REACHED["examples"] += 1
    for body in requests:
        keys = conversation_keys(body, dialect)
        raw = next((store[k] for k in reversed(keys) if k in store), None)
        state = None if raw is None else ConversationState.from_bytes(raw)
        counted: list = []
        original = wire.message_tokens

        def spy(message, encoding, _counted=counted, _original=original):
            _counted.append(message)
            return _original(message, encoding)

        wire_counts = getattr(wire, "message_tokens")
        try:
            # every message counted while deciding is new, or made by the rewrite
            setattr(wire, "message_tokens", spy)
            out = rewrite_turn(body, dialect, plan, state, keys)
        finally:
            setattr(wire, "message_tokens", wire_counts)
        assert out.tokens_before == request_tokens(body, wire, DEFAULT_ENCODING)
        if state is not None:
            REACHED["known state"] += 1
            # (those with cache_control marks aside: the key leaves the marks out, so they are recounted)
            old = {id(m) for m in body["messages"][:state.covered] if not has_markers(m)}
            assert not any(id(m) in old for m in counted), "a message the state covers was counted again"
        if out.changed:
            REACHED["rewritten"] += 1
            known = {id(m): wire.message_tokens(m, DEFAULT_ENCODING) for m in body["messages"]}
            full = request_tokens(out.body, wire, DEFAULT_ENCODING)
            assert sent_tokens(out.body, wire, DEFAULT_ENCODING, known) == full
            assert full <= out.tokens_after <= plan.budget
        if out.state is not None:
            store[out.state.key] = out.state.to_bytes()


names = st.text(alphabet="abcxyz_./:-0123456789٣", min_size=1, max_size=5)   # ٣: a digit of another script
texts = st.text(alphabet="abcxyz_./:-,{}\"\\\n0123456789٣é ", max_size=40)


@SETTINGS
@given(archive=st.dictionaries(st.integers(0, 500), texts, max_size=12), wanted=st.lists(names, max_size=6))
def test_the_joined_archive_finds_what_a_scan_of_each_message_finds(archive, wanted):
    REACHED["archives"] += 1
    texts_json = {i: compact(text) for i, text in sorted(archive.items())}
    joined = Archive(texts_json)
    grown = Archive({i: t for i, t in texts_json.items() if i % 2})   # as a replay: messages added later
    grown.holding(b"abcd")
    grown.add(texts_json)
    grown_indexed = Archive({i: t for i, t in texts_json.items() if i % 2})
    grown_indexed.INDEX_AFTER = 0
    grown_indexed.holding(b"abcd")                                    # indexed, then messages added
    grown_indexed.add(texts_json)
    for name in wanted:
        expected = [i for i, text in texts_json.items() if name.encode() in text]
        assert joined.holding(name.encode()) == expected
        assert joined.holding(name.encode()) == expected         # remembered, the same
        assert grown.holding(name.encode()) == expected
        assert grown_indexed.holding(name.encode()) == expected
        indexed = Archive(texts_json)
        indexed.INDEX_AFTER = 0                                   # the vocabulary index at once
        assert indexed.holding(name.encode()) == expected
        REACHED["names held"] += bool(expected)
        for text in archive.values():
            assert (name in text) == (name.encode() in text.encode())


@SETTINGS
@given(note=texts, steps=st.lists(st.tuples(st.lists(texts, max_size=3), st.lists(names, max_size=4)), max_size=6))
def test_the_growing_sent_text_answers_as_the_whole_text(note, steps):
    """Between compactions a replay appends items; ``in`` on the kept text is ``in`` on the whole."""
    REACHED["sent texts"] += 1
    # scanned whole, indexed at once, and indexed midway (after two look-ups)
    texts = [SentText(note, 1) for _ in range(3)]
    texts[1].INDEX_AFTER, texts[2].INDEX_AFTER = 0, 2
    items: tuple = ()
    for added, wanted in steps:
        items = items + tuple({"role": "tool", "content": text} for text in added)
        state = ConversationState(note=note, head=1, items=items)
        whole = compact([note, *items])
        for sent in texts:
            assert sent.continues(state)
            sent.extend(items, [compact(item) for item in items[len(sent.items):]])
        for name in wanted:
            REACHED["names sent"] += name.encode() in whole
            for sent in texts:
                assert (name.encode() in sent) == (name.encode() in whole)
                assert (name.encode() in sent) == (name.encode() in whole)
    for sent in texts:
        assert not sent.continues(ConversationState(note=note + "x", head=1, items=items))


def test_an_indexed_sent_text_finds_no_name_across_two_runs():
    """The vocabulary keeps its runs apart: "ab cd" holds no "bc"."""
    for index_after in (0, 1, 16):
        sent = SentText("ab cd", 1)
        sent.INDEX_AFTER = index_after
        sent.extend((0,), [compact({"role": "tool", "content": "ef/gh ij"})])
        for _ in range(3):
            assert b"bc" not in sent and b"hi" not in sent and b"fg" not in sent
            assert b"ab" in sent and b"ef/gh" in sent and b"f/g" in sent


json_values = st.recursive(st.none() | st.integers() | st.text(max_size=3),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                               st.sampled_from(["a", "b", "cache_control"]) | st.text(max_size=2), inner, max_size=3),
                           max_leaves=30)


def _depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


@SETTINGS
@given(value=json_values, limit=st.integers(0, 6))
def test_the_depth_check_agrees_with_a_recursive_walk(value, limit):
    REACHED["depths"] += 1
    REACHED["too deep"] += _depth(value) > limit
    REACHED["marked"] += has_markers(value)
    assert _depth_exceeds(value, limit) == (_depth(value) > limit)
    assert has_markers(value) == ('"cache_control"' in compact(value).decode())


def test_compact_or_none_is_compact_where_orjson_takes_it():
    assert compact_or_none({"a": [1, "é"]}) == compact({"a": [1, "é"]})
    assert compact_or_none("\ud800") is None
    assert compact_or_none(2 ** 70) is None
    parts = [compact_or_none(v) for v in ("note", {"role": "user", "content": "x"}, [1, 2])]
    assert b"[" + b",".join(parts) + b"]" == compact(["note", {"role": "user", "content": "x"}, [1, 2]])


bodies = st.dictionaries(st.sampled_from(["model", "messages", "stream", "a"]) | st.text(max_size=3),
                         json_values | st.lists(json_values, max_size=4), max_size=5)


@SETTINGS
@given(body=bodies, indent=st.sampled_from([None, 0, 2]), cut=st.integers(0, 400), junk=st.sampled_from(
    ["", " ", ",", "]", "}", "x", "1e400", "NaN", '"\\ud800"']))
def test_a_body_parsed_in_pieces_is_the_body_parsed_whole(body, indent, cut, junk):
    """Big bodies are parsed a value at a time: the same value, or the same refusal."""
    import json

    from ctxwarden.errors import BadRequest
    from ctxwarden.wirejson import _in_pieces, _whole

    REACHED["pieces"] += 1
    text = json.dumps(body, indent=indent)
    for raw in (text.encode(), (text[:cut] + junk + text[cut:]).encode("utf-8", "surrogatepass")):
        try:
            whole = _whole(raw)
        except BadRequest:
            whole = BadRequest
        try:
            pieces = _in_pieces(raw)
        except (RecursionError, ValueError, UnicodeDecodeError):
            continue                       # parse_json then parses it whole: the same by construction
        REACHED["pieces parsed"] += 1
        assert whole is not BadRequest, "parsed in pieces what the whole parse refuses"
        assert pieces == whole and list(pieces) == list(whole)
    REACHED["pieces refused"] += whole is BadRequest


def test_floors():
    """Every property above was reached by enough examples to mean something."""
    assert REACHED["examples"] >= 50
    assert REACHED["known state"] >= 100
    assert REACHED["rewritten"] >= 50
    assert REACHED["sent texts"] >= 50 and REACHED["names sent"] >= 20
    assert REACHED["pieces parsed"] >= 50 and REACHED["pieces refused"] >= 10
    assert REACHED["archives"] >= 50 and REACHED["names held"] >= 10
    assert REACHED["depths"] >= 50 and REACHED["too deep"] >= 10 and REACHED["marked"] >= 5
