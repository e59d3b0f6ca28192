"""Structured logs: one JSON object per line (or one text line with the same
fields as key=value), one line per request.

Never a credential, never message content: a request line carries only the
fields of its RequestRecord."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

from ..config import LoggingSettings
from .record import RequestRecord

request_log = logging.getLogger("ctxwarden.request")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """The text format: the message, then the line's structured fields as
    key=value (a request line leads with method, path and status)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = getattr(record, "fields", None)
        if not fields:
            return line
        render = getattr(record, "render", key_values)
        return f"{line} {render(fields)}"


def key_values(fields: dict) -> str:
    """``k=v`` for every field that has a value; values with spaces or quotes quoted."""
    return " ".join(f"{k}={_value(v)}" for k, v in fields.items() if v is not None)


def _value(value: object) -> str:
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if not text or any(c in text for c in ' "=\n') else text


_LEAD = frozenset({"method", "path", "status", "rewrite", "tokens_before", "tokens_after", "upstream", "cache",
                   "ms_total"})


def _request_text(fields: dict) -> str:
    """``POST /v1/chat/completions 200 rewrite=compact tokens=41000->15800
    upstream=openai cache=miss 812ms``, then the other fields as key=value."""
    before, after = fields["tokens_before"], fields["tokens_after"]
    lead = {"rewrite": fields["rewrite"], "tokens": None if before is None else f"{before}->{after}",
            "upstream": fields["upstream"], "cache": fields["cache"]}
    rest = {k: v for k, v in fields.items() if k not in _LEAD}
    parts = (f"{fields['method']} {fields['path']} {fields['status']}", key_values(lead),
             f"{fields['ms_total']:g}ms", key_values(rest))
    return " ".join(part for part in parts if part)


@dataclass
class _Ownership:
    """Set by configure_logging. Only a process whose logging is ours (`serve`)
    has it changed by a reload: an app that embeds the proxy, tests among
    them, keeps its own handlers and levels."""

    handler: logging.Handler | None = None
    level: str | None = None  # --log-level's, which wins over every config's


_ours = _Ownership()


def configure_logging(settings: LoggingSettings, level: str | None = None) -> None:
    """Make the process's logging ours: one handler on stderr, set up as
    `settings` say, with `level` (when given) instead of theirs, now and on
    every reload."""
    _ours.handler, _ours.level = logging.StreamHandler(), level
    logging.getLogger().handlers[:] = [_ours.handler]
    _apply(settings)


def reapply_logging(settings: LoggingSettings) -> None:
    """A reloaded config's <logging>, where configure_logging made the
    process's logging ours."""
    if _ours.handler is not None:
        _apply(settings)


def _apply(settings: LoggingSettings) -> None:
    assert _ours.handler is not None
    _ours.handler.setFormatter(JsonFormatter() if settings.format == "json" else TextFormatter())
    logging.getLogger().setLevel((_ours.level or settings.level).upper())
    request_log.setLevel(logging.INFO if settings.requests else logging.WARNING)


def log_request(record: RequestRecord) -> None:
    if not request_log.isEnabledFor(logging.INFO):
        return
    fields = {
        "route": record.route, "method": record.method, "path": record.path, "status": record.status,
        "dialect": record.dialect or None, "upstream": record.upstream or None,
        "attempts": record.attempts or None, "cache": record.cache,
        "rewrite": record.rewrite or None, "rewrite_reason": record.rewrite_reason or None,
        "cost_sent": record.cost_sent, "cost_passthrough": record.cost_passthrough,
        "tokens_before": record.tokens_before,
        "tokens_after": record.tokens_after, "error": record.error_kind or None,
        "client": record.client or None,
        "ms_total": round(record.total_seconds * 1000, 3),
        "ms_upstream": round(record.upstream_seconds * 1000, 3),
        "ms_rewrite": round(record.rewrite_seconds * 1000, 3),
    }
    request_log.info("request", extra={"fields": fields, "render": _request_text})
