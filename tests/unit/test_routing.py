import pytest

from ctxwarden.config import Upstream
from ctxwarden.errors import NotFound
from ctxwarden.dialects import anthropic, chat_dialect, dialect_for, openai
from ctxwarden.routing import Router

OPENAI = Upstream("openai", "openai", "https://api.openai.com")
LOCAL = Upstream("local", "openai", "http://127.0.0.1:11434", model_patterns=("llama-*",))
ANTHROPIC = Upstream("anthropic", "anthropic", "https://api.anthropic.com")


def test_chat_dialect_only_for_posts_to_chat_endpoints():
    assert chat_dialect("POST", "/v1/chat/completions") is openai
    assert chat_dialect("POST", "/v1/messages") is anthropic
    assert chat_dialect("GET", "/v1/chat/completions") is None
    assert chat_dialect("POST", "/v1/messages/count_tokens") is None
    assert chat_dialect("POST", "/v1/embeddings") is None


def test_dialect_of_other_paths_follows_the_anthropic_version_header():
    version = {"anthropic-version": "2023-06-01"}
    assert dialect_for("/v1/messages/batches", {}) is anthropic
    assert dialect_for("/v1/models", version) is anthropic
    assert dialect_for("/v1/models", {}) is openai
    assert dialect_for("/v1/chat/completions", version) is openai


def test_model_pattern_wins_then_catch_all_of_the_dialect():
    router = Router((LOCAL, OPENAI, ANTHROPIC))
    assert router.choose("openai", "llama-3-8b") is LOCAL
    assert router.choose("openai", "gpt-4o") is OPENAI
    assert router.choose("openai", None) is OPENAI
    assert router.choose("anthropic", "llama-3") is ANTHROPIC


def test_only_patterned_upstreams_still_serve_their_dialect():
    assert Router((LOCAL,)).choose("openai", "gpt-4o") is LOCAL


def test_no_upstream_for_dialect_is_not_found():
    with pytest.raises(NotFound):
        Router((OPENAI,)).choose("anthropic", "claude-3")
