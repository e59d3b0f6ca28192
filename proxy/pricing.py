"""How providers bill input tokens with their prompt caches, and a model of
that cache to price a sequence of requests.

A request is priced as a list of :class:`Block`: the chained hash of the
prompt up to and including the block, the prompt's token count up to there,
and whether the block carries a cache breakpoint.  The fixed part (tools and
system prompt) is the first block; each message is one block after it (a
message's content blocks are not priced apart, so Anthropic's 20-block
lookback is counted in messages: an approximation that errs on the side of
fewer cache hits only for messages of several blocks).

The figure is in *input-token units*: one uncached input token costs 1.0, a
cache read ``read``, a cache write ``write``.  Multiply by the model's input
price to get money.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .wirejson import canonical

CACHE_KINDS = ("anthropic", "openai", "none")


@dataclass(frozen=True)
class Pricing:
    """A provider's input billing with its prompt cache.

    cache               "anthropic": entries only at ``cache_control`` breakpoints
                        (at most ``max_breakpoints``, each looking back at most
                        ``lookback_blocks`` blocks for an earlier entry);
                        "openai": the longest previously seen prefix, automatically;
                        "none": no cache, every token at 1.0
    read                price of a cached input token (fraction of an uncached one)
    write               price of an input token written to the cache
    ttl                 seconds an entry lives after its last use
    min_prefix_tokens   shorter prefixes are never cached
    markers             Anthropic: add ``cache_control`` breakpoints at the end of the
                        stable prefix and of the request (never more than
                        ``max_breakpoints`` with the client's own, which are never moved)
    prompt_cache_key    OpenAI: set ``prompt_cache_key`` on rewritten requests that
                        have none, so the conversation's requests reach one cache
    """

    cache: str = "openai"
    read: float = 0.1
    write: float = 1.0
    ttl: float = 300.0
    max_breakpoints: int = 4
    lookback_blocks: int = 20
    min_prefix_tokens: int = 1024
    markers: bool = True
    prompt_cache_key: bool = True

    def __post_init__(self) -> None:
        if self.cache not in CACHE_KINDS:
            raise ValueError(f"cache must be one of {CACHE_KINDS}, not {self.cache!r}")
        if not (0 <= self.read <= self.write) or self.write <= 0:
            raise ValueError("prices must satisfy 0 <= read <= write and write > 0")

    @property
    def appended_token(self) -> float:
        """What one token appended to a cached prefix costs."""
        return 1.0 if self.cache == "none" else max(self.write, 1.0)


ANTHROPIC_PRICING = Pricing(cache="anthropic", read=0.1, write=1.25)
OPENAI_PRICING = Pricing(cache="openai", read=0.1, write=1.0)
NO_CACHE_PRICING = Pricing(cache="none", read=1.0, write=1.0, markers=False, prompt_cache_key=False)



@dataclass(frozen=True)
class Block:
    prefix: str        # chained hash of the prompt up to and including this block
    tokens: int        # prompt tokens up to and including this block
    breakpoint: bool   # the block carries a cache_control breakpoint


@dataclass(frozen=True)
class Bill:
    tokens: int
    read: int          # tokens billed as cache reads
    written: int       # tokens billed as cache writes
    cost: float        # input-token units

    @property
    def uncached(self) -> int:
        return self.tokens - self.read - self.written


def chain(previous: str, value: object) -> str:
    """The chained hash after ``value``: equal only for equal sequences."""
    return chain_bytes(previous, canonical(value))


def chain_bytes(previous: str, canonical: bytes) -> str:
    """:func:`chain` of a value already in canonical JSON."""
    return hashlib.sha256(previous.encode() + b"\n" + canonical).hexdigest()


def request_blocks(fixed: object, fixed_tokens: int, messages: Sequence, message_tokens: Sequence[int],
                   breakpoints: Iterable[int] = (), fixed_breakpoint: bool = False) -> list[Block]:
    """The blocks of one request: the fixed part (whatever goes before the
    messages: tools, system, model), then each message.  ``breakpoints`` are the
    indexes of messages that carry a cache breakpoint."""
    marks = set(breakpoints)
    prefix = chain("", fixed)
    total = fixed_tokens
    blocks = [Block(prefix, total, fixed_breakpoint)]
    for i, (message, tokens) in enumerate(zip(messages, message_tokens)):
        prefix = chain(prefix, message)
        total += tokens
        blocks.append(Block(prefix, total, i in marks))
    return blocks


class PromptCache:
    """The provider's cache for one tenant, as a sequence of requests sees it."""

    def __init__(self, pricing: Pricing):
        self.pricing = pricing
        self._entries: dict[str, float] = {}   # prefix hash -> expiry time

    def _live(self, prefix: str, now: float) -> bool:
        expiry = self._entries.get(prefix)
        return expiry is not None and expiry >= now

    def bill(self, blocks: Sequence[Block], now: float = 0.0) -> Bill:
        """Price one request and update the cache as the provider would."""
        p = self.pricing
        total = blocks[-1].tokens if blocks else 0
        if p.cache == "none" or not blocks:
            return Bill(total, 0, 0, float(total))
        if p.cache == "openai":
            read = 0
            for block in reversed(blocks):
                if block.tokens >= p.min_prefix_tokens and self._live(block.prefix, now):
                    read = block.tokens
                    break
            for block in blocks:
                if block.tokens >= p.min_prefix_tokens:
                    self._entries[block.prefix] = now + p.ttl
            return Bill(total, read, 0, read * p.read + (total - read))
        marks = [i for i, b in enumerate(blocks) if b.breakpoint][: p.max_breakpoints]
        read_at = -1
        for mark in marks:
            for i in range(mark, max(-1, mark - p.lookback_blocks - 1), -1):
                if self._live(blocks[i].prefix, now):
                    read_at = max(read_at, i)
                    break
        read = blocks[read_at].tokens if read_at >= 0 else 0
        written_to = max((blocks[m].tokens for m in marks if blocks[m].tokens >= p.min_prefix_tokens), default=0)
        written = max(0, written_to - read)
        for mark in marks:
            if blocks[mark].tokens >= p.min_prefix_tokens:
                self._entries[blocks[mark].prefix] = now + p.ttl
        if read_at >= 0:
            self._entries[blocks[read_at].prefix] = now + p.ttl
        return Bill(total, read, written, read * p.read + written * p.write + (total - read - written))
