"""What an operator sees: metrics, stats, health, readiness, effective config,
admin token, hot reload, request logs."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from ctxwarden.config import parse_config
from tests.conftest import serve_proxy
from tests.servers import ctxwarden_command, free_port, wait_for_port


def _config(upstream_url: str, *, budget: int = 200000, extra: str = "", upstream_attrs: str = "") -> str:
    return f"""<performance_optimization>
  <token_management><budget>{budget}</budget></token_management>
  <server reload_interval="0.2"/>
  <client_keys open_on_loopback="true"/>
  {extra}
  <upstreams>
    <upstream name="openai" dialect="openai" base_url="{upstream_url}" {upstream_attrs}/>
    <upstream name="anthropic" dialect="anthropic" base_url="{upstream_url}" api_key_env="CTXW_TEST_ANTHROPIC_KEY"/>
  </upstreams>
</performance_optimization>"""


@pytest.fixture(autouse=True)
def _anthropic_key(monkeypatch):
    monkeypatch.setenv("CTXW_TEST_ANTHROPIC_KEY", "sk-ant-secret-value")


def _chat(url: str, text: str = "hello", **headers) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", headers=headers, timeout=15,
                      json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]})


def _metric(text: str, name: str, **labels) -> float:
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not in metrics")


def test_metrics_count_requests_tokens_and_errors(fake_upstream_server, upstream):
    with serve_proxy(_config(fake_upstream_server.url)) as url:
        for _ in range(3):
            assert _chat(url).status_code == 200
        assert _chat(url, **{"x-fake-status": "500"}).status_code == 500
        httpx.post(url + "/v1/chat/completions", content=b"nope", timeout=15)
        text = httpx.get(url + "/metrics").text
    assert _metric(text, "ctxwarden_requests_total", route="chat_completions", status="200") == 3
    assert _metric(text, "ctxwarden_requests_total", route="chat_completions", status="500") == 1
    assert _metric(text, "ctxwarden_requests_total", route="chat_completions", status="400") == 1
    assert _metric(text, "ctxwarden_input_tokens_before_total", dialect="openai") > 0
    assert _metric(text, "ctxwarden_request_seconds_count", route="chat_completions") == 5
    assert _metric(text, "ctxwarden_requests_in_flight") == 0
    assert _metric(text, "ctxwarden_upstream_slots_in_use", kind="interactive") == 0, "every slot released"
    assert _metric(text, "ctxwarden_upstream_slots_waiting", kind="fanout") == 0
    assert "gpt-4o-mini" not in text, "no client-chosen strings as label values"


def test_upstream_errors_are_counted_by_kind(upstream):
    dead = f"http://127.0.0.1:{free_port()}"
    with serve_proxy(_config(dead)) as url:
        assert _chat(url).status_code == 502
        text = httpx.get(url + "/metrics").text
    assert _metric(text, "ctxwarden_upstream_errors_total", upstream="openai", kind="connect") == 1


def test_stats_show_rewrites_and_savings(fake_upstream_server, upstream):
    long_text = "\n".join(f"line {i}: value = compute(src/file_{i}.py)" for i in range(3000))
    messages = [{"role": "system", "content": "sys"}, {"role": "user", "content": long_text},
                {"role": "assistant", "content": "ok"}, {"role": "user", "content": "and now?"}]
    with serve_proxy(_config(fake_upstream_server.url, budget=4000)) as url:
        r = httpx.post(url + "/v1/chat/completions", json={"model": "m", "messages": messages}, timeout=15)
        assert r.headers["x-ctxwarden-rewrite"] == "compact"
        stats = httpx.get(url + "/_ctxwarden/stats").json()
    assert stats["requests"] == 1
    assert stats["tokens_saved"] == int(r.headers["x-ctxwarden-tokens-before"]) - int(
        r.headers["x-ctxwarden-tokens-after"]) > 0
    assert 0 < stats["reduction_ratio"] < 1
    assert stats["recent_rewrites"][0]["decision"] == "compact"
    assert stats["cost_sent"] == pytest.approx(float(r.headers["x-ctxwarden-cost-sent"]), abs=0.5)
    assert 0 < stats["bill_saved_ratio"] < 1
    assert stats["latency_ms"]["p50"] > 0


def test_health_ready_and_masked_config(fake_upstream_server):
    dead = f"http://127.0.0.1:{free_port()}"
    with serve_proxy(_config(fake_upstream_server.url, upstream_attrs='check_ready="true"')) as url:
        assert httpx.get(url + "/_ctxwarden/health").json()["status"] == "ok"
        assert httpx.get(url + "/_ctxwarden/ready").status_code == 200
        described = httpx.get(url + "/_ctxwarden/config").json()
    assert described["token_management"]["budget"] == 200000
    anthropic = [u for u in described["upstreams"] if u["name"] == "anthropic"][0]
    assert anthropic["api_key"] == "set" and anthropic["api_key_env"] == "CTXW_TEST_ANTHROPIC_KEY"
    assert "sk-ant-secret-value" not in json.dumps(described)
    with serve_proxy(_config(dead, upstream_attrs='check_ready="true"')) as url:
        r = httpx.get(url + "/_ctxwarden/ready")
    assert r.status_code == 503 and "openai" in r.json()["unreachable"]


def test_admin_token_protects_admin_endpoints(fake_upstream_server, monkeypatch):
    monkeypatch.setenv("CTXW_TEST_ADMIN", "admin-secret")
    with serve_proxy(_config(fake_upstream_server.url, extra='<admin token_env="CTXW_TEST_ADMIN"/>')) as url:
        for path in ("/metrics", "/_ctxwarden/config", "/_ctxwarden/stats"):
            r = httpx.get(url + path)
            assert r.status_code == 401 and "admin-secret" not in r.text
            assert httpx.get(url + path, headers={"authorization": "Bearer wrong"}).status_code == 401
            assert httpx.get(url + path, headers={"authorization": "Bearer admin-secret"}).status_code == 200
            assert httpx.get(url + path, headers={"x-ctxwarden-admin-token": "admin-secret"}).status_code == 200
        assert httpx.post(url + "/_ctxwarden/explain", json={}).status_code == 401
        assert httpx.get(url + "/_ctxwarden/health").status_code == 200, "probes stay open"
        assert _chat(url).status_code == 200, "proxied traffic needs no admin token"


def test_reload_applies_a_good_file_and_keeps_the_last_good_one(tmp_path, fake_upstream_server, upstream):
    path = tmp_path / "performance.xml"
    path.write_text(_config(fake_upstream_server.url, budget=200000))
    config = parse_config(path.read_bytes(), source=str(path))
    from ctxwarden.app import create_app
    from tests.servers import serve_app

    long_text = "\n".join(f"entry {i} = value_{i} * 3" for i in range(3000))
    body = {"model": "m", "messages": [{"role": "user", "content": long_text}, {"role": "assistant", "content": "k"},
                                       {"role": "user", "content": "next"}]}
    with serve_app(create_app(config, config_path=str(path))) as url:
        post = lambda: httpx.post(url + "/v1/chat/completions", json=body, timeout=15)  # noqa: E731
        assert post().headers["x-ctxwarden-rewrite"] == "unchanged"
        path.write_text(_config(fake_upstream_server.url, budget=4000))
        _wait_for(lambda: post().headers["x-ctxwarden-rewrite"] in ("compact", "append"))
        path.write_text("<performance_optimization>\n<token_management><budget>-1</budget>"
                        "</token_management></performance_optimization>")
        _wait_for(lambda: "last_reload_error" in httpx.get(url + "/_ctxwarden/health").json())
        error = httpx.get(url + "/_ctxwarden/health").json()["last_reload_error"]
        assert f"{path}:2:" in error and "budget" in error
        assert post().headers["x-ctxwarden-rewrite"] in ("compact", "append"), "last good config stays"
        text = httpx.get(url + "/metrics").text
        assert _metric(text, "ctxwarden_config_reloads_total", result="refused") >= 1
        assert _metric(text, "ctxwarden_config_last_reload_successful") == 0


def _wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


@contextlib.contextmanager
def _cli(path: Path, *extra_args: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """`ctxwarden serve --config PATH` as one process (its own reload on SIGHUP,
    which several workers replace by a restart); yields (url, process)."""
    port = free_port()
    proc = subprocess.Popen(ctxwarden_command() + ["serve", "--config", str(path), "--port", str(port),
                                                   "--workers", "1", *extra_args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "CTXW_TEST_ANTHROPIC_KEY": "sk-ant-secret-value"})
    try:
        wait_for_port(port, proc=proc)
        yield f"http://127.0.0.1:{port}", proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def _sighup_config(upstream_url: str, *, budget: int = 200000, extra: str = "") -> str:
    return _config(upstream_url, budget=budget, extra=extra).replace('reload_interval="0.2"', 'reload_interval="0"')


@pytest.fixture
def served_cli(tmp_path, fake_upstream_server):
    """`ctxwarden serve` as a subprocess with a config file; yields (url, path, process)."""
    path = tmp_path / "performance.xml"
    path.write_text(_sighup_config(fake_upstream_server.url))
    with _cli(path) as (url, proc):
        yield url, path, proc


def test_config_endpoint_shows_where_serve_listens_as_well_as_the_file(served_cli):
    url, _, _ = served_cli
    described = httpx.get(url + "/_ctxwarden/config").json()
    port = int(url.rsplit(":", 1)[1])
    # --port and --workers on the command line, not the file's
    assert described["listening"] == {"host": "127.0.0.1", "port": port, "workers": 1}
    assert described["server"]["port"] != port and described["server"]["workers"] == "auto"


def test_sighup_reloads_and_logs_are_json_without_secrets(served_cli, fake_upstream_server):
    url, path, proc = served_cli
    assert _chat(url, authorization="Bearer sk-client-secret").status_code == 200
    path.write_text(_sighup_config(fake_upstream_server.url, budget=4000))
    proc.send_signal(signal.SIGHUP)
    _wait_for(lambda: httpx.get(url + "/_ctxwarden/config").json()["token_management"]["budget"] == 4000)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0, "graceful shutdown exits 0"
    lines = [json.loads(line) for line in proc.stderr.read().splitlines() if line.startswith("{")]
    requests = [line for line in lines if line["logger"] == "ctxwarden.request"]
    assert requests and requests[0]["route"] == "chat_completions" and requests[0]["status"] == 200
    assert requests[0]["tokens_before"] > 0
    assert any("config reloaded" in line["message"] for line in lines)
    everything = json.dumps(lines)
    assert "sk-client-secret" not in everything and "sk-ant-secret-value" not in everything
    assert "hello" not in everything, "no message content in logs"


def _reload_and_stop(url: str, path: Path, proc: subprocess.Popen, xml: str) -> list[str]:
    """Answer a chat, reload `xml` on SIGHUP, answer another, stop; the server's log lines."""
    assert _chat(url).status_code == 200
    path.write_text(xml)
    proc.send_signal(signal.SIGHUP)
    _wait_for(lambda: httpx.get(url + "/_ctxwarden/config").json()["token_management"]["budget"] == 4000)
    assert _chat(url).status_code == 200
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    return proc.stderr.read().splitlines()


