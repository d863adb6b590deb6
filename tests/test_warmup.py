"""The access recorder, the top-K warmer and the LFU alternative, on real redis-servers."""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest
import redis

from cachelab.caching import CacheAside
from cachelab.caching.warmup import AccessRecorder, TopKWarmer, lfu_top, topk_overlap
from cachelab.lab import Lab


class Source:
    """A source of truth that counts single and bulk loads."""

    def __init__(self, n: int) -> None:
        self.values = {i: {"id": i, "name": f"user{i}"} for i in range(1, n + 1)}
        self.single: list[int] = []
        self.bulk: list[list[int]] = []

    def load(self, item: int) -> Any:
        self.single.append(item)
        return self.values.get(item)

    def load_many(self, items: Sequence[int]) -> dict[int, Any]:
        self.bulk.append(list(items))
        return {i: self.values[i] for i in items if i in self.values}


def _recorded(client: redis.Redis, reads: list[int], **kwargs: Any) -> AccessRecorder:
    recorder = AccessRecorder(client, key="access:user", **kwargs)
    for item in reads:
        recorder.record(item)
    return recorder


def test_recorder_counts_every_read_and_ranks_them(lab: Lab) -> None:
    stats = lab.redis("stats")
    rng = random.Random(3)
    reads = [rng.choice([1, 1, 1, 1, 2, 2, 2, 3, 3, 4]) for _ in range(500)]
    recorder = _recorded(stats, reads, flush_every=7)

    truth = Counter(reads)
    assert recorder.top(3) == [(str(i), n) for i, n in truth.most_common(3)]
    assert {m: int(s) for m, s in stats.zrange("access:user", 0, -1, withscores=True)} == {
        str(i): n for i, n in truth.items()}
    assert recorder.count(4) == truth[4] and recorder.count(99) == 0


def test_recorder_batches_round_trips(lab: Lab) -> None:
    stats = lab.redis("stats")
    recorder = _recorded(stats, [5] * 9, flush_every=10)
    assert not stats.exists("access:user")  # nine reads are still buffered in memory

    recorder.record(5)  # the tenth flushes
    assert stats.zscore("access:user", "5") == 10
    recorder.record(6)
    recorder.flush()
    assert stats.zscore("access:user", "6") == 1


def test_recorded_counts_survive_a_cache_restart(lab: Lab) -> None:
    """The counts live in another server: restarting the cache leaves them as they were."""
    stats = lab.redis("stats")
    cache_server = lab.redis_server("cache")
    cache = cache_server.client()
    cache.set("user:1", "x")
    recorder = _recorded(stats, [1, 1, 2])
    recorder.flush()
    cache.close()

    cache_server.stop()
    cache_server.start()
    fresh = cache_server.client()
    lab.callback(fresh.close)

    assert fresh.dbsize() == 0
    assert recorder.top(2) == [("1", 2), ("2", 1)]


def test_warmer_loads_the_top_k_in_bulk_with_the_cache_ttl(lab: Lab) -> None:
    stats, cache_client = lab.redis("stats"), lab.redis("cache")
    source = Source(50)
    reads = [i for i in range(1, 21) for _ in range(30 - i)]  # 1 is read most, 20 least
    recorder = _recorded(stats, reads)
    cache = CacheAside(cache_client, namespace="user", loader=source.load, ttl_s=100,
                       jitter=0.2)
    warmer = TopKWarmer(recorder, parse=int, load_many=source.load_many, batch_size=4,
                        rng=random.Random(1))

    report = warmer.warm(cache, 10)

    assert report.items == list(range(1, 11))
    assert (report.warmed, report.skipped, report.loads) == (10, 0, 3)
    assert source.bulk == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]] and source.single == []
    assert sorted(cache_client.keys("user:*")) == sorted(f"user:{i}" for i in range(1, 11))
    low, high = cache.ttl_range_ms
    assert all(low - 5_000 < cache_client.pttl(f"user:{i}") <= high for i in range(1, 11))
    # A warmed key is a hit that returns the source's value, with no load.
    assert cache.fetch(3) == (source.values[3], True) and source.single == []


def test_warmer_never_overwrites_a_cached_value(lab: Lab) -> None:
    stats, cache_client = lab.redis("stats"), lab.redis("cache")
    source = Source(5)
    recorder = _recorded(stats, [1, 1, 1, 2, 2, 9])  # 9 is not in the source
    cache = CacheAside(cache_client, namespace="user", loader=source.load, ttl_s=60)
    cache_client.set("user:1", json.dumps({"id": 1, "name": "newer"}))

    report = TopKWarmer(recorder, parse=int).warm(cache, 5)

    assert report.items == [1, 2, 9]
    assert (report.warmed, report.skipped, report.loads) == (1, 2, 3)  # one load per id
    assert json.loads(cache_client.get("user:1") or "null")["name"] == "newer"
    assert cache_client.exists("user:2") and not cache_client.exists("user:9")


def test_topk_overlap_counts_ties_at_the_boundary_as_top_k() -> None:
    counts = {"a": 9, "b": 5, "c": 3, "d": 3, "e": 1}
    assert topk_overlap(["a", "b", "c"], counts, 3) == 1.0
    assert topk_overlap(["a", "b", "d"], counts, 3) == 1.0  # d ties with c
    assert topk_overlap(["a", "b", "e"], counts, 3) == pytest.approx(2 / 3)
    assert topk_overlap(["a"], counts, 3) == pytest.approx(1 / 3)  # found too few
    assert topk_overlap(["a", "b"], {"a": 2, "b": 1}, 5) == 1.0  # only two were read
    assert topk_overlap([], counts, 3) == 0.0 and topk_overlap(["a"], {}, 3) == 0.0


def test_lfu_top_ranks_keys_by_object_freq(lab: Lab) -> None:
    client = lab.redis("cache", maxmemory_policy="allkeys-lfu", lfu_log_factor="0")
    for key, reads in (("user:1", 40), ("user:2", 20), ("user:3", 0)):
        client.set(key, "v")
        for _ in range(reads):
            client.get(key)
    client.set("other:1", "v")

    top = lfu_top(client, "user:*", 2)
    assert [key for key, _freq in top] == ["user:1", "user:2"]
    assert top[0][1] > top[1][1] > int(client.object("freq", "user:3"))


def test_lfu_top_needs_an_lfu_policy(lab: Lab) -> None:
    client = lab.redis()
    client.set("user:1", "v")
    with pytest.raises(redis.ResponseError, match="LFU"):
        lfu_top(client, "user:*", 1)


def test_bulk_profiles_equal_single_profile_reads(lab: Lab) -> None:
    db = lab.shop()
    ids = [1, 7, 42, db.size.users]
    before = db.queries

    bulk = db.user_profiles(ids)

    assert db.queries == before + 1
    assert bulk == {i: db.user_profile(i) for i in ids}
