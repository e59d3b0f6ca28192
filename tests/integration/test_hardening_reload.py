"""Issue 11, point 7: a request routed before a reload is sent with the URL,
key and timeouts of the config it was routed with, never the URL of one and
the key of the other."""

from __future__ import annotations

import os

from ctxwarden.app import create_app
from ctxwarden.config import load_config
from tests.integration.test_hardening_uploads import BODY, metric, open_upload, read_response, wait_until
from tests.servers import proxy_config_xml, serve_app


def write_config(path, upstream_url: str, key_env: str) -> None:
    xml = proxy_config_xml(upstream_url, api_key_env=key_env).replace("<server ", '<server reload_interval="0.05" ')
    temporary = f"{path}.new"
    with open(temporary, "w") as f:
        f.write(xml)
    os.replace(temporary, path)


def test_request_in_flight_across_a_reload_keeps_one_upstream(tmp_path, monkeypatch, upstream, local_upstream):
    monkeypatch.setenv("CTXW_TEST_KEY_A", "key-a")
    monkeypatch.setenv("CTXW_TEST_KEY_B", "key-b")
    path = tmp_path / "performance.xml"
    write_config(path, upstream.url, "CTXW_TEST_KEY_A")
    app = create_app(load_config(path), config_path=str(path))
    proxy = app.state.proxy
    with serve_app(app) as url:
        # Routed under config A (the request is in the proxy), its body not all sent yet.
        client = open_upload(url)
        assert wait_until(lambda: metric(url, "ctxwarden_requests_in_flight") == 1)
        write_config(path, local_upstream.url, "CTXW_TEST_KEY_B")
        assert wait_until(lambda: proxy.config.upstreams[0].base_url == local_upstream.url)
        with client:
            client.sendall(BODY[len(BODY) // 2:])
            status, _, answer = read_response(client)
        assert status == 200, answer
        assert [r.header("authorization") for r in upstream.recorder.requests] == ["Bearer key-a"]
        assert len(local_upstream.recorder) == 0
        # A request that arrives after the reload goes to B, with B's key.
        with open_upload(url, sent=BODY) as client:
            assert read_response(client)[0] == 200
        assert [r.header("authorization") for r in local_upstream.recorder.requests] == ["Bearer key-b"]
        assert len(upstream.recorder) == 1
