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
:class:`RateLimitMiddleware` limits an ASGI app per user (``X-User-Id``) or client IP.
``python -m cachelab.caching.rate_limit`` is a client process that hammers limiters
(and optionally the API) for a set time and reports what it was admitted; it reaches an
existing deployment through the environment its parent gives it, its keys prefixed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_args

from cachelab.fixtures.process import ChildProcess, stop_condition

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

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


# ---------------------------------------------------------------- HTTP

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

USER_HEADER = "x-user-id"
#: Where on Redis's clock the limiter admitted a request: lets a test line up admissions
#: from many clients on one clock.
DECIDED_HEADER = "X-RateLimit-Decided-Us"
_USER_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class RateLimitMiddleware:
    """ASGI middleware: limit each user (``X-User-Id``), else each client IP.

    Refused requests get ``429`` with ``Retry-After``; every limited answer carries
    ``RateLimit-Limit``, ``RateLimit-Remaining`` and ``RateLimit-Reset``, and
    :data:`DECIDED_HEADER`, the decision's time on Redis's clock. Paths under
    ``exempt`` (health checks, the lab's counters) pass unlimited. It owns a
    ``redis.asyncio`` client, so a decision never blocks the event loop, and closes it
    when the app shuts down.

    Args:
        app: the ASGI app.
        spec: the limit.
        redis_url: the Redis that keeps the counters.
        prefix: the limiter's key prefix.
        exempt: path prefixes that are not limited.
    """

    def __init__(self, app: ASGIApp, *, spec: LimitSpec, redis_url: str,
                 prefix: str = "ratelimit:api",
                 exempt: tuple[str, ...] = ("/health", "/_lab/")) -> None:
        from cachelab.fixtures.existing import client_from_env

        self.app = app
        self.spec = spec
        self.exempt = exempt
        self.client = client_from_env(redis_url, asyncio=True)
        self.limiter = spec.limiter(self.client, prefix=prefix)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._closing(send))
            return
        if scope["type"] != "http" or scope["path"].startswith(self.exempt):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        user = headers.get(USER_HEADER.encode())
        if user is not None and not _USER_ID.fullmatch(user.decode("latin-1")):
            await _answer(send, 400, {"detail": "X-User-Id must be 1 to 64 letters, digits, "
                                                "'.', '_' or '-'"}, {})
            return
        client = scope.get("client")
        identity = (f"user:{user.decode()}" if user is not None
                    else f"ip:{client[0] if client else 'unknown'}")
        decision = await self.limiter.hit_async(identity)
        extra = {**decision.headers(), DECIDED_HEADER: str(decision.at_us)}
        if not decision.allowed:
            await _answer(send, 429, {"detail": f"rate limit {self.spec} exceeded; retry in "
                                                f"{extra['Retry-After']}s"}, extra)
            return
        added = [(k.lower().encode(), v.encode()) for k, v in extra.items()]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *added]}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _closing(self, send: Send) -> Send:
        async def send_then_close(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                await self.client.aclose()
            await send(message)

        return send_then_close


async def _answer(send: Send, status: int, body: dict[str, Any], headers: dict[str, str]
                  ) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode()),
                            *((k.lower().encode(), v.encode()) for k, v in headers.items())]})
    await send({"type": "http.response.body", "body": payload})


# ---------------------------------------------------------------- client processes


def _client_key(name: str, what: str, key_prefix: str = "") -> str:
    # outside the limiters' prefix: these never expire
    return f"{key_prefix}rlclient:{name}:{what}"


RESULTS_KEY = "rlclient:results"


def results_key(key_prefix: str = "") -> str:
    """Where the client processes push their reports: :data:`RESULTS_KEY`, prefixed."""
    return f"{key_prefix}{RESULTS_KEY}"


