"""Rate limiters kept in Redis, four ways, and the HTTP middleware that applies one.

Each limiter decides in one Lua script, which Redis runs atomically: reading the
counters, deciding and updating them can never interleave with another client's
request, so several processes sharing a limit can never both take the last slot. The
script reads Redis's own clock (``TIME``), so every client, whatever its process or
machine, is judged by one clock; and it sets every key's expiry in the same step that
writes it, so no key is ever left behind without one.

- :class:`FixedWindowLimiter`: ``INCR`` a counter per window of the epoch; cheap, but
  up to twice the limit passes in one window's length around a boundary.
- :class:`SlidingLogLimiter`: a sorted set of admission times; exact, one entry per
  admitted request.
- :class:`SlidingCounterLimiter`: this window's count plus the previous window's,
  weighted by how much of it still overlaps the sliding window; two counters, close.
- :class:`TokenBucketLimiter`: a bucket of ``capacity`` tokens refilled at ``limit``
  per window; admits bursts up to the capacity, then the refill rate.

:func:`parse_limit` reads a spec such as ``token_bucket:20/1s``;
The HTTP middleware that applies a limit is :mod:`cachelab.shop.middleware`; the client
processes that hammer limiters are :mod:`cachelab.children.rate_limit`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_args

if TYPE_CHECKING:

    import redis

Algorithm = Literal["fixed", "sliding_log", "sliding_counter", "token_bucket"]
ALGORITHMS: tuple[Algorithm, ...] = get_args(Algorithm)

# Every script starts here: ARGV[1] is a fixed time in microseconds (tests replay
# timelines with it) or empty for Redis's clock; ARGV[2] the limit, ARGV[3] the window
# in microseconds, ARGV[4] milliseconds added to every TTL. Integers below 2^53 are
# exact in Lua's doubles, and redis.call passes numbers on with 17 digits, so
# microsecond timestamps survive.
_PRELUDE = """
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local limit, window, extra_ms = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local function ms(us) return math.max(1, math.ceil(us / 1000)) + extra_ms end
local function name(prefix, n) return prefix .. ':' .. string.format('%.0f', n) end
"""

# Keys of one window are derived from KEYS[1] (the window depends on Redis's clock, known
# only here); KEYS[1] ends in a {hash tag}, so a cluster would keep them in its slot.
_FIXED = """
local index = math.floor(now / window)
local key = name(KEYS[1], index)
local ends = (index + 1) * window
local count = redis.call('INCR', key)
if count == 1 then redis.call('PEXPIRE', key, ms(ends - now)) end
if count <= limit then
  return {1, limit - count, ends - now, 0, now}
end
return {0, 0, ends - now, ends - now, now}
"""

# Entries are admission times; the window is (now - window, now]. A member is its time
# and the count before it, unique even for two admissions in the same microsecond.
_SLIDING_LOG = """
local key = KEYS[1]
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
local count = redis.call('ZCARD', key)
if count < limit then
  redis.call('ZADD', key, now, string.format('%.0f', now) .. '-' .. count)
  redis.call('PEXPIRE', key, ms(window))
  return {1, limit - count - 1, window, 0, now}
