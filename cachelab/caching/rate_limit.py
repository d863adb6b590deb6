"""A sliding-window rate limiter kept in Redis: at most ``limit`` requests per window."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis

# One sorted set per identity, scored by request time. Trimming, counting and admitting
# run in one script, so concurrent callers can never both take the last slot.
_ALLOW = """
local key, now, window, limit = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
if redis.call('ZCARD', key) >= limit then
  return 0
end
local seq = redis.call('INCR', key .. ':seq')
redis.call('ZADD', key, now, now .. '-' .. seq)
redis.call('PEXPIRE', key, window)
redis.call('PEXPIRE', key .. ':seq', window)
return 1
"""


class SlidingWindowLimiter:
    """Admit a request when fewer than ``limit`` were admitted in the last ``window_ms``.

    A request at time t counts against every window that contains t: the window is
    ``(now - window_ms, now]``, so a request admitted exactly ``window_ms`` ago no longer
    counts. Exact, unlike a fixed-window counter, which lets up to twice the limit
    through around a window boundary; the price is one sorted-set entry per request.

    Args:
        client: a redis-py client.
        limit: requests admitted per window.
        window_ms: the window's length.
        prefix: key prefix; an identity's requests live under ``prefix:identity``.
    """

    def __init__(self, client: redis.Redis, *, limit: int, window_ms: int,
                 prefix: str = "ratelimit") -> None:
        if limit < 1 or window_ms < 1:
            raise ValueError("limit and window_ms must be at least 1")
        self.limit = limit
        self.window_ms = window_ms
        self.prefix = prefix
        self._allow = client.register_script(_ALLOW)

    def allow(self, identity: str, now_ms: int | None = None) -> bool:
        """Admit (True) or refuse one request by ``identity`` at ``now_ms`` (default: now)."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        return bool(self._allow(keys=[f"{self.prefix}:{identity}"],
                                args=[now, self.window_ms, self.limit]))
