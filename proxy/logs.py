"""Structured logs: one JSON object per line, one line per request.

Never a credential, never message content: a request line carries only the
fields of its RequestRecord."""

from __future__ import annotations

import json
import logging
import time

from .records import RequestRecord

request_log = logging.getLogger("ctxwarden.request")


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


def configure_logging(level: str = "info", json_lines: bool = True, requests: bool = True) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if json_lines else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    request_log.setLevel(logging.INFO if requests else logging.WARNING)


def log_request(record: RequestRecord) -> None:
    if not request_log.isEnabledFor(logging.INFO):
        return
    fields = {
        "route": record.route, "method": record.method, "path": record.path, "status": record.status,
        "dialect": record.dialect or None, "upstream": record.upstream or None, "cache": record.cache,
        "rewrite": record.rewrite or None, "rewrite_reason": record.rewrite_reason or None,
        "cost_sent": record.cost_sent, "cost_passthrough": record.cost_passthrough,
        "tokens_before": record.tokens_before,
        "tokens_after": record.tokens_after, "error": record.error_kind or None,
        "ms_total": round(record.total_seconds * 1000, 3),
        "ms_upstream": round(record.upstream_seconds * 1000, 3),
        "ms_rewrite": round(record.rewrite_seconds * 1000, 3),
    }
    request_log.info("request", extra={"fields": fields})
