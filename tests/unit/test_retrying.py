"""Retries and fallbacks (proxy/retrying.py): the pure policy, the loop
driven by a scripted call and a clock of the test's own (no sockets, no
sleeps), the routes' fallback lists and the config that sets them."""

from __future__ import annotations

import email.utils
import logging
import math

import httpx
import pytest

from ctxwarden.config import ConfigError, Fallback, RetrySettings, Upstream, parse_config
from ctxwarden.errors import BadPath, UpstreamTimeout, UpstreamUnavailable
from ctxwarden.observability import Telemetry
from ctxwarden.observability.record import RequestRecord
from ctxwarden.retrying import (
    DISCARD_LIMIT, JITTER, Pacing, asked_delay, attempts_header, backoff_delay, call_with_retries, error_reason,
    next_delay, wait_before_retry,
)
from ctxwarden.routing import Routes, Target

NOW = 1_800_000_000.0
RETRY = RetrySettings(attempts=2, backoff=0.5, max_backoff=8)


# --------------------------------------------------------------------------- what the upstream asks


def _asked(**headers: str) -> float | None:
    return asked_delay(httpx.Headers(headers), NOW)


def test_retry_after_in_seconds_and_milliseconds_the_milliseconds_first():
    assert _asked(**{"retry-after": "3"}) == 3
    assert _asked(**{"retry-after": "1.5"}) == 1.5
    assert _asked(**{"retry-after-ms": "250"}) == 0.25
    assert _asked(**{"retry-after": "3", "retry-after-ms": "20"}) == 0.02


def test_retry_after_as_an_http_date_is_relative_to_now():
    assert _asked(**{"retry-after": email.utils.formatdate(NOW + 7, usegmt=True)}) == 7
    assert _asked(**{"retry-after": email.utils.formatdate(NOW - 60, usegmt=True)}) == 0
    # "-0000": UTC with the zone unsaid, still read as UTC
    assert _asked(**{"retry-after": email.utils.formatdate(NOW + 2).rsplit(" ", 1)[0] + " -0000"}) == 2


@pytest.mark.parametrize("value", ["soon", "", "nan", "Mon, 99 Foo 2026"])
def test_unreadable_retry_after_is_none(value):
    assert _asked(**{"retry-after": value}) is None


def test_an_overflowing_retry_after_is_longer_than_any_cap():
    assert _asked(**{"retry-after": "1e999"}) == math.inf
    assert next_delay(RETRY, 1, math.inf, 0.0) is None


def test_negative_retry_after_is_now_and_none_without_headers():
    assert _asked(**{"retry-after": "-5"}) == 0
    assert _asked(**{"retry-after-ms": "junk", "retry-after": "2"}) == 2
    assert _asked() is None


# --------------------------------------------------------------------------- the wait


def test_backoff_doubles_up_to_the_cap():
    assert [backoff_delay(RETRY, n, 0.0) for n in (1, 2, 3, 4, 5, 6)] == [0.5, 1, 2, 4, 8, 8]


@pytest.mark.parametrize("draw", [0.0, 0.3, 0.999999])
def test_jitter_shortens_by_at_most_its_share(draw):
    for number in (1, 3, 6):
        full = backoff_delay(RETRY, number, 0.0)
        assert full * (1 - JITTER) <= backoff_delay(RETRY, number, draw) <= full


def test_next_delay_honours_the_asked_wait_up_to_the_cap_and_the_attempts():
    assert next_delay(RETRY, 1, None, 0.0) == 0.5
    assert next_delay(RETRY, 2, 3.0, 0.9) == 3.0
    assert next_delay(RETRY, 1, 0.0, 0.9) == 0.0
    assert next_delay(RETRY, 1, 8.0, 0.0) == 8.0
    assert next_delay(RETRY, 1, 8.5, 0.0) is None, "asking for more than max_backoff: no retry"
    assert next_delay(RETRY, 3, None, 0.0) is None, "attempts used up"
    assert next_delay(RetrySettings(), 1, None, 0.0) is None, "off by default"


def test_wait_before_retry_reads_the_failed_answers_headers():
    assert wait_before_retry(RETRY, 2, None, NOW, 0.0) == 1.0, "a failed connection: backoff"
    assert wait_before_retry(RETRY, 1, httpx.Headers({"retry-after": "3"}), NOW, 0.5) == 3.0
    assert wait_before_retry(RETRY, 1, httpx.Headers({"retry-after": "30"}), NOW, 0.0) is None
    assert wait_before_retry(RETRY, 1, httpx.Headers({"x-should-retry": "False"}), NOW, 0.0) is None
    assert wait_before_retry(RETRY, 1, httpx.Headers({"x-should-retry": "true"}), NOW, 0.0) == 0.5


