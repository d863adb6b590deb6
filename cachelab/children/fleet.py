"""The parent side of the invalidation lesson: a fleet of service processes, driven
through one seeded stream of updates and reads and checked against Redis.

Each strategy (no bus, pub/sub, stream, tracking) plays the same stream on its own copy
of the data; :func:`play_stream` then disconnects one service for real, keeps writing,
reconnects it and counts what it missed.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from cachelab.caching.invalidation import Bus
from cachelab.children.service import (
    ServiceProcess,
    connection_name,
    data_key,
    drops_key,
    log_key,
)
from cachelab.servers.process import stop_all
from cachelab.workload.measure import LatencyHistogram, key_sampler
from cachelab.workload.poll import poll_until

if TYPE_CHECKING:
    import redis

    from cachelab.lab import Lab
    from cachelab.servers.node import RedisNode


class Step(NamedTuple):
    """One update of the seeded stream: who writes which profile, and what is read after."""

    item: int
    writer: int
    reads: tuple[int, ...]


class Update(NamedTuple):
    """One update as sent: its sequence number, key, writer, and the writer's clock."""

    seq: int
    key: str
    writer: str
    publish_ns: int


@dataclass
class BusOutcome:
    """What one strategy's play of the stream measured."""

    bus: Bus
    reads: int = 0
    stale_reads: int = 0  # reads from connected services, after the window
    late: int = 0  # (update, service) pairs not dropped within the window
    propagation: LatencyHistogram = field(default_factory=LatencyHistogram)
    updates_while_disconnected: int = 0
    missed: int = 0
    reads_after_reconnect: int = 0
    stale_after_reconnect: int = 0
    flushed: int = 0
    gone_while_disconnected: bool = False
    back_after_reconnect: bool = False


class InvalidationDriver:
    """The lab's side: sends updates and reads to the services and checks them with Redis.

    ``prefix`` (the server's ``keys.prefix``, as the services get it) starts every key and
    connection name.
    """

    def __init__(self, client: redis.Redis, fleet: list[ServiceProcess], window_s: float,
                 prefix: str = ""):
        self.client = client
        self.fleet = fleet
        self.window_s = window_s
        self.prefix = prefix
        self._seq = itertools.count(1)

    def update(self, bus: Bus, writer: ServiceProcess, item: int) -> Update:
        seq = next(self._seq)
        key = data_key(bus, item, self.prefix)
        reply = writer.request("update", bus=bus, key=key, seq=seq, bio=f"edited by update {seq}")
        return Update(seq, key, writer.name, int(reply["publish_ns"]))

    def await_drops(self, bus: Bus, update: Update, names: list[str]) -> dict[str, int]:
        """Drop times of ``update`` by each of ``names``, waiting at most the window."""
        dropped: dict[str, int] = {}

        def all_dropped() -> bool:
            pending = [name for name in names if name not in dropped]
            pipe = self.client.pipeline(transaction=False)
            for name in pending:
                pipe.hget(drops_key(bus, name, self.prefix), update.key)
            for name, value in zip(pending, pipe.execute(), strict=True):
                if value is not None and int(value) >= update.publish_ns:
                    dropped[name] = int(value)
            return len(dropped) == len(names)

        poll_until(all_dropped, timeout_s=self.window_s, interval_s=0.0005, error=None,
                   what="the update dropped by every service")
        return dropped

    def read(self, bus: Bus, readers: list[ServiceProcess], items: list[int]) -> tuple[int, int]:
        """Read ``items`` from every reader at once; returns (reads, stale reads)."""
        keys = [data_key(bus, item, self.prefix) for item in items]
        sent = [(service, service.send("read", bus=bus, keys=keys)) for service in readers]
        replies = [service.receive(command_id) for service, command_id in sent]
        values: list[Any] = self.client.mget(keys)
        truth = [json.loads(value)["version"] for value in values]
        stale = sum(served is None or served < now
                    for reply in replies
                    for served, now in zip(reply["versions"], truth, strict=True))
        return len(readers) * len(keys), stale

    def present(self, service: str, bus: Bus) -> bool:
        """Whether ``service``'s connection to ``bus`` is in CLIENT LIST, by its name."""
        name = connection_name(service, bus, self.prefix)
        return any(c.get("name") == name for c in self.client.client_list())

    def logged(self, bus: Bus, name: str) -> list[tuple[int, str, int]]:
        """``(seq, key, drop ns)`` of every invalidation ``name`` handled on ``bus``."""
        entries = []
        lines: list[Any] = self.client.lrange(log_key(bus, name, self.prefix), 0, -1)
        for line in lines:
            seq, key, drop_ns = str(line).split()
            entries.append((int(seq), key, int(drop_ns)))
        return entries


