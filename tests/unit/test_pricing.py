"""The provider's prompt cache, as proxy.pricing models it."""
from __future__ import annotations

import pytest

from ctxwarden.pricing import (ANTHROPIC_PRICING, NO_CACHE_PRICING, OPENAI_PRICING, Bill, Pricing, PromptCache,
                           chain, request_blocks)
from ctxwarden.dialects import anthropic, openai

FIXED = {"system": "You are a careful agent.", "tools": []}
FIXED_TOKENS = 1000


def messages(n: int) -> list[dict]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i}"} for i in range(n)]


def blocks(n: int, tokens_each: int = 500, breakpoints=(), fixed_breakpoint=False, fixed=FIXED):
    """The blocks of a request of ``n`` messages of ``tokens_each`` tokens each."""
    return request_blocks(fixed, FIXED_TOKENS, messages(n), [tokens_each] * n, breakpoints, fixed_breakpoint)


def at_end(n: int) -> list[int]:
    return [n - 1]


# ------------------------------------------------------------------ blocks

def test_request_blocks_chain_and_count():
    bs = blocks(3, breakpoints=[2], fixed_breakpoint=True)
    assert [b.tokens for b in bs] == [1000, 1500, 2000, 2500]
    assert [b.breakpoint for b in bs] == [True, False, False, True]
    assert len({b.prefix for b in bs}) == 4
    # a prefix is the same for a longer request that starts the same way
    assert [b.prefix for b in blocks(5)][:4] == [b.prefix for b in bs]
    # and differs when anything before it differs
    assert blocks(3, fixed={"system": "other"})[1].prefix != bs[1].prefix
    assert chain("", 1) == chain("", 1) != chain("", 2)
    assert chain(chain("", "a"), "b") != chain(chain("", "b"), "a")


# ------------------------------------------------------------------ Anthropic

def test_anthropic_first_request_writes_at_its_breakpoint():
    cache = PromptCache(ANTHROPIC_PRICING)
    bill = cache.bill(blocks(4, breakpoints=at_end(4)))
    assert bill == Bill(tokens=3000, read=0, written=3000, cost=pytest.approx(3000 * 1.25))
    assert bill.uncached == 0


def test_anthropic_next_request_reads_the_previous_prefix_and_writes_the_new_part():
    cache = PromptCache(ANTHROPIC_PRICING)
    cache.bill(blocks(4, breakpoints=at_end(4)), now=0)
    bill = cache.bill(blocks(6, breakpoints=at_end(6)), now=10)
    assert bill.tokens == 4000 and bill.read == 3000 and bill.written == 1000 and bill.uncached == 0
    assert bill.cost == pytest.approx(3000 * 0.1 + 1000 * 1.25)
    # and the third reads what the second wrote
    third = cache.bill(blocks(8, breakpoints=at_end(8)), now=20)
    assert (third.read, third.written) == (4000, 1000)


def test_anthropic_without_breakpoints_nothing_is_cached():
    cache = PromptCache(ANTHROPIC_PRICING)
    first = cache.bill(blocks(4))
    assert first == Bill(4000 - 1000, 0, 0, 3000.0)
    second = cache.bill(blocks(6))
    assert (second.read, second.written, second.cost) == (0, 0, 4000.0)
    # nothing was written, so a later breakpoint finds nothing to read either
    third = cache.bill(blocks(8, breakpoints=at_end(8)))
    assert third.read == 0 and third.written == 5000


def test_anthropic_a_breakpoint_looks_back_at_most_lookback_blocks():
    n = 5
    lookback = ANTHROPIC_PRICING.lookback_blocks
    # the breakpoint's block and `lookback` blocks before it are searched
    reach = PromptCache(ANTHROPIC_PRICING)
    reach.bill(blocks(n, breakpoints=at_end(n)))
    hit = reach.bill(blocks(n + lookback, breakpoints=at_end(n + lookback)))
    assert hit.read == 1000 + 500 * n
    far = PromptCache(ANTHROPIC_PRICING)
    far.bill(blocks(n, breakpoints=at_end(n)))
    miss = far.bill(blocks(n + lookback + 1, breakpoints=at_end(n + lookback + 1)))
    assert miss.read == 0 and miss.written == miss.tokens
    # a second breakpoint closer to the old entry finds it
    two = PromptCache(ANTHROPIC_PRICING)
    two.bill(blocks(n, breakpoints=at_end(n)))
    m = n + lookback + 10
    both = two.bill(blocks(m, breakpoints=[n + 2, m - 1]))
    assert both.read == 1000 + 500 * n and both.written == both.tokens - both.read


def test_anthropic_a_breakpoint_on_the_fixed_part():
    cache = PromptCache(ANTHROPIC_PRICING)

    def request(n):
        return request_blocks(FIXED, 2000, messages(n), [500] * n, fixed_breakpoint=True)
    first = cache.bill(request(3))
    assert (first.read, first.written) == (0, 2000)
    second = cache.bill(request(40))   # far beyond any lookback from the end
    assert (second.read, second.written) == (2000, 0)
    assert second.cost == pytest.approx(2000 * 0.1 + (second.tokens - 2000))