end
local oldest = tonumber(redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')[2])
local newest = tonumber(redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')[2])
return {0, 0, newest + window - now, oldest + window - now, now}
"""

# The estimate of the last window's admissions is prev * (window - elapsed) / window +
# cur; everything below is multiplied by window to stay in exact integers.
_SLIDING_COUNTER = """
local index = math.floor(now / window)
local elapsed = now - index * window
local cur_key = name(KEYS[1], index)
local prev = tonumber(redis.call('GET', name(KEYS[1], index - 1)) or '0')
local cur = tonumber(redis.call('GET', cur_key) or '0')
local weighted = prev * (window - elapsed) + cur * window
local reset = 0
if weighted + window <= limit * window then
  cur = redis.call('INCR', cur_key)
  -- it is the previous window's count until the end of the next window
  redis.call('PEXPIRE', cur_key, ms(2 * window - elapsed))
  weighted = weighted + window
  return {1, math.floor((limit * window - weighted) / window), 2 * window - elapsed, 0, now}
end
if cur > 0 then reset = 2 * window - elapsed elseif prev > 0 then reset = window - elapsed end
local retry
if cur < limit and prev > 0 then  -- this window: until enough of the last has slid out
  retry = math.ceil((window - elapsed) - (limit - cur - 1) * window / prev)
else  -- the next window, where this one's count becomes the weighted one
  local wait = math.ceil(window - (limit - 1) * window / math.max(cur, 1))
  retry = (window - elapsed) + math.max(0, wait)
end
return {0, 0, reset, math.max(1, retry), now}
"""

# The level is kept in units of 1/window of a token, so that the refill (rate tokens
# per window: rate units per microsecond) is exact integer arithmetic. The key expires
# when the bucket would be full again: a missing key is a full bucket.
_TOKEN_BUCKET = """
local key, capacity, rate = KEYS[1], tonumber(ARGV[5]) * window, tonumber(ARGV[6])
local state = redis.call('HMGET', key, 'level', 'ts')
local level, ts = tonumber(state[1]) or capacity, tonumber(state[2]) or now
if now > ts then level = math.min(capacity, level + (now - ts) * rate) end
if level >= window then
  level = level - window
  redis.call('HSET', key, 'level', level, 'ts', now)
  redis.call('PEXPIRE', key, ms((capacity - level) / rate))
  return {1, math.floor(level / window), math.ceil((capacity - level) / rate), 0, now}
end
return {0, 0, math.ceil((capacity - level) / rate), math.ceil((window - level) / rate), now}
"""


@dataclass(frozen=True)
class Decision:
    """One request admitted or refused, as the limiter saw it on Redis's clock.

    Attributes:
        allowed: admitted.
        limit: the limit (requests per window).
        remaining: requests still admitted now, were they sent at once.
        reset_us: until the quota is whole again.
        retry_after_us: until a refused request would be admitted (0 if admitted).
        at_us: Redis's clock when it decided, in microseconds since the epoch.
    """

    allowed: bool
    limit: int
    remaining: int
    reset_us: int
    retry_after_us: int
    at_us: int

    def headers(self) -> dict[str, str]:
        """RateLimit-Limit, -Remaining and -Reset (IETF draft), Retry-After when refused.

        HTTP counts both in whole seconds: rounded up, so a client that waits that long
        is admitted.
        """
        headers = {"RateLimit-Limit": str(self.limit),
                   "RateLimit-Remaining": str(self.remaining),
                   "RateLimit-Reset": str(_whole_seconds(self.reset_us))}
        if not self.allowed:
            headers["Retry-After"] = str(max(1, _whole_seconds(self.retry_after_us)))
        return headers


def _whole_seconds(us: int) -> int:
    return math.ceil(us / 1_000_000)


@dataclass(frozen=True)
class Bound:
    """The tightest spot of a run against a limiter's guarantee.

    Attributes:
        observed: the most admitted where the guarantee was tightest.
        bound: what the guarantee allows there.
        held: ``observed <= bound`` (decided in exact integers).
        where: where it was counted ("in any window", "over 0.25s", ...).
    """

    observed: float
    bound: float
    held: bool
    where: str

    def __str__(self) -> str:
        return (f"{_short(self.observed)} {'≤' if self.held else '>'} {_short(self.bound)} "
                f"{self.where}")


def _short(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


class Limiter:
    """At most ``limit`` requests per ``window_s`` for each identity, decided in Redis.

    Subclasses give the Lua script. A client of ``redis.asyncio`` works too, through
    :meth:`hit_async`.

    Args:
        client: a redis-py client (sync or asyncio).
        limit: requests admitted per window.
        window_s: the window's length (at least a millisecond).
        prefix: key prefix; an identity's keys live under ``prefix:algorithm:{identity}``.
        extra_ttl_s: keys live this much longer than they matter. Tests that replay a
            made-up clock set it, so that real time cannot expire their keys.
    """

    algorithm: ClassVar[Algorithm]
    _SCRIPT: ClassVar[str]

    def __init__(self, client: redis.Redis | Any, *, limit: int, window_s: float,
                 prefix: str = "ratelimit", extra_ttl_s: float = 0.0) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        if window_s < 0.001:
            raise ValueError("window_s must be at least 0.001 (a millisecond)")
        self.limit = limit
        self.window_us = round(window_s * 1_000_000)
        self.prefix = prefix
        self.extra_ttl_ms = math.ceil(extra_ttl_s * 1000)
        self._script: Any = client.register_script(_PRELUDE + self._SCRIPT)

    @property
    def window_s(self) -> float:
        return self.window_us / 1_000_000

    @property
    def quota(self) -> int:
        """Requests admitted at once from a fresh start."""
        return self.limit

    def key(self, identity: str) -> str:
        return f"{self.prefix}:{self.algorithm}:{{{identity}}}"

    def _args(self, now_us: int | None) -> list[int | str]:
        return ["" if now_us is None else now_us, self.limit, self.window_us, self.extra_ttl_ms]

    def hit(self, identity: str, now_us: int | None = None) -> Decision:
        """Admit or refuse one request by ``identity`` now (or at ``now_us``, for tests)."""
        return self.decision(self._script(keys=[self.key(identity)], args=self._args(now_us)))

    async def hit_async(self, identity: str) -> Decision:
        """:meth:`hit` through a ``redis.asyncio`` client."""
        return self.decision(await self._script(keys=[self.key(identity)], args=self._args(None)))

    def queue(self, pipe: redis.client.Pipeline, identity: str) -> None:
        """Queue a hit on ``pipe``; its reply, given to :meth:`decision`, is the decision."""
        self._script(keys=[self.key(identity)], args=self._args(None), client=pipe)

    def decision(self, reply: Sequence[Any]) -> Decision:
        allowed, remaining, reset, retry, at = (int(v) for v in reply)
        return Decision(bool(allowed), self.limit, remaining, reset, retry, at)

    def bound(self, admitted_us: Sequence[int]) -> Bound:
        """How the admissions of one identity (times from :attr:`Decision.at_us`, from
        any number of clients) compare with this limiter's guarantee."""
        raise NotImplementedError


class FixedWindowLimiter(Limiter):
    """A counter per window of the epoch (``INCR``; the first one sets its expiry).

    The guarantee is per window of the clock: at most ``limit`` between two boundaries.
    A burst at the end of one window and another at the start of the next pass in full,
    so up to twice the limit in one window's length.
    """

    algorithm = "fixed"
    _SCRIPT = _FIXED

    def bound(self, admitted_us: Sequence[int]) -> Bound:
        most = max_per_fixed_window(admitted_us, self.window_us)
        return Bound(most, self.limit, most <= self.limit, "per window of the clock")


class SlidingLogLimiter(Limiter):
    """A sorted set of admission times: at most ``limit`` in any window ``(t - w, t]``.

    Exact at any instant, at the price of one sorted-set entry per admitted request.
    """

    algorithm = "sliding_log"
    _SCRIPT = _SLIDING_LOG

    def bound(self, admitted_us: Sequence[int]) -> Bound:
        most = max_in_any_window(admitted_us, self.window_us)
        return Bound(most, self.limit, most <= self.limit, "in any window")


class SlidingCounterLimiter(Limiter):
    """Two counters: this window's, plus the previous one's weighted by its overlap.

    Admits while ``prev * (1 - elapsed / window) + cur < limit``. It assumes the
    previous window's requests were spread evenly, so it is an estimate of the sliding
    window: within ``limit`` per window of the clock, close to it in any window.
    """

    algorithm = "sliding_counter"
    _SCRIPT = _SLIDING_COUNTER

    def bound(self, admitted_us: Sequence[int]) -> Bound:
        """Replays the estimate each admission saw (from the others' times): a limiter
        that raced would have admitted one whose estimate was already at the limit."""
        w = self.window_us
        per_window: dict[int, int] = {}
        worst = 0  # the largest estimate an admission saw, itself included, times w
        for at in sorted(admitted_us):
            index, elapsed = divmod(at, w)
            per_window[index] = per_window.get(index, 0) + 1
            worst = max(worst, per_window.get(index - 1, 0) * (w - elapsed)
                        + per_window[index] * w)
        return Bound(worst / w, self.limit, worst <= self.limit * w, "estimated at admission")


class TokenBucketLimiter(Limiter):
    """A bucket of ``capacity`` tokens refilled at ``limit - capacity`` tokens per
    window; a request takes one.

    In any stretch of time ``s`` it admits at most ``capacity + rate * s / window``: the
    tokens it held at the start plus those that dripped in. Capacity and rate add up to
    the limit, so no window ever admits more than ``limit`` (a bucket holding the whole
    limit and refilling it every window would admit twice the limit after a quiet
    spell). The capacity (by default half the limit, rounded up) is the burst it allows,
    the rate what it sustains.
    """

    algorithm = "token_bucket"
    _SCRIPT = _TOKEN_BUCKET

    def __init__(self, client: redis.Redis | Any, *, limit: int, window_s: float,
                 prefix: str = "ratelimit", extra_ttl_s: float = 0.0,
                 capacity: int | None = None) -> None:
        super().__init__(client, limit=limit, window_s=window_s, prefix=prefix,
                         extra_ttl_s=extra_ttl_s)
        self.capacity = (limit + 1) // 2 if capacity is None else capacity
        self.rate = limit - self.capacity  # tokens per window
        if not 1 <= self.capacity < limit:
            raise ValueError(f"a token bucket needs a capacity from 1 to {limit - 1}, so "
                             f"that its refill is at least a token per window (limit {limit}"
                             " = capacity + refill; a limit of at least 2)")

    @property
    def quota(self) -> int:
        return self.capacity

    def _args(self, now_us: int | None) -> list[int | str]:
        return [*super()._args(now_us), self.capacity, self.rate]

    def allowance(self, span_us: int) -> float:
        """The most it may admit in a stretch of ``span_us``: capacity + refill."""
        return self.capacity + self.rate * span_us / self.window_us

    def bound(self, admitted_us: Sequence[int]) -> Bound:
        """Every stretch from one admission to a later one, checked in O(n): admissions
        i..j need ``(j - i + 1) * w <= capacity * w + limit * (t_j - t_i)``."""
        times = sorted(admitted_us)
        w, rate = self.window_us, self.rate
        best: tuple[int, int, int] | None = None  # (excess * w, count, span)
        low: tuple[int, int] | None = None  # min over i of i*w - rate*t_i, and that i
        for j, t in enumerate(times):
            here = (j * w - rate * t, j)
            if low is None or here[0] < low[0]:
                low = here
            i = low[1]
            count, span = j - i + 1, t - times[i]
            excess = count * w - (self.capacity * w + rate * span)
            if best is None or excess > best[0]:
                best = (excess, count, span)
        if best is None:
            return Bound(0, self.capacity, True, "in any stretch")
        excess, count, span = best
        return Bound(count, self.allowance(span), excess <= 0, f"over {_short(span / 1e6)}s")


LIMITERS: dict[Algorithm, type[Limiter]] = {
    cls.algorithm: cls
    for cls in (FixedWindowLimiter, SlidingLogLimiter, SlidingCounterLimiter, TokenBucketLimiter)}


def max_in_any_window(times_us: Sequence[int], window_us: int) -> int:
    """The most times in any window ``(t - window, t]`` (the busiest ends at one of them)."""
    times = sorted(times_us)
    most, start = 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - window_us:
            start += 1
        most = max(most, end - start + 1)
    return most


def max_per_fixed_window(times_us: Sequence[int], window_us: int) -> int:
    """The most times between two boundaries of the clock (multiples of ``window_us``)."""
    counts: dict[int, int] = {}
    for t in times_us:
        counts[t // window_us] = counts.get(t // window_us, 0) + 1
    return max(counts.values(), default=0)


# ---------------------------------------------------------------- limits as text

_SPEC = re.compile(r"^(?P<algorithm>[a-z_]+):(?P<limit>\d+)/(?P<amount>\d+(?:\.\d+)?)?"
                   r"(?P<unit>ms|s|m|h)$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class LimitSpec:
    """A limit as text says it: ``token_bucket:20/1s`` is 20 requests a second."""

    algorithm: Algorithm
    limit: int
    window_s: float

    def __str__(self) -> str:
        for unit in ("h", "m", "s"):
            amount = self.window_s / _UNIT_S[unit]
            if amount >= 1 and amount.is_integer():
                return f"{self.algorithm}:{self.limit}/{int(amount)}{unit}"
        ms = f"{self.window_s * 1000:.6f}".rstrip("0").rstrip(".")
        return f"{self.algorithm}:{self.limit}/{ms}ms"

    def limiter(self, client: redis.Redis | Any, prefix: str = "ratelimit") -> Limiter:
        return LIMITERS[self.algorithm](client, limit=self.limit, window_s=self.window_s,
                                        prefix=prefix)


def parse_limit(spec: str) -> LimitSpec:
    """Read ``ALGORITHM:LIMIT/WINDOW``, e.g. ``token_bucket:20/1s``, ``fixed:100/500ms``.

    The window is a number and a unit (ms, s, m, h); ``20/s`` means ``20/1s``.

    Raises:
        ValueError: the spec is malformed, names no algorithm, or is out of range.
    """
    usage = (f"rate limit {spec!r}: write ALGORITHM:LIMIT/WINDOW such as token_bucket:20/1s "
             f"(algorithms {', '.join(ALGORITHMS)}; window units ms, s, m, h)")
    match = _SPEC.match(spec.strip())
    if match is None or match["algorithm"] not in ALGORITHMS:
        raise ValueError(usage)
    window_s = float(match["amount"] or 1) * _UNIT_S[match["unit"]]
    limit = int(match["limit"])
    if limit < 1 or window_s < 0.001:
        raise ValueError(f"{usage}; the limit must be at least 1 and the window at least 1ms")
    algorithm: Algorithm = match["algorithm"]
    return LimitSpec(algorithm, limit, window_s)
