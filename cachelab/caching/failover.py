"""Failover from the client's side: a numbered write stream, a health-check failover,
and a recorder of what Sentinel announces.

:class:`SequenceWriter` writes ``seq:1``, ``seq:2``, ... through whatever client the
router hands it and records, for every number, whether the write was acknowledged.
After a failover, :func:`present` reads the new primary back, so that acknowledged
writes that did not survive can be counted. :class:`HealthCheckFailover` is the
hand-made alternative to Sentinel: PING the primary with a timeout, and after a run
of failures promote the replica that has applied the most of the replication stream.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cachelab.workload.poll import poll_until
from cachelab.workload.redis_info import replication_offset
from cachelab.workload.threads import BackgroundWorker

Address = tuple[str, int]
Clock = Callable[[], float]

ACKED, FAILED, UNCONFIRMED = "acked", "failed", "unconfirmed"


def no_retry_client(address: Address, timeout_s: float, **kwargs: Any) -> redis.Redis:
    """A client whose commands fail at once: a failover measures errors, not backoff."""
    host, port = address
    return redis.Redis(host=host, port=port, socket_timeout=timeout_s,
                       socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0),
                       decode_responses=True, **kwargs)


@dataclass(frozen=True)
class Write:
    """One numbered write: when it was sent, when its outcome was known, the outcome."""

    n: int
    sent_s: float
    done_s: float
    outcome: str  # ACKED, FAILED (an error came back) or UNCONFIRMED (WAIT fell short)
    error: str = ""


class SequenceWriter(BackgroundWorker):
    """A thread that writes ``<prefix>:1``, ``<prefix>:2``, ... and records each outcome.

    A write is acknowledged when its reply came back; with ``wait_replicas`` set, only
    when ``WAIT`` in the same round trip reports that many replicas have it. Errors are
    not retried (the next number is written instead) and pause the writer for
    ``error_pause_s``, so a dead primary is not hammered.

    Args:
        target: called before every write, returns the client to write with (a
            Sentinel-managed client, or the current primary of a health check).
        prefix: the keys' prefix.
        max_rate: the most writes a second (bounds the load on a small machine).
        wait_replicas: 0 for plain async replication, else ``WAIT`` for that many.
        wait_timeout_ms: how long ``WAIT`` may block.
        error_pause_s: the pause after a failed write.
        clock: seconds, monotonic.
    """

    def __init__(self, target: Callable[[], redis.Redis], *, prefix: str = "seq",
                 max_rate: float = 2000.0, wait_replicas: int = 0,
                 wait_timeout_ms: int = 100, error_pause_s: float = 0.01,
                 clock: Clock = time.monotonic) -> None:
        if max_rate <= 0:
            raise ValueError("max_rate must be positive")
        self.target = target
        self.prefix = prefix
        self.min_interval_s = 1.0 / max_rate
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self.error_pause_s = error_pause_s
        self.clock = clock
        self.writes: list[Write] = []  # appended by the writer thread only
        self.last_acked: Write | None = None
        self.counts = {ACKED: 0, FAILED: 0, UNCONFIRMED: 0}
        super().__init__(f"the writer of {prefix}")

    def key(self, n: int) -> str:
        return f"{self.prefix}:{n}"

    def write(self, n: int) -> Write:
        """Write number ``n`` once, record and return its outcome."""
        sent = self.clock()
        outcome, error = ACKED, ""
        try:
            client = self.target()
            if self.wait_replicas:
                # One pipeline, one connection: WAIT counts the writes of its own connection.
                pipe = client.pipeline(transaction=False)
                pipe.set(self.key(n), n)
                pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
                _, replicas = pipe.execute()
                if int(replicas) < self.wait_replicas:
                    outcome = UNCONFIRMED
            else:
                client.set(self.key(n), n)
        except redis.RedisError as exc:  # connection refused, timeout, READONLY, no master
            outcome, error = FAILED, f"{type(exc).__name__}: {exc}"[:120]
        write = Write(n, sent, self.clock(), outcome, error)
        self.writes.append(write)
        self.counts[outcome] += 1
        if outcome == ACKED:
            self.last_acked = write
        return write

    def _work(self) -> None:
        n = len(self.writes)
        while not self._stop.is_set():
            n += 1
            write = self.write(n)
            pause = self.min_interval_s - (write.done_s - write.sent_s)
            if write.outcome == FAILED:
                pause = max(pause, self.error_pause_s)
            if pause > 0:
                self._stop.wait(pause)

    def first_acked_since(self, sent_after_s: float) -> Write | None:
        """The first acknowledged write sent at or after ``sent_after_s``, if any yet."""
        first = None
        for i in range(len(self.writes) - 1, -1, -1):  # recent writes are at the end
            write = self.writes[i]
            if write.sent_s < sent_after_s:
                break
            if write.outcome == ACKED:
                first = write
        return first

    def numbers(self, outcome: str) -> list[int]:
        return [w.n for w in self.writes if w.outcome == outcome]


def present(client: redis.Redis, prefix: str, numbers: Iterable[int],
            chunk: int = 2000) -> set[int]:
    """Which of ``numbers`` have their ``<prefix>:<n>`` key, holding ``n``, on ``client``."""
    wanted = list(numbers)
    found: set[int] = set()
    for i in range(0, len(wanted), chunk):
        part = wanted[i:i + chunk]
        values: Any = client.mget([f"{prefix}:{n}" for n in part])
        found.update(n for n, value in zip(part, values, strict=True)
                     if value in (str(n), str(n).encode()))
    return found


@dataclass
class Promotion:
    """What a health-check failover did, and when (seconds of its clock)."""

    down_at_s: float
    promoted: Address
    promoted_at_s: float
    offsets: dict[Address, int | None]  # None: the replica did not answer
    repointed: list[Address] = field(default_factory=list)


class HealthCheckFailover(BackgroundWorker):
    """Watches a primary with PING and promotes the most up-to-date replica when it dies.

    Every ``interval_s`` it sends PING with a ``timeout_s`` socket timeout. After
    ``failures`` failures in a row it reads each replica's replication offset, promotes
    the highest with ``REPLICAOF NO ONE``, routes clients to it at once, and repoints
    the other replicas at it. One observer decides alone: unlike Sentinel there is no
    quorum, so a network split between it and a healthy primary would promote anyway.

    Args:
        primary: the primary's address.
        replicas: its replicas' addresses.
        interval_s: the time between two health checks.
        timeout_s: how long a PING (and each failover command) may take.
        failures: consecutive failed checks that declare the primary down.
        clock: seconds, monotonic.
    """

    def __init__(self, primary: Address, replicas: Sequence[Address], *,
                 interval_s: float = 0.1, timeout_s: float = 0.1, failures: int = 3,
                 clock: Clock = time.monotonic) -> None:
        if failures < 1:
            raise ValueError("failures must be at least 1")
        self.primary = primary
        self.replicas = list(replicas)
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.failures = failures
        self.clock = clock
        self.failed_in_a_row = 0
        self.checks = 0
        self.promotions: list[Promotion] = []
        super().__init__("the health check")
        self._clients: dict[Address, redis.Redis] = {}
        self._lock = threading.Lock()

    def _client(self, address: Address) -> redis.Redis:
        with self._lock:
            if address not in self._clients:
                self._clients[address] = no_retry_client(address, self.timeout_s)
            return self._clients[address]

    def client(self) -> redis.Redis:
        """A client of the current primary (a different one after a failover)."""
        return self._client(self.primary)

    def healthy(self) -> bool:
        """One health check: PING the primary within the timeout."""
        try:
            with no_retry_client(self.primary, self.timeout_s) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def check(self) -> Promotion | None:
        """Run one health check; fail over when it is the ``failures``-th miss in a row."""
        self.checks += 1
        if self.healthy():
            self.failed_in_a_row = 0
            return None
        self.failed_in_a_row += 1
        if self.failed_in_a_row < self.failures:
            return None
        return self.fail_over()

    def fail_over(self) -> Promotion:
        """Promote the replica with the highest replication offset, repoint the others."""
        down_at = self.clock()
        offsets: dict[Address, int | None] = {}
        for replica in self.replicas:
            try:
                offsets[replica] = replication_offset(self._client(replica))
            except redis.RedisError:
                offsets[replica] = None
        alive = [r for r in self.replicas if offsets[r] is not None]
        if not alive:
            raise RuntimeError(f"the primary {_show(self.primary)} is down and no replica "
                               "answers: nothing to promote")
        best = max(alive, key=lambda r: offsets[r] or 0)  # max keeps the first of a tie
        self._client(best).execute_command("REPLICAOF", "NO", "ONE")
        old, self.primary = self.primary, best  # writers switch now, before the repointing
        promotion = Promotion(down_at, best, self.clock(), offsets)
        self.replicas = [r for r in self.replicas if r != best]
        for replica in alive:
            if replica != best:
                self._client(replica).execute_command("REPLICAOF", *best)
                promotion.repointed.append(replica)
        self.failed_in_a_row = 0
        self.promotions.append(promotion)
        with self._lock:
            dead = self._clients.pop(old, None)
        if dead is not None:
            dead.close()
        return promotion

    def _work(self) -> None:
        while not self._stop.is_set():
            started = self.clock()
            self.check()
            self._stop.wait(max(0.0, self.interval_s - (self.clock() - started)))

    def _after_stop(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()


@dataclass(frozen=True)
class Event:
    """One message Sentinel published, and when it arrived (seconds of the clock)."""

    at_s: float
    channel: str
    data: str


SENTINEL_EVENTS = ("+sdown", "+odown", "+try-failover", "+elected-leader",
                   "+selected-slave", "+promoted-slave", "+failover-end", "+switch-master")


class SentinelEvents(BackgroundWorker):
    """Records what a Sentinel announces on its pub/sub channels, timestamped on arrival.

    Args:
        client: a client of one Sentinel (``decode_responses=True``).
        channels: the event channels to record.
        clock: seconds, monotonic.
    """

    def __init__(self, client: redis.Redis, channels: Sequence[str] = SENTINEL_EVENTS, *,
                 clock: Clock = time.monotonic) -> None:
        self.client = client
        self.channels = tuple(channels)
        self.clock = clock
        self.events: list[Event] = []
        super().__init__("the Sentinel event recorder")
        self._pubsub: Any = None

    def _before_start(self) -> None:
        self._pubsub = self.client.pubsub()
        self._pubsub.subscribe(*self.channels)
        # Confirmed subscriptions: nothing published after start() returns is missed.
        confirmed = 0

        def all_confirmed() -> bool:
            nonlocal confirmed
            message = self._pubsub.get_message(timeout=0.1)  # blocks: no pause needed
            confirmed += bool(message and message["type"] == "subscribe")
            return confirmed == len(self.channels)

        try:
            poll_until(all_confirmed, timeout_s=5, interval_s=0, error=RuntimeError,
                       what="the Sentinel to confirm the subscriptions")
        except RuntimeError:
            self._pubsub.close()
            raise

    def _work(self) -> None:
        while not self._stop.is_set():
            message = self._pubsub.get_message(timeout=0.05)
            if message and message["type"] == "message":
                self.events.append(Event(self.clock(), message["channel"],
                                         message["data"]))

    def first(self, channel: str, about: str = "master") -> Event | None:
        """The first event on ``channel`` whose message starts with ``about``."""
        return next((e for e in list(self.events)
                     if e.channel == channel and e.data.startswith(about)), None)

    def _after_stop(self) -> None:
        if self._pubsub is not None:
            self._pubsub.close()
            self._pubsub = None


def switched_to(event: Event) -> Address:
    """The new primary of a ``+switch-master <name> <old ip> <old port> <ip> <port>``."""
    *_, host, port = event.data.split()
    return host, int(port)


def _show(address: Address) -> str:
    return f"{address[0]}:{address[1]}"
