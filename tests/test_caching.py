"""Cache-aside and query caching on a real redis-server, and the measuring tools."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
import redis

from cachelab.caching import CacheAside, QueryCache, normalise_sql, query_key
from cachelab.lab import Lab
from cachelab.workload.measure import LatencyHistogram, key_sampler
from cachelab.workload.redis_info import counter_delta, keyspace_counters


class CountingLoader:
    """A source of truth that records every id it was asked for."""

    def __init__(self, values: dict[int, Any]) -> None:
        self.values = values
        self.calls: list[int] = []

    def __call__(self, item: int) -> Any:
        self.calls.append(item)
        return self.values.get(item)


@pytest.fixture
def client(lab: Lab) -> redis.Redis:
    return lab.redis()


def _cache(client: redis.Redis, loader: CountingLoader, **kwargs: Any) -> CacheAside[int]:
    kwargs.setdefault("ttl_s", 60)
    return CacheAside(client, namespace="user", loader=loader, **kwargs)


def test_miss_then_hit_loads_once(client: redis.Redis) -> None:
    loader = CountingLoader({7: {"name": "ada"}})
    cache = _cache(client, loader)

    assert cache.fetch(7) == ({"name": "ada"}, False)
    assert cache.fetch(7) == ({"name": "ada"}, True)
    assert cache.get(7) == {"name": "ada"}

    assert loader.calls == [7]
    assert client.exists("user:7") == 1


def test_values_round_trip_through_json(client: redis.Redis) -> None:
    value = {"name": "Zoë", "tags": ["a", "b"], "score": 1.5, "active": True, "note": None,
             "nested": {"ids": [1, 2, 3]}}
    cache = _cache(client, CountingLoader({1: value}))
    cache.fetch(1)

    assert cache.fetch(1) == (value, True)
    assert client.get("user:1") is not None


def test_ttl_falls_within_the_jittered_range(client: redis.Redis) -> None:
    loader = CountingLoader({i: i for i in range(1, 41)})
    cache = _cache(client, loader, ttl_s=100, jitter=0.5, rng=random.Random(1))
    assert cache.ttl_range_ms == (50_000, 150_000)

    for item in loader.values:
        cache.fetch(item)

    ttls = [client.pttl(cache.key(item)) for item in loader.values]
    low, high = cache.ttl_range_ms
    # The upper bound is exact; the lower one allows for time passing between SET and PTTL.
    assert all(low - 10_000 < ttl <= high for ttl in ttls)
    assert min(ttls) < 75_000 and max(ttls) > 125_000  # spread over the range, not bunched


def test_no_jitter_gives_every_key_the_same_ttl() -> None:
    cache = CacheAside(None, namespace="n", loader=lambda i: i, ttl_s=2.5)  # type: ignore[arg-type]
    assert cache.ttl_range_ms == (2500, 2500)


def test_none_from_the_loader_is_not_cached(client: redis.Redis) -> None:
    loader = CountingLoader({})
    cache = _cache(client, loader)

    assert cache.fetch(404) == (None, False)
    assert cache.fetch(404) == (None, False)

    assert loader.calls == [404, 404]
    assert client.exists("user:404") == 0


def test_invalidate_removes_the_key_and_the_next_fetch_loads(client: redis.Redis) -> None:
    loader = CountingLoader({3: "v1"})
    cache = _cache(client, loader)
    cache.fetch(3)
    loader.values[3] = "v2"

    assert cache.invalidate(3) is True
    assert client.exists("user:3") == 0
    assert cache.fetch(3) == ("v2", False)
    assert cache.invalidate(99) is False  # nothing cached under that id
    assert loader.calls == [3, 3]


def test_stats_count_hits_misses_and_invalidations(client: redis.Redis) -> None:
    cache = _cache(client, CountingLoader({1: "a", 2: "b"}))
    assert cache.stats.hit_ratio == 0.0  # no requests yet

    for item in (1, 1, 1, 2, 2):
        cache.fetch(item)
    cache.invalidate(1)

    assert (cache.stats.hits, cache.stats.misses, cache.stats.invalidations) == (3, 2, 1)
    assert cache.stats.requests == 5
    assert cache.stats.hit_ratio == pytest.approx(0.6)


@pytest.mark.parametrize(("ttl_s", "jitter", "problem"), [
    (0, 0.0, "ttl_s"), (-1, 0.0, "ttl_s"), (10, -0.1, "jitter"), (10, 1.0, "jitter"),
])
def test_constructor_rejects_bad_ttl_and_jitter(ttl_s: float, jitter: float,
                                                problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        CacheAside(None, namespace="n", loader=str, ttl_s=ttl_s,  # type: ignore[arg-type]
                   jitter=jitter)


@pytest.mark.parametrize("spelling", [
    "select name from users where id = ?",
    "SELECT name FROM users WHERE id=?",
    "  Select  name\n\tFROM users\n WHERE id = ? ;",
    "select name from users where id= ?;",
])
def test_spellings_of_one_query_share_a_key(spelling: str) -> None:
    canonical = "SELECT name FROM users WHERE id = ?"
    assert normalise_sql(spelling) == normalise_sql(canonical)
    assert query_key(spelling, [1]) == query_key(canonical, [1])


@pytest.mark.parametrize(("first", "second"), [
    (("SELECT * FROM users WHERE id = ?", [1]), ("SELECT * FROM users WHERE id = ?", [2])),
    (("SELECT * FROM users WHERE id = ?", [1]), ("SELECT * FROM users WHERE id = ?", ["1"])),
    (("SELECT * FROM users WHERE id = ?", [1]), ("SELECT * FROM users WHERE id = ?", [1.0])),
    (("SELECT * FROM users WHERE name = 'Ada'", []),
     ("SELECT * FROM users WHERE name = 'ada'", [])),
    (("SELECT * FROM users", []), ("SELECT * FROM products", [])),
], ids=["value", "int-vs-str", "int-vs-float", "literal-case", "table"])
def test_different_queries_get_different_keys(first: tuple[str, list[Any]],
                                              second: tuple[str, list[Any]]) -> None:
    assert query_key(*first) != query_key(*second)


def test_quoted_literals_are_kept_as_written() -> None:
    assert normalise_sql("SELECT  *  FROM t WHERE a = 'Two   Spaces'  AND B = \"Col  X\"") == (
        "select * from t where a='Two   Spaces' and b=\"Col  X\"")
    assert normalise_sql("SELECT 'it''s  OK'") == "select 'it''s  OK'"


def test_query_key_has_prefix_and_fixed_length() -> None:
    key = query_key("SELECT 1", prefix="q")
    assert key.startswith("q:")
    assert len(key) == len("q:") + 32


def test_query_cache_caches_rows_of_a_shop_query(lab: Lab, client: redis.Redis) -> None:
    shop = lab.shop()
    cache = QueryCache(client, shop.query, ttl_s=60)
    sql = "SELECT id, name, city FROM users WHERE city = ? ORDER BY id"
    expected = list(shop.rows(sql, ["Oslo"]))
    assert expected

    rows, hit = cache.rows(sql, ["Oslo"])
    assert (rows, hit) == (expected, False)
    assert shop.queries == 1

    rows, hit = cache.rows("select id, name, city\nfrom users where city=? order by id", ("Oslo",))
    assert (rows, hit) == (expected, True)
    assert shop.queries == 1
    assert client.exists(query_key(sql, ["Oslo"])) == 1

    _, hit = cache.rows(sql, ["Lima"])
    assert not hit
    assert shop.queries == 2


@pytest.mark.parametrize("distribution", ["zipf", "uniform"])
def test_key_sampler_is_seeded_and_stays_in_range(distribution: Any) -> None:
    draw_a = key_sampler(50, distribution, rng=random.Random(9))
    draw_b = key_sampler(50, distribution, rng=random.Random(9))
    draws = [draw_a() for _ in range(2000)]

    assert draws == [draw_b() for _ in range(2000)]
    assert min(draws) >= 1 and max(draws) <= 50
    assert len(set(draws)) > 10


def test_zipf_is_skewed_and_uniform_is_not() -> None:
    n_keys, n_draws = 100, 10_000
    draw_zipf = key_sampler(n_keys, "zipf", rng=random.Random(4))
    draw_uniform = key_sampler(n_keys, "uniform", rng=random.Random(4))
    zipf = Counter(draw_zipf() for _ in range(n_draws))
    uniform = Counter(draw_uniform() for _ in range(n_draws))
    fair_share = n_draws / n_keys

    assert zipf.most_common(1)[0][1] > 10 * fair_share
    assert uniform.most_common(1)[0][1] < 2 * fair_share


def test_key_sampler_rejects_an_unknown_distribution() -> None:
    with pytest.raises(ValueError, match="pareto"):
        key_sampler(10, "pareto", rng=random.Random(1))  # type: ignore[arg-type]


def test_latency_histogram_percentiles_are_ordered() -> None:
    hist = LatencyHistogram()
    for ms in range(1, 101):
        hist.record_ns(ms * 1_000_000)
    with hist.time():
        pass

    summary = hist.summary_ms()
    assert hist.count == 101
    assert summary["p50"] <= summary["p95"] <= summary["p99"] <= summary["max"]
    assert summary["p50"] == pytest.approx(50, rel=0.01)
    assert summary["max"] == pytest.approx(100, rel=0.01)


def test_empty_latency_histogram_reports_zeros() -> None:
    hist = LatencyHistogram()
    assert hist.count == 0
    assert hist.summary_ms() == {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0}


def test_keyspace_counters_see_a_hit_and_a_miss(client: redis.Redis) -> None:
    client.set("present", "yes")
    before = keyspace_counters(client)

    assert client.get("present") == "yes"
    assert client.get("absent") is None

    assert counter_delta(before, keyspace_counters(client)) == {
        "keyspace_hits": 1, "keyspace_misses": 1, "evicted_keys": 0, "expired_keys": 0}


def test_cache_aside_stats_agree_with_redis(client: redis.Redis) -> None:
    """What the strategy counts and what Redis counts are the same reads."""
    cache = _cache(client, CountingLoader({i: i for i in range(10)}))
    before = keyspace_counters(client)
    for item in [1, 2, 1, 1, 3, 2]:
        cache.fetch(item)
    delta = counter_delta(before, keyspace_counters(client))
    assert (delta["keyspace_hits"], delta["keyspace_misses"]) == (cache.stats.hits,
                                                                  cache.stats.misses) == (3, 3)


def test_every_strategy_named_by_the_package_resolves() -> None:
    import importlib

    import cachelab.caching as caching

    unresolved = [name for name, module in caching._WHERE.items()
                  if not hasattr(importlib.import_module(module), name)]
    assert unresolved == []
