import base64
import struct
import zlib

import pytest

from ctxwarden import tokens
from ctxwarden.dialects import openai
from ctxwarden.dialects.anthropic import tokens as anthropic_tokens
from ctxwarden.dialects.openai.tokens import image_tokens as openai_image_tokens, tools_tokens as count_openai_tools
from ctxwarden.tokens import DEFAULT_ENCODING, count_text
from tests.unit.pipeline_helpers import count_request_tokens

# The OpenAI cookbook "How to count tokens with tiktoken" example; the cookbook
# states 129 prompt tokens for gpt-3.5-turbo / gpt-4 (cl100k_base), matching the API.
COOKBOOK_MESSAGES = [
    {"role": "system", "content": "You are a helpful, pattern-following assistant that translates corporate jargon into plain English."},
    {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    {"role": "system", "name": "example_assistant", "content": "Things working well together will increase revenue."},
    {"role": "system", "name": "example_user", "content": "Let's circle back when we have more bandwidth to touch base on opportunities for increased leverage."},
    {"role": "system", "name": "example_assistant", "content": "Let's talk later when we're less busy about how to do better."},
    {"role": "user", "content": "This late pivot means we don't have time to boil the ocean for the client deliverable."},
]


def test_cookbook_example_is_129():
    assert count_request_tokens({"model": "gpt-4", "messages": COOKBOOK_MESSAGES}, "openai") == 129


def test_count_text_simple_and_special_tokens():
    assert count_text("hello world") == 2  # "hello", " world"
    assert count_text("") == 0
    # special-token text is ordinary text: never raises, several tokens
    assert count_text("<|endoftext|>") > 1
    assert count_request_tokens({"messages": [{"role": "user", "content": "<|endoftext|> <|im_start|>"}]}, "openai") > 0


def test_single_message_hand_computed():
    # 3 (message) + "user" (1) + "hello world" (2) + 3 (priming) = 9
    body = {"messages": [{"role": "user", "content": "hello world"}]}
    assert count_request_tokens(body, "openai") == 9
    # name adds its tokens + 1
    body = {"messages": [{"role": "user", "name": "bob", "content": "hello world"}]}
    assert count_request_tokens(body, "openai") == 9 + count_text("bob") + 1


def test_text_parts_equal_string_content():
    a = {"messages": [{"role": "user", "content": "hello world"}]}
    b = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}, {"type": "text", "text": " world"}]}]}
    assert count_request_tokens(a, "openai") == count_request_tokens(b, "openai")


def test_tool_calls_counted():
    call = {"id": "call_1", "type": "function", "function": {"name": "bash", "arguments": '{"command":"ls -la"}'}}
    msg = {"role": "assistant", "content": None, "tool_calls": [call]}
    expected = 3 + count_text("assistant") + 4 + count_text("bash") + count_text('{"command":"ls -la"}')
    assert openai.message_tokens(msg, DEFAULT_ENCODING) == expected
    tool = {"role": "tool", "tool_call_id": "call_1", "content": "file.txt"}
    assert openai.message_tokens(tool, DEFAULT_ENCODING) == 3 + count_text("tool") + count_text("call_1") + count_text("file.txt")


def test_tools_definition_cookbook_recipe():
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "Get the weather.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "description": "The city."},
            "unit": {"type": "string", "description": "Unit", "enum": ["c", "f"]}}}}}]
    expected = (10 + count_text("get_weather:Get the weather")
                + 3 + 3 + count_text("city:string:The city")
                + 3 - 3 + 3 + count_text("c") + 3 + count_text("f") + count_text("unit:string:Unit")
                + 12)
    assert count_openai_tools(tools) == expected
    with_tools = count_request_tokens({"messages": [], "tools": tools}, "openai")
    assert with_tools == 3 + expected


def test_image_tile_formula():
    assert openai_image_tokens(None, None) == 85
    assert openai_image_tokens(1024, 1024, "low") == 85
    # 1024x1024 -> 768x768 -> 2x2 tiles -> 85 + 4*170 = 765 (OpenAI docs example)
    assert openai_image_tokens(1024, 1024) == 765
    # 2048x4096 -> 1024x2048 -> 768x1536 -> 2x3 tiles = 1105 (OpenAI docs example)
    assert openai_image_tokens(2048, 4096) == 1105


def _png(w, h):
    raw = b"\x89PNG\r\n\x1a\n"
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    raw += struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return raw


def test_image_size_from_data_url():
    url = "data:image/png;base64," + base64.b64encode(_png(1024, 1024)).decode()
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]}
    assert count_request_tokens(body, "openai") == 3 + 1 + 765 + 3
    remote = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]}
    assert count_request_tokens(remote, "openai") == 3 + 1 + 85 + 3


def test_anthropic_estimate_counts_everything():
    base = {"model": "claude", "max_tokens": 10, "messages": [{"role": "user", "content": "hello world"}]}
    n0 = count_request_tokens(base, "anthropic")
    assert n0 == anthropic_tokens.REQUEST_OVERHEAD + anthropic_tokens.TOKENS_PER_MESSAGE + 2
    with_system = dict(base, system="You are terse.")
    assert count_request_tokens(with_system, "anthropic") == n0 + count_text("You are terse.")
    blocks = dict(base, system=[{"type": "text", "text": "You are terse."}])
    assert count_request_tokens(blocks, "anthropic") == n0 + count_text("You are terse.")
    tool_turn = dict(base, messages=[
        {"role": "user", "content": "list"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "bash", "input": {"cmd": "ls"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "a.py\nb.py"}]},
    ])
    n = count_request_tokens(tool_turn, "anthropic")
    assert n > count_text("a.py\nb.py") + count_text('{"cmd":"ls"}')


def test_memoised(monkeypatch):
    text = "word " * 20000
    tokens.clear_cache()
    body = {"messages": [{"role": "user", "content": text + str(i)} for i in range(50)]}
    first = count_request_tokens(body, "openai")
    encoded = []
    real = tokens.get_encoding

    class Watched:
        def __init__(self, encoding):
            self.encoding = encoding

        def encode_ordinary(self, value):
            encoded.append(value)
            return self.encoding.encode_ordinary(value)

    monkeypatch.setattr(tokens, "get_encoding", lambda name=tokens.DEFAULT_ENCODING: Watched(real(name)))
    assert count_request_tokens(body, "openai") == first
    assert encoded == [], "a recount encodes nothing again"
    body["messages"].append({"role": "user", "content": "one more"})
    count_request_tokens(body, "openai")
    assert encoded == ["one more"], "a grown conversation encodes only its new text"


@pytest.mark.parametrize("body", [{}, {"messages": None}, {"messages": "x"}, {"messages": [1, None, {"role": 5}]}])
def test_never_raises_on_odd_shapes(body):
    assert count_request_tokens(body, "openai") >= 0
    assert count_request_tokens(body, "anthropic") >= 0


def test_default_encoding_name():
    assert DEFAULT_ENCODING == "cl100k_base"


def test_unknown_encoding_falls_back_to_default():
    assert count_text("hello world", "no_such_encoding") == count_text("hello world")
