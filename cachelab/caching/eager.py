"""Eager caching: preload everything before the traffic, then keep it current by write-through.

The cache is filled before anyone asks (:func:`preload`), reads look in the cache first
(:meth:`WriteThrough.fetch`), and every update goes to the database and then straight
into the cache in the same call (:meth:`WriteThrough.update`). A cache write that fails
is never dropped in silence: it is counted, the possibly stale entry is deleted, and when
even that fails the id is remembered as unsynced, so reads of it go to the database until
:meth:`WriteThrough.resync` repairs it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar

from cachelab.caching.cache_aside import CacheStats

if TYPE_CHECKING:  # redis is imported by whoever builds the client
    import redis

K = TypeVar("K")


def _px(ttl_s: float | None) -> int | None:
    if ttl_s is None:
        return None
    if ttl_s <= 0:
        raise ValueError("ttl_s must be positive, or None for no TTL")
    return max(1, int(ttl_s * 1000))


def preload(client: redis.Redis, namespace: str, values: Mapping[Any, Any], *,
            ttl_s: float | None = None, batch_size: int = 500) -> int:
    """SET every value under ``namespace:id`` in pipelined batches; returns how many.

    One round trip per batch instead of one per key. Errors are raised, not swallowed: a
    launch that starts on a half-filled cache would send its misses to the database.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    px, written = _px(ttl_s), 0
    items = list(values.items())
    for start in range(0, len(items), batch_size):
        pipe = client.pipeline(transaction=False)  # plain batching: no MULTI needed
        for item, value in items[start:start + batch_size]:
            if value is not None:
                pipe.set(f"{namespace}:{item}", json.dumps(value), px=px)
        written += sum(1 for ok in pipe.execute() if ok)
    return written


@dataclass
class WriteThroughStats(CacheStats):
    """The read counts of :class:`CacheStats` plus what the write path did.

    ``misses`` counts every read the database answered; ``bypassed_reads`` is the part
    of them that skipped Redis because the entry was unsynced.
    """

    writes: int = 0  # database writes made by update()
    read_backs: int = 0  # database reads made by update() to get the row it caches
    cache_writes: int = 0
    cache_write_failures: int = 0  # on the write path and when a miss refills the cache
    bypassed_reads: int = 0
    resynced: int = 0


@dataclass(frozen=True)
class WriteOutcome:
    """What one write-through update did: the row it wrote and whether Redis has it."""

    value: Any
    cached: bool
    error: str | None = None  # why the cache write failed
    entry_removed: bool = False  # after a failure: the old entry could be deleted
    unsynced: bool = False  # after a failure: neither SET nor DEL worked


class WriteThrough(Generic[K]):
    """An eager cache kept current by writing through on every update.

    Args:
        client: a redis-py client with ``decode_responses=True``.
        namespace: the key prefix, e.g. ``product`` for ``product:42``.
        db_read: reads one row from the source of truth (``None`` when it does not exist).
        db_write: ``db_write(id, **fields)`` writes the change to the source of truth.
        read_back: reads the row an update wrote, to cache it; ``db_read`` by default.
            Pass the writer's own connection where reads may lag writes (replicas).
        ttl_s: TTL of every entry, or ``None`` (the default): entries live until updated.

    Safe to use from many threads, given one writer at a time per id: two concurrent
    writers of the same id can finish their cache writes in the opposite order of
    their database writes. The unsynced ids live in this object: another process that
    reads the same keys does not know them (a TTL as a backstop covers that case).
    """

    def __init__(self, client: redis.Redis, *, namespace: str, db_read: Callable[[K], Any],
                 db_write: Callable[..., object], read_back: Callable[[K], Any] | None = None,
                 ttl_s: float | None = None) -> None:
        from redis.exceptions import RedisError  # the client's library is already loaded

        self.client = client
        self.namespace = namespace
        self.db_read = db_read
        self.db_write = db_write
        self.read_back = read_back or db_read
        self.ttl_s = ttl_s
        self.stats = WriteThroughStats()
        self._px = _px(ttl_s)
        self._redis_error = RedisError
        self._unsynced: set[K] = set()
        self._lock = threading.Lock()

    def key(self, item: K) -> str:
        return f"{self.namespace}:{item}"

    def preload(self, values: Mapping[K, Any], *, batch_size: int = 500) -> int:
        """Write every ``id -> value`` into the cache before traffic arrives."""
        return preload(self.client, self.namespace, values, ttl_s=self.ttl_s,
                       batch_size=batch_size)

    @property
    def unsynced(self) -> frozenset[K]:
        """Ids whose cache entry may be stale: Redis refused both the write and the delete."""
        with self._lock:
            return frozenset(self._unsynced)

    def fetch(self, item: K) -> tuple[Any, bool]:
        """``(value, hit)``: the cache first; on a miss the database, which refills the cache.

        A Redis error on the GET propagates: during a launch, a cache that cannot be read
        is an outage to see, not one to hide by sending every reader to the database.
        """
        with self._lock:
            unsynced = item in self._unsynced
        if unsynced:  # Redis may still hold the value from before the update
            self.stats.count("bypassed_reads")
            self.stats.count("misses")
            return self.db_read(item), False
        raw = self.client.get(self.key(item))
        if raw is not None:
            self.stats.count("hits")
            return json.loads(raw), True
        self.stats.count("misses")
        value = self.db_read(item)
        if value is not None:
            try:
                # NX: a refill never overwrites a newer value that an update wrote meanwhile.
                self.client.set(self.key(item), json.dumps(value), px=self._px, nx=True)
            except self._redis_error:
                self.stats.count("cache_write_failures")  # the reader still gets its row
        return value, False

    def get(self, item: K) -> Any:
        return self.fetch(item)[0]

    def peek(self, item: K) -> Any:
        """The cached value, or ``None``: no database, no counting (for checks)."""
        raw = self.client.get(self.key(item))
        return None if raw is None else json.loads(raw)

    def update(self, item: K, **fields: Any) -> WriteOutcome:
        """Write ``fields`` to the database, then its row to the cache, in one call.

        The database goes first: it is the source of truth, and a crash in between
        leaves an old cache entry rather than a cache ahead of the database. Database
        errors propagate (nothing was written); a Redis error is reported in the outcome
        and in ``stats.cache_write_failures``.
        """
        self.db_write(item, **fields)
        self.stats.count("writes")
        value = self.read_back(item)
        self.stats.count("read_backs")
        key = self.key(item)
        try:
            if value is None:  # the row is gone: so is its entry
                self.client.delete(key)
            else:
                self.client.set(key, json.dumps(value), px=self._px)
        except self._redis_error as exc:
            self.stats.count("cache_write_failures")
            removed = self._delete(key)
            if not removed:
                with self._lock:
                    self._unsynced.add(item)
            return WriteOutcome(value, cached=False, error=f"{type(exc).__name__}: {exc}",
                                entry_removed=removed, unsynced=not removed)
        with self._lock:
            self._unsynced.discard(item)
        self.stats.count("cache_writes")
        return WriteOutcome(value, cached=True)

    def _delete(self, key: str) -> bool:
        """Best effort after a failed SET: a missing entry is a miss, an old one a lie."""
        try:
            self.client.delete(key)
        except self._redis_error:
            return False
        return True

    def resync(self) -> int:
        """Write the current rows of unsynced ids into the cache; returns how many it fixed.

        Ids whose write fails again stay unsynced (and keep being read from the database).
        Call it when Redis answers again and no update of those ids is under way: it
        writes what it read, unconditionally.
        """
        fixed = 0
        for item in self.unsynced:
            value = self.read_back(item)
            try:
                if value is None:
                    self.client.delete(self.key(item))
                else:
                    self.client.set(self.key(item), json.dumps(value), px=self._px)
            except self._redis_error:
                continue
            with self._lock:
                self._unsynced.discard(item)
            self.stats.count("resynced")
            fixed += 1
        return fixed


