"""Which configured upstream serves a request, on a path checked once before
anything else looks at it (which dialect it speaks is the dialects' registry's)."""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import unquote

import httpx

from .config import ConfigError, ConfigIssue, Timeouts, Upstream
from .errors import BadPath, NotFound


@dataclass(frozen=True)
class RequestPath:
    """A client's path once checked: `raw` keeps the client's percent-escapes
    and is what the upstream gets; `decoded` is what routing compares."""

    raw: str
    decoded: str


# Escapes that would make one segment into two (or a Windows separator), any case.
_ENCODED_SEPARATORS = ("%2f", "%5c")


def check_path(raw_path: bytes) -> RequestPath:
    """The path as sent (`raw_path`, without the query), or BadPath when it has
    a dot segment (`.`, `..`, also percent-encoded, any case) or an encoded slash or
    backslash: such a path could reach another route, or another path of the
    upstream, than the one it names."""
    # Bytes that are not printable ASCII, and '#', are escaped so that the
    # upstream URL built from `raw` has exactly this path.
    raw = "".join(chr(b) if 0x20 < b < 0x7f and b != 0x23 else f"%{b:02X}" for b in raw_path)
    lowered = raw.lower()
    if "\\" in raw or any(escape in lowered for escape in _ENCODED_SEPARATORS):
        raise BadPath("the request path must not contain an encoded slash or a backslash")
    decoded = unquote(raw)
    # `..;x` counts too: some servers drop path parameters before resolving.
    if any(segment.split(";", 1)[0] in (".", "..") for segment in decoded.split("/")):
        raise BadPath("the request path must not contain '.' or '..' segments")
    return RequestPath(raw, decoded)


@dataclass(frozen=True)
class Router:
    upstreams: tuple[Upstream, ...]

    def choose(self, dialect: str, model: str | None) -> Upstream:
        """An upstream of the dialect whose model patterns match; else its first
        catch-all (one without patterns); else its first at all."""
        candidates = [u for u in self.upstreams if u.dialect == dialect]
        if not candidates:
            raise NotFound(f"no upstream serving the {dialect} API is configured in ctxwarden")
        if model:
            for upstream in candidates:
                if upstream.serves_model(model):
                    return upstream
        for upstream in candidates:
            if not upstream.model_patterns:
                return upstream
        return candidates[0]


@dataclass(frozen=True)
class Target:
    """One upstream as a request uses it, fixed when the request is routed:
    URL, key and timeouts of one config travel together to the send, so a
    reload can never pair one upstream's URL with another's key."""

    upstream: Upstream
    api_key: str | None = field(repr=False)

    @property
    def name(self) -> str:
        return self.upstream.name

    def timeout(self) -> Mapping[str, float]:
        """The upstream call's httpx `timeout` extension (made once per upstream's timeouts)."""
        return _timeout_extension(self.upstream.timeouts)


@dataclass(frozen=True)
class Routes:
    """The upstreams of one config with their keys read from the environment."""

    router: Router
    targets: tuple[Target, ...]

    @classmethod
    def resolve(cls, upstreams: tuple[Upstream, ...]) -> "Routes":
        """Raises ConfigError when a named key variable is not set."""
        return cls(Router(upstreams), tuple(Target(u, api_key(u)) for u in upstreams))

    def route(self, dialect: str, model: str | None) -> Target:
        chosen = self.router.choose(dialect, model)
        return next(t for t in self.targets if t.upstream is chosen)

    def fallbacks(self, target: Target, model: str | None) -> tuple[Target, ...]:
        """The targets tried in turn when `target` fails: its <fallback> list,
        those whose model glob (if any) matches `model`, each once. Each comes
        with its own key, so no upstream ever gets another's injected key."""
        if not target.upstream.fallbacks:
            return ()
        by_name = {t.name: t for t in self.targets}
        names = dict.fromkeys(f.upstream for f in target.upstream.fallbacks if f.serves(model))
        return tuple(by_name[name] for name in names)


def api_key(upstream: Upstream) -> str | None:
    if upstream.api_key_env is None:
        return None
    key = os.environ.get(upstream.api_key_env)
    if not key:
        raise ConfigError([ConfigIssue("<environment>", None,
                                       f"upstream {upstream.name!r}: environment variable "
                                       f"{upstream.api_key_env} named by api_key_env is not set")])
    return key


@functools.lru_cache(maxsize=256)
def _timeout_extension(t: Timeouts) -> Mapping[str, float]:
    return MappingProxyType(httpx.Timeout(connect=t.connect, read=t.read, write=t.write, pool=t.pool).as_dict())
