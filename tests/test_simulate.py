"""The exact cache policies: small traces worked by hand, invariants, and libCacheSim."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cachelab.caching.simulate import (
    FIFO,
    LFU,
    LRU,
    POLICIES,
    RandomEviction,
    Sieve,
    miss_ratios,
    replay,
)
from cachelab.workload.measure import key_sampler


def hits(policy: LRU | LFU | FIFO | Sieve | RandomEviction, trace: str) -> str:
    """One letter per request: ``h`` for a hit, ``m`` for a miss."""
    return "".join("h" if policy.access(key) else "m" for key in trace)


def test_lru_evicts_the_least_recently_used() -> None:
    cache = LRU(2)
    assert hits(cache, "abac") == "mmhm"  # reading a again made b the oldest
    assert "b" not in cache and "a" in cache and "c" in cache


def test_fifo_ignores_hits() -> None:
    cache = FIFO(2)
    assert hits(cache, "abac") == "mmhm"
    assert "a" not in cache and "b" in cache and "c" in cache


def test_lfu_evicts_the_rarest_and_breaks_ties_by_recency() -> None:
    cache = LFU(3)
    assert hits(cache, "aabcd") == "mhmmm"  # b and c read once each: b is older
    assert "b" not in cache and all(k in cache for k in "acd")
    assert hits(cache, "ce") == "hm"  # now d is the only key read once
    assert "d" not in cache and all(k in cache for k in "ace")


def test_sieve_clears_visited_bits_and_keeps_its_hand() -> None:
    cache = Sieve(3)
    assert hits(cache, "abca") == "mmmh"  # a visited
    # d: the hand starts at the oldest (a), clears its bit, evicts b; it stays at c.
    assert hits(cache, "d") == "m"
    assert "b" not in cache and all(k in cache for k in "acd")
    # e: the hand is at c, unvisited: evicted although a is older.
    assert hits(cache, "e") == "m"
    assert "c" not in cache and all(k in cache for k in "ade")


def test_random_eviction_is_seeded() -> None:
    trace = [random.Random(1).randrange(50) for _ in range(2000)]
    first = replay(trace, RandomEviction(10, random.Random(3)))
    assert first == replay(trace, RandomEviction(10, random.Random(3)))
    assert 0 < first.hits < first.requests


@settings(max_examples=200, deadline=None, database=None)
@given(trace=st.lists(st.integers(0, 12), max_size=200), capacity=st.integers(1, 8))
def test_lru_hits_exactly_when_the_key_is_among_the_last_distinct_keys(
        trace: list[int], capacity: int) -> None:
    """The stack property: LRU hits iff fewer than ``capacity`` other keys came between."""
    cache = LRU(capacity)
    for i, key in enumerate(trace):
        earlier = trace[:i]
        if key in earlier:
            since = earlier[len(earlier) - earlier[::-1].index(key):]
            expected = len(set(since)) < capacity
        else:
            expected = False
        assert cache.access(key) == expected


@settings(max_examples=100, deadline=None, database=None)
@given(trace=st.lists(st.integers(0, 20), max_size=300), capacity=st.integers(1, 10),
       name=st.sampled_from(sorted(POLICIES)))
def test_every_policy_respects_its_capacity(trace: list[int], capacity: int, name: str) -> None:
    cache = POLICIES[name](capacity)
    for key in trace:
        cache.access(key)
        assert key in cache  # a miss always caches the key
        assert len(cache) <= capacity
    assert len(cache) == min(capacity, len(set(trace)))


def test_miss_ratios_replays_every_policy_on_the_same_trace() -> None:
    next_key = key_sampler(300, "zipf", zipf_s=1.0, rng=random.Random(5))
    trace = [next_key() for _ in range(5000)]
    ratios = miss_ratios(trace, 50)
    assert set(ratios) == set(POLICIES)
    assert all(r.requests == 5000 and r.capacity == 50 for r in ratios.values())
    # On a skewed trace, keeping what is read again beats plain insertion order.
    assert ratios["lru"].miss_ratio < ratios["fifo"].miss_ratio
    # A cache as large as the key space misses only on first sight.
    assert miss_ratios(trace, 300)["lru"].misses == len(set(trace))


def test_unknown_policy_and_bad_capacity_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown policy 'arc'"):
        miss_ratios([1, 2], 1, ["lru", "arc"])
    with pytest.raises(ValueError, match="capacity"):
        LRU(0)


# --- Cross-check against libCacheSim, a well-kept simulator written in C ------------

TRACES = {
    "zipf": lambda rng: key_sampler(2000, "zipf", zipf_s=0.9, rng=rng),
    "uniform": lambda rng: key_sampler(400, "uniform", rng=rng),
}


@pytest.mark.parametrize("trace_name", sorted(TRACES))
@pytest.mark.parametrize("capacity", [1, 3, 64, 700])
@pytest.mark.parametrize(("name", "theirs"), [("lru", "LRU"), ("lfu", "LFU"),
                                               ("fifo", "FIFO"), ("sieve", "Sieve")])
def test_each_request_matches_libcachesim(trace_name: str, capacity: int, name: str,
                                          theirs: str) -> None:
    libcachesim = pytest.importorskip(
        "libcachesim", reason="libcachesim (libCacheSim's Python bindings) is not installed")
    next_key = TRACES[trace_name](random.Random(f"{trace_name}:{capacity}"))
    trace = [next_key() for _ in range(6000)]
    ours = POLICIES[name](capacity)
    reference = getattr(libcachesim, theirs)(capacity)
    mismatches = [i for i, key in enumerate(trace)
                  if ours.access(key)
                  != reference.get(libcachesim.Request(obj_size=1, obj_id=key))]
    assert not mismatches, f"first differing request: {mismatches[0]}"
