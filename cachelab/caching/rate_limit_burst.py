"""The boundary burst: a full quota just before a boundary of Redis's clock and another
just after, sent to several limiters at once, which shows what a fixed window lets
through in one stretch of ``window_s``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cachelab.caching.rate_limit import Decision, Limiter

if TYPE_CHECKING:
    import redis

PLACEMENT_ATTEMPTS = 5

@dataclass
class Burst:
    """The boundary burst: each limiter's decisions before and after the boundary."""

    attempts: int
    boundary_us: int
    lead_us: int
    placed: bool
    before: dict[str, list[Decision]] = field(default_factory=dict)
    after: dict[str, list[Decision]] = field(default_factory=dict)

    def admitted(self, algorithm: str) -> list[int]:
        return [d.at_us for d in self.before[algorithm] + self.after[algorithm] if d.allowed]



def _sleep_until(target_us: int, offset_us: int) -> None:
    """Sleep until Redis's clock reads ``target_us`` (``offset_us``: Redis minus ours)."""
    time.sleep(max(0.0, (target_us - offset_us) / 1e6 - time.time()))


def _clock_offset_us(client: redis.Redis) -> int:
    """Redis's clock minus ours, in microseconds, read halfway through a round trip."""
    from cachelab.workload.redis_info import redis_clock_us

    before = time.time_ns() // 1000
    redis_now = redis_clock_us(client)
    return redis_now - (before + time.time_ns() // 1000) // 2


def boundary_burst(client: redis.Redis, limiters: Sequence[Limiter], limit: int,
                   window_us: int) -> Burst:
    """``limit`` requests per limiter just before a boundary of the clock, ``limit`` just
    after, each batch pipelined so it lands within a few milliseconds; tried again at a
    later boundary (as a new user, starting earlier) if a batch missed its side."""
    from cachelab.workload.redis_info import redis_clock_us

    lead_us, lag_us = max(20_000, window_us // 20), max(5_000, window_us // 50)

    def batch(identity: str) -> dict[str, list[Decision]]:
        pipe = client.pipeline(transaction=False)
        for _ in range(limit):
            for limiter in limiters:
                limiter.queue(pipe, identity)
        replies = pipe.execute()
        out: dict[str, list[Decision]] = {lim.algorithm: [] for lim in limiters}
        for i, reply in enumerate(replies):
            limiter = limiters[i % len(limiters)]
            out[limiter.algorithm].append(limiter.decision(reply))
        return out

    burst = Burst(0, 0, lead_us, False)
    for attempt in range(1, PLACEMENT_ATTEMPTS + 1):
        offset = _clock_offset_us(client)
        now = redis_clock_us(client)
        boundary = (now // window_us + 1) * window_us
        if boundary - lead_us < now + 5_000:
            boundary += window_us
        identity = f"burst-{attempt}"
        _sleep_until(boundary - lead_us, offset)
        before = batch(identity)
        _sleep_until(boundary + lag_us, offset)
        after = batch(identity)
        burst = Burst(attempt, boundary, lead_us, False, before, after)
        first = min(d.at_us for ds in before.values() for d in ds)
        last = max(d.at_us for ds in before.values() for d in ds)
        burst.placed = (last < boundary and all(boundary <= d.at_us < first + window_us
                                                for ds in after.values() for d in ds))
        if burst.placed:
            break
        lead_us = min(window_us // 2, max(2 * lead_us, 2 * (last - first) + 10_000))
    return burst

