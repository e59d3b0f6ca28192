"""Cache keys: tenant separation, canonical bodies, what is cacheable."""

from __future__ import annotations

import hashlib
import logging

import pytest

from ctxwarden.dialects import ANSWER_HEADERS
from ctxwarden.cache.keys import (
    ANONYMOUS,
    accepted_encodings,
    answer_headers,
    canonical_body,
    conversation_store_key,
    credential_fingerprint,
    is_cacheable_request,
    is_credential_header,
    is_credential_query_name,
    response_cache_key,
)

BODY = {
    "model": "gpt-4o",
    "messages": [{"role": "user", "content": "héllo"}],
    "temperature": 0,
    "stream": False,
}


@pytest.fixture(autouse=True)
def _no_salt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CTXWARDEN_CACHE_SALT", raising=False)


def fp(*pairs: tuple[str, str], **kw) -> str:
    return credential_fingerprint([(k.encode(), v.encode()) for k, v in pairs], **kw)


# --------------------------------------------------------------------------- credential fingerprint


def test_fingerprint_is_hex_and_never_the_secret() -> None:
    secret = "sk-proj-very-secret-1234567890"
    out = fp(("Authorization", f"Bearer {secret}"))
    assert len(out) == 64 and int(out, 16) >= 0
    assert secret not in out
    assert out != hashlib.sha256(f"Bearer {secret}".encode()).hexdigest()  # domain-separated


def test_fingerprint_distinguishes_callers() -> None:
    a = fp(("authorization", "Bearer sk-a"))
    b = fp(("authorization", "Bearer sk-b"))
    assert a != b
    assert fp(("x-api-key", "sk-ant-a")) != fp(("x-api-key", "sk-ant-b"))
    assert fp(("api-key", "azure-1")) != fp(("api-key", "azure-2"))
    # the same key in another header is another credential
    assert fp(("x-api-key", "k")) != fp(("api-key", "k"))
    # organisation / project scope the account
    base = ("authorization", "Bearer sk-a")
    assert fp(base, ("openai-organization", "org-1")) != fp(base, ("openai-organization", "org-2"))
    assert fp(base, ("openai-project", "p1")) != fp(base)


def test_fingerprint_ignores_case_order_and_other_headers() -> None:
    a = fp(("Authorization", "Bearer sk-a"), ("OpenAI-Organization", "org-1"), ("user-agent", "x/1"))
    b = fp(("openai-organization", "org-1"), ("content-type", "application/json"), ("authorization", " Bearer sk-a "))
    assert a == b


def test_fingerprint_no_concatenation_collisions() -> None:
    assert fp(("authorization", "ab"), ("x-api-key", "c")) != fp(("authorization", "a"), ("x-api-key", "bc"))


def test_anonymous_fingerprint() -> None:
    assert fp() == ANONYMOUS
    assert fp(("user-agent", "curl"), ("authorization", "  ")) == ANONYMOUS
    assert fp(("authorization", "Bearer x")) != ANONYMOUS


