"""What one request did: plain data, filled in along the request's way and
read by the metrics, the live stats and the request log once it is finished.
It holds no live objects (no cache tap, no connection), so nothing a sink
keeps of it can keep a request's resources alive."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class RequestRecord:
    route: str                      # chat_completions | messages | forward | parallel_task
    method: str
    path: str
    dialect: str = ""
    model: str = ""                 # a chat request's, as the client named it
    upstream: str = ""              # the upstream called, once it is
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
    client: str = ""                # the name of the client key it came with (clientkeys.py), never the key
    attempts: int = 0               # upstream calls made (retries and fallbacks included)
    retries: list[tuple[str, str]] = field(default_factory=list)     # (upstream, reason) of each retry
    fallbacks: list[tuple[str, str]] = field(default_factory=list)   # (from, to) upstream names
    started: float = field(default_factory=time.perf_counter)
    rewrite_seconds: float = 0.0
    upstream_seconds: float = 0.0   # until the upstream's response headers
    overhead_seconds: float = 0.0   # in the proxy before the upstream call
    total_seconds: float = 0.0      # set by finish()

    def finish(self) -> None:
        self.total_seconds = time.perf_counter() - self.started

    @property
    def tokens_saved(self) -> int:
        if self.tokens_before is None or self.tokens_after is None:
            return 0
        return max(0, self.tokens_before - self.tokens_after)