# --------------------------------------------------------------------------- what is retried


def test_the_default_retries_429_every_5xx_and_connection_failures():
    retry = RetrySettings()
    assert all(retry.covers(r) for r in ("429", "500", "502", "503", "529", "connect"))
    assert not any(retry.covers(r) for r in ("200", "400", "401", "404", "408", "timeout", "5"))


def test_on_names_single_codes_and_timeouts():
    retry = RetrySettings(on=("503", "408", "timeout"))
    assert retry.covers("503") and retry.covers("408") and retry.covers("timeout")
    assert not retry.covers("500") and not retry.covers("429") and not retry.covers("connect")


def test_a_connect_timeout_is_a_connection_failure_a_read_timeout_is_not():
    assert error_reason(UpstreamUnavailable("refused")) == "connect"
    for cause, reason in ((httpx.ConnectTimeout("slow"), "connect"), (httpx.ReadTimeout("slow"), "timeout")):
        try:
            raise UpstreamTimeout("late") from cause
        except UpstreamTimeout as exc:
            assert error_reason(exc) == reason


def test_attempts_header_only_after_more_than_one_call():
    assert attempts_header(1) == []
    assert attempts_header(3) == [(b"x-ctxwarden-attempts", b"3")]


# --------------------------------------------------------------------------- the loop


def _target(name: str, retry: RetrySettings = RETRY, fallbacks: tuple[Fallback, ...] = (),
            dialect: str = "openai") -> Target:
    return Target(Upstream(name, dialect, f"http://{name}.test", retry=retry, fallbacks=fallbacks), None)


class Script:
    """A call that answers each try from a list: a status (with headers), or an error to raise."""

    def __init__(self, *steps):
        self.steps = list(steps)
        self.called: list[str] = []
        self.responses: list[httpx.Response] = []

    async def __call__(self, target: Target) -> httpx.Response:
        self.called.append(target.name)
        step = self.steps.pop(0)
        if isinstance(step, Exception):
            raise step
        status, headers = step if isinstance(step, tuple) else (step, {})
        response = httpx.Response(status, headers=headers, stream=httpx.ByteStream(b'{"error": %d}' % status))
        self.responses.append(response)
        return response


class Clock:
    def __init__(self):
        self.slept: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)

    def pacing(self) -> Pacing:
        return Pacing(sleep=self.sleep, now=lambda: NOW, random=lambda: 0.0)


def _record() -> RequestRecord:
    return RequestRecord(route="chat_completions", method="POST", path="/v1/chat/completions")


async def _run(targets, script: Script, clock: Clock, record: RequestRecord | None = None) -> httpx.Response:
    return await call_with_retries(targets, script, record or _record(), clock.pacing())


async def test_retried_until_an_answer_and_the_failed_ones_closed():
    script, clock, record = Script(503, (429, {"retry-after": "2"}), 200), Clock(), _record()
    response = await _run([_target("a")], script, clock, record)
    assert response.status_code == 200 and not response.is_closed
    assert clock.slept == [0.5, 2.0]
    assert all(r.is_closed for r in script.responses[:2])
    assert (record.upstream, record.attempts, record.retries, record.fallbacks) == (
        "a", 3, [("a", "503"), ("a", "429")], [])


async def test_when_every_try_fails_the_last_answer_is_returned_unread():
    script, clock, record = Script(503, 502, 500), Clock(), _record()
    response = await _run([_target("a")], script, clock, record)
    assert response.status_code == 500 and not response.is_closed
    assert (await response.aread()) == b'{"error": 500}'
    assert record.attempts == 3 and len(clock.slept) == 2


@pytest.mark.parametrize("status", [200, 201, 400, 401, 404, 408])
async def test_an_answer_not_to_retry_is_returned_at_once(status):
    script, clock = Script(status), Clock()
    assert (await _run([_target("a"), _target("b")], script, clock)).status_code == status
    assert script.called == ["a"] and clock.slept == []


