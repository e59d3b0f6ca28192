"""The upstream connection pool (transport.py, http11.py) against raw servers
on loopback that answer with exactly the bytes a test gives: keep-alive reuse,
framing (length, chunked, until close, interim answers, HEAD), timeouts, the
pool's limit, back-pressure, a CONNECT tunnel, and headers that would break
the framing."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator

import httpx
import pytest

from ctxwarden import http11
from ctxwarden.transport import Http11Transport, request_head
from tests.integration._helpers import Answer, raw_server
from tests.servers import closed_port


def ok(body: bytes = b'{"ok": true}') -> Answer:
    return lambda head: b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        len(body), body)


def transport(max_connections: int = 10, **kwargs) -> Http11Transport:
    return Http11Transport(httpx.Limits(max_connections=max_connections, max_keepalive_connections=10,
                                        keepalive_expiry=5.0), **kwargs)


TIMEOUT = {"timeout": {"connect": 5.0, "read": 5.0, "write": 5.0, "pool": 5.0}}


async def call(t: Http11Transport, url: str, method: str = "POST", content: bytes | None = b"{}",
               headers: list[tuple[bytes, bytes]] | None = None,
               extensions: dict | None = None) -> tuple[httpx.Response, bytes]:
    response = await t.send(method, url, headers or [(b"content-type", b"application/json")], content,
                            extensions or TIMEOUT)
    chunks = [chunk async for chunk in response.stream]
    await response.aclose()
    return response, b"".join(chunks)


async def test_answers_come_back_whole_and_the_connection_is_reused():
    async with raw_server(ok()) as (port, heads, connections):
        t = transport()
        try:
            for _ in range(3):
                response, body = await call(t, f"http://127.0.0.1:{port}/v1/chat/completions?x=1")
                assert response.status_code == 200 and body == b'{"ok": true}'
                assert response.extensions["reason_phrase"] == b"OK"
        finally:
            await t.aclose()
    assert connections == [1, 1, 1]
    assert heads[0].startswith(b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % port)
    assert b"content-type: application/json\r\n" in heads[0] and b"Content-Length: 2\r\n" in heads[0]
    assert b"user-agent" not in heads[0].lower() and b"accept-encoding" not in heads[0].lower()


async def test_chunked_answer_is_unframed_and_interim_answers_are_skipped():
    answer = (b"HTTP/1.1 100 Continue\r\n\r\n"
              b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: text/event-stream\r\n\r\n"
              b"6\r\ndata: \r\n3\r\nabc\r\n0\r\n\r\n")
    async with raw_server(lambda head: answer) as (port, _, connections):
        t = transport()
        try:
            for _ in range(2):
                response, body = await call(t, f"http://127.0.0.1:{port}/v1/x")
                assert response.status_code == 200 and body == b"data: abc"
                assert response.headers["content-type"] == "text/event-stream"
        finally:
            await t.aclose()
    assert connections == [1, 1]


async def test_a_body_without_length_ends_with_the_connection():
    answer = b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it"
    async with raw_server(lambda head: answer, close_after=True) as (port, _, connections):
        t = transport()
        try:
            for _ in range(2):
                _, body = await call(t, f"http://127.0.0.1:{port}/v1/x")
                assert body == b"all of it"
        finally:
            await t.aclose()
    assert connections == [1, 2], "a connection that ended its answer by closing is not reused"


async def test_head_answer_ends_with_its_head():
    answer = b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n"
    async with raw_server(lambda head: answer) as (port, _, _):
        t = transport()
        try:
            response, body = await call(t, f"http://127.0.0.1:{port}/v1/models", method="HEAD", content=None)
        finally:
            await t.aclose()
    assert response.headers["content-length"] == "1234" and body == b""


async def test_get_without_body_has_no_length_and_post_without_body_says_zero():
    async with raw_server(ok()) as (port, heads, _):
        t = transport()
        try:
            await call(t, f"http://127.0.0.1:{port}/v1/models", method="GET", content=None)
            await call(t, f"http://127.0.0.1:{port}/v1/files", method="POST", content=None)
        finally:
            await t.aclose()
    assert b"content-length" not in heads[0].lower()
    assert b"Content-Length: 0\r\n" in heads[1]


async def test_reused_connection_closed_by_the_upstream_before_answering():
    # the server closes after each answer: the pool learns of it and opens a new one
    async with raw_server(ok(), close_after=True) as (port, _, connections):
        t = transport()
        try:
            for _ in range(3):
                await call(t, f"http://127.0.0.1:{port}/v1/x")
                await asyncio.sleep(0.05)
        finally:
            await t.aclose()
    assert connections == [1, 2, 3]


async def test_silence_is_a_read_timeout_and_a_closed_port_a_connect_error():
    async with raw_server(lambda head: None) as (port, _, _):
        t = transport()
        try:
            with pytest.raises(httpx.ReadTimeout):
                await call(t, f"http://127.0.0.1:{port}/v1/x",
                           extensions={"timeout": {"connect": 5.0, "read": 0.2, "pool": 5.0}})
            with pytest.raises(httpx.ConnectError):
                await call(t, f"http://127.0.0.1:{closed_port()}/v1/x")
        finally:
            await t.aclose()


@contextlib.asynccontextmanager
async def reading_server(read: callable) -> AsyncIterator[tuple[int, list[int]]]:
    """A server whose `read(reader, writer)` handles each connection as it
    likes (reads slowly, not at all, answers early); yields its port and the
    number of connections it took so far (a list of one)."""
    opened = [0]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        opened[0] += 1
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await read(reader, writer)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, limit=8 << 20)
    async with server:
        yield server.sockets[0].getsockname()[1], opened


# more than loopback's socket buffers hold on both sides, so most of it waits in the transport's
BIG_REQUEST = b"x" * (32 << 20)


async def big_requests(port: int, write_timeout: float, count: int = 1) -> list[tuple[httpx.Response, bytes]]:
    """BIG_REQUEST posted `count` times, one after the other, through one transport."""
    t = transport()
    try:
        return [await call(t, f"http://127.0.0.1:{port}/v1/x", content=BIG_REQUEST, extensions={
            "timeout": {"connect": 5.0, "read": 5.0, "write": write_timeout, "pool": 5.0}}) for _ in range(count)]
    finally:
        await t.aclose()


async def test_an_upstream_that_stops_reading_is_a_write_timeout():
    async def never_read(reader, writer):
        await asyncio.sleep(10)

    async with reading_server(never_read) as (port, _):
        with pytest.raises(httpx.WriteTimeout):   # not the read timeout's ReadTimeout
            await big_requests(port, write_timeout=0.3)


async def test_an_upstream_reading_slowly_is_no_write_timeout():
    """The write timeout bounds a pause in the upstream's reading, not the whole upload."""
    async def slowly(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        while length:
            length -= len(await reader.read(min(length, 4 << 20)))
            await asyncio.sleep(0.05)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()

    async with reading_server(slowly) as (port, _):
        [(response, body)] = await big_requests(port, write_timeout=0.25)
    assert response.status_code == 200 and body == b"ok"


async def test_an_answer_before_the_request_is_all_sent_is_taken_and_the_connection_dropped():
    async def answer_early(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(10)

    async with reading_server(answer_early) as (port, opened):
        answers = await big_requests(port, write_timeout=0.3, count=2)
    assert [response.status_code for response, _ in answers] == [413, 413]
    assert opened == [2]   # the rest of the first request would have been read as the second


async def test_answer_broken_off_mid_body_is_an_error_after_the_bytes_that_came():
    answer = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial"
    async with raw_server(lambda head: answer, close_after=True) as (port, _, _):
        t = transport()
        try:
            response = await t.send("POST", f"http://127.0.0.1:{port}/v1/x", [], b"{}", TIMEOUT)
            received = []
            with pytest.raises(httpx.RemoteProtocolError):
                async for chunk in response.stream:
                    received.append(chunk)
            await response.aclose()
        finally:
            await t.aclose()
    assert b"".join(received) == b"partial"


async def test_malformed_answer_is_a_protocol_error():
    async with raw_server(lambda head: b"NOT HTTP AT ALL\r\n\r\n") as (port, _, _):
        t = transport()
        try:
            with pytest.raises(httpx.RemoteProtocolError):
                await call(t, f"http://127.0.0.1:{port}/v1/x")
        finally:
            await t.aclose()


async def test_the_pool_limit_makes_callers_wait_and_a_full_pool_times_out():
    async with raw_server(ok()) as (port, _, connections):
        t = transport(max_connections=1)
        url = f"http://127.0.0.1:{port}/v1/x"
        try:
            held = await t.send("POST", url, [], b"{}", TIMEOUT)   # its body not read: the connection is busy
            with pytest.raises(httpx.PoolTimeout):
                await t.send("POST", url, [], b"{}", {"timeout": {"connect": 5.0, "read": 5.0, "pool": 0.2}})
            waiting = asyncio.ensure_future(call(t, url))
            await asyncio.sleep(0.05)
            assert not waiting.done()
            [_ async for _ in held.stream]
            await held.aclose()
            response, _ = await waiting
            assert response.status_code == 200
        finally:
            await t.aclose()
    assert connections == [1, 1]


async def test_an_unread_stream_stops_reading_the_socket():
    body = b"x" * (4 * http11.PAUSE_BYTES)
    answer = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    async with raw_server(lambda head: answer) as (port, _, _):
        t = transport()
        try:
            response = await t.send("POST", f"http://127.0.0.1:{port}/v1/x", [], b"{}", TIMEOUT)
            await asyncio.sleep(0.3)
            connection = response.stream._connection
            assert connection._paused and connection._unread <= 2 * http11.PAUSE_BYTES
            received = b"".join([chunk async for chunk in response.stream])
            await response.aclose()
        finally:
            await t.aclose()
    assert received == body


@pytest.mark.parametrize("header", [(b"x-evil", b"a\r\nx-injected: 1"), (b"x-evil", b"a\nb"),
                                    (b"x-evil\r\nx-injected", b"1")])
def test_a_line_break_in_a_header_is_refused(header):
    with pytest.raises(httpx.LocalProtocolError):
        request_head("POST", "/v1/x", "h", [header], b"{}", None)


@contextlib.asynccontextmanager
async def tunnelling_proxy() -> AsyncIterator[tuple[int, list[bytes]]]:
    """A forward proxy that opens CONNECT tunnels and records each CONNECT head."""
    heads: list[bytes] = []

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        heads.append(head)
        host, port = head.split(b" ")[1].rsplit(b":", 1)
        up_reader, up_writer = await asyncio.open_connection(host.decode(), int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1], heads


async def test_https_through_a_forward_proxy_is_a_connect_tunnel(certificate, monkeypatch):
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    async with raw_server(ok(), context=context) as (port, heads, connections), \
            tunnelling_proxy() as (proxy_port, connects):
        monkeypatch.setenv("HTTPS_PROXY", f"http://someone:secret@127.0.0.1:{proxy_port}")
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        t = transport()
        extensions = {**TIMEOUT, "ca_bundle": str(cert)}
        try:
            for _ in range(2):
                response, body = await call(t, f"https://127.0.0.1:{port}/v1/x", extensions=extensions)
                assert body == b'{"ok": true}'
        finally:
            await t.aclose()
    assert len(connects) == 1 and connects[0].startswith(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\n" % port)
    assert b"Proxy-Authorization: Basic c29tZW9uZTpzZWNyZXQ=" in connects[0]
    assert heads[0].startswith(b"POST /v1/x HTTP/1.1\r\n") and b"proxy-authorization" not in heads[0].lower()
    assert connections == [1, 1], "the tunnel is kept alive and reused"