def redis_clock_us(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1_000_000 + int(micros)


class HammerProcess(ChildProcess):
    """A client process that, once told when, hits limiters as fast as it can.

    Between ``start_us`` and ``end_us`` on Redis's clock it hits each limiter of
    ``specs`` in turn for ``identity`` and, given ``api_url``, sends one API request as
    ``user_id`` after each round; then it pushes what it was admitted (Redis times) to
    :func:`results_key` and exits.

    Args:
        client: a client of the Redis the limiters live on.
        name: the process's name, unique in a run.
        redis_port: that Redis's port on 127.0.0.1.
        specs: the limits to hit, each a limiter under ``prefix``.
        identity: whose limit the direct hits count against.
        api_url: the rate-limited API, or None.
        user_id: the ``X-User-Id`` of the API requests.
        log_path: where its output goes.
        max_seconds: it exits by itself after this long.
        key_prefix: the server's ``prefix``, which starts its own keys (ready, go,
            results); the child reads it from ``env``.
        env: ``RedisServer.child_env()``: another Redis than ``redis_port``, if any.
    """

    def __init__(self, client: redis.Redis, *, name: str, redis_port: int,
                 specs: Sequence[LimitSpec], prefix: str, identity: str, log_path: Path,
                 api_url: str | None = None, user_id: str = "hammer",
                 max_seconds: float = 120.0, key_prefix: str = "",
                 env: Mapping[str, str] | None = None) -> None:
        args = ["--name", name, "--redis-port", str(redis_port), "--prefix", prefix,
                "--identity", identity, "--user-id", user_id, "--max-seconds", str(max_seconds),
                *(a for spec in specs for a in ("--spec", str(spec)))]
        if api_url:
            args += ["--api-url", api_url]
        super().__init__(client, module=__name__, args=args, label=f"client {name}",
                         ready_key=_client_key(name, "ready", key_prefix), log_path=log_path,
                         env=env)
        self.name = name
        self.key_prefix = key_prefix

    def go(self, start_us: int, end_us: int) -> None:
        self.client.rpush(_client_key(self.name, "go", self.key_prefix),
                          json.dumps({"start_us": start_us, "end_us": end_us}))


def _hammer(client: redis.Redis, args: argparse.Namespace,
            should_stop: Callable[[], bool], key_prefix: str = "") -> dict[str, Any]:
    limiters = [parse_limit(s).limiter(client, prefix=args.prefix) for s in args.spec]
    client.set(_client_key(args.name, "ready", key_prefix), os.getpid())
    go = None
    while go is None and not should_stop():
        go = client.blpop([_client_key(args.name, "go", key_prefix)], timeout=0.1)
    if go is None:
        return {}
    window = json.loads(go[1])
    offset_us = redis_clock_us(client) - time.time_ns() // 1000
    time.sleep(max(0.0, (window["start_us"] - offset_us) / 1e6 - time.time()))
    direct: dict[str, dict[str, Any]] = {
        lim.algorithm: {"allowed": [], "denied": 0} for lim in limiters}
    http: dict[str, Any] = {"allowed": [], "denied": 0, "errors": 0}
    session = None
    if args.api_url:
        import httpx

        session = httpx.Client(base_url=args.api_url, timeout=10,
                               headers={"X-User-Id": args.user_id})
    try:
        # One API request per round of direct hits: on a busy machine the API process
        # gets its share of the CPU, rather than losing it to the tighter direct loop.
        while not should_stop() and time.time_ns() // 1000 + offset_us < window["end_us"]:
            for limiter in limiters:
                decision = limiter.hit(args.identity)
                record = direct[limiter.algorithm]
                if decision.allowed:
                    record["allowed"].append(decision.at_us)
                else:
                    record["denied"] += 1
            if session is not None:
                _hit_api(session, http)
    finally:
        if session is not None:
            session.close()
    return {"name": args.name, "direct": direct, "http": http if session else None}


def _hit_api(session: Any, out: dict[str, Any]) -> None:
    import httpx

    try:
        answer = session.get("/products/1")
    except httpx.HTTPError:
        out["errors"] += 1
        return
    if answer.status_code == 200:
        out["allowed"].append(int(answer.headers[DECIDED_HEADER]))
    elif answer.status_code == 429:
        out["denied"] += 1
    else:
        out["errors"] += 1


def main(argv: Sequence[str] | None = None) -> int:
    """A client process: hammer limiters (and the API) when told, report, exit."""
    from cachelab.fixtures.existing import child_prefix, client_from_env

    parser = argparse.ArgumentParser(prog="python -m cachelab.caching.rate_limit",
                                     description=main.__doc__)
    parser.add_argument("--name", required=True)
    parser.add_argument("--redis-port", type=int, required=True)
    parser.add_argument("--spec", action="append", default=[])
    parser.add_argument("--prefix", default="ratelimit")
    parser.add_argument("--identity", required=True)
    parser.add_argument("--api-url")
    parser.add_argument("--user-id", default="hammer")
    parser.add_argument("--max-seconds", type=float, default=120.0)
    parser.add_argument("--parent-pid", type=int, default=os.getppid())
    args = parser.parse_args(argv)

    should_stop = stop_condition(args.parent_pid, args.max_seconds)
    # The parent's target, if it passed one in the environment (never on the command line).
    client: redis.Redis = client_from_env(f"redis://127.0.0.1:{args.redis_port}",
                                          decode_responses=True)
    key_prefix = child_prefix()
    try:
        report = _hammer(client, args, should_stop, key_prefix)
        if report:
            client.rpush(results_key(key_prefix), json.dumps(report))
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