@contextmanager
def refusing_writes(client: redis.Redis) -> Iterator[None]:
    """While the block runs, Redis refuses every write command with OOM; reads and DEL
    still work. A 1-byte ``maxmemory`` under noeviction: what a full eager cache without
    TTLs runs into. The configuration is put back afterwards."""
    config = client.config_get("maxmemory*")
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", 1)
    try:
        yield
    finally:
        client.config_set("maxmemory", str(config["maxmemory"]))
        client.config_set("maxmemory-policy", str(config["maxmemory-policy"]))


class FollowedRead(NamedTuple):
    """One read after a refused cache write."""

    value: Any
    hit: bool


@dataclass
class RefusedWrite:
    """A write-through update made while Redis refused writes, and the reads after it."""

    outcome: WriteOutcome
    truth: Any  # the row the database held after the update
    failures: int  # cache write failures the strategy reported meanwhile
    while_full: FollowedRead  # the next read, Redis still refusing writes
    after: tuple[FollowedRead, FollowedRead]  # the two reads once memory is back
    steps: list[list[object]]  # the story as table rows: step, cache, entry, version, equal


def update_while_refusing_writes(client: redis.Redis, cache: WriteThrough[K], item: K,
                                 now: Callable[[K], Any], **fields: Any) -> RefusedWrite:
    """Update ``item`` through ``cache`` while Redis refuses writes, read it once while
    Redis is still full and twice once it is not; ``now(item)`` is the database's row."""
    failures_before = cache.stats.cache_write_failures
    key = cache.key(item)

    def version(value: Any) -> Any:
        return value["version"] if value else None

    with refusing_writes(client):
        outcome = cache.update(item, **fields)
        truth = now(item)
        steps: list[list[object]] = [[
            "update while Redis refuses writes",
            f"refused: {(outcome.error or '').split(':')[0]}" if not outcome.cached
            else "written", "deleted" if not client.exists(key) else "still there",
            version(outcome.value), outcome.value == truth]]
        while_full = FollowedRead(*cache.fetch(item))
        steps.append(["next read, Redis still full", "hit" if while_full.hit else "miss",
                      "refilled" if client.exists(key) else "absent", version(while_full.value),
                      while_full.value == truth])
    after = [FollowedRead(*cache.fetch(item)), FollowedRead(*cache.fetch(item))]
    for label, read in zip(("read after memory is back", "and the read after it"), after,
                           strict=True):
        steps.append([label, "hit" if read.hit else "miss",
                      "present" if client.exists(key) else "absent", version(read.value),
                      read.value == truth])
    return RefusedWrite(outcome, truth, cache.stats.cache_write_failures - failures_before,
                        while_full, (after[0], after[1]), steps)
