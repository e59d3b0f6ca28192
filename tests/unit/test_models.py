"""The built-in model table, the config's overrides of it, the output reserve
and the Anthropic margin as the rewrite plan applies them."""
import json
from pathlib import Path

import pytest

from ctxwarden.chat import parse_chat_body, prepare_chat, rewrite_plan
from ctxwarden.config import ConfigError, TokenManagement, load_config, parse_config
from ctxwarden.dialects import get_dialect, request_tokens
from ctxwarden.encodings import BUNDLED
from ctxwarden.models import BUILTIN_MODELS, builtin_facts, markdown_table
from ctxwarden.pricing import ANTHROPIC_PRICING, OPENAI_PRICING

from .pipeline_helpers import openai_session

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.parametrize("model, window, output, encoding", [
    ("gpt-4o", 128_000, 16_384, "o200k_base"),
    ("gpt-4o-2024-08-06", 128_000, 16_384, "o200k_base"),
    ("gpt-4o-2024-05-13", 128_000, 4_096, "o200k_base"),
    ("gpt-4o-mini-2024-07-18", 128_000, 16_384, "o200k_base"),
    ("gpt-4.1-nano", 1_047_576, 32_768, "o200k_base"),
    ("o1", 200_000, 100_000, "o200k_base"),
    ("o1-mini-2024-09-12", 128_000, 65_536, "o200k_base"),
    ("o3-mini", 200_000, 100_000, "o200k_base"),
    ("o4-mini-2025-04-16", 200_000, 100_000, "o200k_base"),
    ("gpt-5-mini", 400_000, 128_000, "o200k_base"),
    ("gpt-5-chat-latest", 128_000, 16_384, "o200k_base"),
    ("gpt-4-turbo-2024-04-09", 128_000, 4_096, "cl100k_base"),
    ("gpt-4-0125-preview", 128_000, 4_096, "cl100k_base"),
    ("gpt-4", 8_192, 8_192, "cl100k_base"),
    ("gpt-3.5-turbo-0125", 16_385, 4_096, "cl100k_base"),
    ("claude-3-opus-20240229", 200_000, 4_096, "cl100k_base"),
    ("claude-3-5-haiku-latest", 200_000, 8_192, "cl100k_base"),
    ("claude-3-7-sonnet-20250219", 200_000, 64_000, "cl100k_base"),
    ("claude-sonnet-4-5-20250929", 200_000, 64_000, "cl100k_base"),
    ("claude-opus-4-1-20250805", 200_000, 32_000, "cl100k_base"),
])
def test_table_lookup(model, window, output, encoding):
    facts = builtin_facts(model)
    assert (facts.context_window, facts.max_output, facts.encoding) == (window, output, encoding)


@pytest.mark.parametrize("model", ["llama-3.1-70b", "gpt-4-32k", "claude-2.1", "my-gpt-4o", "GPT-4O"])
def test_unknown_models_match_nothing(model):
    assert builtin_facts(model) is None


def test_no_row_is_shadowed_by_an_earlier_one():
    for row in BUILTIN_MODELS:
        assert builtin_facts(row.pattern.replace("*", "")) is row, row.pattern


def test_every_table_encoding_is_shipped_and_anthropic_rows_are_estimates():
    assert {row.encoding for row in BUILTIN_MODELS} <= set(BUNDLED)
    assert all(row.exact_counts == (row.provider == "openai") for row in BUILTIN_MODELS)


def test_readme_shows_the_table():
    assert markdown_table() in README.read_text(encoding="utf-8"), (
        "README's model table is out of date: paste the output of "
        "python -c 'from ctxwarden.models import markdown_table; print(markdown_table())'")


# ------------------------------------------------------------------ config overrides

XML = ("<performance_optimization><token_management>{}"
       "</token_management></performance_optimization>")


def _tm(inner: str) -> TokenManagement:
    return parse_config(XML.format(inner)).token_management


def test_the_config_wins_field_by_field_then_the_table():
    tm = _tm('<models><model pattern="gpt-4o-mini*" context_window="64000"/>'
             '<model pattern="gpt-4o*" context_window="100000" max_output="2000" encoding="cl100k_base"/>'
             '<model pattern="claude-*" margin="0.05"/></models>')
    # first matching <model> that sets the field
    assert tm.context_window_for("gpt-4o-mini") == 64_000
    assert tm.context_window_for("gpt-4o") == 100_000
    assert tm.max_output_for("gpt-4o-mini") == 2_000
    assert tm.encoding_for("gpt-4o-mini") == "cl100k_base"
    # what no <model> sets comes from the table
    assert tm.context_window_for("gpt-4.1") == 1_047_576 and tm.encoding_for("gpt-4.1") == "o200k_base"
    assert tm.max_output_for("claude-opus-4-1") == 32_000
    assert tm.margin_for("claude-opus-4-1", "anthropic") == 0.05
    # neither: nothing
    assert tm.context_window_for("llama-3") is None and tm.max_output_for("llama-3") is None
    assert tm.encoding_for("llama-3") == "cl100k_base"


def test_builtin_false_turns_the_table_off():
    tm = _tm('<models builtin="false" default_encoding="o200k_base"/>')
    assert tm.builtin_models is False
    assert tm.context_window_for("gpt-4o") is None
    assert tm.encoding_for("gpt-4") == "o200k_base"
    assert tm.encodings() == {"o200k_base"}
    assert TokenManagement().encodings() == {"cl100k_base", "o200k_base"}


