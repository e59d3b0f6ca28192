"""Client keys: who may spend the proxy's upstream keys.

When ``<client_keys>`` holds any ``<key>``, every proxied request (any path
but the proxy's own ``/_ctxwarden/...``, ``/metrics`` and ``/favicon.ico``)
and ``POST /_ctxwarden/parallel`` must present one of them, as
``Authorization: Bearer <key>`` (the OpenAI SDK's api_key), ``x-api-key: <key>``
(the Anthropic SDK's) or ``x-ctxwarden-key: <key>``. One ASGI middleware
(:class:`ClientKeyGuard`) checks it before anything else runs: a missing or
wrong key is a 401 in the dialect's error shape, a log line without the key,
a count in ``ctxwarden_client_key_refusals_total``, and nothing sent upstream.

Keys are compared as SHA-256 digests with :func:`hmac.compare_digest`, against
every configured key. The header that carried the accepted key is removed and
``x-ctxwarden-key: <hex digest>`` put in its place, so:

* the key never reaches an upstream (``upstream.request_headers`` drops
  ``x-ctxwarden-key``; an upstream with ``api_key_env`` drops every client
  credential anyway), while a client's own upstream key in another header
  still passes through to an upstream without ``api_key_env``;
* the cache's tenant (``cache.keys.credential_fingerprint``, over the
  credential headers) is the client key, whichever header carried it, and
  not the injected upstream key every client shares.

Whether a config may serve at all (:func:`startup_issues`): an upstream with
``api_key_env`` and no client keys lets anyone who reaches the port spend the
operator's key, so that is refused unless the proxy listens on loopback only
and ``<client_keys open_on_loopback="true"/>`` says so. Key variables
(``api_key_env`` and ``<key env>``) must be set: checked by ``validate``, at
start and on every reload.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
from dataclasses import dataclass, field
from typing import Protocol

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from .config import ClientKeys, Config, ConfigError, ConfigIssue
from .dialects import dialect_for
from .errors import Unauthorized, error_response

log = logging.getLogger("ctxwarden")

#: the proxy's own header for a client key; never sent upstream
CLIENT_KEY_HEADER = b"x-ctxwarden-key"
#: the ASGI scope entry naming the accepted key (its config name), for the request log
SCOPE_KEY = "ctxwarden.client_key"
PARALLEL_PATH = "/_ctxwarden/parallel"
_OWN_PATHS = ("/metrics", "/favicon.ico")


def is_loopback(host: str) -> bool:
    """Whether a listen address only accepts connections from this machine."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def environment_issues(config: Config) -> list[ConfigIssue]:
    """Key variables the config names that are unset or empty, with file and line."""
    issues = [ConfigIssue(config.source, u.line, f"upstream {u.name!r}: environment variable {u.api_key_env} "
                                                 "named by api_key_env is not set")
              for u in config.upstreams if u.api_key_env and not os.environ.get(u.api_key_env)]
    issues += [ConfigIssue(config.source, k.line, f"client key {k.label!r}: environment variable {k.env} "
                                                  "named by <key env> is not set")
               for k in config.client_keys.keys if k.env and not os.environ.get(k.env)]
    return issues


def exposure_issues(config: Config, host: str) -> list[ConfigIssue]:
    """Why `config` must not serve on `host`: an upstream sends the operator's
    key and no client key guards it, outside an explicit loopback-only opt-out."""
    settings = config.client_keys
    injecting = [u for u in config.upstreams if u.api_key_env]
    if not injecting or settings.keys:
        return []
    if settings.open_on_loopback and is_loopback(host):
        return []
    first = injecting[0]
    if settings.open_on_loopback:
        reason = (f'<client_keys open_on_loopback="true"> applies on a loopback address only, and ctxwarden '
                  f"would listen on {host}: configure client keys (<client_keys><key env=\"...\"/></client_keys>)")
        return [ConfigIssue(config.source, settings.line, reason)]
    reason = (f"upstream {first.name!r} sends the operator's key (api_key_env={first.api_key_env}) and no client "
              f"keys are configured: anyone who reaches {host} could spend it. Add <client_keys><key "
              f"env=\"...\"/></client_keys>, or, listening on loopback only, <client_keys open_on_loopback=\"true\"/>")
    return [ConfigIssue(config.source, first.line, reason)]


def startup_issues(config: Config, host: str) -> list[ConfigIssue]:
    """Everything that stops `config` serving on `host` beyond its own file (validate, serve)."""
    return environment_issues(config) + exposure_issues(config, host)


