"""Property tests (hypothesis) for the pieces whose claims are mathematical."""

from __future__ import annotations

import itertools
import random
import re
from collections import Counter

import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachelab.caching import CacheAside, normalise_sql, query_key
from cachelab.caching.rate_limit import SlidingLogLimiter
from cachelab.caching.sharding import ShardRing
from cachelab.lab import Lab

KEYS = [f"user:{i}" for i in range(5000)]
# Real Redis behind hypothesis: one server per test (the lab fixture), fresh keys per example.
WITH_REDIS = settings(max_examples=40, deadline=None,
                      suppress_health_check=[HealthCheck.function_scoped_fixture])
_example = itertools.count()


# ---------------------------------------------------------------- the hash ring


@settings(max_examples=25, deadline=None)
@given(shards=st.integers(min_value=2, max_value=10))
def test_ring_spreads_keys_evenly(shards: int) -> None:
    ring = ShardRing(f"shard-{i}" for i in range(shards))
    share = Counter(ring.shard_for(key) for key in KEYS)
    fair = len(KEYS) / shards
    assert set(share) == set(ring.shards)
    # 160 points a shard keep every share within about a third of the fair one.
    assert all(0.6 * fair <= n <= 1.45 * fair for n in share.values()), share


@settings(max_examples=25, deadline=None)
@given(shards=st.integers(min_value=1, max_value=10))
def test_adding_a_shard_moves_only_keys_to_it_and_about_its_share(shards: int) -> None:
    ring = ShardRing(f"shard-{i}" for i in range(shards))
    before = {key: ring.shard_for(key) for key in KEYS}
    ring.add("new")
    moved = [key for key in KEYS if ring.shard_for(key) != before[key]]
    assert all(ring.shard_for(key) == "new" for key in moved)  # none between old shards
    assert len(moved) <= 1.6 * len(KEYS) / (shards + 1)


@settings(max_examples=25, deadline=None)
@given(shards=st.integers(min_value=2, max_value=10), data=st.data())
def test_removing_a_shard_moves_only_its_own_keys(shards: int, data: st.DataObject) -> None:
    ring = ShardRing(f"shard-{i}" for i in range(shards))
    gone = data.draw(st.sampled_from(ring.shards))
    before = {key: ring.shard_for(key) for key in KEYS}
    ring.remove(gone)
    assert all(ring.shard_for(key) == before[key] for key in KEYS if before[key] != gone)


# ---------------------------------------------------------------- the rate limiter


@WITH_REDIS
@given(limit=st.integers(1, 5), window_ms=st.integers(1, 1000),
       gaps=st.lists(st.integers(0, 400), min_size=1, max_size=60))
def test_limiter_never_admits_more_than_its_limit_in_any_window(
        lab: Lab, limit: int, window_ms: int, gaps: list[int]) -> None:
    client = _client(lab)
    limiter = SlidingLogLimiter(client, limit=limit, window_s=window_ms / 1000,
                                prefix=f"rl{next(_example)}", extra_ttl_s=60)
    times = list(itertools.accumulate(gaps, initial=1_000_000))[1:]
    admitted = [t for t in times if limiter.hit("alice", now_us=t * 1000).allowed]
    # The busiest window ends at an admitted request: count each one's window.
    assert all(sum(t - window_ms < u <= t for u in admitted) <= limit for t in admitted)
    # And it is not merely strict: a request is refused only when its window is full.
    for t in times:
        if t not in admitted:
            assert sum(t - window_ms < u <= t for u in admitted) >= limit


def _client(lab: Lab) -> redis.Redis:
    if not lab.servers:
        lab.redis()
    return lab.servers[0].client()


# ---------------------------------------------------------------- query keys

_SQL = ("SELECT id, name FROM users WHERE city = ? AND name LIKE 'A b%' "
        "ORDER BY id LIMIT ?")
_WORDS = re.compile(r"'[^']*'|[^\s']+")


def _respell(rng: random.Random, sql: str) -> str:
    """Same query: random whitespace between tokens, random case outside quotes."""
    out = []
    for token in _WORDS.findall(sql):
        if not token.startswith("'"):
            token = "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in token)
        out.append(token + rng.choice([" ", "  ", "\n", "\t ", " \n  "]))
    return "".join(out) + rng.choice(["", ";", " ;"])


@settings(max_examples=100)
@given(seed=st.integers(0, 2**32))
def test_equivalent_spellings_share_a_key(seed: int) -> None:
    respelled = _respell(random.Random(seed), _SQL)
    assert normalise_sql(respelled) == normalise_sql(_SQL)
    assert query_key(respelled, ["Oslo", 10]) == query_key(_SQL, ["Oslo", 10])


@settings(max_examples=100)
@given(a=st.tuples(st.text(max_size=8), st.integers()),
       b=st.tuples(st.text(max_size=8), st.integers()))
def test_different_parameters_never_share_a_key(a: tuple[str, int], b: tuple[str, int]) -> None:
    assert (query_key(_SQL, a) == query_key(_SQL, b)) == (a == b)


@settings(max_examples=100)
@given(literal=st.text(alphabet="abcAB %_", min_size=1, max_size=6))
def test_a_different_literal_is_a_different_query(literal: str) -> None:
    other = _SQL.replace("'A b%'", f"'{literal}'")
    assert (query_key(other, ["Oslo", 10]) == query_key(_SQL, ["Oslo", 10])) == (
        literal == "A b%")


# ---------------------------------------------------------------- TTL jitter


@WITH_REDIS
@given(ttl_s=st.floats(0.5, 3600), jitter=st.floats(0, 0.95), seed=st.integers(0, 2**32))
def test_ttl_jitter_stays_in_range(lab: Lab, ttl_s: float, jitter: float, seed: int) -> None:
    client = _client(lab)
    cache: CacheAside[int] = CacheAside(client, namespace=f"jitter{next(_example)}",
                                        loader=lambda i: {"id": i}, ttl_s=ttl_s, jitter=jitter,
                                        rng=random.Random(seed))
    low, high = cache.ttl_range_ms
    assert low <= ttl_s * 1000 <= high
    for item in range(5):
        cache.get(item)
        ttl = client.pttl(cache.key(item))
        assert low - 50 <= ttl <= high  # PTTL counts down from the TTL that was set
