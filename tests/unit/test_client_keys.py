"""Client keys: the <client_keys> config, key matching, the header rewrite, and
when a config may serve (proxy/clientkeys.py)."""

from __future__ import annotations

import hashlib

import pytest

from ctxwarden.cache import credential_fingerprint
from ctxwarden.clientkeys import (
    ClientKeySet, check_headers, environment_issues, exposure_issues, is_loopback, needs_client_key,
    startup_issues,
)
from ctxwarden.config import ClientKey, ConfigError, Upstream, parse_config
from ctxwarden.upstream import request_headers

ALICE, BOB = "ck-alice-0123456789", "ck-bob-9876543210"
BOB_SHA = hashlib.sha256(BOB.encode()).hexdigest()


def _xml(client_keys: str = "", *, inject: bool = True, host: str = "127.0.0.1") -> str:
    key = ' api_key_env="CTXW_UNIT_UPSTREAM_KEY"' if inject else ""
    return f"""<performance_optimization>
  <server host="{host}"/>
  {client_keys}
  <upstreams>
    <upstream name="openai" dialect="openai" base_url="http://127.0.0.1:9"{key}/>
  </upstreams>
</performance_optimization>"""


KEYS = f"""<client_keys>
    <key env="CTXW_UNIT_ALICE" name="alice"/>
    <key sha256="{BOB_SHA.upper()}" name="bob"/>
  </client_keys>"""


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("CTXW_UNIT_UPSTREAM_KEY", "sk-operator")
    monkeypatch.setenv("CTXW_UNIT_ALICE", ALICE)


# ------------------------------------------------------------------ config

def test_client_keys_are_parsed():
    config = parse_config(_xml(KEYS))
    alice, bob = config.client_keys.keys
    assert (alice.env, alice.sha256, alice.name, alice.line) == ("CTXW_UNIT_ALICE", None, "alice", 4)
    assert (bob.env, bob.sha256, bob.name) == (None, BOB_SHA, "bob"), "the digest is kept lower-case"
    assert config.client_keys.open_on_loopback is False
    assert parse_config(_xml('<client_keys open_on_loopback="true"/>')).client_keys.open_on_loopback is True
    assert parse_config(_xml()).client_keys.keys == ()


@pytest.mark.parametrize("key, words", [
    ('<key env="A" sha256="' + "0" * 64 + '"/>', "exactly one of env"),
    ('<key name="x"/>', "exactly one of env"),
    ('<key sha256="abc"/>', "sha256"),
    ('<key env="1BAD"/>', "env"),
])
def test_bad_keys_are_config_issues_with_their_line(key, words):
    with pytest.raises(ConfigError) as caught:
        parse_config(_xml(f"<client_keys>\n{key}\n</client_keys>"), source="c.xml")
    issue = caught.value.issues[0]
    assert issue.line == 4 and words in issue.reason, caught.value


def test_describe_names_keys_never_their_values():
    described = parse_config(_xml(KEYS)).describe()["client_keys"]
    assert described["keys"] == [{"name": "alice", "env": "CTXW_UNIT_ALICE", "key": "set"},
                                 {"name": "bob", "sha256": "set"}]
    assert ALICE not in str(described) and BOB_SHA not in str(described)


# ------------------------------------------------------------------ matching

def _keys() -> ClientKeySet:
    return ClientKeySet.resolve(parse_config(_xml(KEYS)).client_keys, "c.xml")


def test_keys_match_by_env_value_and_by_digest():
    keys = _keys()
    assert keys.enforced
    assert keys.match(ALICE.encode())[1] == "alice"
    assert keys.match(BOB.encode())[1] == "bob"
    assert keys.match(b"ck-nobody") is None
    assert keys.match(ALICE.encode() + b"x") is None
    assert not ClientKeySet().enforced


def test_an_unset_key_variable_is_a_config_error_naming_it(monkeypatch):
    monkeypatch.delenv("CTXW_UNIT_ALICE")
    config = parse_config(_xml(KEYS), source="c.xml")
    with pytest.raises(ConfigError) as caught:
        ClientKeySet.resolve(config.client_keys, config.source)
    assert str(caught.value).startswith("c.xml:4: client key 'alice': environment variable CTXW_UNIT_ALICE")


@pytest.mark.parametrize("header", [
    (b"authorization", b"Bearer " + ALICE.encode()),
    (b"authorization", b"bearer  " + ALICE.encode() + b" "),
    (b"x-api-key", ALICE.encode()),
    (b"x-ctxwarden-key", ALICE.encode()),
])
def test_a_key_is_accepted_in_any_of_three_headers_and_replaced_by_its_digest(header):
    name, headers, refused = check_headers(_keys(), [(b"content-type", b"application/json"), header])
    assert (name, refused) == ("alice", "")
    digest = hashlib.sha256(ALICE.encode()).hexdigest().encode()
    assert headers == [(b"content-type", b"application/json"), (b"x-ctxwarden-key", digest)]


