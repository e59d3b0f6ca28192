"""Cache keys: who is asking (a credential fingerprint) and what is asked (the request key).

Nothing secret leaves this module: the caller's credential headers are reduced to a
digest, and that digest is only ever used as one input of another digest.

Credential fingerprint
    HMAC-SHA256 over the credential headers when a salt is configured (the
    ``salt=`` argument, else the environment variable ``CTXWARDEN_CACHE_SALT``),
    plain SHA-256 with a domain-separation tag otherwise. The salt is a
    *deployment* secret, not a per-process random value: replicas that share a
    Redis cache must compute the same fingerprint for the same caller, so they
    must share the salt (or all run without one). With a salt, a digest that leaks
    (a log line, a Redis key dump) cannot be used to confirm a guessed API key
    offline; without one that is still impractical for real API keys (they carry
    well over 128 bits of entropy), so the salt is defence in depth, not a
    requirement.

    What counts as a credential (:func:`is_credential_header`, a documented list,
    extendable by editing the module constants):

    * the known headers :data:`CREDENTIAL_HEADERS`: ``authorization``,
      ``proxy-authorization``, ``x-api-key`` (Anthropic), ``api-key`` (Azure
      OpenAI), ``x-goog-api-key`` (Gemini), ``cookie``, and
      ``openai-organization`` / ``openai-project``, which scope one key to an
      organisation or project;
    * any other header whose lower-cased name contains one of
      :data:`CREDENTIAL_WORDS` (``key``, ``token``, ``secret``, ``auth``,
      ``cookie``, ``password``, ``signature``): ``x-goog-api-key``,
      ``ocp-apim-subscription-key``, ``x-amz-security-token``,
      ``cf-aig-authorization``, ``x-auth-token``, ... A gateway in front of the
      proxy or a provider we never heard of can only put a secret in a header
      whose name says so; guessing wrong the other way costs a miss, never a
      leak;
    * except :data:`NOT_CREDENTIALS` (``idempotency-key``): names that match a
      word but carry a per-request value that identifies nobody (it would make
      every request a tenant of its own);
    * query parameters (the ``query=`` argument, the raw query string) whose
      percent-decoded, lower-cased name contains one of the words, or is one of
      :data:`CREDENTIAL_QUERY_NAMES` (``sig``: Azure SAS, ``code``: Azure
      Functions): ``?key=`` (Gemini), ``?api_key=``, ``?access_token=``.

    Values are taken byte for byte (no case folding, no percent-decoding, only
    surrounding whitespace stripped), so two spellings of one credential get two
    fingerprints: that costs a miss, never a leak. A request with none of them
    gets the fixed :data:`ANONYMOUS` fingerprint: all anonymous callers share one
    tenant (that is the case when the proxy injects the upstream key itself).
    A request carrying only the five headers of the first version
    (``authorization``, ``x-api-key``, ``api-key``, ``openai-organization``,
    ``openai-project``) keeps the fingerprint it had then, so stored
    conversation state stays reachable across the upgrade.

    The same fingerprint is the tenant of the conversation-state store
    (:func:`conversation_store_key`) and of the response key, so answers and
    conversation state are separated by exactly the same rule.

Response cache key
    SHA-256 over a canonical JSON array ``["ctxwarden-response/v2", upstream,
    path, query, credential, extra, body]`` where ``query`` is the raw query
    string as the client sent it (latin-1 text, ``""`` when there is none; not
    re-ordered: an upstream may read parameters in order) and ``body`` is the
    (rewritten) request body without ``stream`` and ``stream_options`` (a hit is
    replayed as JSON or SSE as the client asks), serialised with ``sort_keys=True``, compact separators and
    ``ensure_ascii=False``. Every other field is in it: model, messages, tools,
    tool_choice, response_format, temperature, seed, max tokens, metadata, n, ...
    ``extra`` carries request *headers* that change the answer (see
    :func:`answer_headers`, e.g. a provider's API version or beta flags); it
    is ``{}`` when not given.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
from typing import Any, Iterable, Mapping
from urllib.parse import unquote_to_bytes

__all__ = [
    "ANONYMOUS",
    "CREDENTIAL_HEADERS",
    "CREDENTIAL_QUERY_NAMES",
    "CREDENTIAL_WORDS",
    "NOT_CREDENTIALS",
    "accepted_encodings",
    "answer_headers",
    "canonical_body",
    "conversation_store_key",
    "credential_fingerprint",
    "is_cacheable_request",
    "is_credential_header",
    "is_credential_query_name",
    "response_cache_key",
]

#: Request headers that identify (or scope) the caller's account, by name.
CREDENTIAL_HEADERS: frozenset[bytes] = frozenset({
    b"authorization", b"proxy-authorization", b"x-api-key", b"api-key", b"x-goog-api-key", b"cookie",
    b"openai-organization", b"openai-project",
})

#: Any other header (or query parameter) whose lower-cased name contains one of
#: these is a credential too.
CREDENTIAL_WORDS: tuple[bytes, ...] = (b"key", b"token", b"secret", b"auth", b"cookie", b"password", b"signature")

#: Names that contain a credential word but carry a per-request value that
#: identifies nobody: never part of the fingerprint.
NOT_CREDENTIALS: frozenset[bytes] = frozenset({b"idempotency-key"})

#: Query parameter names that carry a credential without saying so.
CREDENTIAL_QUERY_NAMES: frozenset[bytes] = frozenset({b"sig", b"code"})


SALT_ENV = "CTXWARDEN_CACHE_SALT"

_CRED_TAG = b"ctxwarden-credential/v1\x00"
_KEY_TAG = "ctxwarden-response/v2"
_CONVERSATION_TAG = "ctxwarden-conversation/v1"
_DROPPED_FIELDS = ("stream", "stream_options")

#: The fingerprint of a request that carries no credential header (unsalted).
ANONYMOUS: str = hashlib.sha256(_CRED_TAG + b"anonymous").hexdigest()


def _salt(salt: bytes | str | None) -> bytes | None:
    if salt is None:
        salt = os.environ.get(SALT_ENV) or None
    if salt is None or salt == b"" or salt == "":
        return None
    return salt.encode("utf-8") if isinstance(salt, str) else bytes(salt)


def is_credential_header(name: bytes | str) -> bool:
    """Whether a request header (any case) may carry a credential (see the module doc)."""
    if isinstance(name, str):
        name = name.encode("latin-1")
    lname = name.lower()
    if lname in CREDENTIAL_HEADERS:
        return True
    if lname in NOT_CREDENTIALS:
        return False
    return any(word in lname for word in CREDENTIAL_WORDS)


def is_credential_query_name(name: bytes | str) -> bool:
    """Whether a query parameter (its name percent-decoded) may carry a credential."""
    if isinstance(name, bytes):
        name = name.decode("latin-1")
    lname = unquote_to_bytes(name.replace("+", " ")).lower().strip()
    if lname in CREDENTIAL_QUERY_NAMES:
        return True
    return any(word in lname for word in CREDENTIAL_WORDS)


def _query_bytes(query: bytes | str | None) -> bytes:
    if not query:
        return b""
    return query.encode("latin-1", "replace") if isinstance(query, str) else bytes(query)


def _credential_params(query: bytes) -> list[tuple[bytes, bytes]]:
    """Credential query parameters as ``(b"?" + name, value)``: the ``?`` cannot
    start a header name, so a parameter never collides with a header."""
    picked = []
    for part in query.split(b"&"):
        name, _, value = part.partition(b"=")
        if name and is_credential_query_name(name) and value.strip():
            picked.append((b"?" + name, value.strip()))
    return picked


def credential_fingerprint(
    headers: Iterable[tuple[bytes, bytes]],
    *,
    query: bytes | str | None = None,
    salt: bytes | str | None = None,
) -> str:
    """A hex digest identifying the caller's credential; never the secret itself.

    ``headers`` are raw ASGI-style ``(name, value)`` byte pairs (any case);
    ``query`` the raw query string (bytes or latin-1 text), if any. The
    credentials among them (:func:`is_credential_header`, credential query
    parameters) are lower-cased by name (headers), stripped, sorted, and hashed
    length-prefixed (so no two different sets can collide by concatenation).
    Returns the anonymous digest when there are none.
    """
    picked: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        if is_credential_header(name):
            value = value.strip()
            if value:
                picked.append((name.lower(), value))
    picked.extend(_credential_params(_query_bytes(query)))
    key = _salt(salt)
    if not picked:
        if key is None:
            return ANONYMOUS
        return hmac.new(key, _CRED_TAG + b"anonymous", hashlib.sha256).hexdigest()
    picked.sort()
    parts = [_CRED_TAG]
    for name, value in picked:
        parts.append(len(name).to_bytes(4, "big") + name + len(value).to_bytes(4, "big") + value)
    material = b"".join(parts)
    if key is None:
        return hashlib.sha256(material).hexdigest()
    return hmac.new(key, material, hashlib.sha256).hexdigest()


def answer_headers(headers: Iterable[tuple[bytes, bytes]], names: frozenset[bytes]) -> dict[str, str]:
    """The request headers among ``names`` (those that change the answer: the
    dialects' ``answer_headers``), for ``response_cache_key(extra=...)``.

    Names lower-cased; repeated headers joined with ``,`` in arrival order.
    """
    out: dict[str, list[str]] = {}
    for name, value in headers:
        lname = name.lower()
        if lname in names:
            out.setdefault(lname.decode("latin-1"), []).append(value.strip().decode("latin-1"))
    return {k: ",".join(v) for k, v in out.items()}


def accepted_encodings(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The request's ``Accept-Encoding``, normalised, for the coalescing key.

    Two requests coalesce only when the upstream would pick the same content
    coding for both, so the value keeps every coding with its weight:
    lower-cased, parameters other than ``q`` dropped, ``q`` as a number
    (default 1, clamped to 0..1, so ``q=1.0`` and no ``q`` are one),
    de-duplicated, sorted (order within the header does not rank codings; the
    weights do). Repeated headers are one list. ``"-"`` when the header is
    absent (then any coding is acceptable), ``""`` when it is empty (then only
    identity is). ``"gzip, deflate"`` and ``"Deflate,GZIP;q=1.0"`` are the same;
    ``"identity"`` and ``"gzip"`` are not.
    """
    values = [value for name, value in headers if name.lower() == b"accept-encoding"]
    if not values:
        return "-"
    codings = set()
    for element in b",".join(values).decode("latin-1").split(","):
        coding, *params = (part.strip() for part in element.split(";"))
        coding = coding.lower()
        if not coding:
            continue
        weight = "1"
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    number = min(1.0, max(0.0, float(value.strip())))
                    weight = "0" if math.isnan(number) else f"{number:g}"
                except ValueError:
                    weight = value.strip().lower()
        codings.add(f"{coding};q={weight}")
    return ",".join(sorted(codings))


def canonical_body(body: Mapping[str, Any]) -> str:
    """The body as it enters the key: without ``stream``/``stream_options``, sorted, compact."""
    trimmed = {k: v for k, v in body.items() if k not in _DROPPED_FIELDS}
    return json.dumps(trimmed, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def response_cache_key(
    upstream: str,
    path: str,
    body: Mapping[str, Any],
    credential: str,
    *,
    extra: Mapping[str, str] | None = None,
    query: bytes | str | None = None,
) -> str:
    """SHA-256 hex of upstream, path, query string, credential fingerprint,
    answer headers and canonical body.

    ``query``: the raw query string as the client sent it (bytes or text), or
    None / empty for none; ``?`` is not part of it."""
    trimmed = {k: v for k, v in body.items() if k not in _DROPPED_FIELDS}
    material = json.dumps(
        [_KEY_TAG, upstream, path, _query_bytes(query).decode("latin-1"), credential, dict(extra or {}), trimmed],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    # surrogatepass: a lone surrogate in a JSON string must not crash key building.
    return hashlib.sha256(material.encode("utf-8", "surrogatepass")).hexdigest()


def conversation_store_key(conversation_key: str, credential: str) -> str:
    """Where a conversation's state is kept (``conversation_key`` is the
    chained hash of its original messages): per tenant, like answers, and in a
    namespace of its own."""
    return "conv:" + hashlib.sha256(f"{_CONVERSATION_TAG}:{credential}:{conversation_key}".encode()).hexdigest()


def _number(value: Any) -> float | None:
    """A real JSON number (not a bool, not NaN) as float, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return None if math.isnan(value) else value


def is_cacheable_request(body: Mapping[str, Any], cache_sampled: bool) -> bool:
    """Whether an answer to ``body`` may be stored and served from the cache.

    * ``temperature`` absent means the provider default, 1.0 (both dialects), so a
      request is *sampled* unless it sets ``temperature`` to 0 (greedy decoding)
      or, Anthropic, ``top_k`` to 1. ``top_p`` never makes a request
      deterministic by itself (with temperature 0 it does not matter; with
      temperature > 0 any top_p above 0 still samples), so it is not consulted.
    * Sampled requests are cached only when ``cache_sampled`` is True (config).
    * ``temperature: null`` is the provider default (sampled). A temperature or
      top_k that is not a number (a string, a bool) is left for the upstream to
      reject: not cacheable.
    * ``n`` > 1 is cacheable under the same rules: ``n`` is part of the key, the
      stored answer carries all ``n`` choices and the SSE recorder and replay
      handle several choices by index. With temperature 0 the choices are the
      same text anyway; with ``cache_sampled`` the caller accepted repeats.
    * ``n`` that is not a positive integer: not cacheable (the upstream rejects it).
    """
    if not isinstance(body, dict):   # a parsed JSON object (typing.Mapping's check costs µs)
        return False
    if "n" in body:
        n = body["n"]
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            return False
    if cache_sampled:
        return True
    if "temperature" in body and body["temperature"] is not None:
        temperature = _number(body["temperature"])
        if temperature is None:
            return False
        if temperature <= 0:
            return True
    if "top_k" in body and body["top_k"] is not None:
        top_k = _number(body["top_k"])
        if top_k is None:
            return False
        if top_k == 1:
            return True
    return False
