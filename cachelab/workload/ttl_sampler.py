"""Sampling the TTL of every key under a namespace, as often as asked: a key found without
an expiry is one that would stay in Redis forever."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis

    from cachelab.workload.keyspace import Keyspace


class TtlSampler:
    """Reads the TTL of every key under ``keys(namespace)``, as often as it is asked."""

    def __init__(self, client: redis.Redis, keys: Keyspace, namespace: str) -> None:
        self.client = client
        self.prefix = keys(namespace)
        self.match = keys.pattern(f"{namespace}:*")
        self.samples = 0
        self.without_ttl: set[str] = set()
        self.seen: set[str] = set()

    def sample(self) -> None:
        keys = list(self.client.scan_iter(match=self.match, count=1000))
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.pttl(key)
        for key, ttl in zip(keys, pipe.execute(), strict=True):
            if ttl == -2:  # expired between SCAN and PTTL
                continue
            self.samples += 1
            self.seen.add(key)
            if ttl == -1:
                self.without_ttl.add(key)

    def seen_of(self, part: str, keys: set[str] | None = None) -> int:
        """How many of ``keys`` (default: all seen) are under ``prefix:part:``."""
        return sum(key.startswith(f"{self.prefix}:{part}:")
                   for key in (self.seen if keys is None else keys))
