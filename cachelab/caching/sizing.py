"""Sizing a cache from its own traffic: a logged key sequence replayed through cache-aside
on a Redis of a given ``maxmemory``, beside an exact LRU of as many keys."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cachelab.caching.cache_aside import CacheAside
from cachelab.caching.simulate import LRU, replay
from cachelab.workload.measure import ratio
from cachelab.workload.redis_info import counter_delta, keyspace_counters

if TYPE_CHECKING:  # redis is imported by whoever builds the client
    import redis

MB = 1024 * 1024  # Redis reads "1mb" as 1024 * 1024 bytes


def redis_size(mb: float) -> str:
    """``3mb`` for whole megabytes, else bytes: Redis reads no fractions in ``maxmemory``."""
    return f"{mb:g}mb" if mb == int(mb) else str(int(mb * MB))


@dataclass
class SweepPoint:
    """One replay of the logged keys against a cache of ``maxmemory_mb``."""

    maxmemory_mb: float
    hits: int
    misses: int
    redis_hits: int
    redis_misses: int
    keys_held: int
    empty_used_mb: float
    evicted: int
    refused_writes: int
    lru_hits: int

    @property
    def hit_ratio(self) -> float:
        return ratio(self.hits, self.hits + self.misses)

    @property
    def lru_hit_ratio(self) -> float:
        return ratio(self.lru_hits, self.hits + self.misses)

    @property
    def agrees_with_redis(self) -> bool:
        return (self.hits, self.misses) == (self.redis_hits, self.redis_misses)


def replay_at_size(client: redis.Redis, maxmemory_mb: float, trace: Sequence[int],
                   values: Mapping[int, Any], *, namespace: str, ttl_s: float) -> SweepPoint:
    """Replay ``trace`` through cache-aside on a fresh Redis whose maxmemory is
    ``maxmemory_mb``, counting what the cache, Redis and an exact LRU of as many keys saw.

    The loader serves ``values`` (already rendered), so every point does the same work
    and only the memory differs; the database would only slow the sweep down.
    """
    import redis

    cache = CacheAside(client, namespace=namespace, loader=values.__getitem__, ttl_s=ttl_s)
    empty_used_mb = int(client.info("memory")["used_memory"]) / MB
    before, refused = keyspace_counters(client), 0
    for item in trace:
        try:
            cache.fetch(item)
        except redis.exceptions.OutOfMemoryError:
            refused += 1  # below Redis's own baseline memory, a SET can be refused
    seen = counter_delta(before, keyspace_counters(client))
    held = int(client.dbsize())
    return SweepPoint(maxmemory_mb, cache.stats.hits, cache.stats.misses,
                      seen["keyspace_hits"], seen["keyspace_misses"], held, empty_used_mb,
                      seen["evicted_keys"], refused,
                      replay(trace, LRU(held)).hits if held else 0)