def test_a_reload_applies_the_log_format_and_level(served_cli, fake_upstream_server):
    url, path, proc = served_cli
    lines = _reload_and_stop(url, path, proc, _sighup_config(
        fake_upstream_server.url, budget=4000, extra='<logging level="warning" format="text"/>'))
    before = [json.loads(line) for line in lines if line.startswith("{")]
    after = [line for line in lines if not line.startswith("{")]
    assert [line["route"] for line in before if line["logger"] == "ctxwarden.request"] == ["chat_completions"]
    assert [line for line in after if "ctxwarden.request: request" in line], "request lines, now as text"
    assert not [line for line in after if " INFO " in line and "ctxwarden.request" not in line], \
        "no info lines but request lines under level warning, uvicorn's included"
    assert not any("config reloaded" in line for line in lines), "logged at info, after the new level applied"


def test_log_level_flag_outlasts_a_reload(tmp_path, fake_upstream_server):
    path = tmp_path / "performance.xml"
    path.write_text(_sighup_config(fake_upstream_server.url))
    with _cli(path, "--log-level", "info") as (url, proc):
        lines = _reload_and_stop(url, path, proc, _sighup_config(
            fake_upstream_server.url, budget=4000, extra='<logging level="error"/>'))
    reloaded = [json.loads(line) for line in lines if "config reloaded" in line]
    assert reloaded and reloaded[0]["level"] == "info"


