"""The `ctxwarden` command line: validate, serve (its logs), explain, and help on every argument."""

from __future__ import annotations

import re

import openai
import pytest

from tests.fake_upstream import expected_reply
from tests.servers import SEED_CONFIG as SEED_ONLY, cli_server, free_port, proxy_config_xml, run_cli

from ._helpers import OPENAI_MODEL, assert_token_headers


def _write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_version_is_the_installed_distributions():
    from importlib import metadata

    result = run_cli(["--version"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"ctxwarden {metadata.version('ctxwarden')}"


def test_validate_seed_config(tmp_path):
    path = _write(tmp_path, "seed.xml", SEED_ONLY)
    result = run_cli(["validate", str(path)])
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout or result.stdout.strip() == "" or str(path) in result.stdout


def test_validate_full_config(tmp_path):
    path = _write(tmp_path, "full.xml", proxy_config_xml("http://127.0.0.1:9", local_url="http://127.0.0.1:10"))
    result = run_cli(["validate", str(path)])
    assert result.returncode == 0, result.stderr


def test_validate_shipped_default_config():
    result = run_cli(["validate", "config/performance.xml"])
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "broken, line, words",
    [
        # out-of-range values on lines 3 and 4
        (SEED_ONLY.replace("<budget>200000</budget>", "<budget>-5</budget>"), 3, ["budget"]),
        (SEED_ONLY.replace("<compression_threshold>0.7", "<compression_threshold>1.7"), 4, ["compression_threshold"]),
        # malformed XML: a mismatched closing tag on line 8
        (SEED_ONLY.replace("<max_workers>4</max_workers>", "<max_workers>4</max_worker>"), 8, []),
        # an unknown element on line 11
        (SEED_ONLY.replace("<resource_limit>0.8</resource_limit>", "<resource_limit>0.8</resource_limit>\n"
                           "    <bogus>1</bogus>"), 11, ["bogus"]),
        # a cache read dearer than Anthropic's default write, on line 14
        (SEED_ONLY.replace("  </parallel_execution>\n", "  </parallel_execution>\n  <upstreams>\n"
                           '    <upstream name="a" dialect="anthropic" base_url="http://127.0.0.1:9">\n'
                           '      <pricing read="2"/>\n    </upstream>\n  </upstreams>\n'),
         14, ["<pricing>", "read=2", "write=1.25"]),
        # the removed <checkpoint> element on line 6
        (SEED_ONLY.replace("<pruning_distance>3</pruning_distance>",
                           '<pruning_distance>3</pruning_distance>\n    <checkpoint every="6000"/>'),
         6, ["<checkpoint> was removed", "<pricing>"]),
    ],
    ids=["negative-budget", "threshold-above-1", "malformed", "unknown-element", "pricing-read-above-write",
         "removed-checkpoint"],
)
def test_validate_bad_config_reports_file_and_line(tmp_path, broken, line, words):
    path = _write(tmp_path, "bad.xml", broken)
    result = run_cli(["validate", str(path)])
    assert result.returncode != 0
    output = result.stderr + result.stdout
    assert f"{path}:{line}" in output, output
    for word in words:
        assert word in output, output


def test_validate_missing_file(tmp_path):
    result = run_cli(["validate", str(tmp_path / "nope.xml")])
    assert result.returncode != 0
    assert "nope.xml" in result.stderr + result.stdout


def test_serve_answers(tmp_path, upstream):
    path = _write(tmp_path, "serve.xml", proxy_config_xml(upstream.url))
    with cli_server(path) as (url, proc):
        client = openai.OpenAI(base_url=url + "/v1", api_key="sk-test", max_retries=0)
        try:
            raw = client.chat.completions.with_raw_response.create(
                model=OPENAI_MODEL, messages=[{"role": "user", "content": "via the cli"}]
            )
            stream = client.chat.completions.create(
                model=OPENAI_MODEL, messages=[{"role": "user", "content": "cli stream"}], stream=True
            )
            streamed = "".join(c.choices[0].delta.content or "" for c in stream)
        finally:
            client.close()
        assert proc.poll() is None
    assert raw.parse().choices[0].message.content == expected_reply("via the cli")
    assert_token_headers(raw.headers)
    assert streamed == expected_reply("cli stream")
    assert len(upstream.recorder) == 2


def test_serve_refuses_bad_config(tmp_path):
    path = _write(tmp_path, "bad.xml", SEED_ONLY.replace("<budget>200000", "<budget>abc"))
    result = run_cli(["serve", "--config", str(path), "--port", str(free_port())], timeout=20)
    assert result.returncode != 0
    assert f"{path}:3" in result.stderr + result.stdout


# --------------------------------------------------------------------------- explain

SMALL_BUDGET = SEED_ONLY.replace("<budget>200000</budget>", "<budget>6000</budget>")


def _explain(tmp_path, body: dict, *args: str):
    import json

    request = _write(tmp_path, "body.json", json.dumps(body))
    config = _write(tmp_path, "small.xml", SMALL_BUDGET)
    return run_cli(["explain", str(request), "--config", str(config), *args])


def test_explain_prints_a_table_of_messages_then_the_decision_and_the_bill(tmp_path):
    from tests.unit.pipeline_helpers import session

    body = session("openai", 40)[-1]
    result = _explain(tmp_path, body)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("dialect: openai (told by the body: a message of role system")
    header = lines[2].split()
    assert header[:4] == ["#", "role", "tier", "action"] and "reason" in header
    rows = [line.split() for line in lines[3:3 + len(body["messages"])]]
    assert [int(row[0]) for row in rows] == list(range(len(body["messages"])))
    assert [row[1] for row in rows] == [m["role"] for m in body["messages"]]
    assert {row[2] for row in rows} == {"critical", "important", "supporting"}
    compacted = [row for row in rows if row[3] == "compacted"]
    assert compacted and all(row[2] == "supporting" and row[6] == "0" for row in compacted)
    assert any(line.split()[:4] == ["+", "note", "supporting", "added"] for line in lines)
    decision = next(line for line in lines if line.startswith("decision:"))
    assert decision.split()[1] in ("append", "compact")
    assert next(line for line in lines if line.startswith("tokens:")).endswith("%)")
    cost = next(line for line in lines if line.startswith("cost:"))
    assert "sent" in cost and "passthrough" in cost and "read 0.1x" in cost


def test_explain_json_is_the_whole_report(tmp_path):
    import json

    from tests.unit.pipeline_helpers import session

    body = session("anthropic", 30)[-1]
    result = _explain(tmp_path, body, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    from ctxwarden.pipeline.state import without_markers

    assert without_markers(report["request"]["messages"][-1]) == body["messages"][-1]
    assert report["pricing"]["write"] == 1.25, "priced as an Anthropic upstream: told from the body"
    assert {"index", "role", "tier", "action", "reason", "tokens_before", "tokens_after"} <= set(report["messages"][0])


def test_explain_tells_an_anthropic_body_without_dialect(tmp_path):
    body = {"model": "claude-sonnet-4-5", "max_tokens": 64, "system": "be brief",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]}
    result = _explain(tmp_path, body)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("dialect: anthropic (told by the body: top-level system")
    assert "decision: unchanged" in result.stdout
    named = _explain(tmp_path, body, "--dialect", "anthropic")
    assert named.stdout.startswith("dialect: anthropic (--dialect)")


def test_explain_asks_for_dialect_when_the_body_does_not_say(tmp_path):
    body = {"model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": "hello"}]}
    result = _explain(tmp_path, body)
    assert result.returncode == 2 and result.stdout == ""
    assert "nothing in the body tells its dialect" in result.stderr
    assert "--dialect openai|anthropic" in result.stderr
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------- help

