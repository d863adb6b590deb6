"""Fixes for cache-aside's stale-set race: leases, versioned sets, a delayed second delete.

The race: a reader misses and loads the old row; a writer updates the row and deletes
the key; the reader then stores the old row, which stays until its TTL. Every cache
here has the same three steps, so a reader can be paused between them:

- ``lookup(item)`` returns ``(value, ticket)``; on a miss the ticket is what ``fill``
  needs (a lease token, for instance);
- ``fill(item, ticket, value, version)`` stores what the reader loaded, if still allowed;
- ``invalidate(item, version)`` is what the writer does after its database commit.

The lease and versioned checks run as Lua scripts, so that the check and the write are
one atomic step on the server.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # redis is imported by whoever builds the client
    import redis

# KEYS[1] the value, KEYS[2] its lease; ARGV[1] a new token, ARGV[2] the lease TTL (ms).
# A hit returns the value; a miss hands out a lease unless another reader holds one.
_LEASE_GET = """
local value = redis.call('GET', KEYS[1])
if value then return {'hit', value} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {'lease', ARGV[1]}
end
return {'wait', ''}
"""

# KEYS[1] the value, KEYS[2] its lease; ARGV[1] the token, ARGV[2] the value, ARGV[3] TTL ms.
# A delete removed the lease, so a token handed out before it no longer matches.
_LEASE_SET = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('DEL', KEYS[2])
return 1
"""

# KEYS[1] a hash {version, data}; ARGV[1] the loaded version, ARGV[2] data, ARGV[3] TTL ms.
# Store only a newer version, or the version a tombstone announced.
_VERSIONED_SET = """
local current = redis.call('HGET', KEYS[1], 'version')
if current then
  current = tonumber(current)
  local version = tonumber(ARGV[1])
  if current > version then return 0 end
  if current == version and redis.call('HEXISTS', KEYS[1], 'data') == 1 then return 0 end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'data', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

# KEYS[1] the hash; ARGV[1] the committed version, ARGV[2] tombstone TTL ms.
# The writer leaves a tombstone with the new version instead of deleting: it reads as a
# miss, and it remembers which versions are too old to store.
_TOMBSTONE = """
local current = redis.call('HGET', KEYS[1], 'version')
if current and tonumber(current) > tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'version', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class NaiveCache:
    """Plain cache-aside: GET, load, SET; the writer DELs. Has the stale-set race."""

    name = "naive"

    def __init__(self, client: redis.Redis, *, namespace: str, ttl_s: float) -> None:
        self.client = client
        self.namespace = namespace
        self.ttl_ms = _ms(ttl_s)

    def key(self, item: object) -> str:
        return f"{self.namespace}:{item}"

    def lookup(self, item: object) -> tuple[Any, Any]:
        raw = self.client.get(self.key(item))
        return (None if raw is None else json.loads(raw)), None

    def fill(self, item: object, ticket: Any, value: Any, version: int) -> bool:
        return bool(self.client.set(self.key(item), json.dumps(value), px=self.ttl_ms))

    def invalidate(self, item: object, version: int) -> None:
        self.client.delete(self.key(item))

    def peek(self, item: object) -> Any:
        """The cached value, or None: what the next reader would be served."""
        return self.lookup(item)[0]

    def settle(self, timeout_s: float = 10.0) -> None:
        """Wait for deferred work of earlier invalidations (none here)."""

    def close(self) -> None:
        """Stop deferred work (none here)."""

    def __enter__(self) -> Any:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class LeaseCache(NaiveCache):
    """Memcache-style leases: a miss hands out a token, a delete voids it, a set needs it.

    Only one reader at a time holds the lease for a key; others get no token (``None``)
    and serve what they load without storing it. ``lease_ttl_s`` bounds how long a
    reader that died keeps everyone else from filling the key.
    """

    name = "lease"

    def __init__(self, client: redis.Redis, *, namespace: str, ttl_s: float,
                 lease_ttl_s: float = 10.0) -> None:
        super().__init__(client, namespace=namespace, ttl_s=ttl_s)
        self.lease_ttl_ms = _ms(lease_ttl_s)
        self._get = client.register_script(_LEASE_GET)
        self._set = client.register_script(_LEASE_SET)

    def lease_key(self, item: object) -> str:
        return f"{self.key(item)}:lease"

    def lookup(self, item: object) -> tuple[Any, Any]:
        outcome, payload = self._get(keys=[self.key(item), self.lease_key(item)],
                                     args=[secrets.token_hex(8), self.lease_ttl_ms])
        if outcome == "hit":
            return json.loads(payload), None
        return None, payload if outcome == "lease" else None

    def fill(self, item: object, ticket: Any, value: Any, version: int) -> bool:
        if ticket is None:
            return False
        return bool(self._set(keys=[self.key(item), self.lease_key(item)],
                              args=[ticket, json.dumps(value), self.ttl_ms]))

    def invalidate(self, item: object, version: int) -> None:
        # One DEL of both keys: the value and, with it, every lease handed out before.
        self.client.delete(self.key(item), self.lease_key(item))

    def peek(self, item: object) -> Any:
        raw = self.client.get(self.key(item))
        return None if raw is None else json.loads(raw)