def test_margin_settings():
    d = TokenManagement()
    assert d.anthropic_margin == 0.2
    assert d.margin_for("claude-sonnet-4", "anthropic") == 0.2
    assert d.margin_for("some-proxy-model", "anthropic") == 0.2  # the dialect: counts are estimates
    assert d.margin_for("claude-sonnet-4", "openai") == 0.2  # an Anthropic model behind an OpenAI-style API
    assert d.margin_for("gpt-4o", "openai") == 0.0
    tm = _tm('<anthropic_margin>0.1</anthropic_margin><models><model pattern="llama*" margin="0.3"/></models>')
    assert tm.margin_for("claude-sonnet-4", "anthropic") == 0.1 and tm.margin_for("llama-3", "openai") == 0.3
    assert _tm("<anthropic_margin>0</anthropic_margin>").margin_for("claude-3-haiku", "anthropic") == 0.0
    for bad in ("<anthropic_margin>1</anthropic_margin>", "<anthropic_margin>-0.1</anthropic_margin>",
                '<models><model pattern="x" margin="1.5"/></models>',
                '<models><model pattern="x" max_output="0"/></models>',
                '<models builtin="maybe"/>'):
        with pytest.raises(ConfigError):
            _tm(bad)


# ------------------------------------------------------------------ the plan's budget

def _body(model: str, **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


@pytest.mark.parametrize("body, dialect, budget", [
    (_body("gpt-4o", max_tokens=4096), "openai", 128_000 - 4096),
    (_body("gpt-4o", max_completion_tokens=1000, max_tokens=4096), "openai", 128_000 - 1000),
    # no output named: room for the model's max output
    (_body("gpt-4o"), "openai", 128_000 - 16_384),
    (_body("o3", max_completion_tokens=None), "openai", 200_000 - 100_000),
    (_body("gpt-5"), "openai", 200_000),  # 400k - 128k is above the budget
    (_body("gpt-4o", max_tokens=True), "openai", 128_000 - 16_384),  # not a number: as if unnamed
    (_body("llama-3", max_tokens=100), "openai", 200_000),  # unknown: the budget only
    (_body("claude-sonnet-4-5", max_tokens=8192), "anthropic", int((200_000 - 8192) * 0.8)),
    (_body("claude-3-haiku-20240307", max_tokens=4096), "anthropic", int((200_000 - 4096) * 0.8)),
    (_body("gpt-4o", max_tokens=200_000), "openai", 1),
])
def test_budget_is_capped_by_the_window_less_the_output_and_margin(body, dialect, budget):
    pricing = ANTHROPIC_PRICING if dialect == "anthropic" else OPENAI_PRICING
    assert rewrite_plan(TokenManagement(), body, pricing, dialect).budget == budget


def test_plan_counts_with_the_tables_encoding():
    assert rewrite_plan(TokenManagement(), _body("gpt-4o"), OPENAI_PRICING, "openai").encoding == "o200k_base"
    assert rewrite_plan(TokenManagement(), _body("gpt-4"), OPENAI_PRICING, "openai").encoding == "cl100k_base"
    assert rewrite_plan(TokenManagement(), _body("claude-3-opus"), ANTHROPIC_PRICING,
                        "anthropic").encoding == "cl100k_base"


def _gpt4o_request(tokens: int, **extra) -> dict:
    """The first turn of an agent session whose request carries at least `tokens` (o200k)."""
    for steps in range(100, 400, 10):
        body = openai_session(steps, lines=60)[-1]
        body.update(extra)
        if request_tokens(body, get_dialect("openai"), "o200k_base") >= tokens:
            return body
    raise AssertionError("no session that long")


@pytest.fixture(scope="module")
def big_gpt4o():
    return _gpt4o_request(130_000, max_tokens=4096)


def test_shipped_config_fits_a_130k_gpt4o_request_into_its_window(big_gpt4o):
    tokens = load_config(None).token_management
    raw = json.dumps(big_gpt4o).encode()
    chat = prepare_chat(tokens, "openai", raw, parse_chat_body(raw, get_dialect("openai")))
    assert chat.tokens_before >= 130_000
    # compacted (on this turn, or on the earlier turns the rewrite replays)
    assert chat.rewrite in ("append", "compact")
    assert chat.tokens_after <= 128_000 - 4096
    sent = json.loads(chat.content)
    assert request_tokens(sent, get_dialect("openai"), "o200k_base") == chat.tokens_after
    assert sent["messages"][:2] == big_gpt4o["messages"][:2]
    assert sent["messages"][-1] == big_gpt4o["messages"][-1]
    assert sent["max_tokens"] == 4096


def test_without_the_table_the_same_request_went_out_unchanged(big_gpt4o):
    tokens = _tm('<models builtin="false"/>')
    raw = json.dumps(big_gpt4o).encode()
    chat = prepare_chat(tokens, "openai", raw, parse_chat_body(raw, get_dialect("openai")))
    # below 0.7 x the 200k budget: sent as it came, over gpt-4o's window
    assert chat.content == raw and chat.tokens_after > 128_000 - 4096


def test_readme_config_examples_load():
    import re

    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```xml\n(.*?)```", text, re.S)
    models = [b for b in blocks if b.lstrip().startswith("<models>")]
    full = [b for b in blocks if b.lstrip().startswith("<performance_optimization>")]
    assert models and full
    for block in models:
        parse_config(XML.format(block))
    for block in full:
        parse_config(block)


def test_state_lookup_threshold_follows_the_capped_budget():
    from ctxwarden.chat import manages

    body = _body("gpt-4o")
    raw = b" " * 100_000  # more bytes than 0.7 x 111,616 tokens can be, fewer than 0.7 x 200,000
    assert manages(TokenManagement(), "openai", body, raw)
    assert not manages(TokenManagement(builtin_models=False), "openai", body, raw)