def _subcommands():
    from ctxwarden.__main__ import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.choices and isinstance(a.choices, dict))
    return parser, commands.choices


def test_every_argument_of_every_subcommand_has_help(capsys):
    import argparse

    from ctxwarden.__main__ import main

    parser, commands = _subcommands()
    assert set(commands) == {"serve", "validate", "explain", "run-parallel"}
    for name, sub in [("", parser), *commands.items()]:
        with pytest.raises(SystemExit) as done:
            main([name, "--help"] if name else ["--help"])
        assert done.value.code == 0
        shown = " ".join(capsys.readouterr().out.split())
        for action in sub._actions:
            assert action.help and action.help != argparse.SUPPRESS, (name, action.dest)
            assert " ".join(action.help.split()) in shown, (name, action.dest)


# --------------------------------------------------------------------------- logs

def _logged_server(tmp_path, upstream, log_format: str):
    xml = proxy_config_xml(upstream.url).replace(
        "</performance_optimization>",
        f'<logging format="{log_format}"/>\n<admin token_env="CTXW_TEST_UNSET_ADMIN_TOKEN"/>\n'
        "</performance_optimization>")
    return cli_server(_write(tmp_path, "logged.xml", xml), extra_args=["--workers", "1"])


def _served_request_log(tmp_path, upstream, log_format: str) -> tuple[str, str]:
    from tests.integration.test_hardening_uploads import wait_until

    with _logged_server(tmp_path, upstream, log_format) as (url, proc):
        client = openai.OpenAI(base_url=url + "/v1", api_key="sk-secret-in-no-log", max_retries=0)
        try:
            client.chat.completions.create(model=OPENAI_MODEL, messages=[{"role": "user", "content": "logged"}])
        finally:
            client.close()
        assert wait_until(lambda: "/v1/chat/completions" in proc.output())
        return url, proc.output()