def test_a_missing_or_wrong_key_is_refused_with_why():
    keys = _keys()
    assert check_headers(keys, [(b"content-type", b"application/json")])[::2] == (None, "missing")
    assert check_headers(keys, [(b"authorization", b"Basic abc")])[::2] == (None, "missing")
    assert check_headers(keys, [(b"authorization", b"Bearer ck-nobody")])[::2] == (None, "wrong")
    assert check_headers(keys, [(b"x-ctxwarden-key", b"ck-nobody")])[::2] == (None, "wrong")


def test_the_clients_own_upstream_key_in_another_header_passes_on():
    raw = [(b"authorization", b"Bearer sk-own-upstream-key"), (b"x-ctxwarden-key", BOB.encode()),
           (b"x-ctxwarden-key", b"a second one")]
    name, headers, _ = check_headers(_keys(), raw)
    assert name == "bob"
    assert headers == [(b"authorization", b"Bearer sk-own-upstream-key"),
                       (b"x-ctxwarden-key", BOB_SHA.encode())]


def test_the_digest_header_never_goes_upstream():
    _, headers, _ = check_headers(_keys(), [(b"authorization", b"Bearer " + BOB.encode())])
    plain = Upstream(name="u", dialect="openai", base_url="http://x")
    assert request_headers(headers, plain, None) == []
    assert request_headers(headers, plain, "sk-operator") == [(b"authorization", b"Bearer sk-operator")]


def test_the_cache_tenant_is_the_client_key_whichever_header_carried_it():
    keys = _keys()

    def tenant(*raw):
        return credential_fingerprint(check_headers(keys, list(raw))[1])

    alice = tenant((b"authorization", b"Bearer " + ALICE.encode()))
    assert alice == tenant((b"x-api-key", ALICE.encode())) == tenant((b"x-ctxwarden-key", ALICE.encode()))
    assert alice != tenant((b"authorization", b"Bearer " + BOB.encode()))


def test_which_paths_need_a_client_key():
    assert needs_client_key("/v1/chat/completions") and needs_client_key("/v1/models")
    assert needs_client_key("/_ctxwarden/parallel") and needs_client_key("/anything")
    assert not any(needs_client_key(p) for p in ("/_ctxwarden/health", "/_ctxwarden/stats", "/metrics",
                                                 "/favicon.ico"))


# ------------------------------------------------------------------ may this config serve?

@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.8.0.1", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("proxy.internal", False), ("", False),
])
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


def test_an_injected_key_needs_client_keys():
    config = parse_config(_xml(), source="c.xml")
    issues = exposure_issues(config, "127.0.0.1")
    assert len(issues) == 1 and issues[0].line == 5 and "no client keys are configured" in issues[0].reason
    assert "open_on_loopback" in issues[0].reason, "the message says how to opt out"
    assert exposure_issues(config, "0.0.0.0")


def test_open_on_loopback_opts_out_on_loopback_only():
    config = parse_config(_xml('<client_keys open_on_loopback="true"/>'), source="c.xml")
    assert exposure_issues(config, "127.0.0.1") == [] and exposure_issues(config, "localhost") == []
    issues = exposure_issues(config, "0.0.0.0")
    assert len(issues) == 1 and issues[0].line == 3 and "0.0.0.0" in issues[0].reason


def test_client_keys_or_no_injected_key_may_serve_anywhere():
    assert exposure_issues(parse_config(_xml(KEYS)), "0.0.0.0") == []
    assert exposure_issues(parse_config(_xml(inject=False)), "0.0.0.0") == []


def test_unset_variables_are_issues_with_file_and_line(monkeypatch):
    monkeypatch.delenv("CTXW_UNIT_UPSTREAM_KEY")
    monkeypatch.delenv("CTXW_UNIT_ALICE")
    config = parse_config(_xml(KEYS), source="c.xml")
    assert [str(i) for i in environment_issues(config)] == [
        "c.xml:8: upstream 'openai': environment variable CTXW_UNIT_UPSTREAM_KEY named by api_key_env is not set",
        "c.xml:4: client key 'alice': environment variable CTXW_UNIT_ALICE named by <key env> is not set",
    ]
    assert len(startup_issues(config, "0.0.0.0")) == 2


def test_a_key_label_never_holds_more_than_a_digest_prefix():
    assert ClientKey(sha256=BOB_SHA).label == "sha256:" + BOB_SHA[:8]
    assert ClientKey(env="K").label == "env:K"