async def test_connection_failures_are_retried_and_the_last_one_raised():
    refused = UpstreamUnavailable("upstream 'a' could not be reached")
    script, clock, record = Script(refused, refused, refused), Clock(), _record()
    with pytest.raises(UpstreamUnavailable):
        await _run([_target("a")], script, clock, record)
    assert record.retries == [("a", "connect"), ("a", "connect")] and record.upstream == "a"


async def test_read_timeouts_are_not_retried_unless_named():
    def late() -> UpstreamTimeout:
        try:
            raise UpstreamTimeout("late") from httpx.ReadTimeout("late")
        except UpstreamTimeout as exc:
            return exc

    script = Script(late())
    with pytest.raises(UpstreamTimeout):
        await _run([_target("a")], script, Clock())
    assert script.called == ["a"]
    named = _target("a", RetrySettings(attempts=1, backoff=0, on=("timeout",)))
    script = Script(late(), 200)
    assert (await _run([named], script, Clock())).status_code == 200


async def test_fallbacks_take_over_in_order_after_their_own_retries():
    off = RetrySettings()
    targets = [_target("a"), _target("b", off), _target("c", off)]
    script, clock, record = Script(503, 503, 503, UpstreamUnavailable("b down"), 200), Clock(), _record()
    response = await _run(targets, script, clock, record)
    assert response.status_code == 200
    assert script.called == ["a", "a", "a", "b", "c"]
    assert record.fallbacks == [("a", "b"), ("b", "c")] and record.upstream == "c" and record.attempts == 5
    assert len(clock.slept) == 2, "no wait before a fallback"


async def test_a_wait_longer_than_the_cap_ends_the_retries_a_fallback_still_serves():
    too_long = (429, {"retry-after": "60"})
    script, clock = Script(too_long), Clock()
    alone = await _run([_target("a")], script, clock)
    assert alone.status_code == 429 and alone.headers["retry-after"] == "60" and clock.slept == []
    script = Script(too_long, 200)
    assert (await _run([_target("a"), _target("b")], script, clock)).status_code == 200
    assert script.called == ["a", "b"] and clock.slept == []


async def test_x_should_retry_false_ends_the_retries_a_fallback_still_serves():
    refused = (503, {"x-should-retry": "false"})
    script, clock = Script(refused, 200), Clock()
    assert (await _run([_target("a"), _target("b")], script, clock)).status_code == 200
    assert script.called == ["a", "b"] and clock.slept == []
    script = Script((503, {"x-should-retry": "true"}), 200)
    assert (await _run([_target("a")], script, clock)).status_code == 200 and script.called == ["a", "a"]


async def test_a_failure_outside_on_goes_to_no_fallback():
    only_429 = _target("a", RetrySettings(attempts=1, on=("429",)))
    script = Script(503)
    assert (await _run([only_429, _target("b")], script, Clock())).status_code == 503
    assert script.called == ["a"]


async def test_errors_that_are_not_the_upstreams_are_never_retried():
    script = Script(BadPath("no"))
    with pytest.raises(BadPath):
        await _run([_target("a"), _target("b")], script, Clock())
    assert script.called == ["a"]


async def test_a_failed_answer_is_read_at_most_the_limit_then_closed():
    read = []

    async def body():
        for _ in range(100):
            read.append(1)
            yield b"x" * 4096

    big = httpx.Response(503, stream=_Chunks(body()))

    async def call(target):
        return big if not read else httpx.Response(200)

    response = await call_with_retries([_target("a")], call, _record(), Clock().pacing())
    assert response.status_code == 200 and big.is_closed
    assert len(read) * 4096 <= DISCARD_LIMIT + 4096


class _Chunks(httpx.AsyncByteStream):
    def __init__(self, chunks):
        self.chunks = chunks

    async def __aiter__(self):
        async for chunk in self.chunks:
            yield chunk

    async def aclose(self) -> None:
        await self.chunks.aclose()


# --------------------------------------------------------------------------- routes


