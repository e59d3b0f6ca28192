"""The disconnect watch (incoming.ClientWatch): started only once a request
has outlasted WATCH_AFTER_SECONDS, and then cancelling the work it watches
when the server reports the client gone."""

from __future__ import annotations

import asyncio

import pytest

from ctxwarden import incoming
from ctxwarden.errors import ClientClosed
from ctxwarden.incoming import ClientWatch, until_disconnected


class Receive:
    """A server's `receive` after the request body: reports the disconnect
    once `gone` is set; counts the calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.gone = asyncio.Event()

    async def __call__(self) -> dict:
        self.calls += 1
        await self.gone.wait()
        return {"type": "http.disconnect"}


async def _turns(n: int) -> None:
    # loop iterations, not time: a timer due now fires within a couple of them
    for _ in range(n):
        await asyncio.sleep(0)


async def test_work_done_before_the_delay_never_reads_receive():
    receive = Receive()
    watch = ClientWatch(receive)
    watch.start()
    assert watch.watching

    async def work() -> str:
        await _turns(5)
        return "answer"

    assert await until_disconnected(watch, work) == "answer"
    watch.close()
    await _turns(5)
    assert receive.calls == 0
    assert not watch.watching


async def test_a_client_gone_after_the_delay_cancels_the_work(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(incoming, "WATCH_AFTER_SECONDS", 0)
    receive = Receive()
    watch = ClientWatch(receive)
    watch.start()
    finished = False

    async def work() -> None:
        nonlocal finished
        await _turns(5)
        assert receive.calls == 1    # the watch is reading by now
        receive.gone.set()
        await asyncio.Event().wait()  # an upstream that never answers
        finished = True

    with pytest.raises(ClientClosed):
        await until_disconnected(watch, work)
    watch.close()
    assert watch.gone and not finished


async def test_a_follower_keeps_the_work_going(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(incoming, "WATCH_AFTER_SECONDS", 0)
    receive = Receive()
    watch = ClientWatch(receive)
    watch.start()

    async def work() -> str:
        await _turns(5)
        receive.gone.set()
        await _turns(5)
        return "answer"

    assert await until_disconnected(watch, work, keep_going=lambda: True) == "answer"
    watch.close()
    assert watch.gone
