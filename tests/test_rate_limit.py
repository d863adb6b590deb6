"""The four rate limiters on real Redis: exact against a model, atomic across processes."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field

import pytest
import redis
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cachelab.caching.rate_limit import (
    ALGORITHMS,
    LIMITERS,
    Decision,
    FixedWindowLimiter,
    LimitSpec,
    SlidingCounterLimiter,
    SlidingLogLimiter,
    TokenBucketLimiter,
    max_in_any_window,
    max_per_fixed_window,
    parse_limit,
)
from cachelab.children.rate_limit import RESULTS_KEY, HammerProcess
from cachelab.lab import Lab
from cachelab.servers.process import stop_all
from cachelab.workload.redis_info import redis_clock_us

BASE_US = 1_700_000_000_000_000  # a real epoch in microseconds: precision matters there
WITH_REDIS = settings(max_examples=30, deadline=None,
                      suppress_health_check=[HealthCheck.function_scoped_fixture])
_example = itertools.count()


def _client(lab: Lab) -> redis.Redis:
    if not lab.servers:
        lab.redis()
    return lab.servers[0].client()


# ---------------------------------------------------------------- a model of each


@dataclass
class Model:
    """Each algorithm in plain Python, on the same integer microseconds as the scripts."""

    algorithm: str
    limit: int
    window: int
    capacity: int
    counts: dict[int, int] = field(default_factory=dict)  # fixed: all requests; counter: admitted
    log: list[int] = field(default_factory=list)
    level: int | None = None
    ts: int = 0

    def _state(self, t: int) -> tuple[bool, int]:
        """Would a request at ``t`` pass, and the remaining quota if it did."""
        w, lim = self.window, self.limit
        index, elapsed = divmod(t, w)
        if self.algorithm == "fixed":
            n = self.counts.get(index, 0) + 1
            return n <= lim, max(0, lim - n)
        if self.algorithm == "sliding_log":
            n = sum(u > t - w for u in self.log)
            return n < lim, lim - n - 1
        if self.algorithm == "sliding_counter":
            weighted = self.counts.get(index - 1, 0) * (w - elapsed) + self.counts.get(index, 0) * w
            return weighted + w <= lim * w, (lim * w - weighted - w) // w
        level = self._level(t)
        return level >= w, (level - w) // w

    def _level(self, t: int) -> int:
        full = self.capacity * self.window
        if self.level is None:
            return full
        rate = self.limit - self.capacity  # what the bucket refills per window
        return min(full, self.level + max(0, t - self.ts) * rate)

    def admits(self, t: int) -> bool:
        return self._state(t)[0]

    def decide(self, t: int) -> tuple[bool, int]:
        allowed, remaining = self._state(t)
        index = t // self.window
        if self.algorithm == "fixed":
            self.counts[index] = self.counts.get(index, 0) + 1
        elif allowed and self.algorithm == "sliding_log":
            self.log.append(t)
        elif allowed and self.algorithm == "sliding_counter":
            self.counts[index] = self.counts.get(index, 0) + 1
        elif allowed:
            self.level, self.ts = self._level(t) - self.window, t
        return allowed, (remaining if allowed else 0)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(limit=st.integers(1, 6),
       window_us=st.integers(1_000, 1_000_000), capacity=st.integers(1, 8),
       start=st.integers(0, 10**9),
       gaps=st.lists(st.integers(0, 1500), min_size=1, max_size=50))
def test_each_limiter_decides_exactly_as_its_model(
        lab: Lab, algorithm: str, limit: int, window_us: int, capacity: int, start: int,
        gaps: list[int]) -> None:
    """Admitted, remaining and Retry-After agree with the model at every step, and a
    refused request would pass after exactly its Retry-After, not a microsecond sooner."""
    if algorithm == "token_bucket":  # capacity + refill = limit: 1 <= capacity < limit
        assume(limit >= 2)
        capacity = 1 + (capacity - 1) % (limit - 1)
    extra = {"capacity": capacity} if algorithm == "token_bucket" else {}
    limiter = LIMITERS[algorithm](_client(lab), limit=limit, window_s=window_us / 1e6,
                                  prefix=f"rl{next(_example)}", extra_ttl_s=60, **extra)
    model = Model(algorithm, limit, limiter.window_us, capacity if extra else limit)
    # Gaps in thousandths of a window, so that bursts and quiet spells both happen.
    for t in itertools.accumulate((window_us * g // 1000 for g in gaps), initial=BASE_US + start):
        decision = limiter.hit("alice", now_us=t)
        if not decision.allowed:
            wait = decision.retry_after_us
            assert wait > 0
            assert model.admits(t + wait) and not model.admits(t + wait - 1)
        assert (decision.allowed, decision.remaining) == model.decide(t)
        assert decision.at_us == t


def test_across_a_boundary_the_fixed_window_admits_twice_the_limit(lab: Lab) -> None:
    client = _client(lab)
    limit, window = 10, 1_000_000
    boundary = BASE_US + 7 * window
    times = [boundary - 50_000 + i for i in range(limit)] + [boundary + 20_000 + i
                                                             for i in range(limit)]
    admitted = {}
    for cls in LIMITERS.values():
        limiter = cls(client, limit=limit, window_s=1.0, extra_ttl_s=60)
        admitted[limiter.algorithm] = [t for t in times if limiter.hit("bob", now_us=t).allowed]
    most = {a: max_in_any_window(ts, window) for a, ts in admitted.items()}
    # The bucket holds half the limit; 70 ms of refill at 5 a second is 0.35 of a token.
    assert most == {"fixed": 2 * limit, "sliding_log": limit, "sliding_counter": limit,
                    "token_bucket": limit // 2}
    assert max_per_fixed_window(admitted["fixed"], window) == limit  # its own promise holds


def test_a_token_bucket_admits_its_capacity_then_its_rate(lab: Lab) -> None:
    bucket = TokenBucketLimiter(_client(lab), limit=10, window_s=1.0, capacity=4,
                                extra_ttl_s=60)
    assert bucket.rate == 6 and bucket.quota == 4
    at = [BASE_US + i * 10_000 for i in range(100)]  # 100 requests a second for 1 s
    admitted = [t for t in at if bucket.hit("carol", now_us=t).allowed]
    # 4 at once, then one per 1/6 s of refill: 4 + 5 over the 0.99 s, never over 10.
    assert len(admitted) == 4 + 5
    assert admitted[:4] == at[:4]
    assert bucket.bound(admitted).held and bucket.allowance(990_000) == pytest.approx(9.94)
    assert max_in_any_window(admitted, 1_000_000) <= 10


def test_a_token_bucket_needs_room_to_refill() -> None:
    client = redis.Redis()  # never connected
    for capacity in (0, 10, 11):
        with pytest.raises(ValueError, match="capacity from 1 to 9"):
            TokenBucketLimiter(client, limit=10, window_s=1.0, capacity=capacity)
    with pytest.raises(ValueError, match="at least 2"):
        TokenBucketLimiter(client, limit=1, window_s=1.0)
    assert TokenBucketLimiter(client, limit=7, window_s=1.0).capacity == 4
    client.close()


# ---------------------------------------------------------------- the checks can fail


def test_bounds_catch_a_limiter_that_admits_too_many() -> None:
    client = redis.Redis()  # never connected: register_script only hashes the script
    w = 1_000_000
    fixed = FixedWindowLimiter(client, limit=3, window_s=1.0)
    log = SlidingLogLimiter(client, limit=3, window_s=1.0)
    counter = SlidingCounterLimiter(client, limit=3, window_s=1.0)
    bucket = TokenBucketLimiter(client, limit=3, window_s=1.0)
    four_in_a_window = [BASE_US + i for i in range(4)]
    assert not fixed.bound(four_in_a_window).held
    assert fixed.bound([BASE_US - 1, BASE_US - 2, BASE_US + 1, BASE_US + 2]).held
    straddling = [BASE_US - 2, BASE_US - 1, BASE_US + 1, BASE_US + 2]
    assert not log.bound(straddling).held and log.bound(straddling[:3]).held
    # Three at the end of one window, one early in the next: its estimate is ~4.
    late = [BASE_US + w - 3, BASE_US + w - 2, BASE_US + w - 1, BASE_US + w + 10]
    assert not counter.bound(late).held and counter.bound(late[:3]).held
    assert not bucket.bound(four_in_a_window).held
    # Capacity 2, refill 1 a window: two at once, then one more once it has dripped in.
    assert (bucket.capacity, bucket.rate) == (2, 1)
    assert bucket.bound([BASE_US, BASE_US, BASE_US + w]).held
    assert not bucket.bound([BASE_US, BASE_US, BASE_US + w - 1]).held
    client.close()


def test_windows_are_counted_half_open() -> None:
    assert max_in_any_window([0, 10, 20], 20) == 2  # (t - 20, t]: 0 is out at t = 20
    assert max_in_any_window([0, 10, 19], 20) == 3
    assert max_per_fixed_window([0, 19, 20, 39, 40], 20) == 2
    assert max_in_any_window([], 20) == max_per_fixed_window([], 20) == 0


# ---------------------------------------------------------------- expiry


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_key_expires_once_it_no_longer_matters(lab: Lab, algorithm: str) -> None:
    client = _client(lab)
    limiter = LIMITERS[algorithm](client, limit=5, window_s=0.2)
    # Seven at once, just after a boundary of the clock: all in one fixed window.
    boundary = (redis_clock_us(client) // 200_000 + 1) * 200_000
    time.sleep((boundary - redis_clock_us(client)) / 1e6 + 0.005)
    pipe = client.pipeline(transaction=False)
    for _ in range(7):
        limiter.queue(pipe, "dave")
    decisions = [limiter.decision(reply) for reply in pipe.execute()]
    assert [d.allowed for d in decisions].count(True) == limiter.quota  # 3 for the bucket
    keys = client.keys("ratelimit:*")
    ttls = [client.pttl(k) for k in keys]
    # The bucket's key lives until it is full again: 3 tokens at 2 a window.
    longest_ms = {"fixed": 200, "sliding_log": 200, "sliding_counter": 400,
                  "token_bucket": 300}[algorithm]
    assert keys and all(0 < t <= longest_ms for t in ttls), dict(zip(keys, ttls, strict=True))
    deadline = time.monotonic() + 2
    while client.keys("ratelimit:*") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert client.keys("ratelimit:*") == []
    assert limiter.hit("dave").remaining == limiter.quota - 1  # fresh once the keys are gone


def test_a_limiter_works_through_the_asyncio_client(lab: Lab) -> None:
    import redis.asyncio

    server = lab.redis_server("async")

    async def hits() -> list[Decision]:
        client = redis.asyncio.Redis(host=server.host, port=server.port)
        try:
            limiter = SlidingLogLimiter(client, limit=2, window_s=10)
            return [await limiter.hit_async("erin") for _ in range(3)]
        finally:
            await client.aclose()

    decisions = asyncio.run(hits())
    assert [(d.allowed, d.remaining) for d in decisions] == [(True, 1), (True, 0), (False, 0)]
    assert 9 <= decisions[2].retry_after_us / 1e6 <= 10


# ---------------------------------------------------------------- text and headers


@pytest.mark.parametrize(("text", "spec"), [
    ("token_bucket:20/1s", LimitSpec("token_bucket", 20, 1.0)),
    ("fixed:100/500ms", LimitSpec("fixed", 100, 0.5)),
    ("sliding_log:5/m", LimitSpec("sliding_log", 5, 60.0)),
    (" sliding_counter:3/1.5h ", LimitSpec("sliding_counter", 3, 5400.0)),
])
def test_a_limit_reads_from_text_and_back(text: str, spec: LimitSpec) -> None:
    assert parse_limit(text) == spec
    assert parse_limit(str(spec)) == spec


@pytest.mark.parametrize("text", ["", "token_bucket", "leaky:20/1s", "fixed:0/1s",
                                  "fixed:20/0ms", "fixed:20/1", "fixed:-1/1s", "fixed:20/1d"])
def test_a_malformed_limit_says_how_to_write_one(text: str) -> None:
    with pytest.raises(ValueError, match="ALGORITHM:LIMIT/WINDOW such as token_bucket:20/1s"):
        parse_limit(text)


def test_headers_round_up_to_whole_seconds() -> None:
    refused = Decision(False, 20, 0, reset_us=1_200_000, retry_after_us=30_000, at_us=1)
    assert refused.headers() == {"RateLimit-Limit": "20", "RateLimit-Remaining": "0",
                                 "RateLimit-Reset": "2", "Retry-After": "1"}
    admitted = Decision(True, 20, 7, reset_us=0, retry_after_us=0, at_us=1)
    assert admitted.headers() == {"RateLimit-Limit": "20", "RateLimit-Remaining": "7",
                                  "RateLimit-Reset": "0"}


# ---------------------------------------------------------------- several processes


def test_client_processes_sharing_a_limit_never_get_more_than_it(lab: Lab) -> None:
    """Two OS processes hit all four limiters for one user; their admissions, merged on
    Redis's clock, keep every limiter's guarantee, and the limit was really reached."""
    server = lab.redis_server("shared")
    client = server.client()
    lab.callback(client.close)
    specs = [LimitSpec(a, 5, 0.2) for a in ALGORITHMS]
    hammers = [HammerProcess(client, name=f"h{i}", redis_port=server.port, specs=specs,
                             prefix="ratelimit", identity="frank",
                             log_path=lab.workdir / f"h{i}.log", max_seconds=60)
               for i in range(2)]
    lab.callback(lambda: stop_all(hammers))
    for hammer in hammers:
        hammer.launch()
    for hammer in hammers:
        hammer.wait_ready()
    start = redis_clock_us(client) + 50_000
    for hammer in hammers:
        hammer.go(start, start + 600_000)
    reports = [json.loads(client.blpop([RESULTS_KEY], timeout=30)[1]) for _ in hammers]

    for spec in specs:
        admitted = [t for r in reports for t in r["direct"][spec.algorithm]["allowed"]]
        refused = sum(r["direct"][spec.algorithm]["denied"] for r in reports)
        bound = spec.limiter(client).bound(admitted)
        assert bound.held, (spec.algorithm, bound)
        assert refused > 0 and admitted
        assert all(start <= t < start + 700_000 for t in admitted)
    assert {r["name"] for r in reports} == {"h0", "h1"}
    assert all(r["http"] is None for r in reports)
