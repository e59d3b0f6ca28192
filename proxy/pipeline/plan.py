"""The rewrite plan: what the pipeline is asked to achieve for one request."""
from __future__ import annotations

from dataclasses import dataclass

from ..tokens import DEFAULT_ENCODING

# defaults when the config does not set <checkpoint every=".." target=".."/>
DEFAULT_EVERY_SHARE = (1, 3)     # E = budget * 1/3
DEFAULT_TARGET_SHARE = (3, 16)   # C = budget * 3/16


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
    checkpoint_every       E: a checkpoint every E tokens of the original
                           conversation (None: ``budget / 3``; 0: checkpoints off)
    checkpoint_target      C: the old part before the checkpoint is compacted
                           to about C tokens (None: ``budget * 3 / 16``)
    """

    budget: int
    compression_threshold: float = 0.7
    pruning_distance: int = 3
    tier_shares: tuple[int, int, int, int] = (20, 40, 30, 10)
    critical_overflow: str = "passthrough"
    encoding: str = DEFAULT_ENCODING
    checkpoint_every: int | None = None
    checkpoint_target: int | None = None

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
        for name in ("checkpoint_every", "checkpoint_target"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ValueError(f"{name} must be a non-negative integer or None")

    @property
    def threshold_tokens(self) -> float:
        return self.compression_threshold * self.budget

    def share_tokens(self) -> tuple[int, int, int, int]:
        total = sum(self.tier_shares)
        return tuple(int(self.budget * s / total) for s in self.tier_shares)  # type: ignore[return-value]

    @property
    def every_tokens(self) -> int:
        """Checkpoint spacing E in tokens (0: checkpoints off)."""
        if self.checkpoint_every is None:
            return max(1, self.budget * DEFAULT_EVERY_SHARE[0] // DEFAULT_EVERY_SHARE[1])
        return self.checkpoint_every

    @property
    def target_tokens(self) -> int:
        """Checkpoint target C: about how many tokens the compacted old part takes."""
        if self.checkpoint_target is None:
            return max(1, self.budget * DEFAULT_TARGET_SHARE[0] // DEFAULT_TARGET_SHARE[1])
        return max(1, self.checkpoint_target)
