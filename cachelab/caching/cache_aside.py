"""Cache-aside (lazy population): read the cache, on a miss load and store with a TTL."""

from __future__ import annotations

import json
import math
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:  # redis is imported by whoever builds the client
    import redis


K = TypeVar("K")


@dataclass
class CacheStats:
    """What the strategy itself saw; exercises compare it with Redis's INFO.

    Safe to update from many threads (``count``); read the fields once they are done.
    """

    hits: int = 0
    misses: int = 0
    invalidations: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    @property
    def requests(self) -> int:
        return self.hits + self.misses

    @property
    def hit_ratio(self) -> float:
        return self.hits / self.requests if self.requests else 0.0


class CacheAside(Generic[K]):
    """Get-or-load in front of any loader, values stored as JSON under ``namespace:id``.

    Args:
        client: a redis-py client with ``decode_responses=True``.
        namespace: the key prefix, e.g. ``user`` for ``user:42``.
        loader: loads the value for an id from the source of truth; ``None`` is not cached.
        ttl_s: time to live of a cached value.
        jitter: TTLs are spread uniformly over ``ttl_s * (1 ± jitter)`` so that keys
            cached together do not all expire together.
        rng: the random source for jitter (seeded by the lab for repeatability).
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        namespace: str,
        loader: Callable[[K], Any],
        ttl_s: float,
        jitter: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        if not 0 <= jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        self.client = client
        self.namespace = namespace
        self.loader = loader
        self.ttl_s = ttl_s
        self.jitter = jitter
        self.stats = CacheStats()
        self._rng = rng or random.Random()

    def key(self, item: K) -> str:
        return f"{self.namespace}:{item}"

    @property
    def ttl_range_ms(self) -> tuple[int, int]:
        """The smallest and largest TTL a stored value can be given."""
        # Whole milliseconds that enclose the exact range: Redis keeps PX in ms.
        low = math.floor(self.ttl_s * 1000 * (1 - self.jitter))
        return low, math.ceil(self.ttl_s * 1000 * (1 + self.jitter))

    def _ttl_ms(self) -> int:
        low, high = self.ttl_range_ms
        return max(1, self._rng.randint(low, high))

    def fetch(self, item: K) -> tuple[Any, bool]:
        """Return ``(value, hit)``; on a miss the loader runs and the value is cached."""
        key = self.key(item)
        raw = self.client.get(key)
        if raw is not None:
            self.stats.count("hits")
            return json.loads(raw), True
        self.stats.count("misses")
        value = self.loader(item)
        if value is not None:
            self._store(key, item, value)
        return value, False

    def _store(self, key: str, item: K, value: Any) -> None:
        """Write a loaded value; subclasses add what must be written with it."""
        self.client.set(key, json.dumps(value), px=self._ttl_ms())

    def get(self, item: K) -> Any:
        return self.fetch(item)[0]

    def invalidate(self, item: K) -> bool:
        """Drop the cached value so that the next read loads fresh; True if one existed."""
        self.stats.count("invalidations")
        return bool(self.client.delete(self.key(item)))
