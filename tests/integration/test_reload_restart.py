"""A reload applies what it can live; /_ctxwarden/config shows the config in
effect and marks what the reloaded file changes that only a restart applies."""

from __future__ import annotations

import httpx

from ctxwarden.app import create_app
from ctxwarden.config import load_config
from tests.integration.test_hardening_reload import write_config
from tests.integration.test_hardening_uploads import wait_until
from tests.servers import serve_app

from ._helpers import replace_file


def test_config_endpoint_marks_what_needs_a_restart(tmp_path, monkeypatch, upstream):
    monkeypatch.setenv("CTXW_TEST_KEY_A", "key-a")
    path = tmp_path / "performance.xml"
    write_config(path, upstream.url, "CTXW_TEST_KEY_A")
    app = create_app(load_config(path), config_path=str(path))
    with serve_app(app) as url:
        before = httpx.get(url + "/_ctxwarden/config").json()
        assert before["restart_required"] == []
        xml = path.read_text()
        changed = (xml.replace("<budget>200000</budget>", "<budget>90000</budget>")
                   .replace('port="8788"', 'port="8799"')
                   .replace("</performance_optimization>", '<cache ttl="60" cache_sampled="true"/>\n'
                                                          "</performance_optimization>"))
        replace_file(path, changed)
        assert wait_until(lambda: httpx.get(url + "/_ctxwarden/config").json()["token_management"]["budget"]
                          == 90000)
        after = httpx.get(url + "/_ctxwarden/config").json()
        # live: the budget and which answers are cached; on restart: the port and the cache's TTL
        assert after["cache"]["cache_sampled"] is True
        assert after["restart_required"] == ["server.port", "cache.ttl"]
        assert after["server"]["port"] == before["server"]["port"] == 8788
        assert after["cache"]["ttl"] == before["cache"]["ttl"] == 3600
        # the file back as it started: nothing waits for a restart any more
        replace_file(path, xml)
        assert wait_until(lambda: httpx.get(url + "/_ctxwarden/config").json()["restart_required"] == [])
