"""Read replicas behind a client-side balancer: reads spread out, writes to the primary.

:class:`ReplicaBalancer` sends every write to the primary and each read to one node
chosen by a policy (round-robin or random) among the replicas, and the primary too if
asked. Replication is asynchronous, so a read from a replica right after a write may
return the old value; the balancer's ``consistency`` decides what it does about that:

- ``async``: nothing; a session may not see its own writes for a moment.
- ``wait``: every write is followed by ``WAIT <replicas> <timeout>`` on the same
  connection. Once every replica has acknowledged it, any replica holds the write;
  if ``WAIT`` returns fewer, the written keys are read from the primary for a while.
- ``primary``: keys this client wrote are read from the primary for ``sticky_s``.

:class:`LagSampler` and :func:`wait_converged` watch how far each replica is behind, in
bytes of the replication stream, as the nodes themselves report it.

:func:`versioned_page` values carry their version, so :class:`ReadYourWritesTally`
recognises a stale read, and :func:`replica_mismatches` compares replicas key by key.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from cachelab.workload.poll import poll_until
from cachelab.workload.redis_info import replication_lag_bytes, replication_offsets
from cachelab.workload.threads import BackgroundWorker

if TYPE_CHECKING:  # redis is imported by whoever builds the clients
    import redis

Policy = Literal["round-robin", "random"]
Consistency = Literal["async", "wait", "primary"]
POLICIES: tuple[Policy, ...] = ("round-robin", "random")
CONSISTENCIES: tuple[Consistency, ...] = ("async", "wait", "primary")


@dataclass(frozen=True)
class Node:
    """One server the balancer talks to."""

    name: str
    role: Literal["primary", "replica"]
    client: redis.Redis


@dataclass(frozen=True)
class Read:
    """A value read and the node that served it."""

    value: str | None
    node: Node


@dataclass
class BalancerStats:
    """What the balancer itself did, to compare with each node's own ``INFO``.

    Attributes:
        reads: reads sent to each node, by node name.
        writes: keys written (all to the primary).
        waits: ``WAIT`` calls made; ``waits_short`` of them returned fewer replicas
            than asked for, and ``min_acked`` is the fewest any of them returned.
        pinned_reads: reads sent to the primary because the key was written recently
            (``primary`` mode) or its ``WAIT`` fell short (``wait`` mode).
    """

    reads: Counter[str] = field(default_factory=Counter)
    writes: int = 0
    waits: int = 0
    waits_short: int = 0
    min_acked: int | None = None
    pinned_reads: int = 0


class ReplicaBalancer:
    """Spreads reads over replicas (and optionally the primary); writes to the primary.

    Safe to share between threads: the policy's state and the counters are locked, and
    redis-py clients are thread-safe.

    Args:
        primary: a client of the primary (``decode_responses=True``).
        replicas: clients of its replicas.
        names: node names, primary first; ``primary``, ``replica-1``, ... by default.
        policy: ``round-robin`` cycles through the readers; ``random`` draws one each read.
        include_primary: whether the primary serves ordinary reads too.
        consistency: ``async``, ``wait`` or ``primary`` (see the module docstring).
        wait_timeout_ms: the ``WAIT`` timeout in ``wait`` mode (0 would wait forever, so
            it must be positive).
        sticky_s: how long a written key is read from the primary in ``primary`` mode,
            and after a short ``WAIT``; set it above the replication lag you expect.
        rng: the random source of the ``random`` policy (seeded for repeatable runs).
    """

    def __init__(
        self,
        primary: redis.Redis,
        replicas: Sequence[redis.Redis],
        *,
        names: Sequence[str] | None = None,
        policy: Policy = "round-robin",
        include_primary: bool = False,
        consistency: Consistency = "async",
        wait_timeout_ms: int = 1000,
        sticky_s: float = 1.0,
        rng: random.Random | None = None,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; use one of {', '.join(POLICIES)}")
        if consistency not in CONSISTENCIES:
            raise ValueError(f"unknown consistency {consistency!r}; "
                             f"use one of {', '.join(CONSISTENCIES)}")
        if not replicas and not include_primary:
            raise ValueError("no node would serve reads: give replicas or include the primary")
        if wait_timeout_ms <= 0 or sticky_s <= 0:
            raise ValueError("wait_timeout_ms and sticky_s must be positive")
        names = list(names or ["primary", *(f"replica-{i}" for i in range(1, len(replicas) + 1))])
        if len(names) != len(replicas) + 1 or len(set(names)) != len(names):
            raise ValueError("give one distinct name per node, the primary's first")
        self.primary = Node(names[0], "primary", primary)
        self.replicas = [Node(n, "replica", c) for n, c in zip(names[1:], replicas, strict=True)]
        self.readers = [*([self.primary] if include_primary else []), *self.replicas]
        self.policy = policy
        self.consistency = consistency
        self.wait_timeout_ms = wait_timeout_ms
        self.sticky_s = sticky_s
        self.stats = BalancerStats()
        self._rng = rng or random.Random()
        self._turn = itertools.count()
        self._lock = threading.Lock()
        # key -> monotonic deadline, oldest first, so that expired pins drop off the front.
        self._pinned: OrderedDict[str, float] = OrderedDict()

    @property
    def nodes(self) -> list[Node]:
        return [self.primary, *self.replicas]

    def pick(self) -> Node:
        """The node that serves the next ordinary read, by the policy."""
        with self._lock:
            if self.policy == "random":
                return self._rng.choice(self.readers)
            return self.readers[next(self._turn) % len(self.readers)]

    def read(self, key: str) -> Read:
        """GET ``key`` from the node the policy picks, or from the primary if pinned."""
        pinned = self._is_pinned(key)
        node = self.primary if pinned else self.pick()
        value = node.client.get(key)
        with self._lock:
            self.stats.reads[node.name] += 1
            self.stats.pinned_reads += pinned
        return Read(value, node)  # type: ignore[arg-type]

    def get(self, key: str) -> str | None:
        return self.read(key).value

    def set(self, key: str, value: str) -> int | None:
        """SET on the primary; see :meth:`write`."""
        return self.write({key: value})

    def write(self, items: Mapping[str, str] | Iterable[tuple[str, str]]) -> int | None:
        """SET every item on the primary in one pipeline, then apply the consistency mode.

        Returns the replicas that acknowledged the writes in ``wait`` mode (``WAIT``'s
        reply), else None. ``WAIT`` goes in the same pipeline because it waits for the
        writes of its own connection.
        """
        pairs = list(items.items() if isinstance(items, Mapping) else items)
        pipe = self.primary.client.pipeline(transaction=False)
        for key, value in pairs:
            pipe.set(key, value)
        waiting = self.consistency == "wait" and bool(self.replicas)
        if waiting:
            pipe.execute_command("WAIT", len(self.replicas), self.wait_timeout_ms)
        replies = pipe.execute()
        acked = int(replies[-1]) if waiting else None
        short = acked is not None and acked < len(self.replicas)
        with self._lock:
            self.stats.writes += len(pairs)
            if acked is not None:
                self.stats.waits += 1
                self.stats.waits_short += short
                low = self.stats.min_acked
                self.stats.min_acked = acked if low is None else min(low, acked)
            if self.consistency == "primary" or short:
                self._pin(key for key, _ in pairs)
        return acked

    def _pin(self, keys: Iterable[str]) -> None:
        """Read ``keys`` from the primary for ``sticky_s`` (caller holds the lock)."""
        deadline = time.monotonic() + self.sticky_s
        for key in keys:
            self._pinned.pop(key, None)
            self._pinned[key] = deadline  # re-inserted last: deadlines stay in order

    def _is_pinned(self, key: str) -> bool:
        with self._lock:
            now = time.monotonic()
            while self._pinned and next(iter(self._pinned.values())) <= now:
                self._pinned.popitem(last=False)
            return key in self._pinned


class LagSampler(BackgroundWorker):
    """Samples every replica's lag in bytes from a thread, while the caller writes.

    Use it as a context manager (or ``start``/``stop``): the thread polls
    :func:`replication_lag_bytes` every ``interval_s`` until stopped, and at most
    ``max_samples`` times. ``samples[i]`` holds replica ``i``'s lags in sampling order.
    """

    def __init__(self, primary: redis.Redis, replicas: Sequence[redis.Redis], *,
                 interval_s: float = 0.0005, max_samples: int = 100_000) -> None:
        self.primary = primary
        self.replicas = list(replicas)
        self.interval_s = interval_s
        self.max_samples = max_samples
        self.samples: list[list[int]] = [[] for _ in self.replicas]
        super().__init__("the lag sampler")

    def _work(self) -> None:
        for _ in range(self.max_samples):
            if self._stop.is_set():
                return
            lags = replication_lag_bytes(self.primary, self.replicas)
            for samples, lag in zip(self.samples, lags, strict=True):
                samples.append(lag)
            self._stop.wait(self.interval_s)


def wait_converged(primary: redis.Redis, replicas: Sequence[redis.Redis], *,
                   timeout_s: float = 5.0, interval_s: float = 0.002) -> float | None:
    """Poll until every replica's offset equals the primary's; seconds taken, or None."""
    def converged() -> bool:
        head, offsets = replication_offsets(primary, replicas)
        return all(offset == head for offset in offsets)

    start = time.monotonic()
    if poll_until(converged, timeout_s=timeout_s, interval_s=interval_s,
                  what="the replicas to converge", error=None) is None:
        return None
    return time.monotonic() - start


# ------------------------------------------------------- stale reads, recognisable


def versioned_page(i: int, version: int, filler: str) -> str:
    """Page ``i`` as written at ``version``: the value starts with its version, so a
    stale read is recognisable by :func:`page_version`."""
    return f"{version}|page {i}|{filler}"


def page_version(value: str | None) -> int | None:
    """The version a :func:`versioned_page` value was written at; None if it is not one."""
    if value is None:
        return None
    head = value.split("|", 1)[0]
    return int(head) if head.isdigit() else None


@dataclass
class ReadYourWritesTally:
    """One consistency mode's write-then-read trials: how many reads came back stale."""

    mode: Consistency
    trials: int = 0
    stale: int = 0
    from_replicas: int = 0
    from_primary: int = 0
    waits: int = 0
    waits_short: int = 0
    min_acked: int | None = None

    def record(self, read: Read, version: int) -> None:
        """Count one read of a key just written at ``version``."""
        self.trials += 1
        self.stale += page_version(read.value) != version
        if read.node.role == "primary":
            self.from_primary += 1
        else:
            self.from_replicas += 1

    def take_waits(self, stats: BalancerStats) -> None:
        """Copy the session's WAIT counts, once its trials are over."""
        self.waits, self.waits_short = stats.waits, stats.waits_short
        self.min_acked = stats.min_acked


def replica_mismatches(primary: redis.Redis, replicas: Sequence[redis.Redis],
                       keys: Sequence[str], *, chunk: int = 200) -> list[int]:
    """Per replica, how many of ``keys`` hold another value than on the primary (MGET)."""
    differ = [0] * len(replicas)
    for start in range(0, len(keys), chunk):
        part = keys[start:start + chunk]
        expected = primary.mget(part)
        for i, replica in enumerate(replicas):
            differ[i] += sum(a != b for a, b in zip(expected, replica.mget(part), strict=True))
    return differ
