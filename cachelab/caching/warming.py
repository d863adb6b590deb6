"""Keeping a hot entry loaded: warming from a stream of events, and two stampede guards.

- :class:`StreamWatcher` and :class:`Warmer`: a thread follows a Redis Stream of posts
  and, when a watched account posts, loads its page and stores it before readers ask.
- :class:`LockedCache`: cache-aside where, on a miss, only the holder of a
  ``SET NX PX`` lock loads; the others poll for the value, and take over if the lock
  expires (a crashed holder blocks nobody for longer than the lock's TTL).
- :class:`XFetchCache`: probabilistic early recomputation (Vattani, Chierichetti and
  Lowenstein, "Optimal Probabilistic Cache Stampede Prevention", VLDB 2015): each
  reader refreshes a value before it expires with a probability that grows as the
  expiry nears, scaled by how long the value took to compute.
"""

from __future__ import annotations

import json
import math
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from cachelab.caching.cache_aside import CacheStats
from cachelab.workload.threads import BackgroundWorker

if TYPE_CHECKING:  # redis is imported by whoever builds the client
    import redis

K = TypeVar("K")


@dataclass
class GuardStats(CacheStats):
    """A stampede guard's own counts; ``loads`` are calls of its loader."""

    loads: int = 0
    waits: int = 0  # misses served by waiting for another reader's load
    takeovers: int = 0  # locks taken after the previous holder's lock expired
    fallbacks: int = 0  # loads made without the lock after waiting too long
    early_refreshes: int = 0  # XFetch loads made before the value expired
    refreshes_skipped: int = 0  # XFetch early refreshes left to the lock's holder


# ---------------------------------------------------------------------------- warming


class StreamWatcher(BackgroundWorker):
    """A thread that reads new entries of a Redis Stream and hands each to ``on_entry``.

    It blocks on ``XREAD`` for at most ``block_ms`` at a time, so that :meth:`stop` (or
    leaving the ``with`` block) ends it within that time. Only entries added after
    :meth:`start` are read. An exception raised by ``on_entry`` or Redis ends the thread
    and is raised again by :meth:`stop`.

    Args:
        client: a redis-py client with ``decode_responses=True``.
        stream: the stream's key.
        on_entry: called as ``on_entry(entry_id, fields)`` in the watcher's thread.
        block_ms: the longest single wait for new entries.
    """

    def __init__(self, client: redis.Redis, stream: str,
                 on_entry: Callable[[str, dict[str, str]], None], *, block_ms: int = 100,
                 ) -> None:
        if block_ms <= 0:
            raise ValueError("block_ms must be positive (0 would block forever)")
        self.client = client
        self.stream = stream
        self.on_entry = on_entry
        self.block_ms = block_ms
        self.entries_seen = 0
        super().__init__(f"the watcher of {stream}")
        self.join_grace_s = block_ms / 1000  # an XREAD may be blocking when stop() comes
        self._last_id = "0-0"

    def _before_start(self) -> None:
        # Resolve "new entries" now, not when the thread first reads: an entry added
        # right after start() returns must not be skipped.
        newest: Any = self.client.xrevrange(self.stream, count=1)
        self._last_id = str(newest[0][0]) if newest else "0-0"

    def _work(self) -> None:
        while not self._stop.is_set():
            reply: Any = self.client.xread({self.stream: self._last_id}, count=100,
                                      block=self.block_ms)
            streams = reply.items() if isinstance(reply, dict) else (reply or [])
            for _name, entries in streams:
                for entry_id, fields in entries:
                    self._last_id = entry_id
                    self.entries_seen += 1
                    self.on_entry(entry_id, fields)


@dataclass(frozen=True)
class WarmRecord:
    """One warming, with ``time.monotonic_ns()`` stamps taken in the warmer's thread.

    ``written_ns`` is taken after Redis acknowledged the SET, so the value was in Redis
    by then at the latest.
    """

    entry_id: str
    item: int
    seen_ns: int
    loaded_ns: int
    written_ns: int


