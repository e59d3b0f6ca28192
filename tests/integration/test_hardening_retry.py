"""Issue 11, point 17: a request is retried once, and only when the upstream
closed a reused keep-alive connection before answering; never on a fresh
connection, never once an answer has started. Against a loopback server that
closes connections when told to."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable

import httpx
import pytest

from ctxwarden.config import ServerSettings, Timeouts, Upstream
from ctxwarden.errors import UpstreamUnavailable
from ctxwarden.routing import Target
from ctxwarden.upstream import UpstreamClient

ANSWER = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


class ClosingServer:
    """Answers or drops each request: `action(connection, request)` (both
    counted from 1) says "answer", "close" (FIN), "reset" (RST) or "cut" (the
    head and part of the body, then close)."""

    def __init__(self, action: Callable[[int, int], str]):
        self.action = action
        self.connections = 0
        self.requests = 0

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        connection, on_connection = self.connections, 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                self.requests += 1
                on_connection += 1
                action = self.action(connection, on_connection)
                if action == "answer":
                    writer.write(ANSWER)
                    await writer.drain()
                    continue
                if action == "reset":
                    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                               struct.pack("ii", 1, 0))
                elif action == "cut":
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nok")
                    await writer.drain()
                break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


def target(url: str) -> Target:
    return Target(Upstream("loop", "openai", url, timeouts=Timeouts(connect=5, read=5, write=5, pool=5)), None)


async def post(client: UpstreamClient, url: str) -> httpx.Response:
    response = await client.send(target(url), "POST", "/v1/chat/completions", b"", [], b'{"n": 1}')
    await response.aread()
    return response


@pytest.fixture
async def client():
    # One connection, so the second request reuses the first one's.
    client = UpstreamClient(ServerSettings(max_connections=1, max_keepalive_connections=1))
    yield client
    await client.aclose()


@pytest.mark.parametrize("close", ["close", "reset"])
async def test_reused_connection_closed_before_answering_is_retried_once(client, close):
    server = ClosingServer(lambda connection, request: close if request == 2 else "answer")
    async with server as url:
        assert (await post(client, url)).content == b"ok"
        assert (await post(client, url)).content == b"ok"
    assert (server.connections, server.requests) == (2, 3)


async def test_the_retry_happens_once(client):
    server = ClosingServer(lambda connection, request: "answer" if connection == 1 and request == 1 else "close")
    async with server as url:
        await post(client, url)
        with pytest.raises(UpstreamUnavailable):
            await post(client, url)
    assert (server.connections, server.requests) == (2, 3)


async def test_fresh_connection_closed_is_not_retried(client):
    server = ClosingServer(lambda connection, request: "close")
    async with server as url:
        with pytest.raises(UpstreamUnavailable):
            await post(client, url)
    assert (server.connections, server.requests) == (1, 1)


async def test_answer_broken_off_is_not_retried(client):
    server = ClosingServer(lambda connection, request: "cut" if request == 2 else "answer")
    async with server as url:
        await post(client, url)
        with pytest.raises(httpx.HTTPError):
            await post(client, url)
    assert (server.connections, server.requests) == (1, 2)
