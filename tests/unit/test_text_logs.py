"""The text log format: structured fields as key=value, request lines headline first."""

from __future__ import annotations

import logging

from ctxwarden.observability.logs import TextFormatter, key_values, log_request, request_log
from ctxwarden.observability.record import RequestRecord


def test_key_values_quote_what_would_split_a_line_and_leave_out_what_is_unset():
    fields = {"a": 1, "b": None, "c": "two words", "d": 'say "x"', "e": "line\nbreak", "f": "", "g": "a=b"}
    assert key_values(fields) == 'a=1 c="two words" d="say \\"x\\"" e="line\\nbreak" f="" g="a=b"'


def test_a_request_line_as_text_has_every_field(monkeypatch):
    records: list[logging.LogRecord] = []
    monkeypatch.setattr(request_log, "handle", records.append)
    level = request_log.level
    request_log.setLevel(logging.INFO)
    try:
        _log_one()
    finally:
        request_log.setLevel(level)
    line = TextFormatter().format(records[0])
    assert line.endswith(
        "ctxwarden.request: request POST /v1/messages 200 rewrite=append tokens=900->300 upstream=anthropic "
        'cache=miss 250ms route=messages dialect=anthropic rewrite_reason="appended to what was sent last turn" '
        "cost_sent=1.5 cost_passthrough=9.0 client=ci ms_upstream=200.0 ms_rewrite=10.0")


def _log_one() -> None:
    log_request(RequestRecord(route="messages", method="POST", path="/v1/messages", dialect="anthropic",
                              upstream="anthropic", status=200, cache="miss", rewrite="append",
                              rewrite_reason="appended to what was sent last turn", cost_sent=1.5,
                              cost_passthrough=9.0, tokens_before=900, tokens_after=300, client="ci",
                              total_seconds=0.25, upstream_seconds=0.2, rewrite_seconds=0.01))