class Warmer:
    """On a post by a watched account, load that account's value and store it.

    The value is stored as JSON under ``namespace:<account id>`` with a TTL, exactly as
    :class:`~cachelab.caching.CacheAside` stores it, so cache-aside readers hit it.

    Args:
        client: a redis-py client with ``decode_responses=True``.
        namespace: the key prefix the readers use.
        loader: loads the value for an account id.
        ttl_s: TTL of a warmed value.
        accounts: the account ids worth warming; posts by others are ignored.
        field: the entry field holding the account id.
    """

    def __init__(self, client: redis.Redis, *, namespace: str, loader: Callable[[int], Any],
                 ttl_s: float, accounts: Collection[int], field: str = "account_id") -> None:
        self.client = client
        self.namespace = namespace
        self.loader = loader
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.accounts = frozenset(accounts)
        self.field = field
        self.records: list[WarmRecord] = []  # appended by the watcher's thread only
        self.ignored = 0

    def key(self, item: int) -> str:
        return f"{self.namespace}:{item}"

    def on_entry(self, entry_id: str, fields: dict[str, str]) -> None:
        """The :class:`StreamWatcher` handler."""
        seen_ns = time.monotonic_ns()
        account = int(fields.get(self.field, -1))
        if account not in self.accounts:
            self.ignored += 1
            return
        value = self.loader(account)
        loaded_ns = time.monotonic_ns()
        if value is not None:
            self.client.set(self.key(account), json.dumps(value), px=self.ttl_ms)
        self.records.append(WarmRecord(entry_id, account, seen_ns, loaded_ns,
                                       time.monotonic_ns()))


# ---------------------------------------------------------------------------- the lock

# Delete the lock only if it still holds our token: a holder whose lock expired must
# not delete the lock a successor took since.
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""

_MISSING = object()


def _single_flight(stats: GuardStats, *, read: Callable[[], Any],
                   try_lock: Callable[[], bool], release: Callable[[], object],
                   load: Callable[[], Any], poll_s: float, max_wait_s: float) -> Any:
    """Load once among readers that missed together; the others wait for that load.

    The lock's holder reads once more (the value may have been stored since its miss)
    and loads only if it is still missing. A waiter polls with ``read`` (which returns
    ``_MISSING`` for no value) and tries the lock again each time, so that when a
    holder's lock expires without a value, one waiter takes over. After ``max_wait_s``
    a waiter loads by itself: no reader waits unbounded.
    """
    deadline = time.monotonic() + max_wait_s
    waited = False
    while time.monotonic() < deadline:
        if try_lock():
            if waited:
                stats.count("takeovers")
            try:
                found = read()
                if found is not _MISSING:
                    stats.count("waits")
                    return found
                return load()
            finally:
                release()
        waited = True
        time.sleep(poll_s)
        found = read()
        if found is not _MISSING:
            stats.count("waits")
            return found
    stats.count("fallbacks")
    return load()


