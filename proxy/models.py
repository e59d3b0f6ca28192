"""The built-in table of model families: context window, maximum output and
the encoding to count with, for current OpenAI and Anthropic models.

Used where the config's ``<models>`` entries name none (``TokenManagement``
asks the config first, field by field, then this table); ``<models
builtin="false">`` turns it off.  A model that matches neither gets no
context-window cap and the default encoding.

Figures are the providers' published ones for their first-party APIs at the
time of writing; ``<model pattern="..." context_window="..." max_output="..."/>``
overrides any of them.  Anthropic publishes no tokenizer: its rows count with
cl100k_base as an estimate, and the context-window cap of Anthropic requests
keeps a margin for it (``token_management/anthropic_margin``).

The README's model table is ``markdown_table()``; a test keeps them equal.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from functools import lru_cache

O200K = "o200k_base"
CL100K = "cl100k_base"


@dataclass(frozen=True)
class ModelFacts:
    """One family: the models whose name matches ``pattern`` (a glob)."""

    pattern: str
    provider: str  # "openai" or "anthropic"
    context_window: int  # input plus output tokens
    max_output: int  # the most output tokens a request may ask for
    encoding: str

    @property
    def exact_counts(self) -> bool:
        """Whether the encoding is the model's own tokenizer (else an estimate)."""
        return self.provider == "openai"


# The first matching row wins: specific patterns before the broad ones.
BUILTIN_MODELS: tuple[ModelFacts, ...] = (
    # OpenAI, o200k_base
    ModelFacts("gpt-5*-chat*", "openai", 128_000, 16_384, O200K),
    ModelFacts("gpt-5*-pro*", "openai", 400_000, 272_000, O200K),
    ModelFacts("gpt-5*", "openai", 400_000, 128_000, O200K),
    ModelFacts("gpt-4.1*", "openai", 1_047_576, 32_768, O200K),
    ModelFacts("gpt-4.5*", "openai", 128_000, 16_384, O200K),
    ModelFacts("gpt-4o-mini*", "openai", 128_000, 16_384, O200K),
    ModelFacts("gpt-4o-2024-05-13", "openai", 128_000, 4_096, O200K),
    ModelFacts("gpt-4o*", "openai", 128_000, 16_384, O200K),
    ModelFacts("chatgpt-4o*", "openai", 128_000, 16_384, O200K),
    ModelFacts("o1-mini*", "openai", 128_000, 65_536, O200K),
    ModelFacts("o1-preview*", "openai", 128_000, 32_768, O200K),
    ModelFacts("o1*", "openai", 200_000, 100_000, O200K),
    ModelFacts("o3*", "openai", 200_000, 100_000, O200K),
    ModelFacts("o4-mini*", "openai", 200_000, 100_000, O200K),
    ModelFacts("codex-mini*", "openai", 200_000, 100_000, O200K),
    # OpenAI, older families, cl100k_base
    ModelFacts("gpt-4-turbo*", "openai", 128_000, 4_096, CL100K),
    ModelFacts("gpt-4-*preview*", "openai", 128_000, 4_096, CL100K),
    ModelFacts("gpt-4", "openai", 8_192, 8_192, CL100K),
    ModelFacts("gpt-4-0613", "openai", 8_192, 8_192, CL100K),
    ModelFacts("gpt-4-0314", "openai", 8_192, 8_192, CL100K),
    ModelFacts("gpt-3.5-turbo-instruct*", "openai", 4_096, 4_096, CL100K),
    ModelFacts("gpt-3.5-turbo*", "openai", 16_385, 4_096, CL100K),
    # Anthropic: 200k windows; counts are estimates with cl100k_base
    ModelFacts("claude-opus-4-5*", "anthropic", 200_000, 64_000, CL100K),
    ModelFacts("claude-opus-4*", "anthropic", 200_000, 32_000, CL100K),
    ModelFacts("claude-sonnet-4*", "anthropic", 200_000, 64_000, CL100K),
    ModelFacts("claude-haiku-4*", "anthropic", 200_000, 64_000, CL100K),
    ModelFacts("claude-3-7-sonnet*", "anthropic", 200_000, 64_000, CL100K),
    ModelFacts("claude-3-5-*", "anthropic", 200_000, 8_192, CL100K),
    ModelFacts("claude-3-*", "anthropic", 200_000, 4_096, CL100K),
)


@lru_cache(maxsize=1024)
def builtin_facts(model: str) -> ModelFacts | None:
    """The first table row whose pattern matches ``model``, or None."""
    return next((row for row in BUILTIN_MODELS if fnmatch.fnmatchcase(model, row.pattern)), None)


def markdown_table() -> str:
    """The table as the README shows it."""
    lines = ["| pattern | provider | context window | max output | encoding |",
             "| --- | --- | ---: | ---: | --- |"]
    for row in BUILTIN_MODELS:
        encoding = row.encoding if row.exact_counts else f"{row.encoding} (estimate)"
        lines.append(f"| `{row.pattern}` | {row.provider} | {row.context_window:,} | {row.max_output:,} "
                     f"| {encoding} |")
    return "\n".join(lines) + "\n"
