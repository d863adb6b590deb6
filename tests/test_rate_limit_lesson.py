"""The rate-limit lesson's moved mechanics on real Redis: the boundary burst, the TTL
sampler, and the walk table's shortening."""

from __future__ import annotations

from cachelab.caching.rate_limit import FixedWindowLimiter, SlidingLogLimiter, max_in_any_window
from cachelab.caching.rate_limit_burst import boundary_burst
from cachelab.lab import Lab
from cachelab.workload.keyspace import Keyspace
from cachelab.workload.limit_walk import shorten_rows
from cachelab.workload.ttl_sampler import TtlSampler


def test_a_placed_burst_straddles_a_boundary_and_doubles_the_fixed_window(lab: Lab) -> None:
    client = lab.redis()
    limiters = [FixedWindowLimiter(client, limit=5, window_s=0.5, prefix="t"),
                SlidingLogLimiter(client, limit=5, window_s=0.5, prefix="t")]
    burst = boundary_burst(client, limiters, 5, 500_000)
    assert burst.placed, burst
    every = [d.at_us for ds in (*burst.before.values(), *burst.after.values()) for d in ds]
    assert max(d.at_us for ds in burst.before.values() for d in ds) < burst.boundary_us
    assert min(d.at_us for ds in burst.after.values() for d in ds) >= burst.boundary_us
    assert len(every) == 2 * 5 * 2
    assert max_in_any_window(burst.admitted("fixed"), 500_000) == 10
    assert max_in_any_window(burst.admitted("sliding_log"), 500_000) == 5


def test_the_sampler_reads_only_its_namespace_and_finds_keys_without_expiry(lab: Lab) -> None:
    client = lab.redis()
    keys = Keyspace("run1:")
    client.set("run1:ratelimit:fixed:a", 1, px=60_000)
    client.set("run1:ratelimit:fixed:b", 1)  # no expiry
    client.set("run1:ratelimit:api:token_bucket:c", 1, px=60_000)
    client.set("run2:ratelimit:fixed:z", 1)  # another run's: not sampled
    client.set("ratelimit:fixed:y", 1)
    sampler = TtlSampler(client, keys, "ratelimit")
    sampler.sample()
    sampler.sample()
    assert sampler.samples == 6
    assert sampler.without_ttl == {"run1:ratelimit:fixed:b"}
    assert sampler.seen_of("fixed") == 2 and sampler.seen_of("api") == 1
    assert sampler.seen_of("fixed", sampler.without_ttl) == 1


def test_shorten_rows_keeps_both_ends_with_a_gap() -> None:
    rows = [[n, 200] for n in range(1, 21)]
    assert shorten_rows(rows[:17]) == rows[:17]
    assert shorten_rows(rows, keep=3) == [*rows[:3], ["…", ""], *rows[-3:]]
