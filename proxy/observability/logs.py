"""Structured logs: one JSON object per line, one line per request.

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
    _ours.handler.setFormatter(JsonFormatter() if settings.format == "json" else logging.Formatter(TEXT_FORMAT))
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
    request_log.info("request", extra={"fields": fields})
