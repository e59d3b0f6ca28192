"""Which dialect a request speaks and which configured upstream serves it."""

from __future__ import annotations

from dataclasses import dataclass

from .config import Upstream
from .errors import NotFound

OPENAI_CHAT_PATH = "/v1/chat/completions"
ANTHROPIC_MESSAGES_PATH = "/v1/messages"


def dialect_of(path: str, has_anthropic_version: bool) -> str:
    if path == ANTHROPIC_MESSAGES_PATH or path.startswith(ANTHROPIC_MESSAGES_PATH + "/"):
        return "anthropic"
    if path == OPENAI_CHAT_PATH:
        return "openai"
    # Both providers serve /v1/models and more; the Anthropic SDK always sends
    # anthropic-version, the OpenAI SDK never does.
    return "anthropic" if has_anthropic_version else "openai"


def chat_dialect(method: str, path: str) -> str | None:
    """The dialect whose chat endpoint this is, or None for a plain forward."""
    if method != "POST":
        return None
    if path == OPENAI_CHAT_PATH:
        return "openai"
    if path == ANTHROPIC_MESSAGES_PATH:
        return "anthropic"
    return None


@dataclass(frozen=True)
class Router:
    upstreams: tuple[Upstream, ...]

    def choose(self, dialect: str, model: str | None) -> Upstream:
        """An upstream of the dialect whose model patterns match; else its first
        catch-all (one without patterns); else its first at all."""
        candidates = [u for u in self.upstreams if u.dialect == dialect]
        if not candidates:
            raise NotFound(f"no upstream serving the {dialect} API is configured in ctxwarden")
        if model:
            for upstream in candidates:
                if upstream.serves_model(model):
                    return upstream
        for upstream in candidates:
            if not upstream.model_patterns:
                return upstream
        return candidates[0]