def play_stream(lab: Lab, driver: InvalidationDriver, bus: Bus, steps: list[Step],
                away_steps: list[Step], n_keys: int) -> BusOutcome:
    """Warm every cache, play the stream on ``bus``, then the disconnect when it has a bus."""
    fleet, outcome = driver.fleet, BusOutcome(bus)
    driver.read(bus, fleet, list(range(1, n_keys + 1)))  # the warm-up is not counted

    def step_through(step: Step, connected: list[ServiceProcess]) -> Update:
        writer = fleet[step.writer]
        update = driver.update(bus, writer, step.item)
        if bus != "none":
            others = [s.name for s in connected if s is not writer]
            dropped = driver.await_drops(bus, update, others)
            outcome.late += len(others) - len(dropped)
            for drop_ns in dropped.values():
                outcome.propagation.record_ns(drop_ns - update.publish_ns)
        reads, stale = driver.read(bus, connected, [step.item, *step.reads])
        outcome.reads += reads
        outcome.stale_reads += stale
        return update

    for step in lab.track(steps, f"updates ({bus})", len(steps)):
        step_through(step, fleet)
    if bus == "none":
        return outcome

    away, others = fleet[-1], fleet[:-1]
    away.request("disconnect", bus=bus)
    outcome.gone_while_disconnected = not driver.present(away.name, bus)
    updates = [step_through(step, others) for step in away_steps]
    outcome.updates_while_disconnected = len(updates)
    outcome.flushed = int(away.request("connect", bus=bus)["flushed"])
    outcome.back_after_reconnect = driver.present(away.name, bus)
    changed = sorted({step.item for step in away_steps})
    if bus != "tracking":
        # A fence: once the reconnected service dropped a later update, it has handled
        # everything its bus was going to give it (both deliver in order).
        fence = next((i for i in range(1, n_keys + 1) if i not in changed), changed[0])
        fence_update = driver.update(bus, others[0], fence)
        outcome.late += 1 - len(driver.await_drops(bus, fence_update, [away.name]))
    handled = driver.logged(bus, away.name)
    if bus == "tracking":  # Redis's messages name keys, not writes
        outcome.missed = sum(not any(key == u.key and drop_ns >= u.publish_ns
                                     for _seq, key, drop_ns in handled) for u in updates)
    else:
        seen = {seq for seq, _key, _drop_ns in handled}
        outcome.missed = sum(u.seq not in seen for u in updates)
    outcome.reads_after_reconnect, outcome.stale_after_reconnect = driver.read(
        bus, [away], changed)
    reads, stale = driver.read(bus, others, changed)
    outcome.reads += reads
    outcome.stale_reads += stale
    return outcome


def seeded_stream(lab: Lab, n_keys: int, services: int, updates: int, away_updates: int,
                  reads_per_update: int) -> tuple[list[Step], list[Step]]:
    """The stream every strategy plays: Zipf-popular profiles, random writers."""
    rng = lab.rng("writers")
    next_item = key_sampler(n_keys, "zipf", zipf_s=1.1, rng=lab.rng("profiles"))
    next_read = key_sampler(n_keys, "zipf", zipf_s=1.1, rng=lab.rng("reads"))

    def step(writers: int) -> Step:
        return Step(next_item(), rng.randrange(writers),
                    tuple(next_read() for _ in range(reads_per_update)))

    # While the last service is away, only the others write.
    return ([step(services) for _ in range(updates)],
            [step(services - 1) for _ in range(away_updates)])


def start_services(lab: Lab, client: redis.Redis, server: RedisNode, services: int
                   ) -> list[ServiceProcess]:
    """Start the services at once (each pays Python's start-up), stopped with the lab."""
    fleet = []
    for i in range(1, services + 1):
        service = ServiceProcess(client, name=f"svc-{i}", redis_port=server.port,
                                 log_path=lab.workdir / f"svc-{i}.log",
                                 key_prefix=server.keys.prefix, env=server.child_env())
        lab.callback(service.stop)
        fleet.append(service.launch())
    lab.callback(lambda: stop_all(fleet))  # runs before the callbacks above
    for service in fleet:
        service.wait_ready()
    return fleet
