"""Redis under maxmemory, on real redis-servers: capacity, OOM, LRU sampling, replays."""

from __future__ import annotations

import random

import pytest

from cachelab.caching.eviction import (
    EVICTION_POLICIES,
    OpCounts,
    apply_ops,
    build_stream,
    freeze,
    held_keys,
    lru_sampling_trial,
    measure_capacity,
    parse_policies,
    replay_cache_aside,
    wait_for_lru_tick,
)
from cachelab.lab import Lab
from cachelab.workload.redis_info import counter_delta, keyspace_counters, lru_clock, stat

VALUE = "v" * 1000


def test_parse_policies_keeps_order_and_drops_repeats() -> None:
    assert parse_policies(" allkeys-LRU,noeviction, allkeys-lru,,") == ("allkeys-lru",
                                                                        "noeviction")
    assert parse_policies(",".join(EVICTION_POLICIES)) == EVICTION_POLICIES


@pytest.mark.parametrize(("text", "message"), [
    ("allkeys-lru,allkeys-lur", "unknown maxmemory-policy 'allkeys-lur'"),
    (" , ", "no policy given"),
])
def test_parse_policies_names_the_bad_one(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_policies(text)


def test_capacity_is_measured_from_info(lab: Lab) -> None:
    client = lab.redis(maxmemory="2mb", maxmemory_policy="allkeys-lru")
    capacity = measure_capacity(client, VALUE, ttl_s=600)
    assert stat(client, "evicted_keys") > 0
    assert 0 < capacity.keys < capacity.written
    assert capacity.maxmemory == 2 * 1024 * 1024
    # A key costs more than its value (name, metadata, dict and expires entries), and the
    # keys filled what the empty server left of maxmemory.
    assert capacity.bytes_per_key > len(VALUE)
    room = capacity.maxmemory - capacity.used_memory_empty
    assert 0.9 * room < capacity.keys * capacity.bytes_per_key <= 1.05 * room


def test_capacity_needs_maxmemory(lab: Lab) -> None:
    with pytest.raises(ValueError, match="maxmemory"):
        measure_capacity(lab.redis(), VALUE)


def test_noeviction_refuses_writes_and_the_counts_say_so(lab: Lab) -> None:
    client = lab.redis(maxmemory="2mb", maxmemory_policy="noeviction")
    ops = [("set", f"k:{i}", 0) for i in range(3000)] + [("get", "k:0", 0), ("get", "nope", 0)]
    counts = apply_ops(client, ops, VALUE, OpCounts())
    held = int(client.dbsize())
    assert counts.writes == 3000 and counts.reads == 2 and counts.read_misses == 1
    assert counts.oom_errors == 3000 - held > 0
    assert "OutOfMemoryError" in counts.first_error and "maxmemory" in counts.first_error
    assert stat(client, "evicted_keys") == 0


def test_freeze_stops_evictions(lab: Lab) -> None:
    client = lab.redis(maxmemory="2mb", maxmemory_policy="allkeys-lru")
    measure_capacity(client, VALUE)
    freeze(client)
    evicted = stat(client, "evicted_keys")  # read after: INFO's own reply can evict one
    apply_ops(client, [("set", f"more:{i}", 0) for i in range(500)], VALUE, OpCounts())
    assert stat(client, "evicted_keys") == evicted
    assert len(held_keys(client, "more:*")) == 500


def test_the_lru_clock_ticks_in_seconds(lab: Lab) -> None:
    client = lab.redis()
    before = lru_clock(client)
    after = wait_for_lru_tick(client, before)
    assert after != before and lru_clock(client) in (after, after + 1)


def test_lru_sampling_trial_against_exact_lru(lab: Lab) -> None:
    server = lab.redis_server()
    client = server.client(decode_responses=False)
    lab.callback(client.close)
    trial = lru_sampling_trial(client, samples=10, keys=400, value_bytes=1000,
                               rng=random.Random(1))
    assert trial.keys == 400 and trial.added == 200
    assert len(trial.kept) == len(trial.exact_kept) == 600
    # Redis's own count agrees with the keys found missing; exact LRU evicted as many,
    # all of them the oldest.
    assert trial.evicted == trial.evicted_keys >= 200
    assert trial.exact_kept.count(False) == trial.evicted
    assert not any(trial.exact_kept[:trial.evicted]) and all(trial.exact_kept[trial.evicted:])
    # Random eviction would agree with exact LRU on about a third of its choices.
    assert 0.6 < trial.accuracy <= 1.0
    oldest, *_, added = trial.kept_by_age()
    assert oldest < 0.5 and added > 0.9


def test_replay_cache_aside_counts_like_redis(lab: Lab) -> None:
    client = lab.redis()
    before = keyspace_counters(client)
    replay = replay_cache_aside(client, [1, 2, 1, 3, 1, 2], value_bytes=10, batch=4)
    seen = counter_delta(before, keyspace_counters(client))
    assert (replay.requests, replay.hits, replay.misses) == (6, 3, 3)
    assert (seen["keyspace_hits"], seen["keyspace_misses"]) == (3, 3)
    assert replay.keys_held == [3, 3] and client.strlen("trace:1") == 10
    assert replay.evicted == [0, 0] and replay.capacity_keys is None


def test_replay_can_be_spread_over_time(lab: Lab) -> None:
    client = lab.redis()
    started = lru_clock(client)
    replay = replay_cache_aside(client, [1, 2, 3, 1], value_bytes=10, batch=1, spread_s=2.0)
    # The last batch starts 1.5s after the first: Redis's LRU clock has moved on.
    assert replay.hits == 1 and lru_clock(client) != started


def test_replay_under_maxmemory_evicts(lab: Lab) -> None:
    client = lab.redis(maxmemory="2mb", maxmemory_policy="allkeys-lru")
    replay = replay_cache_aside(client, list(range(3000)), value_bytes=1000)
    assert replay.hits == 0 and stat(client, "evicted_keys") > 0
    assert max(replay.keys_held) < 3000
    # The capacity is what Redis held once it evicted, not what it held while filling.
    assert replay.capacity_keys is not None
    assert replay.capacity_keys > replay.keys_held[0]
    assert abs(replay.capacity_keys - int(client.dbsize())) < 0.05 * replay.capacity_keys


def test_the_stream_writes_each_key_once_and_reads_the_hot_set_every_round() -> None:
    stream = build_stream(random.Random(2), capacity=1000, hot_share=0.1, turnover=2.5)
    writes = [key for ops in stream.rounds for kind, key, _ in ops if kind == "set"]
    assert len(writes) == len(set(writes)) == stream.keys_written == 100 + 2500
    assert all(ttl > 0 for ttl in stream.cold_ttl_s.values())
    prefill, hot, *later = stream.rounds
    # Cold keys first, short of full; the hot set (no TTL) a round later, alone.
    assert all(key.startswith("cold:") for _, key, _ in prefill) and len(prefill) < 900
    assert hot == [("set", key, 0) for key in stream.hot]
    assert later
    for ops in later:
        assert {key for _, key, _ in ops[:100]} == set(stream.hot)
        assert all(kind == "get" for kind, _, _ in ops[:100])
        # A round's new cold keys are at most half the room beside the hot set.
        assert sum(kind == "set" for kind, _, _ in ops) <= (1000 - 100) // 2