def test_sigterm_lets_an_in_flight_stream_finish(served_cli, upstream):
    url, _, proc = served_cli
    received: list[bytes] = []
    with httpx.stream("POST", url + "/v1/chat/completions", timeout=15,
                      headers={"x-fake-chunks": "10", "x-fake-chunk-delay": "0.1"},
                      json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}) as r:
        for chunk in r.iter_bytes():
            if not received:
                proc.send_signal(signal.SIGTERM)
            received.append(chunk)
    assert b"[DONE]" in b"".join(received)
    assert proc.wait(timeout=15) == 0
    with pytest.raises(httpx.ConnectError):
        _chat(url)


def test_request_log_line_is_emitted(fake_upstream_server, upstream, caplog):
    caplog.set_level(logging.INFO, logger="ctxwarden.request")
    with serve_proxy(_config(fake_upstream_server.url)) as url:
        _chat(url)
    fields = [getattr(r, "fields", None) for r in caplog.records if r.name == "ctxwarden.request"]
    assert fields and fields[-1]["status"] == 200 and fields[-1]["upstream"] == "openai"


def test_workers_serve_and_a_bad_file_on_sighup_keeps_the_last_good(tmp_path, fake_upstream_server, upstream):
    path = tmp_path / "performance.xml"
    path.write_text(_config(fake_upstream_server.url).replace('reload_interval="0.2"',
                                                              'reload_interval="0" workers="2"'))
    port = free_port()
    proc = subprocess.Popen(ctxwarden_command() + ["serve", "--config", str(path), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "CTXW_TEST_ANTHROPIC_KEY": "sk-ant-secret-value"})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_port(port, proc=proc, timeout=20)
        _wait_for(lambda: _chat(url).status_code == 200)
        path.write_text("<performance_optimization><oops></performance_optimization>")
        proc.send_signal(signal.SIGHUP)  # uvicorn restarts its workers; they fall back to the last good file
        time.sleep(2)
        assert all(_chat(url).status_code == 200 for _ in range(5))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
