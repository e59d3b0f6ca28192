"""What a request needs that is derived from one config: the config itself,
its upstream routes, and the shared client, telemetry and cache.  Built once
per config; a reload builds a new one and requests in flight keep theirs."""

from __future__ import annotations

from dataclasses import dataclass

from .caching import ResponseCache
from .config import Config
from .observability import Telemetry
from .routing import Routes
from .upstream import UpstreamClient


@dataclass(frozen=True)
class Context:
    config: Config
    routes: Routes
    client: UpstreamClient
    telemetry: Telemetry
    cache: ResponseCache

    @classmethod
    def build(cls, config: Config, client: UpstreamClient, telemetry: Telemetry, cache: ResponseCache):
        """Raises ConfigError when an upstream's key is missing: keys are read here, once per config."""
        return cls(config, Routes.resolve(config.upstreams), client, telemetry, cache)
