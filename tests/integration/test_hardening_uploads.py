"""Issue 11, points 2 and 12: a body is read (within `body_timeout`) before
its request waits (at most `slot_timeout`) for one of the `max_connections`
slots; a client gone mid-upload is a 499 logged at info."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import threading
import time
from urllib.parse import urlsplit

import httpx
import pytest

from ctxwarden.app import create_app
from ctxwarden.config import parse_config
from tests.servers import proxy_config_xml, serve_app

BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello " * 50}]}).encode()


def proxy_xml(upstream_url: str, **server: str) -> str:
    attributes = "".join(f' {name}="{value}"' for name, value in server.items())
    return proxy_config_xml(upstream_url).replace("<server ", f"<server{attributes} ", 1)


@contextlib.contextmanager
def served(xml: str):
    with serve_app(create_app(parse_config(xml))) as url:
        yield url


def open_upload(url: str, path: str = "/v1/chat/completions", sent: bytes = BODY[: len(BODY) // 2],
                headers: dict | None = None) -> socket.socket:
    """A socket that sent the request head and `sent` of BODY's bytes, no more."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    head = {"host": "proxy", "content-type": "application/json", "content-length": str(len(BODY)),
            "authorization": "Bearer sk-test", **(headers or {})}
    sock.sendall(f"POST {path} HTTP/1.1\r\n".encode()
                 + "".join(f"{k}: {v}\r\n" for k, v in head.items()).encode() + b"\r\n" + sent)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed without a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers.get("content-length", 0)):
        body += sock.recv(65536)
    return int(lines[0].split()[1]), headers, body


def metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"{name}(\{{[^}}]*\}})? (\S+)$", line)
        if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
            total += float(match.group(2))
    return total


def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


# --------------------------------------------------------------------------- slow uploads take no slot


@pytest.fixture(scope="module")
def two_slot_proxy_url(fake_upstream_server):
    with served(proxy_xml(fake_upstream_server.url, max_connections="2", body_timeout="30")) as url:
        yield url


def test_slow_uploads_do_not_block_a_normal_request(two_slot_proxy_url, upstream):
    slow = [open_upload(two_slot_proxy_url) for _ in range(6)]
    try:
        assert wait_until(lambda: metric(two_slot_proxy_url, "ctxwarden_requests_in_flight") >= 6)
        response = httpx.post(two_slot_proxy_url + "/v1/chat/completions", content=BODY, timeout=10,
                              headers={"content-type": "application/json", "authorization": "Bearer sk-test"})
        assert response.status_code == 200, response.text
        assert len(upstream.recorder) == 1
    finally:
        for sock in slow:
            sock.close()


def test_client_gone_mid_upload_is_499_at_info(two_slot_proxy_url, upstream, caplog):
    caplog.set_level(logging.INFO)
    before = metric(two_slot_proxy_url, "ctxwarden_requests_total", status="499", route="chat_completions")
    open_upload(two_slot_proxy_url).close()
    assert wait_until(lambda: metric(two_slot_proxy_url, "ctxwarden_requests_total", status="499",
                                     route="chat_completions") == before + 1)
    assert metric(two_slot_proxy_url, "ctxwarden_requests_total", status="500") == 0
    assert any("-> 499" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert not noisy, [r.getMessage() for r in noisy]
    assert len(upstream.recorder) == 0


# --------------------------------------------------------------------------- body and slot timeouts


@pytest.fixture(scope="module")
def one_slot_proxy_url(fake_upstream_server):
    with served(proxy_xml(fake_upstream_server.url, max_connections="1", body_timeout="0.5",
                          slot_timeout="0.3")) as url:
        yield url


@pytest.mark.parametrize("path, headers, dialect", [
    ("/v1/chat/completions", {}, "openai"),
    ("/v1/messages", {"anthropic-version": "2023-06-01"}, "anthropic"),
    ("/v1/files", {}, "openai"),
])
def test_stalled_body_is_408_in_the_dialects_shape(one_slot_proxy_url, upstream, path, headers, dialect):
    with open_upload(one_slot_proxy_url, path, headers=headers) as sock:
        status, response_headers, body = read_response(sock)
    assert status == 408
    assert response_headers["connection"] == "close"
    error = json.loads(body)
    if dialect == "anthropic":
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    else:
        assert error["error"]["type"] == "invalid_request_error"
    assert "did not arrive" in json.dumps(error)
    assert len(upstream.recorder) == 0


def test_slot_wait_is_bounded_503_with_retry_after(one_slot_proxy_url, upstream):
    # The one slot is held by a request whose upstream answers in 5 s.
    holder = open_upload(one_slot_proxy_url, sent=BODY, headers={"x-fake-delay": "5"})
    try:
        assert upstream.recorder.wait_for(lambda rec: len(rec) == 1, timeout=10)
        response = httpx.post(one_slot_proxy_url + "/v1/chat/completions", content=BODY, timeout=10,
                              headers={"content-type": "application/json"})
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert response.json()["error"]["message"]
    finally:
        holder.close()
    # The holder's client left: its upstream call is cancelled and the slot comes free.
    assert wait_until(lambda: metric(one_slot_proxy_url, "ctxwarden_requests_in_flight") == 0)
    response = httpx.post(one_slot_proxy_url + "/v1/chat/completions", content=BODY, timeout=10,
                          headers={"content-type": "application/json"})
    assert response.status_code == 200


@contextlib.contextmanager
def upstream_that_never_reads():
    """An upstream that accepts connections and reads nothing from them."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                held.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for connection in held:
            connection.close()
        server.close()


def test_an_upstream_that_reads_nothing_is_a_504_after_the_write_timeout():
    body = b"x" * (24 << 20)   # more than loopback's socket buffers hold on both sides
    with upstream_that_never_reads() as upstream_url:
        xml = proxy_config_xml(upstream_url).replace('read_timeout="60"', 'read_timeout="60" write_timeout="0.5"')
        with served(xml) as url:
            # the client gives up after 30 s: a 504 it gets came from the write timeout, not the read timeout's 60 s
            response = httpx.post(url + "/v1/files", content=body, timeout=30,
                                  headers={"authorization": "Bearer sk-test", "content-type": "application/jsonl"})
    assert response.status_code == 504, response.text
    assert response.json()["error"]["message"] == "upstream 'openai' did not answer in time"
