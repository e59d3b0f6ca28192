"""Client keys over real HTTP, through the official SDKs: the proxy sends the
operator's key upstream and asks its clients for a key of its own
(<client_keys>); `serve` and `validate` refuse what would expose the operator's key."""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from typing import Iterator

import anthropic
import httpx
import openai
import pytest

from ctxwarden.app import create_app
from ctxwarden.config import parse_config
from tests.servers import cli_server, free_port, run_cli, serve_app

from ._helpers import ANTHROPIC_MODEL, OPENAI_MODEL, replace_file

OPERATOR_KEY = "sk-operator-upstream-key"
ALICE, BOB = "ck-alice-key-0001", "ck-bob-key-0002"
BOB_SHA = hashlib.sha256(BOB.encode()).hexdigest()
ENV = {"CTXW_IT_OPERATOR_KEY": OPERATOR_KEY, "CTXW_IT_ALICE": ALICE}


def _config(upstream_url: str, client_keys: str | None = None, *, reload_interval: float = 0,
            budget: int = 200000) -> str:
    if client_keys is None:
        client_keys = (f'<client_keys><key env="CTXW_IT_ALICE" name="alice"/>'
                       f'<key sha256="{BOB_SHA}" name="bob"/></client_keys>')
    return f"""<performance_optimization>
  <token_management><budget>{budget}</budget></token_management>
  <server reload_interval="{reload_interval}"/>
  {client_keys}
  <upstreams>
    <upstream name="openai" dialect="openai" base_url="{upstream_url}" api_key_env="CTXW_IT_OPERATOR_KEY"/>
    <upstream name="anthropic" dialect="anthropic" base_url="{upstream_url}" api_key_env="CTXW_IT_OPERATOR_KEY"/>
  </upstreams>
</performance_optimization>"""


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)