@dataclass(frozen=True)
class ClientKeySet:
    """The client keys of one config, as SHA-256 digests with their names."""

    digests: tuple[tuple[bytes, str], ...] = field(default=(), repr=False)

    @classmethod
    def resolve(cls, settings: ClientKeys, source: str) -> "ClientKeySet":
        """Read `<key env>` variables now; ConfigError naming any that is unset."""
        digests, issues = [], []
        for key in settings.keys:
            if key.sha256 is not None:
                digests.append((bytes.fromhex(key.sha256), key.label))
                continue
            value = os.environ.get(key.env or "")
            if not value:
                issues.append(ConfigIssue(source, key.line, f"client key {key.label!r}: environment variable "
                                                            f"{key.env} named by <key env> is not set"))
                continue
            digests.append((hashlib.sha256(value.encode("utf-8")).digest(), key.label))
        if issues:
            raise ConfigError(issues)
        return cls(tuple(digests))

    @property
    def enforced(self) -> bool:
        return bool(self.digests)

    def match(self, candidate: bytes) -> tuple[bytes, str] | None:
        """The (digest, name) of the configured key equal to `candidate`, or None.
        Every configured key is compared, each in constant time."""
        digest = hashlib.sha256(candidate).digest()
        found = None
        for known, label in self.digests:
            if hmac.compare_digest(digest, known) and found is None:
                found = (known, label)
        return found


def needs_client_key(path: str) -> bool:
    """Proxied paths and the parallel endpoint; not the proxy's own endpoints
    (the admin token guards those)."""
    return path == PARALLEL_PATH or not (path.startswith("/_ctxwarden/") or path in _OWN_PATHS)


def _offered(name: bytes, value: bytes) -> bytes | None:
    """The key a header presents, if it is one of the three that can carry one."""
    if name == b"authorization":
        value = value.strip()
        return value[7:].strip() or None if value[:7].lower() == b"bearer " else None
    if name in (b"x-api-key", CLIENT_KEY_HEADER):
        return value.strip() or None
    return None


def check_headers(keys: ClientKeySet, headers: list[tuple[bytes, bytes]],
                  ) -> tuple[str | None, list[tuple[bytes, bytes]], str]:
    """(the accepted key's name or None, the headers to go on with, why refused:
    "missing" or "wrong"). Accepted: the header(s) that carried a client key and any
    x-ctxwarden-key are replaced by one ``x-ctxwarden-key: <hex digest>``."""
    kept: list[tuple[bytes, bytes]] = []
    accepted: tuple[bytes, str] | None = None
    offered = False
    for name, value in headers:
        lname = name.lower()
        candidate = _offered(lname, value)
        if candidate is not None:
            offered = True
            found = keys.match(candidate)
            if found is not None:
                accepted = accepted or found
                continue
        if lname == CLIENT_KEY_HEADER:
            continue
        kept.append((name, value))
    if accepted is None:
        return None, headers, "wrong" if offered else "missing"
    kept.append((CLIENT_KEY_HEADER, accepted[0].hex().encode()))
    return accepted[1], kept, ""


class Proxy(Protocol):
    """What the guard reads of the running proxy (app.Proxy)."""

    @property
    def client_keys(self) -> ClientKeySet: ...

    def count_client_key_refusal(self, reason: str) -> None: ...


_MESSAGES = {
    "missing": "this proxy needs a client key: send it as Authorization: Bearer <key> (the SDK's api_key), "
               "x-api-key or x-ctxwarden-key",
    "wrong": "the client key is not valid",
}


class ClientKeyGuard:
    """ASGI middleware: with client keys configured, a request that needs one
    (:func:`needs_client_key`) goes on only with a valid one. Keys come from the
    current config on every request: a reload that adds or rotates keys applies at once."""

    def __init__(self, app: ASGIApp, proxy: Proxy) -> None:
        self.app = app
        self.proxy = proxy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not needs_client_key(scope["path"]):
            await self.app(scope, receive, send)
            return
        keys = self.proxy.client_keys
        if not keys.enforced:
            await self.app(scope, receive, send)
            return
        name, headers, refused = check_headers(keys, scope["headers"])
        if name is not None:
            await self.app({**scope, "headers": headers, SCOPE_KEY: name}, receive, send)
            return
        self.proxy.count_client_key_refusal(refused)
        error = Unauthorized(_MESSAGES[refused])
        log.info("%s %s -> %d: client key %s", scope["method"], scope["path"], error.status, refused)
        await error_response(error, dialect_for(scope["path"], Headers(scope=scope)))(scope, receive, send)
