"""Redis under ``maxmemory``: measuring its capacity, driving it and seeing what it evicts.

Two facts about Redis's eviction shape these helpers:

- ``maxmemory`` counts everything Redis allocated, keys and client buffers alike, so
  the number of keys that fit is measured (filled until the first eviction), never
  computed from value sizes; and inspecting a full cache must not evict more, so
  :func:`freeze` lifts the limit first.
- Its LRU clock ticks once a second: keys read within the same second look equally
  old to it. :func:`wait_for_lru_tick` lets a workload step from one tick to the next,
  and :func:`lru_sampling_trial` gives keys distinct ages with ``RESTORE ... IDLETIME``.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cachelab.caching.simulate import LRU
from cachelab.workload.poll import poll_until
from cachelab.workload.redis_info import lru_clock, stat

if TYPE_CHECKING:  # redis is imported by whoever builds the client
    import redis

#: Every maxmemory-policy Redis knows (6.2 and 7.x).
EVICTION_POLICIES = (
    "noeviction", "allkeys-lru", "allkeys-lfu", "allkeys-random",
    "volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl",
)


def parse_policies(text: str) -> tuple[str, ...]:
    """``"allkeys-lru, noeviction"`` as a tuple of policies, in order, without repeats.

    Raises:
        ValueError: naming the first unknown policy, or when none is given.
    """
    policies: list[str] = []
    for part in text.split(","):
        name = part.strip().lower()
        if not name:
            continue
        if name not in EVICTION_POLICIES:
            raise ValueError(f"unknown maxmemory-policy {part.strip()!r}; known: "
                             f"{', '.join(EVICTION_POLICIES)}")
        if name not in policies:
            policies.append(name)
    if not policies:
        raise ValueError(f"no policy given; known: {', '.join(EVICTION_POLICIES)}")
    return tuple(policies)


def wait_for_lru_tick(client: redis.Redis, since: int, *, timeout_s: float = 3.0) -> int:
    """Poll until the server's LRU clock differs from ``since``; returns the new value.

    Each server updates its clock in its own cron, up to 1/hz after the second turns,
    so a workload spread over several servers waits for each one's own tick.
    """
    def ticked() -> tuple[int] | None:
        now = lru_clock(client)
        return (now,) if now != since else None  # a tuple: true even when the clock is 0

    return poll_until(ticked, timeout_s=timeout_s, interval_s=0.005,
                      what=f"Redis's LRU clock to move on from {since}")[0]


def freeze(client: redis.Redis) -> None:
    """Lift ``maxmemory`` so that reading the cache back cannot evict anything.

    Replies and query buffers count against maxmemory; without this, checking which of
    thousands of keys survived would itself evict some of them. Read INFO's counters
    after freezing: the reply to INFO itself can push a full server over the limit, and
    the next command would evict one more key before it runs.
    """
    client.config_set("maxmemory", 0)


@dataclass(frozen=True)
class Capacity:
    """How many keys of one size fit under ``maxmemory``, measured by filling."""

    keys: int  # keys held at the end of the batch in which evictions began
    written: int
    maxmemory: int
    used_memory_empty: int
    used_memory_full: int

    @property
    def bytes_per_key(self) -> float:
        """Memory per key as INFO saw it: value, key name, metadata and dict entries."""
        return (self.used_memory_full - self.used_memory_empty) / self.keys if self.keys else 0.0


def measure_capacity(client: redis.Redis, value: str, *, prefix: str = "fill:",
                     ttl_s: int = 0, batch: int = 100, max_keys: int = 10_000_000
                     ) -> Capacity:
    """Write keys of ``value`` in batches until Redis evicts one; count what it holds.

    The server must run an eviction policy (allkeys-*, or volatile-* with ``ttl_s``);
    under noeviction the first refused write raises ``OutOfMemoryError``.
    """
    maxmemory = int(client.config_get("maxmemory").get("maxmemory") or 0)
    if maxmemory <= 0:
        raise ValueError("measure_capacity needs a server with maxmemory set")
    empty = stat(client, "used_memory", "memory")
    written = 0
    while stat(client, "evicted_keys") == 0:
        if written >= max_keys:
            raise RuntimeError(f"{written} keys written and Redis has not evicted one")
        pipe = client.pipeline(transaction=False)
        for i in range(written, written + batch):
            pipe.set(f"{prefix}{i}", value, ex=ttl_s or None)
        pipe.execute()
        written += batch
    full = stat(client, "used_memory", "memory")
    return Capacity(keys=int(client.dbsize()), written=written, maxmemory=maxmemory,
                    used_memory_empty=empty, used_memory_full=full)


@dataclass
class OpCounts:
    """What a stream of reads and writes met: hits, misses and OOM refusals."""

    reads: int = 0
    read_misses: int = 0
    writes: int = 0
    oom_errors: int = 0
    first_error: str = ""


#: One operation: ``("get", key, 0)`` or ``("set", key, ttl_s)`` (0: no TTL).
Op = tuple[str, str, int]


def apply_ops(client: redis.Redis, ops: Iterable[Op], value: str, counts: OpCounts, *,
              batch: int = 32) -> OpCounts:
    """Send ``ops`` in order, pipelined ``batch`` at a time, counting into ``counts``.

    A refused write (``OOM command not allowed``, under noeviction) is counted and
    kept, never raised: it is what the exercise shows. Any other error is raised.
    The batch stays small because the replies to a batch of GETs are buffered by
    Redis, and that memory counts against maxmemory too.
    """
    import redis as redis_lib

    pending: list[Op] = []

    def flush() -> None:
        pipe = client.pipeline(transaction=False)
        for kind, key, ttl_s in pending:
            if kind == "get":
                pipe.get(key)
            else:
                pipe.set(key, value, ex=ttl_s or None)
        for (kind, _, _), reply in zip(pending, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(reply, redis_lib.exceptions.OutOfMemoryError):
                counts.oom_errors += 1
                counts.first_error = counts.first_error or f"{type(reply).__name__}: {reply}"
            elif isinstance(reply, Exception):
                raise reply
            if kind == "get":
                counts.reads += 1
                counts.read_misses += reply is None
            else:
                counts.writes += 1
        pending.clear()

    for op in ops:
        pending.append(op)
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    return counts


def held_keys(client: redis.Redis, match: str = "*") -> set[str]:
    """Every key the server holds that matches ``match`` (SCAN; call :func:`freeze` first).

    Keys come back as ``str`` whether or not the client decodes responses.
    """
    return {key.decode() if isinstance(key, bytes) else key
            for key in client.scan_iter(match=match, count=1000)}


# --- The Redis documentation's LRU experiment ---------------------------------------


@dataclass(frozen=True)
class SamplingTrial:
    """One run of the LRU experiment: N keys of distinct ages, then N/2 new keys.

    ``kept`` tells, for every key in order of age (oldest first, the new keys last),
    whether Redis kept it; ``exact_kept`` is what exact LRU keeps after the same number
    of evictions.
    """

    samples: int
    keys: int
    added: int
    kept: list[bool]
    exact_kept: list[bool]
    evicted_keys: int  # Redis's own count, INFO stats

    @property
    def evicted(self) -> int:
        return self.kept.count(False)

    @property
    def accuracy(self) -> float:
        """Share of the keys Redis evicted that exact LRU evicts too (1.0: identical)."""
        both = sum(not k and not e for k, e in zip(self.kept, self.exact_kept, strict=True))
        return both / self.evicted if self.evicted else 1.0

    def kept_by_age(self, parts: int = 4) -> list[float]:
        """Share Redis kept in each of ``parts`` age groups of the N keys (oldest first),
        then of the new keys."""
        return self._by_age(self.kept, parts)

    def exact_kept_by_age(self, parts: int = 4) -> list[float]:
        """The same shares for exact LRU."""
        return self._by_age(self.exact_kept, parts)

    def _by_age(self, kept: list[bool], parts: int) -> list[float]:
        n = self.keys
        groups = [kept[n * i // parts:n * (i + 1) // parts] for i in range(parts)] + [kept[n:]]
        return [sum(g) / len(g) if g else 0.0 for g in groups]


def lru_sampling_trial(client: redis.Redis, *, samples: int, keys: int, value_bytes: int,
                       rng: random.Random, batch: int = 50) -> SamplingTrial:
    """Repeat the experiment behind Redis's "Approximated LRU algorithm" documentation.

    Fill ``keys`` keys read one after another, so that each is older than the next;
    make that exactly what fits (``maxmemory`` = the memory they use); then add half as
    many new keys. Exact LRU evicts exactly the oldest keys; Redis, which evicts the
    best of ``samples`` random keys (helped by a pool of good candidates), comes close.

    Redis's LRU clock has one-second steps, so reading N keys in order within a second
    would give them all the same age. ``RESTORE ... IDLETIME s`` sets a key's last
    access ``s`` seconds back instead: key i (from 0) is written as read N + 1 - i
    seconds ago, so even the newest is older than the keys added after it.
    ``client`` must not decode responses (DUMP payloads are bytes); the server is
    flushed first.
    """
    client.config_set("maxmemory", 0)
    client.flushall()
    client.config_set("maxmemory-policy", "allkeys-lru")
    client.config_set("maxmemory-samples", samples)
    client.set("template", b"x" * value_bytes)
    payload = client.dump("template")
    client.delete("template")
    if not isinstance(payload, bytes):
        raise TypeError("lru_sampling_trial needs a client with decode_responses=False")
    # Seeded names: where keys land in the hash table (and so in Redis's random samples)
    # changes from one repetition to the next.
    ids = rng.sample(range(10 * (keys + keys // 2)), keys + keys // 2)
    names = [f"lru:{i}" for i in ids]
    for start in range(0, keys, batch):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(start + batch, keys)):
            pipe.restore(names[i], 0, payload, idletime=keys - i + 1)
        pipe.execute()
    client.config_resetstat()
    client.config_set("maxmemory", stat(client, "used_memory", "memory"))
    for start in range(keys, len(names), batch):
        pipe = client.pipeline(transaction=False)
        for name in names[start:start + batch]:
            pipe.restore(name, 0, payload)  # last access: now, newer than every old key
        pipe.execute()
    freeze(client)
    evicted_keys = stat(client, "evicted_keys")  # after freezing: see freeze()
    held = held_keys(client, "lru:*")
    kept = [name in held for name in names]
    # Exact LRU holding as many keys as Redis ended with: the same number of evictions.
    exact = LRU(max(1, sum(kept)))
    for name in names:
        exact.access(name)
    return SamplingTrial(samples, keys, len(names) - keys, kept,
                         [name in exact for name in names], evicted_keys)


# --- Replaying a trace through real Redis -------------------------------------------

# Cache-aside in one round trip: GET, and on a miss SET a value of ARGV[1] bytes.
# A script keeps the order of a pipelined trace exact and still counts keyspace
# hits and misses in INFO, like a client's own GET would.
_CACHE_ASIDE = """
if redis.call('GET', KEYS[1]) then return 1 end
redis.call('SET', KEYS[1], string.rep('x', tonumber(ARGV[1])))
return 0
"""


@dataclass
class TraceReplay:
    """A trace replayed through Redis: its hits, and how full Redis was along the way."""

    requests: int = 0
    hits: int = 0
    keys_held: list[int] = field(default_factory=list)  # DBSIZE after each batch
    evicted: list[int] = field(default_factory=list)  # evicted_keys after each batch

    @property
    def misses(self) -> int:
        return self.requests - self.hits

    @property
    def miss_ratio(self) -> float:
        return self.misses / self.requests if self.requests else 0.0

    @property
    def capacity_keys(self) -> int | None:
        """Keys Redis held at maxmemory: the median DBSIZE once it was evicting.

        None when it never evicted (the trace fit in the cache).
        """
        full = [held for held, evicted in zip(self.keys_held, self.evicted, strict=True)
                if evicted]
        return round(statistics.median(full)) if full else None


def replay_cache_aside(client: redis.Redis, trace: Sequence[object], *, value_bytes: int,
                       prefix: str = "trace:", batch: int = 200, spread_s: float = 0.0
                       ) -> TraceReplay:
    """Request every key of ``trace`` from Redis in order, loading it on a miss.

    With ``spread_s``, the batches are paced evenly over that many seconds (at most;
    a slow server makes it longer), so that Redis's one-second LRU clock sees the
    trace's order; without it the trace runs as fast as Redis answers.
    """
    sha = client.script_load(_CACHE_ASIDE)
    replay = TraceReplay()
    begin, batches = time.monotonic(), max(1, math.ceil(len(trace) / batch))
    for number, start in enumerate(range(0, len(trace), batch)):
        if spread_s > 0:
            time.sleep(max(0.0, begin + spread_s * number / batches - time.monotonic()))
        pipe = client.pipeline(transaction=False)
        for key in trace[start:start + batch]:
            pipe.evalsha(sha, 1, f"{prefix}{key}", value_bytes)
        pipe.dbsize()
        pipe.info("stats")
        *replies, held, stats = pipe.execute()
        replay.requests += len(replies)
        replay.hits += sum(int(r) for r in replies)
        replay.keys_held.append(int(held))
        replay.evicted.append(int(stats["evicted_keys"]))
    return replay


#: TTLs of the cold keys of :func:`build_stream`, long enough that nothing expires in a run.
COLD_TTL_S = (600, 3600)
PREFILL_SHARE = 0.95  # of the room beside the hot set: round 0 stops just short of full
REPLY_BUDGET_BYTES = 64 * 1024  # per pipelined batch: Redis buffers the replies in maxmemory


@dataclass
class EvictionStream:
    """The seeded stream every policy's server gets, in rounds one LRU tick apart."""

    hot: list[str]
    cold_ttl_s: dict[str, int]
    rounds: list[list[Op]]

    @property
    def keys_written(self) -> int:
        return len(self.hot) + len(self.cold_ttl_s)