def test_fallbacks_of_a_route_follow_the_model_globs_with_their_own_keys(monkeypatch):
    monkeypatch.setenv("B_KEY", "sk-b")
    a = Upstream("a", "openai", "http://a.test",
                 fallbacks=(Fallback("c", "gpt-4o*"), Fallback("b"), Fallback("c")))
    b = Upstream("b", "openai", "http://b.test", api_key_env="B_KEY", model_patterns=("b-*",))
    c = Upstream("c", "openai", "http://c.test", model_patterns=("c-*",))
    routes = Routes.resolve((a, b, c))
    primary = routes.route("openai", "gpt-4o-mini")
    assert primary.upstream is a and primary.api_key is None
    assert [(t.name, t.api_key) for t in routes.fallbacks(primary, "gpt-4o-mini")] == [
        ("c", None), ("b", "sk-b")], "each upstream once, where it first applies"
    assert [t.name for t in routes.fallbacks(primary, "o3")] == ["b", "c"]
    assert [t.name for t in routes.fallbacks(primary, None)] == ["b", "c"], "other paths: the unscoped ones"
    assert routes.fallbacks(routes.route("openai", "b-1"), "b-1") == ()


# --------------------------------------------------------------------------- config


def _config(upstreams: str):
    return parse_config(f"<performance_optimization><upstreams>{upstreams}</upstreams></performance_optimization>")


def test_retry_and_fallbacks_are_read_in_order():
    config = _config("""
        <upstream name="a" dialect="openai" base_url="http://a.test">
          <retry attempts="3" backoff="0.25" max_backoff="4" on="429 503 connect timeout"/>
          <fallback upstream="c" model="gpt-4o*"/>
          <fallback upstream="b"/>
        </upstream>
        <upstream name="b" dialect="openai" base_url="http://b.test"><model>b-*</model></upstream>
        <upstream name="c" dialect="openai" base_url="http://c.test"><model>c-*</model></upstream>""")
    a, b, _ = config.upstreams
    assert a.retry == RetrySettings(attempts=3, backoff=0.25, max_backoff=4, on=("429", "503", "connect", "timeout"))
    assert a.fallbacks == (Fallback("c", "gpt-4o*"), Fallback("b"))
    assert b.retry == RetrySettings() and b.retry.attempts == 0 and b.fallbacks == ()
    assert list(config.describe()["upstreams"][0]["fallbacks"]) == [{"upstream": "c", "model": "gpt-4o*"},
                                                             {"upstream": "b", "model": None}]


@pytest.mark.parametrize("children, reason", [
    ('<fallback upstream="nope"/>', "<fallback upstream='nope'> names no configured upstream; known: a, b, c"),
    ('<fallback upstream="a"/>', "<fallback upstream='a'> names the upstream it belongs to"),
    ('<fallback upstream="c"/>', "<fallback upstream='c'> speaks anthropic, not openai like upstream 'a'"),
    ('<fallback upstream="b"/><fallback upstream="b"/>', "<fallback upstream='b'> is listed twice"),
    ('<retry attempts="1"/><retry attempts="2"/>', "an upstream has at most one <retry>; the first is on line 2"),
    ('<retry backoff="2" max_backoff="1"/>', "<retry>: max_backoff=1 must not be less than backoff=2"),
    ('<retry on="429 4xx"/>', "The value '4xx' is not accepted"),
    ('<retry attempts="11"/>', "attempts"),
])
def test_bad_retry_and_fallback_settings_are_refused_with_their_line(children, reason):
    with pytest.raises(ConfigError) as caught:
        _config(f"""<upstream name="a" dialect="openai" base_url="http://a.test">
            {children}</upstream>
            <upstream name="b" dialect="openai" base_url="http://b.test"><model>b-*</model></upstream>
            <upstream name="c" dialect="anthropic" base_url="http://c.test"/>""")
    assert any(reason in issue.reason and issue.line == 2 for issue in caught.value.issues), caught.value


# --------------------------------------------------------------------------- what is reported


def test_retries_and_fallbacks_reach_the_metrics_and_the_request_log(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="ctxwarden.request")
    telemetry = Telemetry()
    record = _record()
    telemetry.start(record)
    record.status, record.upstream, record.attempts = 200, "b", 4
    record.retries = [("a", "503"), ("a", "503"), ("b", "connect")]
    record.fallbacks = [("a", "b")]
    telemetry.finish(record)
    metrics = telemetry.metrics.render().decode().splitlines()
    assert 'ctxwarden_upstream_retries_total{reason="503",upstream="a"} 2.0' in metrics
    assert 'ctxwarden_upstream_retries_total{reason="connect",upstream="b"} 1.0' in metrics
    assert 'ctxwarden_upstream_fallbacks_total{from="a",to="b"} 1.0' in metrics
    [line] = [r.fields for r in caplog.records if r.name == "ctxwarden.request"]
    assert (line["upstream"], line["attempts"]) == ("b", 4)