@contextlib.contextmanager
def _proxy(xml: str, **kwargs) -> Iterator[tuple[str, object]]:
    app = create_app(parse_config(xml), **kwargs)
    with serve_app(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def guarded(fake_upstream_server) -> Iterator[str]:
    with pytest.MonkeyPatch.context() as mp:
        for name, value in ENV.items():
            mp.setenv(name, value)
        with _proxy(_config(fake_upstream_server.url)) as (url, _):
            yield url


def _openai(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=15)


def _anthropic(url: str, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key=key, max_retries=0, timeout=15)


def _no_client_key_upstream(recorder) -> None:
    for request in recorder.requests:
        sent = json.dumps(request.raw_headers)
        assert ALICE not in sent and BOB not in sent and BOB_SHA not in sent, sent


def _refusals(url: str, reason: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith("ctxwarden_client_key_refusals_total") and f'reason="{reason}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_openai_sdk_with_the_proxy_key_is_answered_with_the_operators_key(guarded, upstream):
    with _openai(guarded, ALICE) as client:
        answer = client.chat.completions.create(model=OPENAI_MODEL,
                                                messages=[{"role": "user", "content": "hello"}])
    assert answer.choices[0].message.content
    assert upstream.recorder.last.header_all("authorization") == [f"Bearer {OPERATOR_KEY}"]
    _no_client_key_upstream(upstream.recorder)


def test_anthropic_sdk_with_a_hashed_proxy_key_is_answered_with_the_operators_key(guarded, upstream):
    with _anthropic(guarded, BOB) as client:
        message = client.messages.create(model=ANTHROPIC_MODEL, max_tokens=32,
                                         messages=[{"role": "user", "content": "hello"}])
    assert message.content[0].text
    assert upstream.recorder.last.header_all("x-api-key") == [OPERATOR_KEY]
    _no_client_key_upstream(upstream.recorder)


def test_wrong_or_missing_keys_are_401s_the_sdks_raise_and_nothing_goes_upstream(guarded, upstream, caplog):
    caplog.set_level("INFO", logger="ctxwarden")
    wrong_before, missing_before = _refusals(guarded, "wrong"), _refusals(guarded, "missing")
    with _openai(guarded, "ck-not-a-key") as client, pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model=OPENAI_MODEL, messages=[{"role": "user", "content": "hello"}])
    assert caught.value.status_code == 401
    assert caught.value.body["message"] == "the client key is not valid"  # the OpenAI error object
    with _anthropic(guarded, OPERATOR_KEY) as client, pytest.raises(anthropic.AuthenticationError) as refused:
        client.messages.create(model=ANTHROPIC_MODEL, max_tokens=32, messages=[{"role": "user", "content": "x"}])
    assert refused.value.body == {"type": "error", "error": {"type": "authentication_error",
                                                             "message": "the client key is not valid"}}
    missing = httpx.post(guarded + "/v1/chat/completions", timeout=15,
                         json={"model": OPENAI_MODEL, "messages": [{"role": "user", "content": "x"}]})
    assert missing.status_code == 401 and "client key" in missing.json()["error"]["message"]
    assert httpx.get(guarded + "/v1/models", timeout=15).status_code == 401, "every proxied path"
    assert len(upstream.recorder) == 0
    assert _refusals(guarded, "wrong") == wrong_before + 2
    assert _refusals(guarded, "missing") == missing_before + 2
    assert "POST /v1/chat/completions -> 401: client key wrong" in caplog.text
    assert "POST /v1/chat/completions -> 401: client key missing" in caplog.text
    assert "ck-not-a-key" not in caplog.text and OPERATOR_KEY not in caplog.text


def test_the_dedicated_header_and_the_proxys_own_endpoints(guarded, upstream):
    r = httpx.post(guarded + "/v1/chat/completions", timeout=15, headers={"x-ctxwarden-key": ALICE},
                   json={"model": OPENAI_MODEL, "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 200
    assert upstream.recorder.last.header("x-ctxwarden-key") is None
    for path in ("/_ctxwarden/health", "/_ctxwarden/stats", "/metrics"):
        assert httpx.get(guarded + path, timeout=15).status_code == 200, path
    keys = httpx.get(guarded + "/_ctxwarden/config", timeout=15).json()["client_keys"]["keys"]
    assert keys == [{"name": "alice", "env": "CTXW_IT_ALICE", "key": "set"}, {"name": "bob", "sha256": "set"}]


def test_the_parallel_endpoint_needs_a_client_key(guarded, upstream):
    tasks = {"tasks": [{"id": "a", "request": {"model": OPENAI_MODEL,
                                               "messages": [{"role": "user", "content": "par"}]}}]}
    refused = httpx.post(guarded + "/_ctxwarden/parallel", json=tasks, timeout=30)
    assert refused.status_code == 401 and len(upstream.recorder) == 0
    done = httpx.post(guarded + "/_ctxwarden/parallel", json=tasks, timeout=30,
                      headers={"authorization": f"Bearer {ALICE}"})
    assert done.status_code == 200 and done.json()["tasks"][0]["status"] == "ok"
    assert upstream.recorder.last.header_all("authorization") == [f"Bearer {OPERATOR_KEY}"]
    _no_client_key_upstream(upstream.recorder)


def test_two_client_keys_never_share_cached_answers(guarded, upstream):
    body = {"model": OPENAI_MODEL, "temperature": 0,
            "messages": [{"role": "user", "content": f"cache me {time.monotonic_ns()}"}]}

    def ask(headers: dict) -> str:
        r = httpx.post(guarded + "/v1/chat/completions", json=body, headers=headers, timeout=15)
        assert r.status_code == 200
        return r.headers["x-ctxwarden-cache"]

    assert ask({"authorization": f"Bearer {ALICE}"}) == "miss"
    assert ask({"x-api-key": ALICE}) == "hit", "one key is one tenant, whichever header carries it"
    assert ask({"authorization": f"Bearer {BOB}"}) == "miss", "the injected key is not the tenant"
    assert ask({"x-ctxwarden-key": BOB}) == "hit"
    assert len(upstream.recorder) == 2


def test_two_client_keys_never_share_conversation_state(fake_upstream_server, upstream):
    from tests.integration.test_conversation_state import BUDGET, REWRITTEN, Sender, openai_history

    k1, k2 = openai_history()[5:7]
    with _proxy(_config(fake_upstream_server.url, budget=BUDGET)) as (url, app):
        backend = app.state.proxy.cache.backend
        sender = Sender()
        try:
            assert sender.send("openai", url, k1, upstream.recorder, key=ALICE).decision in REWRITTEN
            sender.send("openai", url, k2, upstream.recorder, key=BOB)
            assert backend.hits == 0, "bob continued alice's conversation state"
            sender.send("openai", url, k2, upstream.recorder, key=ALICE)
            assert backend.hits == 1, "alice did not find her own state"
        finally:
            sender.close()
    _no_client_key_upstream(upstream.recorder)


def test_a_reload_with_an_unset_key_variable_is_refused_and_the_old_keys_stay(tmp_path, fake_upstream_server,
                                                                             upstream, monkeypatch):
    path = tmp_path / "performance.xml"
    path.write_text(_config(fake_upstream_server.url, reload_interval=0.05))
    app = create_app(parse_config(path.read_text(), source=str(path)), config_path=str(path),
                     listen_host="0.0.0.0")
    with serve_app(app) as url, _openai(url, ALICE) as client:
        replace_file(path, _config(fake_upstream_server.url, reload_interval=0.05).replace(
            "CTXW_IT_ALICE", "CTXW_IT_UNSET_KEY"))
        deadline = time.monotonic() + 10
        while "last_reload_error" not in (health := httpx.get(url + "/_ctxwarden/health").json()):
            assert time.monotonic() < deadline, "the reload was not refused"
            time.sleep(0.05)
        assert "CTXW_IT_UNSET_KEY" in health["last_reload_error"]
        assert client.chat.completions.create(model=OPENAI_MODEL, messages=[{"role": "user", "content": "x"}])
        # Served on 0.0.0.0: dropping every client key is refused too.
        replace_file(path, _config(fake_upstream_server.url, "", reload_interval=0.05).replace(
            "<budget>200000", "<budget>100000"))
        deadline = time.monotonic() + 10
        while "no client keys" not in httpx.get(url + "/_ctxwarden/health").json().get("last_reload_error", ""):
            assert time.monotonic() < deadline, "the reload was not refused"
            time.sleep(0.05)
        with _openai(url, "ck-wrong") as wrong, pytest.raises(openai.AuthenticationError):
            wrong.chat.completions.create(model=OPENAI_MODEL, messages=[{"role": "user", "content": "x"}])
        assert app.state.proxy.config.token_management.budget == 200000


# ------------------------------------------------------------------ the command line

def test_serve_with_client_keys_answers_the_sdks(tmp_path, fake_upstream_server, upstream):
    path = tmp_path / "performance.xml"
    path.write_text(_config(fake_upstream_server.url))
    with cli_server(path, extra_args=["--workers", "1"], env=ENV) as (url, _):
        with _openai(url, ALICE) as client:
            assert client.chat.completions.create(model=OPENAI_MODEL, messages=[{"role": "user", "content": "x"}])
        with _anthropic(url, "ck-wrong") as client, pytest.raises(anthropic.AuthenticationError):
            client.messages.create(model=ANTHROPIC_MODEL, max_tokens=8, messages=[{"role": "user", "content": "x"}])
    assert upstream.recorder.last.header_all("authorization") == [f"Bearer {OPERATOR_KEY}"]
    _no_client_key_upstream(upstream.recorder)


def _serve(path, host: str, env: dict | None = None):
    return run_cli(["serve", "--config", str(path), "--host", host, "--port", str(free_port())],
                   timeout=30, env={**ENV, **(env or {})})


@pytest.mark.parametrize("host", ["0.0.0.0", "127.0.0.1"])
def test_serve_refuses_an_injected_key_without_client_keys(tmp_path, host):
    path = tmp_path / "performance.xml"
    path.write_text(_config("http://127.0.0.1:9", ""))
    done = _serve(path, host)
    assert done.returncode == 2
    assert f"{path}:6: upstream 'openai' sends the operator's key" in done.stderr
    assert f"anyone who reaches {host}" in done.stderr and "Traceback" not in done.stderr


def test_serve_opts_out_on_loopback_only(tmp_path):
    path = tmp_path / "performance.xml"
    path.write_text(_config("http://127.0.0.1:9", '<client_keys open_on_loopback="true"/>'))
    done = _serve(path, "0.0.0.0")
    assert done.returncode == 2 and f"{path}:4: " in done.stderr and "loopback" in done.stderr
    assert "Traceback" not in done.stderr
    with cli_server(path, extra_args=["--workers", "1"], env=ENV) as (url, _):
        assert httpx.get(url + "/_ctxwarden/health").status_code == 200


def test_serve_refuses_an_unset_api_key_env_without_a_traceback(tmp_path):
    path = tmp_path / "performance.xml"
    path.write_text(_config("http://127.0.0.1:9"))
    done = _serve(path, "127.0.0.1", env={"CTXW_IT_OPERATOR_KEY": ""})
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert (f"{path}:6: upstream 'openai': environment variable CTXW_IT_OPERATOR_KEY named by api_key_env "
            "is not set") in done.stderr


def test_validate_reports_unset_variables_and_an_unguarded_key(tmp_path):
    path = tmp_path / "performance.xml"
    path.write_text(_config("http://127.0.0.1:9"))
    assert run_cli(["validate", str(path)], env=ENV).returncode == 0
    done = run_cli(["validate", str(path)], env={"CTXW_IT_OPERATOR_KEY": "", "CTXW_IT_ALICE": ""})
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"{path}:6: upstream 'openai': environment variable CTXW_IT_OPERATOR_KEY named by api_key_env is not set",
        f"{path}:7: upstream 'anthropic': environment variable CTXW_IT_OPERATOR_KEY named by api_key_env "
        "is not set",
        f"{path}:4: client key 'alice': environment variable CTXW_IT_ALICE named by <key env> is not set",
    ]
    path.write_text(_config("http://127.0.0.1:9", ""))
    done = run_cli(["validate", str(path)], env=ENV)
    assert done.returncode == 1 and f"{path}:6: upstream 'openai' sends the operator's key" in done.stderr


def test_a_worker_restarted_on_a_file_with_an_unset_key_variable_starts_with_the_last_good(
        tmp_path, monkeypatch, fake_upstream_server):
    from ctxwarden import app as app_module

    good, bad = tmp_path / "last-good.xml", tmp_path / "performance.xml"
    good.write_text(_config(fake_upstream_server.url))
    bad.write_text(_config(fake_upstream_server.url).replace("CTXW_IT_ALICE", "CTXW_IT_UNSET_KEY"))
    monkeypatch.setattr(app_module, "configure_logging", lambda *args: None)
    monkeypatch.setenv(app_module.CONFIG_ENV, str(bad))
    monkeypatch.setenv(app_module.LAST_GOOD_ENV, str(good))
    monkeypatch.setenv(app_module.LISTEN_HOST_ENV, "0.0.0.0")
    proxy = app_module.create_app_from_environment().state.proxy
    assert proxy.listen_host == "0.0.0.0"
    assert [k.env for k in proxy.initial_config.client_keys.keys] == ["CTXW_IT_ALICE", None]
