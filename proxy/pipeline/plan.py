"""The rewrite plan: what the pipeline is asked to achieve for one request."""
from __future__ import annotations

from dataclasses import dataclass

from ..tokens import DEFAULT_ENCODING


@dataclass(frozen=True)
class RewritePlan:
    """Settings for one rewrite.

    budget                 most input tokens the rewritten request may carry
    compression_threshold  fraction of ``budget`` above which rewriting starts
    pruning_distance       hops from the focus beyond which context is pruned
    tier_shares            percent of ``budget`` for critical / important /
                           supporting / cache; unused share flows to the next tier
    critical_overflow      "passthrough" or "reject" when the critical part alone
                           exceeds ``budget``
    encoding               tiktoken encoding used for counting
    """

    budget: int
    compression_threshold: float = 0.7
    pruning_distance: int = 3
    tier_shares: tuple[int, int, int, int] = (20, 40, 30, 10)
    critical_overflow: str = "passthrough"
    encoding: str = DEFAULT_ENCODING

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
        if self.critical_overflow not in ("passthrough", "reject"):
            raise ValueError("critical_overflow must be 'passthrough' or 'reject'")

    @property
    def threshold_tokens(self) -> float:
        return self.compression_threshold * self.budget

    def share_tokens(self) -> tuple[int, int, int, int]:
        total = sum(self.tier_shares)
        return tuple(int(self.budget * s / total) for s in self.tier_shares)  # type: ignore[return-value]
