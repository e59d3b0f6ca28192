"""The rewrite plan: what the pipeline is asked to achieve for one request."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..pricing import OPENAI_PRICING, Pricing
from ..tokens import DEFAULT_ENCODING

OVERFLOW_CHOICES = ("fit", "passthrough", "reject")


@dataclass(frozen=True)
class RewritePlan:
    """Settings for one rewrite.

    budget                 most input tokens the rewritten request may carry
    compression_threshold  fraction of ``budget`` above which the proxy manages
                           the conversation (state, cache hints); below it a
                           request is sent byte for byte
    pruning_distance       hops from the focus beyond which compacted context is
                           not recalled (0: no recall)
    tier_shares            percent of ``budget`` for critical / important /
                           supporting / cache: after a compaction, the newest
                           turns kept verbatim (important) and the note
                           (supporting) share the room in this ratio; a recall
                           message takes at most the cache share
    critical_overflow      when the latest turn alone exceeds ``budget``: "fit"
                           (cut the pending tool output), "passthrough" or "reject"
    encoding               tiktoken encoding used for counting
    pricing                how the upstream bills input with its prompt cache
    low_water              a compaction leaves at most this fraction of the room
                           above the pinned head (less when the pricing says a
                           deeper cut pays, see ``conversation.low_water``)
    """

    budget: int
    compression_threshold: float = 0.7
    pruning_distance: int = 3
    tier_shares: tuple[int, int, int, int] = (20, 20, 50, 10)
    critical_overflow: str = "fit"
    encoding: str = DEFAULT_ENCODING
    pricing: Pricing = field(default=OPENAI_PRICING)
    low_water: float = 0.35

    def __post_init__(self) -> None:
        if not isinstance(self.budget, int) or self.budget <= 0:
            raise ValueError("budget must be a positive integer")
        if not 0.0 <= float(self.compression_threshold) <= 1.0:
            raise ValueError("compression_threshold must be between 0 and 1")
        if not isinstance(self.pruning_distance, int) or self.pruning_distance < 0:
            raise ValueError("pruning_distance must be a non-negative integer")
        shares = tuple(self.tier_shares)
        if len(shares) != 4 or any(s < 0 for s in shares) or sum(shares) <= 0:
            raise ValueError("tier_shares must be four non-negative numbers")
        if self.critical_overflow not in OVERFLOW_CHOICES:
            raise ValueError(f"critical_overflow must be one of {OVERFLOW_CHOICES}")
        if not 0.0 < self.low_water < 1.0:
            raise ValueError("low_water must be between 0 and 1")

    @property
    def threshold_tokens(self) -> float:
        return self.compression_threshold * self.budget

    def share_tokens(self) -> tuple[int, int, int, int]:
        total = sum(self.tier_shares)
        return tuple(int(self.budget * s / total) for s in self.tier_shares)  # type: ignore[return-value]
