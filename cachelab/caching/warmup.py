"""Cache warm-up: remember which keys are read most, and pre-load the top K after a restart.

An empty cache after a restart sends every first read to the database at once. The
:class:`AccessRecorder` counts reads per id in a sorted set kept *outside* the cache
(a cache that restarts empty would forget its own counts), and the :class:`TopKWarmer`
loads the most read ids into the new cache before traffic arrives.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from cachelab.caching.cache_aside import CacheAside

if TYPE_CHECKING:  # redis is imported by whoever builds the client
    import redis

K = TypeVar("K")
H = TypeVar("H", bound=Hashable)


class AccessRecorder:
    """Counts reads per id in a Redis sorted set (``ZINCRBY``), in batches.

    Args:
        client: a redis-py client of a server that outlives the cache (a stats Redis).
        key: the sorted set holding one member per id, scored by its reads.
        flush_every: reads buffered in memory before one pipelined round trip sends
            them. A round trip per read would double the read path's cost; the price of
            batching is that a crash loses at most ``flush_every - 1`` reads.
    """

    def __init__(self, client: redis.Redis, *, key: str = "access", flush_every: int = 100
                 ) -> None:
        if flush_every < 1:
            raise ValueError("flush_every must be at least 1")
        self.client = client
        self.key = key
        self.flush_every = flush_every
        self._pending: Counter[str] = Counter()
        self._buffered = 0
        self._lock = threading.Lock()

    def record(self, item: object) -> None:
        """Count one read of ``item`` (its ``str`` is the member)."""
        with self._lock:
            self._pending[str(item)] += 1
            self._buffered += 1
            if self._buffered >= self.flush_every:
                self._flush_locked()

    def flush(self) -> None:
        """Send the buffered counts now."""
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if self._pending:
            pipe = self.client.pipeline(transaction=False)
            for member, count in self._pending.items():
                pipe.zincrby(self.key, count, member)
            pipe.execute()
        self._pending.clear()
        self._buffered = 0

    def top(self, k: int) -> list[tuple[str, int]]:
        """The ``k`` most read members with their counts, most read first.

        Ties are ordered by Redis (reverse lexicographic member), which is arbitrary.
        """
        self.flush()
        if k < 1:
            return []
        ranked = cast("list[tuple[str | bytes, float]]",
                      self.client.zrevrange(self.key, 0, k - 1, withscores=True))
        # Members come back as bytes from a client without decode_responses.
        return [(_text(member), int(score)) for member, score in ranked]

    def count(self, item: object) -> int:
        """Reads recorded for ``item`` (after a flush)."""
        self.flush()
        score = self.client.zscore(self.key, str(item))
        return int(score) if score is not None else 0

    def reset(self) -> None:
        with self._lock:
            self._pending.clear()
            self._buffered = 0
            self.client.delete(self.key)


def lfu_top(client: redis.Redis, pattern: str, k: int) -> list[tuple[str, int]]:
    """The ``k`` keys matching ``pattern`` with the highest LFU counter (``OBJECT FREQ``).

    The alternative to a recorder, free but weaker: it needs ``maxmemory-policy`` set to
    an LFU policy, its counter is logarithmic (saturates at 255, many keys tie), decays
    with idle time, and lives in the cache itself, so it must be read before a restart.
    Ties are broken by key name.
    """
    keys = sorted(client.scan_iter(pattern, count=1000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.object("freq", key)
    freqs = pipe.execute()  # an error here means the policy is not LFU: say so, loudly
    ranked = sorted(((key, int(freq)) for key, freq in zip(keys, freqs, strict=True)
                     if isinstance(freq, int)), key=lambda kf: -kf[1])
    return ranked[:k]


def topk_overlap(found: Collection[H], counts: Mapping[H, int], k: int) -> float:
    """How much of the true top ``k`` of ``counts`` the ids ``found`` recover, 0 to 1.

    When several ids tie with the k-th largest count, "the" top k is ambiguous: any of
    them is as good a pick. So an id counts as a true top-k id when its count is at
    least the k-th largest count (and above zero).
    """
    positive = sorted((c for c in counts.values() if c > 0), reverse=True)
    size = min(k, len(positive))  # the true top k has fewer ids if fewer were read
    if size == 0:
        return 0.0
    threshold = positive[size - 1]
    return min(sum(counts.get(item, 0) >= threshold for item in found), size) / size


@dataclass
class WarmupReport:
    """What one warm-up did."""

    items: list[Any] = field(default_factory=list)  # the ids asked for, most read first
    warmed: int = 0       # keys written into the cache
    skipped: int = 0      # already cached (a fresher value wins) or missing in the source
    loads: int = 0        # calls to the loader: database round trips spent warming
    seconds: float = 0.0


class TopKWarmer(Generic[K]):
    """Loads the ``k`` most read ids (from an :class:`AccessRecorder`) into a cache.

    Args:
        recorder: where the read counts live.
        parse: turns a recorded member (a ``str``) back into the cache's id type.
        load_many: loads several ids in one call, returning ``{id: value}``; without it
            each id costs one call to the cache's own loader. At start-up a warmer that
            makes K single-row queries is a small stampede of its own.
        batch_size: ids per ``load_many`` call and per pipelined write.
        rng: the random source for TTL jitter (as in :class:`CacheAside`).
    """

    def __init__(self, recorder: AccessRecorder, *, parse: Callable[[str], K],
                 load_many: Callable[[Sequence[K]], Mapping[K, Any]] | None = None,
                 batch_size: int = 50, rng: random.Random | None = None) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.recorder = recorder
        self.parse = parse
        self.load_many = load_many
        self.batch_size = batch_size
        self._rng = rng or random.Random()

    def warm(self, cache: CacheAside[K], k: int) -> WarmupReport:
        """Put the top ``k`` ids into ``cache`` (``SET NX`` with the cache's TTL)."""
        start = time.perf_counter()
        items = [self.parse(member) for member, _count in self.recorder.top(k)]
        report = WarmupReport(items=items)
        for batch in _batches(items, self.batch_size):
            values = self._load(cache, batch, report)
            low, high = cache.ttl_range_ms
            pipe = cache.client.pipeline(transaction=False)
            for item in batch:
                if values.get(item) is not None:
                    # NX: a request served during the warm-up may already have cached a
                    # value at least as fresh as this one; never overwrite it.
                    pipe.set(cache.key(item), json.dumps(values[item]),
                             px=max(1, self._rng.randint(low, high)), nx=True)
            written = sum(bool(ok) for ok in pipe.execute())
            report.warmed += written
            report.skipped += len(batch) - written
        report.seconds = time.perf_counter() - start
        return report

    def _load(self, cache: CacheAside[K], batch: list[K], report: WarmupReport
              ) -> Mapping[K, Any]:
        if self.load_many is not None:
            report.loads += 1
            return self.load_many(batch)
        report.loads += len(batch)
        return {item: cache.loader(item) for item in batch}


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _batches(items: Iterable[K], size: int) -> Iterable[list[K]]:
    batch: list[K] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
