"""Telling a chat body's dialect from its shape (`ctxwarden explain` without --dialect)."""

from __future__ import annotations

import pytest

from ctxwarden.dialects import anthropic, dialect_of_body, openai, responses
from ctxwarden.errors import BadRequest

USER = {"role": "user", "content": "hello"}


@pytest.mark.parametrize("body", [
    {"model": "m", "system": "be brief", "messages": [USER]},
    {"model": "m", "anthropic_version": "vertex-2023-10-16", "max_tokens": 5, "messages": [USER]},
    {"model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
    {"model": "m", "messages": [
        USER,
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "ls", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "a.py"}]}]},
    {"model": "m", "tools": [{"name": "ls", "input_schema": {"type": "object"}}], "messages": [USER]},
    {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}]}]},
], ids=["system", "anthropic_version", "max_tokens-text-blocks", "tool-blocks", "input-schema", "image-source"])
def test_anthropic_bodies(body):
    assert dialect_of_body(body) is anthropic


@pytest.mark.parametrize("body", [
    {"model": "m", "messages": [{"role": "system", "content": "be brief"}, USER]},
    {"model": "m", "messages": [{"role": "developer", "content": "be brief"}, USER]},
    {"model": "m", "messages": [
        USER,
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "ls", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "a.py"}]},
    {"model": "m", "max_completion_tokens": 10, "messages": [USER]},
    {"model": "m", "tools": [{"type": "function", "function": {"name": "ls"}}], "messages": [USER]},
    {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]}]},
], ids=["system-role", "developer-role", "tool-calls", "max_completion_tokens", "function-tools", "image_url"])
def test_openai_bodies(body):
    assert dialect_of_body(body) is openai


@pytest.mark.parametrize("body", [
    {"model": "m", "input": "hello"},
    {"model": "m", "instructions": "be brief", "input": [USER]},
    {"model": "m", "input": [USER, {"type": "function_call", "call_id": "c1", "name": "ls", "arguments": "{}"},
                             {"type": "function_call_output", "call_id": "c1", "output": "a.py"}]},
    {"model": "m", "previous_response_id": "resp_1", "input": [USER]},
], ids=["input-string", "instructions", "function-call-items", "previous_response_id"])
def test_responses_bodies(body):
    assert dialect_of_body(body) is responses


def test_a_body_both_apis_take_is_not_guessed():
    with pytest.raises(BadRequest, match="nothing in the body tells its dialect"):
        dialect_of_body({"model": "m", "max_tokens": 64, "messages": [USER]})


def test_a_body_with_both_dialects_features_names_them():
    body = {"model": "m", "system": "s", "messages": [{"role": "system", "content": "s"}, USER]}
    with pytest.raises(BadRequest) as refused:
        dialect_of_body(body)
    message = refused.value.message
    assert "more than one dialect" in message
    assert "anthropic: top-level system" in message and "openai: a message of role system" in message


@pytest.mark.parametrize("body", [[], "text", None, {"messages": "not a list"}, {"messages": [1, "x", None]}])
def test_odd_shapes_never_raise_anything_but_a_bad_request(body):
    with pytest.raises(BadRequest):
        dialect_of_body(body)


def test_signs_say_what_was_seen():
    body = {"model": "m", "stop_sequences": ["x"], "top_k": 1, "messages": [USER]}
    assert anthropic.body_signs(body) == ["top-level stop_sequences", "top-level top_k"]
    assert openai.body_signs(body) == []
