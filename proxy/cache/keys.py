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

    Headers that identify the caller's account: ``authorization``, ``x-api-key``
    (Anthropic), ``api-key`` (Azure OpenAI), and ``openai-organization`` /
    ``openai-project``, which scope one key to an organisation or project. Values
    are taken byte for byte (no case folding, only surrounding whitespace
    stripped), so two spellings of one credential get two fingerprints: that
    costs a miss, never a leak. A request with none of them gets the fixed
    :data:`ANONYMOUS` fingerprint: all anonymous callers share one tenant (that is
    the case when the proxy injects the upstream key itself).

Response cache key
    SHA-256 over a canonical JSON array ``["ctxwarden-response/v1", upstream,
    path, credential, extra, body]`` where ``body`` is the (rewritten) request body
    without ``stream`` and ``stream_options`` (a hit is replayed as JSON or SSE as
    the client asks), serialised with ``sort_keys=True``, compact separators and
    ``ensure_ascii=False``. Every other field is in it: model, messages, tools,
    tool_choice, response_format, temperature, seed, max tokens, metadata, n, ...
    ``extra`` carries request *headers* that change the answer (see
    :func:`answer_headers`: ``anthropic-version``, ``anthropic-beta``,
    ``openai-beta``); it is ``{}`` when not given.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
from typing import Any, Iterable, Mapping

__all__ = [
    "ANONYMOUS",
    "ANSWER_HEADERS",
    "CREDENTIAL_HEADERS",
    "answer_headers",
    "canonical_body",
    "conversation_store_key",
    "credential_fingerprint",
    "is_cacheable_request",
    "response_cache_key",
]

#: Request headers that identify (or scope) the caller's upstream account.
CREDENTIAL_HEADERS: frozenset[bytes] = frozenset(
    {b"authorization", b"x-api-key", b"api-key", b"openai-organization", b"openai-project"}
)

#: Request headers that change the *answer* (its shape or features), so that they
#: belong in the response key next to the body.
ANSWER_HEADERS: frozenset[bytes] = frozenset({b"anthropic-version", b"anthropic-beta", b"openai-beta"})

SALT_ENV = "CTXWARDEN_CACHE_SALT"

_CRED_TAG = b"ctxwarden-credential/v1\x00"
_KEY_TAG = "ctxwarden-response/v1"
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


def credential_fingerprint(
    headers: Iterable[tuple[bytes, bytes]], *, salt: bytes | str | None = None
) -> str:
    """A hex digest identifying the caller's credential; never the secret itself.

    ``headers`` are raw ASGI-style ``(name, value)`` byte pairs (any case). The
    credential headers among them are lower-cased by name, stripped, sorted, and
    hashed length-prefixed (so no two different sets can collide by
    concatenation). Returns the anonymous digest when there are none.
    """
    picked: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        lname = name.lower()
        if lname in CREDENTIAL_HEADERS:
            value = value.strip()
            if value:
                picked.append((lname, value))
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


def answer_headers(headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """The request headers that change the answer, for ``response_cache_key(extra=...)``.

    Names lower-cased; repeated headers joined with ``,`` in arrival order.
    """
    out: dict[str, list[str]] = {}
    for name, value in headers:
        lname = name.lower()
        if lname in ANSWER_HEADERS:
            out.setdefault(lname.decode("latin-1"), []).append(value.strip().decode("latin-1"))
    return {k: ",".join(v) for k, v in out.items()}


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
) -> str:
    """SHA-256 hex of upstream, path, credential fingerprint, answer headers and canonical body."""
    trimmed = {k: v for k, v in body.items() if k not in _DROPPED_FIELDS}
    material = json.dumps(
        [_KEY_TAG, upstream, path, credential, dict(extra or {}), trimmed],
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
    if not isinstance(body, Mapping):
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
