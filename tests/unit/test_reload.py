"""Which settings of a reloaded file apply at once, and which wait for a restart."""

from __future__ import annotations

import dataclasses

from ctxwarden.config import CacheSettings, Config, ServerSettings, TokenManagement
from ctxwarden.reload import START_ONLY, in_effect


def test_live_settings_apply_and_start_only_ones_keep_their_running_values():
    started = Config()
    loaded = Config(token_management=TokenManagement(budget=5000),
                    server=ServerSettings(port=9000, workers=3, max_body_bytes=1024),
                    cache=CacheSettings(ttl=60, enabled=False), source="new.xml")
    effective, pending = in_effect(started, loaded)
    assert pending == ("server.port", "server.workers", "cache.ttl")
    assert effective.token_management.budget == 5000 and effective.source == "new.xml"
    assert effective.server.max_body_bytes == 1024 and effective.cache.enabled is False
    assert (effective.server.port, effective.server.workers, effective.cache.ttl) == (8788, "auto", 3600)


def test_the_same_file_needs_no_restart():
    config = Config(server=ServerSettings(port=9000))
    assert in_effect(config, config) == (config, ())


def test_start_only_names_are_settings():
    for section, names in START_ONLY.items():
        fields = {f.name for f in dataclasses.fields(getattr(Config(), section))}
        assert set(names) <= fields, section