def build_stream(rng: random.Random, *, capacity: int, hot_share: float,
                 turnover: float) -> EvictionStream:
    """Cold keys to just short of full; one second later the hot set; then, each second,
    a read of every hot key followed by more hot reads mixed with a batch of cold keys.

    Redis's LRU clock counts seconds, so keys written in the same second tie. The hot
    set is written a second after the first cold keys, and every later round reads it
    before writing; a batch is half the room beside the hot set, so the cache always
    holds cold keys older than the hot keys' last read for LRU to evict first.
    """
    hot = [f"hot:{i}" for i in range(max(1, round(hot_share * capacity)))]
    room = max(2, capacity - len(hot))
    total_cold = max(room, round(turnover * capacity))
    cold = [f"cold:{i}" for i in range(total_cold)]
    cold_ttl_s = {key: rng.randint(*COLD_TTL_S) for key in cold}
    prefill = min(total_cold, int(PREFILL_SHARE * room))
    rounds: list[list[Op]] = [[("set", key, cold_ttl_s[key]) for key in cold[:prefill]],
                              [("set", key, 0) for key in hot]]
    batch = max(1, room // 2)
    for start in range(prefill, total_cold, batch):
        first_pass = rng.sample(hot, len(hot))
        mixed: list[Op] = ([("set", key, cold_ttl_s[key]) for key in cold[start:start + batch]]
                           + [("get", rng.choice(hot), 0) for _ in hot])
        rng.shuffle(mixed)
        rounds.append([("get", key, 0) for key in first_pass] + mixed)
    return EvictionStream(hot, cold_ttl_s, rounds)


def reply_batch(value_bytes: int) -> int:
    """Commands per pipelined batch: replies to a batch of GETs wait in Redis's memory
    until sent, and evict like data."""
    return max(1, min(32, REPLY_BUDGET_BYTES // value_bytes))


@dataclass
class PolicyRun:
    """One policy's server, the stream's effect on it, and what was left."""

    policy: str
    client: redis.Redis
    counts: OpCounts = field(default_factory=OpCounts)
    clock: int = 0
    evicted_keys: int = 0
    expired_keys: int = 0
    hot_kept: int = 0
    cold_kept: list[str] = field(default_factory=list)

    def play_round(self, ops: Iterable[Op], value: str, *, batch: int,
                   next_tick: bool) -> None:
        """Apply one round, after the server's LRU clock ticked past the last round's
        when ``next_tick``."""
        if next_tick:
            wait_for_lru_tick(self.client, self.clock)
        apply_ops(self.client, ops, value, self.counts, batch=batch)
        self.clock = lru_clock(self.client)

    def inspect(self, stream: EvictionStream) -> None:
        """Freeze the cache, then read Redis's counters and see which keys are left."""
        freeze(self.client)
        stats = self.client.info("stats")
        self.evicted_keys = int(stats["evicted_keys"])
        self.expired_keys = int(stats["expired_keys"])
        held = held_keys(self.client)
        self.hot_kept = sum(key in held for key in stream.hot)
        self.cold_kept = [key for key in stream.cold_ttl_s if key in held]
