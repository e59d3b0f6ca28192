"""The `ctxwarden` command line: validate and serve."""

from __future__ import annotations

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
