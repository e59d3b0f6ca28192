"""What a request needs that is derived from one config: the config itself,
its upstream routes, and the shared client, telemetry and cache.  Built once
per config; a reload builds a new one and requests in flight keep theirs."""

from __future__ import annotations

from dataclasses import dataclass

from .caching import ResponseCache
from .clientkeys import ClientKeySet, environment_issues, exposure_issues
from .config import Config, ConfigError
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
    client_keys: ClientKeySet = ClientKeySet()

    @classmethod
    def build(cls, config: Config, client: UpstreamClient, telemetry: Telemetry, cache: ResponseCache,
              listen_host: str | None = None):
        """Raises ConfigError when a key variable (an upstream's, a client key's) is
        unset: keys are read here, once per config. With `listen_host` (the address
        `serve` listens on), also when the config may not serve there
        (clientkeys.exposure_issues)."""
        issues = environment_issues(config)
        if listen_host is not None:
            issues += exposure_issues(config, listen_host)
        if issues:
            raise ConfigError(issues)
        return cls(config, Routes.resolve(config.upstreams), client, telemetry, cache,
                   ClientKeySet.resolve(config.client_keys, config.source))