class LockedCache(Generic[K]):
    """Cache-aside where one reader loads a missing value and the others wait for it.

    On a miss a reader tries ``SET <key>:lock <token> NX PX lock_ttl_ms``; the holder
    loads, stores and releases the lock (only if it still holds it). The others poll
    for the value every ``poll_ms``; when the lock is gone without a value (its holder
    crashed or outlived the lock), the next poller takes the lock over. After
    ``max_wait_ms`` (four lock TTLs unless given) a reader loads without the lock.

    Args:
        client: a redis-py client with ``decode_responses=True``.
        namespace: the key prefix, e.g. ``page`` for ``page:42``.
        loader: loads the value for an id; ``None`` is not cached.
        ttl_s: TTL of a cached value.
        lock_ttl_ms: how long a lock outlives a holder that never releases it.
        poll_ms: the pause between a waiter's looks at the value.
        max_wait_ms: the longest a reader waits before loading by itself.
    """

    def __init__(self, client: redis.Redis, *, namespace: str, loader: Callable[[K], Any],
                 ttl_s: float, lock_ttl_ms: int = 250, poll_ms: float = 2.0,
                 max_wait_ms: int | None = None) -> None:
        if ttl_s <= 0 or lock_ttl_ms <= 0 or poll_ms <= 0:
            raise ValueError("ttl_s, lock_ttl_ms and poll_ms must be positive")
        self.client = client
        self.namespace = namespace
        self.loader = loader
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.lock_ttl_ms = lock_ttl_ms
        self.poll_s = poll_ms / 1000
        self.max_wait_s = (max_wait_ms if max_wait_ms is not None else 4 * lock_ttl_ms) / 1000
        self.stats = GuardStats()
        self._release = client.register_script(_RELEASE)

    def key(self, item: K) -> str:
        return f"{self.namespace}:{item}"

    def lock_key(self, item: K) -> str:
        return f"{self.key(item)}:lock"

    def _read(self, key: str) -> Any:
        raw = self.client.get(key)
        return _MISSING if raw is None else json.loads(raw)

    def fetch(self, item: K) -> tuple[Any, bool]:
        """Return ``(value, hit)``; ``hit`` is False when this reader missed."""
        key = self.key(item)
        value = self._read(key)
        if value is not _MISSING:
            self.stats.count("hits")
            return value, True
        self.stats.count("misses")
        lock, token = self.lock_key(item), os.urandom(16).hex()
        return _single_flight(
            self.stats, read=lambda: self._read(key),
            try_lock=lambda: bool(self.client.set(lock, token, nx=True, px=self.lock_ttl_ms)),
            release=lambda: self._release(keys=[lock], args=[token]),
            load=lambda: self._load(key, item), poll_s=self.poll_s,
            max_wait_s=self.max_wait_s), False

    def _load(self, key: str, item: K) -> Any:
        self.stats.count("loads")
        value = self.loader(item)
        if value is not None:
            self.client.set(key, json.dumps(value), px=self.ttl_ms)
        return value

    def get(self, item: K) -> Any:
        return self.fetch(item)[0]


# ---------------------------------------------------------------------------- XFetch


def xfetch_due(remaining_s: float, delta_s: float, beta: float, u: float) -> bool:
    """The XFetch test: refresh now if ``-delta * beta * ln(u) >= remaining``.

    That is the paper's ``now - delta * beta * log(rand()) >= expiry`` with
    ``remaining = expiry - now``, ``u`` uniform in (0, 1]. ``-ln(u)`` is exponentially
    distributed, so the chance grows as the expiry nears and a value that takes longer
    to compute (``delta``) is refreshed earlier; ``beta > 1`` favours earlier refreshes,
    ``beta = 0`` never refreshes before expiry (plain cache-aside).
    """
    if not 0 < u <= 1:
        raise ValueError("u must be in (0, 1]")
    return -delta_s * beta * math.log(u) >= remaining_s