def test_text_request_lines_carry_every_field_and_the_start_is_logged(tmp_path, upstream):
    url, output = _served_request_log(tmp_path, upstream, "text")
    assert "sk-secret-in-no-log" not in output and "logged" not in output.replace("logged.xml", "")
    request = next(line for line in output.splitlines() if "ctxwarden.request: request" in line)
    text = request.split("ctxwarden.request: ", 1)[1]
    assert text.startswith("request POST /v1/chat/completions 200 rewrite=unchanged tokens=")
    for field in ("upstream=openai", "cache=bypass", "route=chat_completions", "dialect=openai",
                  'rewrite_reason="below the compression threshold"', "ms_upstream=", "ms_rewrite="):
        assert field in text, (field, text)
    assert re.search(r" tokens=(\d+)->\1 ", text) and re.search(r" \d+(\.\d+)?ms ", text)
    start = next(line for line in output.splitlines() if "ctxwarden: starting " in line)
    assert f"config={tmp_path / 'logged.xml'}" in start and "workers=1" in start
    assert f"listen={url.removeprefix('http://')}" in start and f"dashboard={url}/_ctxwarden/dashboard" in start
    upstreams = [line for line in output.splitlines() if "ctxwarden: upstream " in line]
    assert [line.split("ctxwarden: upstream ", 1)[1] for line in upstreams] == [
        f"name=openai dialect=openai base_url={upstream.url}",
        f"name=anthropic dialect=anthropic base_url={upstream.url}"]
    assert any(" WARNING " in line and "CTXW_TEST_UNSET_ADMIN_TOKEN" in line for line in output.splitlines())


def test_json_logs_carry_the_same_start(tmp_path, upstream):
    import json

    url, output = _served_request_log(tmp_path, upstream, "json")
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    start = next(line for line in lines if line["message"] == "starting")
    assert start["config"] == str(tmp_path / "logged.xml") and start["workers"] == 1
    assert start["dashboard"] == f"{url}/_ctxwarden/dashboard"
    assert [(line["name"], line["dialect"], line["base_url"]) for line in lines if line["message"] == "upstream"] \
        == [("openai", "openai", upstream.url), ("anthropic", "anthropic", upstream.url)]
    warning = next(line for line in lines if line["level"] == "warning")
    assert "CTXW_TEST_UNSET_ADMIN_TOKEN" in warning["message"]
    assert "sk-secret-in-no-log" not in output


def test_validate_warns_of_an_unset_admin_token_and_passes(tmp_path):
    path = _write(tmp_path, "admin.xml", SEED_ONLY.replace(
        "</performance_optimization>", '<admin token_env="CTXW_TEST_UNSET_ADMIN_TOKEN"/>\n</performance_optimization>'))
    result = run_cli(["validate", str(path)])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{path}: OK"
    assert result.stderr.startswith(f"{path}: warning: <admin token_env> names CTXW_TEST_UNSET_ADMIN_TOKEN")
    assert run_cli(["validate", str(path)], env={"CTXW_TEST_UNSET_ADMIN_TOKEN": "t"}).stderr == ""


# --------------------------------------------------------------------------- the README's config

def _readme_config_block() -> str:
    from tests.servers import REPO_ROOT

    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Configuration\n", 1)[1]
    return section.split("```xml\n", 1)[1].split("```", 1)[0]


def test_readmes_example_config_is_every_default_and_validates(tmp_path):
    import dataclasses

    from ctxwarden.config import Config, load_config

    path = _write(tmp_path, "readme.xml", _readme_config_block())
    result = run_cli(["validate", str(path)])
    assert result.returncode == 0 and result.stderr == "", result.stderr
    example = dataclasses.replace(load_config(path), source="")
    assert example == dataclasses.replace(load_config(None), source="") == Config(source="")