class VersionedCache(NaiveCache):
    """A versioned compare-and-set: an entry is ``{version, data}``; older never wins.

    The writer leaves a tombstone holding the committed version rather than deleting,
    because a plain delete would forget the version and let an old value back in. The
    tombstone must outlive any reader's load-to-set window (``tombstone_ttl_s``).
    """

    name = "versioned"

    def __init__(self, client: redis.Redis, *, namespace: str, ttl_s: float,
                 tombstone_ttl_s: float | None = None) -> None:
        super().__init__(client, namespace=namespace, ttl_s=ttl_s)
        self.tombstone_ttl_ms = _ms(tombstone_ttl_s if tombstone_ttl_s is not None else ttl_s)
        self._set = client.register_script(_VERSIONED_SET)
        self._tombstone = client.register_script(_TOMBSTONE)

    def lookup(self, item: object) -> tuple[Any, Any]:
        data = self.client.hget(self.key(item), "data")
        return (None if data is None else json.loads(data)), None

    def fill(self, item: object, ticket: Any, value: Any, version: int) -> bool:
        return bool(self._set(keys=[self.key(item)],
                              args=[version, json.dumps(value), self.ttl_ms]))

    def invalidate(self, item: object, version: int) -> None:
        self._tombstone(keys=[self.key(item)], args=[version, self.tombstone_ttl_ms])

    def version(self, item: object) -> int | None:
        """The version the entry (or its tombstone) holds."""
        value = self.client.hget(self.key(item), "version")
        return None if value is None else int(value)


class DoubleDeleteCache(NaiveCache):
    """Delete now, and again after ``delay_s``: clears a stale set that landed in between.

    It only works when the delay is longer than the readers' load-to-set window, and the
    stale value is served until the second delete. Each second delete runs on a timer
    thread; ``settle`` waits for them and ``close`` cancels those still pending.
    """

    name = "double-delete"

    def __init__(self, client: redis.Redis, *, namespace: str, ttl_s: float,
                 delay_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(client, namespace=namespace, ttl_s=ttl_s)
        if delay_s < 0:
            raise ValueError("delay_s must not be negative")
        self.delay_s = delay_s
        self.clock = clock
        #: (key, when the second delete ran, whether it removed a value), in order.
        self.second_deletes: list[tuple[str, float, bool]] = []
        self._timers: list[threading.Timer] = []
        self._lock = threading.Lock()

    def invalidate(self, item: object, version: int) -> None:
        key = self.key(item)
        self.client.delete(key)
        timer = threading.Timer(self.delay_s, self._second_delete, args=(key,))
        timer.daemon = True
        with self._lock:
            self._timers = [t for t in self._timers if t.is_alive()]
            self._timers.append(timer)
        timer.start()

    def _second_delete(self, key: str) -> None:
        removed = bool(self.client.delete(key))
        with self._lock:
            self.second_deletes.append((key, self.clock(), removed))

    def settle(self, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        with self._lock:
            timers = list(self._timers)
        for timer in timers:
            timer.join(max(0.0, deadline - time.monotonic()))
            if timer.is_alive():
                raise TimeoutError(f"a delayed delete did not run within {timeout_s:g}s")

    def close(self) -> None:
        with self._lock:
            timers, self._timers = self._timers, []
        for timer in timers:
            timer.cancel()  # Timer.cancel sets the Event its thread waits on
        for timer in timers:
            timer.join()
