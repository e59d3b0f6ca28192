"""What one request did, filled in along its way and handed to the metrics,
the live stats and the request log when its response has been sent."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RequestRecord:
    route: str                      # chat_completions | messages | forward | admin
    method: str
    path: str
    dialect: str = ""
    upstream: str = ""
    status: int = 0
    cache: str = "bypass"           # hit | miss | bypass
    rewrite: str = ""               # the chat rewrite decision, see chat.ChatRequest
    rewrite_reason: str = ""
    # estimated input cost (input-token units, the prompt cache priced in): as sent, and passthrough's
    cost_sent: float | None = None
    cost_passthrough: float | None = None
    tokens_before: int | None = None
    tokens_after: int | None = None
    error_kind: str = ""            # set when the upstream failed: connect, timeout, broken_stream
    started: float = field(default_factory=time.perf_counter)
    rewrite_seconds: float = 0.0
    upstream_seconds: float = 0.0   # until the upstream's response headers
    overhead_seconds: float = 0.0   # in the proxy before the upstream call
    total_seconds: float = 0.0
    tap: Any = None                 # the cache tap of a cached miss, ended when the response is done

    def finish(self) -> None:
        self.total_seconds = time.perf_counter() - self.started

    @property
    def cost_saved(self) -> float:
        if self.cost_sent is None or self.cost_passthrough is None:
            return 0.0
        return self.cost_passthrough - self.cost_sent

    @property
    def tokens_saved(self) -> int:
        if self.tokens_before is None or self.tokens_after is None:
            return 0
        return max(0, self.tokens_before - self.tokens_after)
