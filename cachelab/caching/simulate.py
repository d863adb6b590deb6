"""Exact cache-replacement policies in plain Python, for replaying a key trace.

Redis approximates LRU and LFU by sampling a few keys per eviction. These are the
exact textbook policies (and SIEVE, a recent one), each a cache of a fixed number of
keys: replaying the same trace through them at the capacity Redis really had shows how
far the approximation is from the ideal, and how the policies differ on that trace.

Every policy has the same shape: ``access(key)`` returns True on a hit; on a miss it
inserts the key, evicting one first when the cache is full (the cache-aside pattern:
a miss loads the value and caches it).
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol


class Policy(Protocol):
    """A cache of at most ``capacity`` keys under one replacement policy."""

    name: str
    capacity: int

    def access(self, key: Hashable) -> bool:
        """Request ``key``: True on a hit; a miss inserts it, evicting if full."""
        ...

    def __contains__(self, key: object) -> bool: ...

    def __len__(self) -> int: ...


def _check_capacity(capacity: int) -> int:
    if capacity < 1:
        raise ValueError(f"capacity must be at least 1 key, got {capacity}")
    return capacity


class FIFO:
    """First in, first out: evicts the key inserted earliest; a hit changes nothing."""

    name = "FIFO"

    def __init__(self, capacity: int) -> None:
        self.capacity = _check_capacity(capacity)
        self._keys: OrderedDict[Hashable, None] = OrderedDict()  # oldest first (LRU: least recent)

    def access(self, key: Hashable) -> bool:
        if key in self._keys:
            return True
        if len(self._keys) >= self.capacity:
            self._keys.popitem(last=False)
        self._keys[key] = None
        return False

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)


class LRU(FIFO):
    """Least recently used: evicts the key whose last access is oldest."""

    name = "LRU"

    def access(self, key: Hashable) -> bool:
        if key in self._keys:  # the only difference from FIFO: a hit makes a key young
            self._keys.move_to_end(key)
        return super().access(key)


class LFU:
    """Least frequently used: evicts the key with the fewest hits since it was inserted.

    Counts start at 1 on insertion and are forgotten on eviction (in-cache LFU, as
    libCacheSim's ``LFU``); among keys with the same count, the least recently used
    goes first. Every operation is O(1): keys sit in one insertion-ordered bucket per
    count, and the smallest non-empty count is tracked.
    """

    name = "LFU"

    def __init__(self, capacity: int) -> None:
        self.capacity = _check_capacity(capacity)
        self._count: dict[Hashable, int] = {}
        self._buckets: dict[int, OrderedDict[Hashable, None]] = {}
        self._min = 0

    def access(self, key: Hashable) -> bool:
        count = self._count.get(key)
        if count is not None:
            self._move(key, count, count + 1)
            return True
        if len(self._count) >= self.capacity:
            bucket = self._buckets[self._min]
            victim, _ = bucket.popitem(last=False)  # least recently used of the rarest
            if not bucket:
                del self._buckets[self._min]
            del self._count[victim]
        self._count[key] = 1
        self._buckets.setdefault(1, OrderedDict())[key] = None
        self._min = 1
        return False

    def _move(self, key: Hashable, old: int, new: int) -> None:
        bucket = self._buckets[old]
        del bucket[key]
        if not bucket:
            del self._buckets[old]
            if self._min == old:
                self._min = new
        self._count[key] = new
        self._buckets.setdefault(new, OrderedDict())[key] = None

    def __contains__(self, key: object) -> bool:
        return key in self._count

    def __len__(self) -> int:
        return len(self._count)


class Sieve:
    """SIEVE (Zhang et al., NSDI 2024): FIFO order plus one "visited" bit per key.

    A hit only sets the key's bit. To evict, a hand walks from the oldest key towards
    the newest, clearing set bits as it passes, and evicts the first key whose bit is
    clear; the hand stays where it stopped for the next eviction. New keys enter at the
    newest end. Keys read once are evicted quickly; keys read again survive a pass.
    """

    name = "SIEVE"

    def __init__(self, capacity: int) -> None:
        self.capacity = _check_capacity(capacity)
        self._visited: dict[Hashable, bool] = {}
        self._newer: dict[Hashable, Hashable | None] = {}  # towards the newest end
        self._older: dict[Hashable, Hashable | None] = {}  # towards the oldest end
        self._newest: Hashable | None = None
        self._oldest: Hashable | None = None
        self._hand: Hashable | None = None

    def access(self, key: Hashable) -> bool:
        if key in self._visited:
            self._visited[key] = True
            return True
        if len(self._visited) >= self.capacity:
            self._evict()
        self._visited[key] = False
        self._older[key] = self._newest
        self._newer[key] = None
        if self._newest is not None:
            self._newer[self._newest] = key
        self._newest = key
        if self._oldest is None:
            self._oldest = key
        return False

    def _evict(self) -> None:
        key = self._hand if self._hand is not None else self._oldest
        while self._visited[key]:
            self._visited[key] = False
            key = self._newer[key]
            if key is None:  # ran off the newest end: start again at the oldest
                key = self._oldest
        self._hand = self._newer[key]
        self._unlink(key)

    def _unlink(self, key: Hashable) -> None:
        older, newer = self._older.pop(key), self._newer.pop(key)
        del self._visited[key]
        if older is None:
            self._oldest = newer
        else:
            self._newer[older] = newer
        if newer is None:
            self._newest = older
        else:
            self._older[newer] = older

    def __contains__(self, key: object) -> bool:
        return key in self._visited

    def __len__(self) -> int:
        return len(self._visited)


class RandomEviction:
    """Evicts a key drawn uniformly at random (what Redis's allkeys-random does)."""

    name = "random"

    def __init__(self, capacity: int, rng: random.Random | None = None) -> None:
        self.capacity = _check_capacity(capacity)
        self._rng = rng or random.Random(0)
        self._keys: list[Hashable] = []
        self._index: dict[Hashable, int] = {}

    def access(self, key: Hashable) -> bool:
        if key in self._index:
            return True
        if len(self._keys) >= self.capacity:
            # Swap the victim with the last key so removal from the list is O(1).
            slot = self._rng.randrange(len(self._keys))
            victim, last = self._keys[slot], self._keys[-1]
            self._keys[slot], self._index[last] = last, slot
            self._keys.pop()
            del self._index[victim]
        self._index[key] = len(self._keys)
        self._keys.append(key)
        return False

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def __len__(self) -> int:
        return len(self._keys)


#: The exact policies by the short names the exercise and tests use.
POLICIES: dict[str, type[LRU] | type[LFU] | type[FIFO] | type[Sieve]] = {
    "lru": LRU, "lfu": LFU, "fifo": FIFO, "sieve": Sieve,
}


@dataclass(frozen=True)
class Replay:
    """What one policy did with one trace."""

    policy: str
    capacity: int
    requests: int
    hits: int

    @property
    def misses(self) -> int:
        return self.requests - self.hits

    @property
    def miss_ratio(self) -> float:
        return self.misses / self.requests if self.requests else 0.0


def replay(trace: Iterable[Hashable], policy: Policy) -> Replay:
    """Send every key of ``trace`` through ``policy``, in order; count the hits."""
    requests = hits = 0
    access = policy.access
    for key in trace:
        requests += 1
        hits += access(key)
    return Replay(policy.name, policy.capacity, requests, hits)


def miss_ratios(trace: Sequence[Hashable], capacity: int,
                policies: Iterable[str] = tuple(POLICIES)) -> dict[str, Replay]:
    """Replay ``trace`` through each named exact policy at ``capacity`` keys."""
    unknown = [name for name in policies if name not in POLICIES]
    if unknown:
        raise ValueError(f"unknown policy {unknown[0]!r}; known: {', '.join(POLICIES)}")
    return {name: replay(trace, POLICIES[name](capacity)) for name in policies}