def test_anthropic_at_most_max_breakpoints_count():
    cache = PromptCache(ANTHROPIC_PRICING)
    cache.bill(blocks(10, tokens_each=100, breakpoints=[0, 1, 2, 3, 9]))   # the fifth is ignored
    again = cache.bill(blocks(10, tokens_each=100, breakpoints=[9]))
    assert again.read == 1000 + 100 * 4


def test_anthropic_ttl_expiry_and_refresh():
    ttl = ANTHROPIC_PRICING.ttl
    cache = PromptCache(ANTHROPIC_PRICING)
    cache.bill(blocks(4, breakpoints=at_end(4)), now=0)
    assert cache.bill(blocks(4, breakpoints=at_end(4)), now=ttl).read == 3000          # still alive at ttl
    # that read refreshed the entry: alive until 2 * ttl
    assert cache.bill(blocks(4, breakpoints=at_end(4)), now=2 * ttl - 1).read == 3000
    expired = PromptCache(ANTHROPIC_PRICING)
    expired.bill(blocks(4, breakpoints=at_end(4)), now=0)
    late = expired.bill(blocks(4, breakpoints=at_end(4)), now=ttl + 0.5)
    assert late.read == 0 and late.written == 3000


def test_anthropic_min_prefix_tokens():
    pricing = Pricing(cache="anthropic", read=0.1, write=1.25, min_prefix_tokens=1024)
    cache = PromptCache(pricing)
    small = request_blocks(FIXED, 100, messages(2), [400, 400], breakpoints=[1])   # 900 tokens
    bill = cache.bill(small)
    assert (bill.read, bill.written, bill.cost) == (0, 0, 900.0)
    assert cache.bill(small).read == 0
    big = request_blocks(FIXED, 100, messages(3), [400, 400, 400], breakpoints=[2])   # 1300 tokens
    assert cache.bill(big).written == 1300
    assert cache.bill(big).read == 1300


# ------------------------------------------------------------------ OpenAI

def test_openai_reads_the_longest_prefix_seen_and_no_write_premium():
    cache = PromptCache(OPENAI_PRICING)
    first = cache.bill(blocks(4))
    assert first == Bill(3000, 0, 0, 3000.0)
    second = cache.bill(blocks(6))
    assert (second.read, second.written) == (3000, 0)
    assert second.cost == pytest.approx(3000 * 0.1 + 1000)
    # a request that shares only a shorter prefix reads that much
    other = request_blocks(FIXED, FIXED_TOKENS, messages(2) + [{"role": "user", "content": "new"}], [500] * 3)
    assert cache.bill(other).read == 2000
    # breakpoints mean nothing to it
    assert PromptCache(OPENAI_PRICING).bill(blocks(4, breakpoints=at_end(4))).written == 0


def test_openai_min_prefix_and_older_models():
    cache = PromptCache(OPENAI_PRICING)
    short = request_blocks(FIXED, 100, messages(2), [300, 300])   # 700 < 1024
    cache.bill(short)
    assert cache.bill(short).read == 0
    older = Pricing(cache="openai", read=0.5, write=1.0)
    cache = PromptCache(older)
    cache.bill(blocks(4))
    assert cache.bill(blocks(4)).cost == pytest.approx(3000 * 0.5)


def test_openai_ttl():
    cache = PromptCache(OPENAI_PRICING)
    cache.bill(blocks(4), now=0)
    assert cache.bill(blocks(4), now=OPENAI_PRICING.ttl + 1).read == 0


# ------------------------------------------------------------------ no cache

def test_no_cache_costs_the_tokens():
    cache = PromptCache(NO_CACHE_PRICING)
    for n in (1, 4, 4, 6):
        bill = cache.bill(blocks(n, breakpoints=at_end(n)))
        assert bill.cost == bill.tokens == 1000 + 500 * n and bill.read == bill.written == 0
    assert cache.bill([]) == Bill(0, 0, 0, 0.0)
    assert PromptCache(ANTHROPIC_PRICING).bill([]).cost == 0.0


# ------------------------------------------------------------------ the pricing itself

def test_pricing_defaults():
    assert anthropic.default_pricing is ANTHROPIC_PRICING
    assert openai.default_pricing is OPENAI_PRICING
    assert (ANTHROPIC_PRICING.read, ANTHROPIC_PRICING.write, ANTHROPIC_PRICING.ttl) == (0.1, 1.25, 300.0)
    assert (ANTHROPIC_PRICING.max_breakpoints, ANTHROPIC_PRICING.lookback_blocks) == (4, 20)
    assert (OPENAI_PRICING.read, OPENAI_PRICING.write) == (0.1, 1.0)
    assert ANTHROPIC_PRICING.appended_token == 1.25
    assert OPENAI_PRICING.appended_token == 1.0
    assert NO_CACHE_PRICING.appended_token == 1.0 and not NO_CACHE_PRICING.prompt_cache_key


@pytest.mark.parametrize("kwargs", [
    {"cache": "redis"},
    {"cache": ""},
    {"read": 1.5, "write": 1.0},
    {"read": -0.1},
    {"write": 0.0, "read": 0.0},
    {"write": -1.0, "read": 0.0},
])
def test_pricing_validation(kwargs):
    with pytest.raises(ValueError):
        Pricing(**kwargs)


def test_pricing_edge_values_accepted():
    assert Pricing(cache="none", read=1.0, write=1.0).cache == "none"
    assert Pricing(read=0.0, write=0.5).appended_token == 1.0
