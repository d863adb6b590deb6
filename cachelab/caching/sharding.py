"""Consistent hashing: which shard holds a key, so that adding a shard moves few keys."""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable


def ring_hash(text: str) -> int:
    """A stable 64-bit hash (unlike ``hash()``, the same in every process and run)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class ShardRing:
    """Shards placed on a ring of 64-bit hashes, each at ``vnodes`` points.

    A key belongs to the first shard point at or after its own hash, wrapping around.
    Many points per shard spread each shard's share evenly; adding a shard takes over
    only the keys that fall just before its new points, about ``1 / shards`` of them,
    and moves none between the shards that were already there.

    Args:
        shards: shard names (e.g. ``"shard-1"`` or ``"127.0.0.1:6380"``).
        vnodes: points per shard.
    """

    def __init__(self, shards: Iterable[str] = (), *, vnodes: int = 160) -> None:
        if vnodes < 1:
            raise ValueError("vnodes must be at least 1")
        self.vnodes = vnodes
        self._points: list[int] = []
        self._owner: dict[int, str] = {}
        self._shards: list[str] = []
        for shard in shards:
            self.add(shard)

    @property
    def shards(self) -> list[str]:
        return list(self._shards)

    def add(self, shard: str) -> None:
        if shard in self._shards:
            raise ValueError(f"shard {shard!r} is already on the ring")
        for i in range(self.vnodes):
            point = ring_hash(f"{shard}#{i}")
            # A 64-bit collision is vanishingly rare; the first owner keeps the point.
            if point not in self._owner:
                self._owner[point] = shard
                bisect.insort(self._points, point)
        self._shards.append(shard)

    def remove(self, shard: str) -> None:
        if shard not in self._shards:
            raise ValueError(f"shard {shard!r} is not on the ring")
        self._points = [p for p in self._points if self._owner[p] != shard]
        self._owner = {p: s for p, s in self._owner.items() if s != shard}
        self._shards.remove(shard)

    def shard_for(self, key: str) -> str:
        if not self._points:
            raise LookupError("the ring has no shards")
        index = bisect.bisect_left(self._points, ring_hash(key)) % len(self._points)
        return self._owner[self._points[index]]


def modulo_shard(key: str, shards: int) -> int:
    """The shard index under plain modulo hashing: even, but a new shard moves most keys."""
    if shards < 1:
        raise ValueError("shards must be at least 1")
    return ring_hash(key) % shards
