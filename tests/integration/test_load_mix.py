"""A short mixed load on loopback: slow uploads, clients that leave mid-request
and large bodies at once, while the health route and ordinary chat requests
keep being answered (each within a client timeout, so a stalled proxy fails
the test instead of hanging it)."""
from __future__ import annotations

import json
import threading

import httpx

from tests.integration.test_hardening_uploads import open_upload, proxy_xml, served

LARGE = json.dumps({"model": "gpt-4o-mini", "messages": [
    {"role": "system", "content": "You are an agent."},
    {"role": "user", "content": "Summarise: " + "\n".join(f"row {i}: value {i * 7}" for i in range(600_000))}]}).encode()
SMALL = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}


def test_health_and_chat_keep_answering_under_a_mixed_load(fake_upstream_server, upstream):
    xml = proxy_xml(fake_upstream_server.url, body_timeout="5", max_connections="8")
    with served(xml) as url:
        slow = [open_upload(url) for _ in range(30)]                # half a body each, then nothing
        gone = [open_upload(url, sent=b"") for _ in range(10)]
        for sock in gone:                                           # leave mid-upload
            sock.close()
        large_results: list[int] = []

        def send_large() -> None:
            with httpx.Client(timeout=60) as client:
                large_results.append(client.post(url + "/v1/chat/completions", content=LARGE).status_code)

        senders = [threading.Thread(target=send_large) for _ in range(3)]
        for thread in senders:
            thread.start()
        with httpx.Client(base_url=url, timeout=2.0) as client:     # a stalled proxy raises ReadTimeout
            for _ in range(20):
                assert client.get("/_ctxwarden/health").json()["status"] == "ok"
                assert client.post("/v1/chat/completions", json=SMALL).status_code == 200
        for thread in senders:
            thread.join(timeout=60)
        for sock in slow:
            sock.close()
    assert large_results == [200, 200, 200]