class XFetchCache(Generic[K]):
    """Cache-aside with probabilistic early recomputation (XFetch).

    A value is stored as JSON ``{"value", "delta_ms", "gen"}`` with a TTL: ``delta_ms``
    is how long its load took, ``gen`` counts the loads of the key, and ``<key>:gen``
    (no TTL) keeps the newest generation after the value expired. A read gets them and
    the remaining TTL in one transaction and applies :func:`xfetch_due`.

    As published (``lock=False``), every reader that draws an early refresh loads, and
    a miss loads as in cache-aside. Under heavy traffic, readers that draw a refresh
    while one is in flight load again (``e**(1/beta) - 1`` extra loads per expiry on
    average), and when the refresh starts too late the value expires first and the
    misses stampede. With ``lock=True`` one reader refreshes each generation: it takes
    ``SET <key>:lock:<gen> 1 NX PX lock_ttl_ms``; readers that draw a refresh meanwhile
    serve the current, still valid value, and readers that miss wait for the load as in
    :class:`LockedCache`.

    Args:
        client: a redis-py client with ``decode_responses=True``.
        namespace: the key prefix.
        loader: loads the value for an id; ``None`` is not cached.
        ttl_s: TTL of a cached value.
        beta: XFetch's beta (1.0 in the paper; 0 turns early refresh off).
        lock: let only one reader load each generation.
        lock_ttl_ms: how long a lock outlives a reader that never finishes its load.
        poll_ms: the pause between a waiting reader's looks at the value.
        rng: the random source of ``u``.
    """

    def __init__(self, client: redis.Redis, *, namespace: str, loader: Callable[[K], Any],
                 ttl_s: float, beta: float = 1.0, lock: bool = False, lock_ttl_ms: int = 250,
                 poll_ms: float = 2.0, rng: random.Random | None = None) -> None:
        if ttl_s <= 0 or beta < 0 or lock_ttl_ms <= 0 or poll_ms <= 0:
            raise ValueError("ttl_s, lock_ttl_ms and poll_ms must be positive and beta "
                             "not negative")
        self.client = client
        self.namespace = namespace
        self.loader = loader
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.beta = beta
        self.lock = lock
        self.lock_ttl_ms = lock_ttl_ms
        self.poll_s = poll_ms / 1000
        self.stats = GuardStats()
        #: loads by the generation they replaced (0: the key was never loaded).
        self.loads_by_generation: Counter[int] = Counter()
        #: how long before its expiry each early refresh began, in milliseconds.
        self.refresh_leads_ms: list[float] = []
        self._rng = rng or random.Random()
        self._mutex = threading.Lock()

    def key(self, item: K) -> str:
        return f"{self.namespace}:{item}"

    def _lock(self, key: str, generation: int) -> bool:
        return bool(self.client.set(f"{key}:lock:{generation}", 1, nx=True,
                                    px=self.lock_ttl_ms))

    def _read(self, key: str) -> Any:
        raw = self.client.get(key)
        return _MISSING if raw is None else json.loads(raw)["value"]

    def fetch(self, item: K) -> tuple[Any, bool]:
        """Return ``(value, hit)``; an early refresh returns the new value as a hit."""
        key = self.key(item)
        pipe = self.client.pipeline(transaction=True)
        pipe.get(key)
        pipe.pttl(key)
        pipe.get(f"{key}:gen")
        raw, pttl_ms, newest = pipe.execute()
        if raw is None:  # expired (or never loaded): the end of the newest generation
            self.stats.count("misses")
            ended = int(newest or 0)
            if not self.lock:
                return self._load(key, item, ended), False
            # The generation's lock may be held by an early refresh still in flight;
            # it is not released, so a generation is loaded once unless it expires.
            return _single_flight(
                self.stats, read=lambda: self._read(key),
                try_lock=lambda: self._lock(key, ended), release=lambda: None,
                load=lambda: self._load(key, item, ended), poll_s=self.poll_s,
                max_wait_s=4 * self.lock_ttl_ms / 1000), False
        entry = json.loads(raw)
        generation = int(entry["gen"])
        self.stats.count("hits")
        remaining_s = max(0, pttl_ms) / 1000
        # beta 0 is plain cache-aside: even a PTTL of 0 ms waits for the miss.
        if self.beta > 0 and xfetch_due(remaining_s, entry["delta_ms"] / 1000, self.beta,
                                        1.0 - self._rng.random()):
            if self.lock and not self._lock(key, generation):
                self.stats.count("refreshes_skipped")
                return entry["value"], True
            self.stats.count("early_refreshes")
            with self._mutex:
                self.refresh_leads_ms.append(remaining_s * 1000)
            return self._load(key, item, generation), True
        return entry["value"], True

    def _load(self, key: str, item: K, replaced: int) -> Any:
        self.stats.count("loads")
        with self._mutex:
            self.loads_by_generation[replaced] += 1
        start = time.perf_counter()
        value = self.loader(item)
        delta_ms = (time.perf_counter() - start) * 1000
        if value is not None:
            entry = {"value": value, "delta_ms": delta_ms, "gen": replaced + 1}
            pipe = self.client.pipeline(transaction=True)
            pipe.set(key, json.dumps(entry), px=self.ttl_ms)
            pipe.set(f"{key}:gen", replaced + 1)
            pipe.execute()
        return value

    def get(self, item: K) -> Any:
        return self.fetch(item)[0]

    def loads_per_expiry(self) -> dict[int, int]:
        """Loads that replaced each generation 1, 2, ... (one expiry each)."""
        with self._mutex:
            return {g: n for g, n in sorted(self.loads_by_generation.items()) if g > 0}
