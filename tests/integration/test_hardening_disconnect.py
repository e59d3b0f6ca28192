"""Issue 11, point 11 (non-streaming): a client that goes away before its
answer is ready cancels the upstream call, unless a coalesced follower waits
for the same answer; the request counts as 499."""

from __future__ import annotations

import contextlib
import json
import socket
import threading

import pytest

from ctxwarden.app import create_app
from ctxwarden.config import parse_config
from tests.integration.test_hardening_uploads import metric, open_upload, read_response, wait_until
from tests.servers import proxy_config_xml, serve_app


class SilentUpstream:
    """Reads each request whole and never answers; counts the connections the
    proxy closed while waiting (its upstream call cancelled)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.received = 0
        self.closed_by_proxy = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30)
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            while len(body) < length:
                body += conn.recv(65536)
            self.received += 1
            try:
                if conn.recv(1) == b"":
                    self.closed_by_proxy += 1
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()


@contextlib.contextmanager
def served_proxy(upstream_url: str):
    app = create_app(parse_config(proxy_config_xml(upstream_url)))
    with serve_app(app) as url:
        yield url, app.state.proxy


@pytest.fixture(scope="module")
def silent():
    upstream = SilentUpstream()
    yield upstream
    upstream.close()


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/models/x"])
def test_client_gone_cancels_the_upstream_call(silent, path):
    before = silent.closed_by_proxy
    with served_proxy(silent.url) as (url, _):
        body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": path}]}).encode()
        client = open_upload(url, path, sent=body, headers={"content-length": str(len(body))})
        assert wait_until(lambda: silent.received == before + 1)
        client.close()
        assert wait_until(lambda: silent.closed_by_proxy == before + 1), "the upstream call was not cancelled"
        assert wait_until(lambda: metric(url, "ctxwarden_requests_total", status="499") == 1)
        assert metric(url, "ctxwarden_requests_in_flight") == 0


def test_coalesced_call_lives_on_for_its_follower(fake_upstream_server, upstream):
    body = json.dumps({"model": "gpt-4o-mini", "temperature": 0,
                       "messages": [{"role": "user", "content": "coalesce me"}]}).encode()
    headers = {"content-length": str(len(body)), "x-fake-delay": "3", "accept-encoding": "identity"}
    with served_proxy(fake_upstream_server.url) as (url, proxy):
        leader = open_upload(url, sent=body, headers=headers)
        assert upstream.recorder.wait_for(lambda rec: len(rec) == 1, timeout=10)
        with open_upload(url, sent=body, headers=headers) as follower:
            assert wait_until(lambda: proxy.cache.inflight.coalesced == 1)
            leader.close()
            status, response_headers, answer = read_response(follower)
        assert status == 200, answer
        assert response_headers["x-ctxwarden-coalesced"] == "1"
        assert json.loads(answer)["choices"][0]["message"]["content"]
        assert len(upstream.recorder) == 1
