"""Failover from the client's side: a numbered write stream, a health-check failover,
and a recorder of what Sentinel announces.

:class:`SequenceWriter` writes ``seq:1``, ``seq:2``, ... through whatever client the
router hands it and records, for every number, whether the write was acknowledged.
After a failover, :func:`present` reads the new primary back, so that acknowledged
writes that did not survive can be counted. :class:`HealthCheckFailover` is the
hand-made alternative to Sentinel: PING the primary with a timeout, and after a run
of failures promote the replica that has applied the most of the replication stream.
:func:`sentinel_failover` and :func:`healthcheck_failover` drive one kill of a primary
under either, and hand back a :class:`FailoverRun`: what the writer saw around it.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, closing, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cachelab.workload.poll import poll_until
from cachelab.workload.redis_info import Node, info, replication_offset
from cachelab.workload.threads import BackgroundWorker

if TYPE_CHECKING:
    from redis.sentinel import Sentinel

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


def first_of_each(events: Iterable[tuple[str, Event]]) -> list[tuple[str, Event]]:
    """The first ``(who, event)`` of each channel, in the order they came."""
    seen: set[str] = set()
    firsts = []
    for who, event in events:
        if event.channel not in seen:
            seen.add(event.channel)
            firsts.append((who, event))
    return firsts


# What a failover scenario needs of the servers the lab started (a ReplicaSet and a
# SentinelGroup satisfy these): the strategies never import the servers.
class KillableNode(Node, Protocol):
    """A node whose process can be SIGKILLed."""

    def kill(self) -> None: ...


class ReplicaGroup(Protocol):
    """A primary and its replicas, primary first in ``servers``."""

    @property
    def primary(self) -> KillableNode: ...
    @property
    def replicas(self) -> Sequence[Node]: ...
    @property
    def servers(self) -> Sequence[Node]: ...
    def stop(self) -> None: ...


class SentinelWatch(Protocol):
    """The Sentinels watching a replica group."""

    @property
    def servers(self) -> Sequence[Node]: ...
    def client(self, **kwargs: Any) -> Sentinel: ...
    def stop(self) -> None: ...


#: ``live(title, snapshot)``: shows ``snapshot()`` while the block runs (``Lab.live``).
LiveDisplay = Callable[[str, Callable[[], Mapping[str, Any]]], AbstractContextManager[Any]]

#: Past the bound the exercise checks, stop waiting for a failover that is not coming.
GIVE_UP_AFTER_S = 15.0


def _no_display(title: str, snapshot: Callable[[], Mapping[str, Any]]
                ) -> AbstractContextManager[None]:
    return nullcontext()


def _address(node: Node) -> Address:
    return node.host, node.port


@dataclass
class FailoverRun:
    """One kill of one primary, and what the writer and the failover did around it.

    Times are seconds of the monotonic clock; ``detected_s``, ``agreed_s`` and
    ``switched_s`` count from the kill.
    """

    name: str
    writer: SequenceWriter
    replica_set: ReplicaGroup
    kill_s: float = 0.0       # the clock just before SIGKILL
    dead_s: float = 0.0       # the clock once the process was reaped
    detected_s: float | None = None
    agreed_s: float | None = None
    switched_s: float | None = None
    new_primary: Node | None = None
    found: set[int] = field(default_factory=set)  # numbers read back on the new primary
    keys_on_new_primary: int = 0
    events: list[tuple[str, Event]] = field(default_factory=list)  # (sentinel, event)
    promotion: Promotion | None = None
    names: dict[Address, str] = field(default_factory=dict)  # kept past the stop

    def __post_init__(self) -> None:
        self.names = {_address(s): s.name for s in self.replica_set.servers}

    def name_of(self, address: Address) -> str:
        return self.names.get(address, _show(address))

    def since_kill(self, at_s: float | None) -> float | None:
        return None if at_s is None else at_s - self.kill_s

    def replica_at(self, address: Address | None) -> Node | None:
        return next((r for r in self.replica_set.replicas if _address(r) == address), None)

    @property
    def first_ack_after(self) -> float | None:
        """Kill to the reply of the first acknowledged write sent after the kill."""
        write = self.writer.first_acked_since(self.dead_s)
        return None if write is None else write.done_s - self.kill_s

    @property
    def acked(self) -> list[int]:
        return self.writer.numbers(ACKED)

    @property
    def acked_after_kill(self) -> list[int]:
        return [w.n for w in self.writer.writes
                if w.outcome == ACKED and w.sent_s >= self.dead_s]

    @property
    def acked_before_kill(self) -> int:
        return sum(w.outcome == ACKED and w.done_s <= self.kill_s for w in self.writer.writes)

    @property
    def lost(self) -> list[int]:
        return [n for n in self.acked if n not in self.found]

    @property
    def errors(self) -> int:
        return self.writer.counts[FAILED]

    @property
    def phantoms(self) -> int:
        """Keys on the new primary that no write of this run explains (should be none)."""
        return self.keys_on_new_primary - len(self.found)

    def error_kinds(self) -> Counter[str]:
        """Failed writes by the exception redis-py raised."""
        return Counter(w.error.split(":")[0] for w in self.writer.writes
                       if w.outcome == FAILED)

    def acks_per_window(self, edges: Sequence[float], window_s: float) -> list[int]:
        """Acknowledged writes per ``window_s`` from each edge (seconds after the kill)."""
        counts = [0] * len(edges)
        for write in self.writer.writes:
            if write.outcome == ACKED:
                i = int((write.done_s - self.kill_s - edges[0]) // window_s)
                if 0 <= i < len(counts):
                    counts[i] += 1
        return counts

    def snapshot(self) -> dict[str, Any]:
        """The live view while the scenario runs."""
        return {"scenario": self.name, "acknowledged": self.writer.counts[ACKED],
                "errors": self.writer.counts[FAILED],
                "since kill s": round(time.monotonic() - self.kill_s, 2)
                if self.kill_s else "—"}

    def drive(self, *, before_kill_s: float, after_s: float, give_up_s: float,
              live: LiveDisplay = _no_display, title: str = "") -> None:
        """Write, kill the primary, write until a write succeeds after it, then a little more."""
        writer = self.writer
        with live(title or self.name, self.snapshot), writer:
            time.sleep(before_kill_s)
            self.kill_s = time.monotonic()
            self.replica_set.primary.kill()
            self.dead_s = time.monotonic()
            give_up_at = self.kill_s + give_up_s
            while writer.first_acked_since(self.dead_s) is None:
                if time.monotonic() > give_up_at or writer.error is not None:
                    break
                time.sleep(0.01)
            else:
                time.sleep(after_s)

    def read_back(self) -> None:
        """What the new primary holds of the sequence, and how many keys it holds in all."""
        if self.new_primary is None:
            return
        with self.new_primary.client(socket_timeout=5) as client:
            attempted = [w.n for w in self.writer.writes]
            self.found = present(client, self.writer.prefix, attempted)
            self.keys_on_new_primary = int(client.dbsize())


def sentinel_failover(replica_set: ReplicaGroup, sentinels: SentinelWatch, *, name: str,
                      service: str, down_after_ms: int, wait_replicas: int,
                      wait_timeout_ms: int, max_rate: float, before_kill_s: float,
                      after_s: float, live: LiveDisplay = _no_display, title: str = ""
                      ) -> FailoverRun:
    """Kill the primary Sentinel watches while a Sentinel-aware client writes; then stop
    the Sentinels and the replica set, so that the next scenario runs on a quiet machine.

    Every Sentinel's announcements are recorded; the run's ``detected_s``, ``agreed_s``
    and ``switched_s`` are the first ``+sdown``, ``+odown`` and ``+switch-master``.
    """
    # No retries inside redis-py: every failed write is seen and counted by the writer.
    with closing(sentinels.client()) as sentinel, closing(sentinel.master_for(
            service, socket_timeout=0.5, socket_connect_timeout=0.5,
            retry=Retry(NoBackoff(), 0))) as primary:
        writer = SequenceWriter(lambda: primary, max_rate=max_rate,
                                wait_replicas=wait_replicas, wait_timeout_ms=wait_timeout_ms)
        scenario = FailoverRun(name, writer, replica_set)
        recorders = {s.name.rsplit("-", 1)[1]: SentinelEvents(s.client(socket_timeout=5))
                     for s in sentinels.servers}
        try:
            for recorder in recorders.values():
                recorder.start()
            scenario.drive(before_kill_s=before_kill_s, after_s=after_s,
                           give_up_s=down_after_ms / 1000 + GIVE_UP_AFTER_S,
                           live=live, title=title)
        finally:
            for recorder in recorders.values():
                recorder.stop()
                recorder.client.close()
    scenario.events = sorted(((f"sentinel-{i}", e) for i, r in recorders.items()
                              for e in r.events), key=lambda pair: pair[1].at_s)

    def first(channel: str, about: str = "master") -> Event | None:
        return next((e for _, e in scenario.events
                     if e.channel == channel and e.data.startswith(about)), None)

    sdown, odown, switch = first("+sdown"), first("+odown"), first("+switch-master", service)
    scenario.detected_s = scenario.since_kill(sdown.at_s if sdown else None)
    scenario.agreed_s = scenario.since_kill(odown.at_s if odown else None)
    scenario.switched_s = scenario.since_kill(switch.at_s if switch else None)
    scenario.new_primary = scenario.replica_at(switched_to(switch) if switch else None)
    scenario.read_back()
    sentinels.stop()
    replica_set.stop()
    return scenario


def healthcheck_failover(replica_set: ReplicaGroup, *, interval_ms: int, timeout_ms: int,
                         failures: int, max_rate: float, before_kill_s: float,
                         after_s: float, live: LiveDisplay = _no_display, title: str = ""
                         ) -> tuple[FailoverRun, HealthCheckFailover, bool, str]:
    """Kill the primary the hand-made health check watches while a client writes.

    Returns the run, the health check, and whether (with a description) every other
    replica follows the promoted one afterwards. The replica set is stopped.
    """
    health = HealthCheckFailover(_address(replica_set.primary),
                                 [_address(r) for r in replica_set.replicas],
                                 interval_s=interval_ms / 1000, timeout_s=timeout_ms / 1000,
                                 failures=failures)
    writer = SequenceWriter(health.client, max_rate=max_rate)
    scenario = FailoverRun("health check", writer, replica_set)
    with health:
        scenario.drive(before_kill_s=before_kill_s, after_s=after_s,
                       give_up_s=failures * (interval_ms + timeout_ms) / 1000 + GIVE_UP_AFTER_S,
                       live=live, title=title)
    if health.promotions:
        promotion = scenario.promotion = health.promotions[0]
        scenario.detected_s = scenario.since_kill(promotion.down_at_s)
        scenario.switched_s = scenario.since_kill(promotion.promoted_at_s)
        scenario.new_primary = scenario.replica_at(promotion.promoted)
    scenario.read_back()
    followed, how = followers_attached(scenario)
    replica_set.stop()
    return scenario, health, followed, how


def followers_attached(scenario: FailoverRun, timeout_s: float = 5.0) -> tuple[bool, str]:
    """Every other replica replicates from the promoted one, link up (polled), and what
    each one said last."""
    new = scenario.new_primary
    if new is None or scenario.promotion is None:
        return False, "nothing was promoted"
    others = [r for r in scenario.replica_set.replicas if r is not new]
    states: list[dict[str, Any]] = []  # the last answers, attached or not
    role = ""

    def attached() -> bool:
        nonlocal states, role
        states = [info(r, "replication") for r in others]
        role = info(new, "replication")["role"]
        return role == "master" and all(
            s["role"] == "slave" and int(s["master_port"]) == new.port
            and s["master_link_status"] == "up" for s in states)

    ok = bool(poll_until(attached, timeout_s=timeout_s, interval_s=0.05, error=None,
                         what="every other replica attached to the promoted one"))
    return ok, (f"{new.name} is {role}; " + "; ".join(
        f"{r.name} is {s['role']} of port {s.get('master_port', '—')}, link "
        f"{s.get('master_link_status', '—')}" for r, s in zip(others, states, strict=True)))