def test_salt_changes_fingerprints_consistently(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = fp(("authorization", "Bearer sk-a"))
    salted = fp(("authorization", "Bearer sk-a"), salt="deployment-secret")
    assert salted != plain
    assert salted == fp(("authorization", "Bearer sk-a"), salt=b"deployment-secret")
    monkeypatch.setenv("CTXWARDEN_CACHE_SALT", "deployment-secret")
    assert fp(("authorization", "Bearer sk-a")) == salted
    assert fp() != ANONYMOUS  # the anonymous tenant is salted too


def test_fingerprint_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        fp(("authorization", "Bearer sk-secret-zzz"))
    assert "sk-secret-zzz" not in caplog.text


# --------------------------------------------------------------------------- response key


def key(body: dict = BODY, credential: str = "c1", upstream: str = "openai", path: str = "/v1/chat/completions", **kw) -> str:
    return response_cache_key(upstream, path, body, credential, **kw)


def test_key_is_sha256_hex_and_deterministic() -> None:
    k = key()
    assert len(k) == 64 and k == key(dict(reversed(list(BODY.items()))))


def test_key_ignores_stream_and_stream_options_only() -> None:
    streamed = {**BODY, "stream": True, "stream_options": {"include_usage": True}}
    no_stream = {k: v for k, v in BODY.items() if k != "stream"}
    assert key(streamed) == key(BODY) == key(no_stream)


@pytest.mark.parametrize(
    "field,value",
    [
        ("model", "gpt-4o-mini"),
        ("temperature", 0.0001),
        ("seed", 7),
        ("max_tokens", 10),
        ("max_completion_tokens", 10),
        ("tools", [{"type": "function", "function": {"name": "f", "parameters": {}}}]),
        ("tool_choice", "required"),
        ("response_format", {"type": "json_object"}),
        ("top_p", 0.5),
        ("n", 2),
        ("stop", ["\n"]),
        ("metadata", {"user": "u1"}),
        ("logprobs", True),
        ("system", "be brief"),
        ("some_future_field", {"x": 1}),
    ],
)
def test_every_other_field_is_in_the_key(field: str, value: object) -> None:
    assert key({**BODY, field: value}) != key(BODY)


def test_key_separates_messages_upstream_path_credential_and_answer_headers() -> None:
    assert key({**BODY, "messages": [{"role": "user", "content": "hello"}]}) != key()
    assert key(upstream="azure") != key()
    assert key(path="/v1/messages") != key()
    assert key(credential=fp(("authorization", "Bearer sk-a"))) != key(credential=fp(("authorization", "Bearer sk-b")))
    assert key(extra={"anthropic-beta": "x"}) != key()
    assert key(extra={}) == key()


def test_two_tenants_never_share_a_key() -> None:
    alice = fp(("x-api-key", "sk-ant-alice"))
    bob = fp(("x-api-key", "sk-ant-bob"))
    assert key(credential=alice) != key(credential=bob)


def test_key_is_unicode_safe() -> None:
    assert key({**BODY, "messages": [{"role": "user", "content": "\ud800 lone surrogate"}]})
    assert canonical_body({"b": "é", "a": 1, "stream": True}) == '{"a":1,"b":"é"}'


def test_answer_headers_pick() -> None:
    headers = [
        (b"Anthropic-Version", b"2023-06-01"),
        (b"anthropic-beta", b"a"),
        (b"anthropic-beta", b"b"),
        (b"authorization", b"Bearer x"),
        (b"OpenAI-Beta", b"assistants=v2"),
    ]
    assert answer_headers(headers, ANSWER_HEADERS) == {
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "a,b",
        "openai-beta": "assistants=v2",
    }


# --------------------------------------------------------------------------- cacheable


@pytest.mark.parametrize(
    "body,expected",
    [
        ({"model": "m"}, False),  # default temperature 1.0 samples
        ({"model": "m", "temperature": None}, False),
        ({"model": "m", "temperature": 1}, False),
        ({"model": "m", "temperature": 0.2}, False),
        ({"model": "m", "temperature": 0}, True),
        ({"model": "m", "temperature": 0.0}, True),
        ({"model": "m", "temperature": 0, "top_p": 0.3}, True),
        ({"model": "m", "top_p": 0.1}, False),
        ({"model": "m", "top_k": 1}, True),  # Anthropic greedy
        ({"model": "m", "top_k": 5}, False),
        ({"model": "m", "temperature": "0"}, False),
        ({"model": "m", "temperature": False}, False),
        ({"model": "m", "temperature": 0, "n": 3}, True),
        ({"model": "m", "temperature": 0, "n": 0}, False),
        ({"model": "m", "temperature": 0, "n": "2"}, False),
    ],
)
def test_is_cacheable_request(body: dict, expected: bool) -> None:
    assert is_cacheable_request(body, cache_sampled=False) is expected


def test_cache_sampled_allows_sampled_requests() -> None:
    assert is_cacheable_request({"model": "m"}, cache_sampled=True)
    assert is_cacheable_request({"model": "m", "temperature": 0.9, "n": 2}, cache_sampled=True)
    assert not is_cacheable_request({"model": "m", "n": -1}, cache_sampled=True)
    assert not is_cacheable_request([], cache_sampled=True)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- conversation state


def test_conversation_store_key_is_per_tenant() -> None:
    k = conversation_store_key("abc", "c1")
    assert k.startswith("conv:") and k == conversation_store_key("abc", "c1")
    assert k != conversation_store_key("abc", "c2")
    assert k != conversation_store_key("abd", "c1")


# --------------------------------------------------------------------------- hardening (issue 11, point 8)


def _v1_fingerprint(pairs: list[tuple[bytes, bytes]]) -> str:
    """The fingerprint as the first version computed it (five headers)."""
    parts = [b"ctxwarden-credential/v1\x00"]
    for name, value in sorted(pairs):
        parts.append(len(name).to_bytes(4, "big") + name + len(value).to_bytes(4, "big") + value)
    return hashlib.sha256(b"".join(parts)).hexdigest()


@pytest.mark.parametrize("header", [
    "x-goog-api-key", "api-key", "cookie", "openai-organization", "openai-project", "proxy-authorization",
    "ocp-apim-subscription-key", "x-amz-security-token", "cf-aig-authorization", "x-auth-token",
    "x-portkey-api-key", "x-client-secret", "x-session-cookie", "x-password", "x-signature",
])
def test_every_header_that_can_carry_a_credential_separates_tenants(header: str) -> None:
    assert is_credential_header(header) and is_credential_header(header.upper().encode())
    base = ("authorization", "Bearer sk-shared")
    a, b = fp(base, (header, "value-a")), fp(base, (header, "value-b"))
    assert a != b and a != fp(base)
    # the conversation-state store is separated by the same fingerprint
    assert conversation_store_key("conv", a) != conversation_store_key("conv", b)
    assert key(credential=a) != key(credential=b)


@pytest.mark.parametrize("header", [
    "user-agent", "content-type", "accept", "accept-encoding", "x-stainless-lang", "anthropic-version",
    "x-request-id", "idempotency-key", "Idempotency-Key", "cache-control",
])
def test_headers_that_carry_no_credential_are_not_fingerprinted(header: str) -> None:
    assert not is_credential_header(header)
    base = ("authorization", "Bearer sk-a")
    assert fp(base, (header, "one")) == fp(base, (header, "two")) == fp(base)


def test_fingerprint_of_the_first_five_headers_is_unchanged() -> None:
    pairs = [(b"authorization", b"Bearer sk-a"), (b"openai-organization", b"org-1"), (b"x-api-key", b"k"),
             (b"api-key", b"az"), (b"openai-project", b"p")]
    assert credential_fingerprint(pairs) == _v1_fingerprint(pairs)
    assert credential_fingerprint(pairs[:1]) == _v1_fingerprint(pairs[:1])


def test_credential_query_parameters_are_in_the_fingerprint() -> None:
    headers = [(b"authorization", b"Bearer sk-a")]
    plain = credential_fingerprint(headers)
    assert credential_fingerprint(headers, query=b"") == credential_fingerprint(headers, query=None) == plain
    gemini_a = credential_fingerprint(headers, query=b"key=AIza-a&alt=json")
    gemini_b = credential_fingerprint(headers, query=b"key=AIza-b&alt=json")
    assert len({plain, gemini_a, gemini_b}) == 3
    assert credential_fingerprint(headers, query="key=AIza-a&alt=json") == gemini_a  # text or bytes
    for name in ("api_key", "api%5Fkey", "access_token", "sig", "code", "X-Goog-Api-Key", "client_secret"):
        assert is_credential_query_name(name)
        assert credential_fingerprint(headers, query=f"{name}=s1".encode()) != \
            credential_fingerprint(headers, query=f"{name}=s2".encode()), name
    # parameters that are no credential leave the tenant alone (they are in the response key)
    assert credential_fingerprint(headers, query=b"api-version=2024-06-01&alt=sse") == plain
    assert not is_credential_query_name("api-version")
    # a parameter never collides with a header of the same name
    assert credential_fingerprint([(b"key", b"v")]) != credential_fingerprint([], query=b"key=v")
    # the anonymous caller with a key in the query is not anonymous
    assert credential_fingerprint([], query=b"key=x") != ANONYMOUS


def test_query_string_is_in_the_response_key() -> None:
    assert key(query=b"") == key(query=None) == key()
    assert key(query=b"a=1") != key()
    assert key(query=b"a=1") == key(query="a=1")
    assert key(query=b"a=1&b=2") != key(query=b"b=2&a=1")  # as sent: an upstream may read order
    assert key(query=b"key=x") != key(query=b"key=y")


def test_accepted_encodings_normalise() -> None:
    def enc(*values: bytes) -> str:
        return accepted_encodings([(b"Accept-Encoding", v) for v in values])

    assert accepted_encodings([]) == "-"
    assert enc(b"") == ""
    assert enc(b"gzip, deflate") == enc(b"Deflate,GZIP;q=1.0") == enc(b"deflate", b"gzip") == "deflate;q=1,gzip;q=1"
    assert enc(b"identity") != enc(b"gzip") != accepted_encodings([])
    assert enc(b"gzip;q=0.5, br") != enc(b"gzip, br;q=0.5")
    assert enc(b"gzip;q=0") != enc(b"gzip")
    assert enc(b"gzip;level=9;q=0.50") == "gzip;q=0.5"
