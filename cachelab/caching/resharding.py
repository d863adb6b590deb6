"""Adding a shard: which keys move, moving exactly those under live traffic, and
resharding Redis Cluster slots to a new node as ``redis-cli --cluster reshard`` does.

Standalone shards are routed by the application (:class:`MigratingRouter`), and keys
move with ``MIGRATE`` (:func:`migrate_moved`). In Redis Cluster the servers route:
slots move with ``CLUSTER SETSLOT`` and ``MIGRATE`` (:class:`SlotMigration`) while a
cluster client follows the ``ASK`` and ``MOVED`` redirections. :class:`LiveTraffic`
reads and writes during either move and knows every value a read must return, and
:func:`audit` compares every node's keys with that truth afterwards.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from cachelab.caching.sharding import ShardRing, modulo_shard
from cachelab.workload.poll import poll_until
from cachelab.workload.redis_info import info_cluster, node_id
from cachelab.workload.threads import BackgroundWorker

if TYPE_CHECKING:  # redis is imported by whoever builds the clients
    import redis

    from cachelab.workload.redis_info import Node

CLUSTER_SLOTS = 16384
Scheme = Literal["modulo", "ring"]


# --- which keys move ---------------------------------------------------------------


@dataclass(frozen=True)
class Movement:
    """Which keys change owner when the shards change, and between which owners.

    Attributes:
        total: keys considered.
        moved: ``key -> (old owner, new owner)`` for every key whose owner changed.
    """

    total: int
    moved: dict[str, tuple[str, str]]

    @property
    def fraction(self) -> float:
        return len(self.moved) / self.total if self.total else 0.0

    def routes(self) -> Counter[tuple[str, str]]:
        """How many keys go from each old owner to each new one."""
        return Counter(self.moved.values())

    def not_to(self, owner: str) -> int:
        """Moved keys whose new owner is not ``owner`` (with a ring: not the new shard)."""
        return sum(new != owner for _old, new in self.moved.values())


def movement(keys: Iterable[str], before: Callable[[str], str],
             after: Callable[[str], str]) -> Movement:
    """Compare each key's owner under ``before`` and ``after`` (two routing functions)."""
    total = 0
    moved: dict[str, tuple[str, str]] = {}
    for key in keys:
        total += 1
        old, new = before(key), after(key)
        if old != new:
            moved[key] = (old, new)
    return Movement(total, moved)


def modulo_owner(shards: Sequence[str]) -> Callable[[str], str]:
    """Route by ``hash(key) % len(shards)``, naming the shard rather than its index."""
    names = list(shards)
    return lambda key: names[modulo_shard(key, len(names))]


def expected_moved_fraction(scheme: Scheme, shards_before: int) -> float:
    """The share of keys that change owner going from N shards to N+1, in theory.

    Modulo: a key stays only if ``h % N == h % (N+1)``, true for N of every N(N+1)
    consecutive hashes, so N/(N+1) move. A ring: the new shard takes an even share,
    1/(N+1), and nothing moves between the shards that were there.
    """
    n = shards_before
    if n < 1:
        raise ValueError("there must be at least one shard before")
    return n / (n + 1) if scheme == "modulo" else 1 / (n + 1)


# --- live traffic --------------------------------------------------------------------


@dataclass
class TrafficCounts:
    """What the traffic did and saw in one phase."""

    reads: int = 0
    writes: int = 0
    errors: int = 0
    wrong_values: int = 0  # a read returned a value other than the last one written
    missing: int = 0       # a read found no value: the key was lost, at least for a while

    @property
    def ops(self) -> int:
        return self.reads + self.writes


class LiveTraffic(BackgroundWorker):
    """One thread of seeded reads and writes on a fixed set of keys, checked as it goes.

    Every write comes from this thread, so it knows what each key must hold: a read
    that returns anything else is counted as wrong, a read that returns nothing as
    missing. Any exception the client raises is counted as an error, by type (a
    client's own bug is an error its users see too). A write that raised may or may
    not have landed; both values are then accepted until a read or a later write
    settles which. Counts are kept per ``phase``, a name the owner sets while the
    thread runs. The thread is paced at ``rate_per_s`` and stops by itself after
    ``max_s``.

    Args:
        get: reads a key (``None`` when absent).
        put: writes a key.
        values: every key and its current value.
        rng: draws keys and the read/write mix.
        write_ratio: the share of operations that are writes.
        rate_per_s: operations per second at most.
        max_s: the longest the thread runs.
    """

    def __init__(self, get: Callable[[str], str | None], put: Callable[[str, str], Any],
                 values: Mapping[str, str], *, rng: random.Random, write_ratio: float = 0.2,
                 rate_per_s: float = 2000.0, max_s: float = 60.0,
                 phase: str = "before") -> None:
        if not values:
            raise ValueError("the traffic needs keys to read and write")
        if rate_per_s <= 0 or max_s <= 0:
            raise ValueError("rate_per_s and max_s must be positive")
        self.get = get
        self.put = put
        self.expected: dict[str, str] = dict(values)
        self.unsettled: dict[str, str] = {}  # key -> the value of a write that raised
        self.rng = rng
        self.write_ratio = write_ratio
        self.rate_per_s = rate_per_s
        self.max_s = max_s
        self.phase = phase
        self.counts: dict[str, TrafficCounts] = {}
        self.error_types: Counter[str] = Counter()
        super().__init__("the traffic thread")
        self._keys = sorted(values)
        self._writes = 0

    def _count(self) -> TrafficCounts:
        return self.counts.setdefault(self.phase, TrafficCounts())

    def snapshot(self) -> dict[str, int]:
        """Counts of the current phase; only reads, safe to call from another thread."""
        c = self.counts.get(self.phase, TrafficCounts())
        return {"phase ops": c.ops, "errors": c.errors,
                "wrong or missing": c.wrong_values + c.missing}

    def total(self) -> TrafficCounts:
        out = TrafficCounts()
        for c in list(self.counts.values()):
            out.reads += c.reads
            out.writes += c.writes
            out.errors += c.errors
            out.wrong_values += c.wrong_values
            out.missing += c.missing
        return out

    def _work(self) -> None:
        start = time.monotonic()
        interval = 1 / self.rate_per_s
        for n in range(int(self.rate_per_s * self.max_s)):
            ahead = start + n * interval - time.monotonic()
            if self._stop.wait(max(ahead, 0)):
                return
            key = self.rng.choice(self._keys)
            counts = self._count()
            if self.rng.random() < self.write_ratio:
                self._write(key, counts)
            else:
                self._read(key, counts)

    def _failed(self, counts: TrafficCounts, exc: Exception) -> None:
        counts.errors += 1
        self.error_types[type(exc).__name__] += 1

    def _write(self, key: str, counts: TrafficCounts) -> None:
        self._writes += 1
        value = f"{key}#{self._writes}"
        counts.writes += 1
        try:
            self.put(key, value)
        except Exception as exc:  # whatever the client raised is an error the user saw
            self._failed(counts, exc)
            self.unsettled[key] = value
            return
        self.expected[key] = value
        self.unsettled.pop(key, None)

    def _read(self, key: str, counts: TrafficCounts) -> None:
        counts.reads += 1
        try:
            value = self.get(key)
        except Exception as exc:
            self._failed(counts, exc)
            return
        if value is None:
            counts.missing += 1
        elif value == self.unsettled.get(key):  # the write that raised did land
            self.expected[key] = value
            del self.unsettled[key]
        elif value != self.expected[key]:
            counts.wrong_values += 1

    def wait_for(self, ops: int, timeout_s: float = 5.0) -> bool:
        """Wait until the current phase has seen ``ops`` operations; False on timeout, or
        when the thread has ended short of them."""
        def seen() -> bool:
            return self.counts.get(self.phase, TrafficCounts()).ops >= ops

        poll_until(lambda: seen() or not self.running, timeout_s=timeout_s, interval_s=0.005,
                   what=f"{ops} operations of live traffic", error=None)
        return seen()


# --- standalone shards ---------------------------------------------------------------


@dataclass
class RouterCounts:
    """Reads the router served during a migration, by where it found the key."""

    new_owner: int = 0  # found at once on the owner under the new ring
    fallback: int = 0   # missed there, found on the old owner: a miss without fallback
    reread: int = 0     # missed on both, found on the new owner by a third read
    missing: int = 0    # found nowhere


class MigratingRouter:
    """Routes keys over standalone shards while a new shard takes over its keys.

    Before a migration every operation goes to the key's owner on the current ring.
    During one (:meth:`begin`) writes go to the owner on the new ring, and reads try
    the new owner, then the old owner (a key not moved yet), then the new owner once
    more: ``MIGRATE`` writes a key on the target before it deletes it on the source,
    so a key that moved between the first two reads is on the new owner by the third.
    :meth:`finish` makes the new ring the only one. Deletes are not supported: one
    during a migration would have to reach both owners.

    Its read counts are plain integers: call :meth:`get` and :meth:`set` from one
    thread; :meth:`begin` and :meth:`finish` may come from another (the migrator's).

    Args:
        shards: a client per shard name, the new shard's included once it runs.
        ring: the ring the data is on now.
    """

    def __init__(self, shards: Mapping[str, redis.Redis], ring: ShardRing) -> None:
        self.shards = dict(shards)
        self.ring = ring
        self.next_ring: ShardRing | None = None
        self.counts = RouterCounts()

    @property
    def migrating(self) -> bool:
        return self.next_ring is not None

    def begin(self, ring: ShardRing, shards: Mapping[str, redis.Redis] | None = None) -> None:
        """Start routing writes by ``ring``; ``shards`` adds the new shards' clients."""
        self.shards.update(shards or {})
        missing = set(ring.shards) - set(self.shards)
        if missing:
            raise ValueError(f"no client for shard(s) {sorted(missing)}")
        self.next_ring = ring

    def finish(self) -> None:
        """Every moved key is on its new owner: route by the new ring alone."""
        if self.next_ring is None:
            raise RuntimeError("no migration is in progress")
        self.ring, self.next_ring = self.next_ring, None

    def _owner(self, key: str) -> redis.Redis:
        ring = self.next_ring or self.ring
        return self.shards[ring.shard_for(key)]

    def set(self, key: str, value: str) -> None:
        self._owner(key).set(key, value)

    def get(self, key: str) -> str | None:
        next_ring = self.next_ring  # read once: finish() may run in another thread
        if next_ring is None:
            return self.shards[self.ring.shard_for(key)].get(key)  # type: ignore[return-value]
        new = self.shards[next_ring.shard_for(key)]
        old = self.shards[self.ring.shard_for(key)]
        value: str | None = new.get(key)  # type: ignore[assignment]
        if value is not None:
            self.counts.new_owner += 1
        elif old is not new and (value := old.get(key)) is not None:  # type: ignore[assignment]
            self.counts.fallback += 1
        elif old is not new and (value := new.get(key)) is not None:  # type: ignore[assignment]
            self.counts.reread += 1
        else:
            self.counts.missing += 1
        return value


@dataclass
class MigrationReport:
    """What moving keys between standalone shards did."""

    planned: int = 0
    migrated: int = 0          # moved by MIGRATE
    newer_on_target: int = 0   # written on the new owner first; the source's copy dropped
    calls: int = 0
    seconds: float = 0.0

    @property
    def settled(self) -> int:
        return self.migrated + self.newer_on_target


def migrate_keys(source: redis.Redis, target: tuple[str, int], keys: Sequence[str], *,
                 batch: int = 100, timeout_ms: int = 5000,
                 report: MigrationReport | None = None) -> MigrationReport:
    """Move ``keys`` from ``source`` to the server at ``target`` with ``MIGRATE ... KEYS``.

    ``MIGRATE`` restores each key on the target, then deletes it on the source, so a
    key is always on one side at least. Without ``REPLACE`` a key the target already
    holds is refused (``BUSYKEY``) and stays on the source: under
    :class:`MigratingRouter` the target's copy was written during the migration and is
    newer, so the source's copy is deleted. Keys absent from the source are skipped
    by ``MIGRATE`` (and counted as migrated: nothing of them is left behind).
    """
    from redis.exceptions import ResponseError

    if batch < 1:
        raise ValueError("batch must be at least 1")
    report = report or MigrationReport()
    start = time.perf_counter()
    host, port = target
    for i in range(0, len(keys), batch):
        chunk = list(keys[i:i + batch])
        report.planned += len(chunk)
        report.calls += 1
        try:
            source.execute_command("MIGRATE", host, port, "", 0, timeout_ms, "KEYS", *chunk)
            left: list[str] = []
        except ResponseError as exc:
            if "BUSYKEY" not in str(exc):
                raise
            pipe = source.pipeline(transaction=False)
            for key in chunk:
                pipe.exists(key)
            left = [key for key, there in zip(chunk, pipe.execute(), strict=True) if there]
            source.delete(*left)
        report.newer_on_target += len(left)
        report.migrated += len(chunk) - len(left)
    report.seconds += time.perf_counter() - start
    return report


def migrate_moved(moves: Movement, shards: Mapping[str, redis.Redis],
                  addresses: Mapping[str, tuple[str, int]], *, batch: int = 100,
                  timeout_ms: int = 5000) -> MigrationReport:
    """Move every key of ``moves`` from its old owner to its new one, and nothing else."""
    by_route: dict[tuple[str, str], list[str]] = {}
    for key, route in moves.moved.items():
        by_route.setdefault(route, []).append(key)
    report = MigrationReport()
    for (old, new), keys in sorted(by_route.items()):
        migrate_keys(shards[old], addresses[new], keys, batch=batch, timeout_ms=timeout_ms,
                     report=report)
    return report


# --- Redis Cluster -------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterNode:
    """A cluster node as the resharding sees it: its id, address and a plain client."""

    node_id: str
    host: str
    port: int
    client: redis.Redis


def slot_owners(client: redis.Redis) -> list[str | None]:
    """The id of the master that owns each slot, as this node sees it (None: unowned)."""
    owners: list[str | None] = [None] * CLUSTER_SLOTS
    for entry in client.execute_command("CLUSTER", "SLOTS"):
        low, high, master = int(entry[0]), int(entry[1]), entry[2]
        for slot in range(low, high + 1):
            owners[slot] = str(master[2])
    return owners


def plan_reshard(owners: Sequence[str | None], sources: Sequence[str], slots: int
                 ) -> dict[str, list[int]]:
    """Take ``slots`` slots in even shares from ``sources``, each giving its highest.

    ``redis-cli --cluster reshard --cluster-from all`` takes from every master too, in
    proportion to what it holds; with masters holding even shares that is even.
    """
    if not sources:
        raise ValueError("there must be a source to take slots from")
    plan: dict[str, list[int]] = {}
    for i, source in enumerate(sources):
        share = slots // len(sources) + (1 if i < slots % len(sources) else 0)
        held = [slot for slot, owner in enumerate(owners) if owner == source]
        if share > len(held):
            raise ValueError(f"{source} holds {len(held)} slots, fewer than {share}")
        plan[source] = held[len(held) - share:] if share else []
    return plan


@dataclass
class ReshardReport:
    """What moving slots to a new node did."""

    slots_moved: int = 0
    keys_moved: int = 0
    migrate_calls: int = 0
    steps: int = 0
    seconds: float = 0.0
    by_source: dict[str, int] = field(default_factory=dict)


class SlotMigration:
    """Moves slots to ``target`` the way ``redis-cli --cluster reshard`` does, batched.

    For each slot: ``CLUSTER SETSLOT <slot> IMPORTING <source>`` on the target, then
    ``MIGRATING <target>`` on the source. From then on the source serves the keys it
    still has and answers ``ASK`` for the others, which the target serves to a client
    that sent ``ASKING``. ``CLUSTER GETKEYSINSLOT`` and ``MIGRATE ... KEYS`` move the
    keys until the slot is empty on the source, and ``SETSLOT <slot> NODE <target>``
    ends it, on the target first (so that it never sends a client back), then the
    source, then every other master (so that none waits for gossip to learn it). A
    step does this for up to ``slots_per_step`` slots of one source, each command
    kind pipelined to each node; iterate :meth:`steps` to run it.

    Args:
        nodes: every master, the target included.
        target: the node the slots go to.
        plan: the slots to take from each source, by source node id.
        slots_per_step: slots moved together.
        keys_per_migrate: keys per ``MIGRATE`` call.
        timeout_ms: ``MIGRATE``'s timeout.
    """

    def __init__(self, nodes: Sequence[ClusterNode], target: ClusterNode,
                 plan: Mapping[str, Sequence[int]], *, slots_per_step: int = 32,
                 keys_per_migrate: int = 100, timeout_ms: int = 5000) -> None:
        if slots_per_step < 1 or keys_per_migrate < 1:
            raise ValueError("slots_per_step and keys_per_migrate must be at least 1")
        self.nodes = {n.node_id: n for n in nodes}
        if target.node_id not in self.nodes:
            raise ValueError("the target must be one of the nodes")
        self.target = target
        self.plan = {source: list(slots) for source, slots in plan.items()}
        self.slots_per_step = slots_per_step
        self.keys_per_migrate = keys_per_migrate
        self.timeout_ms = timeout_ms
        self.report = ReshardReport()

    @property
    def step_count(self) -> int:
        per = self.slots_per_step
        return sum(-(-len(slots) // per) for slots in self.plan.values())

    def steps(self) -> Iterator[int]:
        """Run the migration a step at a time, yielding the slots each step moved."""
        start = time.perf_counter()
        try:
            for source_id, slots in self.plan.items():
                source = self.nodes[source_id]
                for i in range(0, len(slots), self.slots_per_step):
                    chunk = slots[i:i + self.slots_per_step]
                    self._move(source, chunk)
                    self.report.steps += 1
                    self.report.slots_moved += len(chunk)
                    self.report.by_source[source_id] = (
                        self.report.by_source.get(source_id, 0) + len(chunk))
                    yield len(chunk)
        finally:
            self.report.seconds += time.perf_counter() - start

    def run(self) -> ReshardReport:
        for _ in self.steps():
            pass
        return self.report

    @staticmethod
    def _each(node: ClusterNode, commands: Iterable[Sequence[Any]]) -> list[Any]:
        pipe = node.client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return pipe.execute()

    def _setslot(self, node: ClusterNode, slots: Sequence[int], *state: str) -> None:
        self._each(node, (("CLUSTER", "SETSLOT", slot, *state) for slot in slots))

    def _move(self, source: ClusterNode, slots: Sequence[int]) -> None:
        target = self.target
        self._setslot(target, slots, "IMPORTING", source.node_id)
        self._setslot(source, slots, "MIGRATING", target.node_id)
        pending = list(slots)
        # Every round empties a slot or moves keys_per_migrate of its keys; the bound
        # only stops a loop that would never end if keys kept appearing.
        rounds = 0
        while pending and rounds < 1_000_000:
            rounds += 1
            keys = self._each(source, (("CLUSTER", "GETKEYSINSLOT", slot, self.keys_per_migrate)
                                       for slot in pending))
            pending = [slot for slot, found in zip(pending, keys, strict=True) if found]
            batches = [found for found in keys if found]
            if batches:
                self._each(source, (("MIGRATE", target.host, target.port, "", 0,
                                     self.timeout_ms, "KEYS", *found) for found in batches))
                self.report.migrate_calls += len(batches)
                self.report.keys_moved += sum(len(found) for found in batches)
        if pending:
            raise RuntimeError(f"slots {pending[:5]} did not empty on {source.node_id}")
        for node in (target, source, *(n for n in self.nodes.values()
                                        if n.node_id not in (target.node_id, source.node_id))):
            self._setslot(node, slots, "NODE", target.node_id)


# --- writing and reading every node ----------------------------------------------


def load(values: Mapping[str, str], owner: Callable[[str], str],
         clients: Mapping[str, redis.Redis], *, cluster: bool = False,
         chunk: int = 1000) -> Counter[str]:
    """Write every key to the server that owns it, ``chunk`` keys a round trip.

    A cluster node refuses a multi-key command across slots, so with ``cluster``
    each key is its own SET in a pipeline; otherwise one MSET writes a chunk.
    Returns how many keys each owner received.
    """
    by_owner: dict[str, list[tuple[str, str]]] = {}
    for key, value in values.items():
        by_owner.setdefault(owner(key), []).append((key, value))
    for name, items in by_owner.items():
        client = clients[name]
        for i in range(0, len(items), chunk):
            part = items[i:i + chunk]
            if cluster:
                pipe = client.pipeline(transaction=False)
                for key, value in part:
                    pipe.set(key, value)
                pipe.execute()
            else:
                client.mset(dict(part))
    return Counter({name: len(items) for name, items in by_owner.items()})


def read_all(client: redis.Redis, *, cluster: bool = False, chunk: int = 1000
             ) -> dict[str, str | None]:
    """Every key on one server with its value, ``chunk`` keys a round trip.

    With ``cluster`` the GETs are pipelined one a key: a cluster node refuses a
    cross-slot MGET.
    """
    keys = [str(k) for k in client.scan_iter(count=1000)]
    values: dict[str, str | None] = {}
    for i in range(0, len(keys), chunk):
        part = keys[i:i + chunk]
        if cluster:
            pipe = client.pipeline(transaction=False)
            for key in part:
                pipe.get(key)
            found = pipe.execute()
        else:
            found = client.mget(part)
        values.update(zip(part, found, strict=True))
    return values


@dataclass(frozen=True)
class Audit:
    """Every node's keys compared with the keys and values that must be there."""

    expected: int
    found: int          # distinct expected keys found on some node
    lost: list[str]     # found on no node
    wrong_value: list[str]
    misplaced: list[str]   # found on a node that does not own it
    duplicated: list[str]  # found on more than one node
    unexpected: list[str]  # found, but never written

    @property
    def ok(self) -> bool:
        return self.found == self.expected and not (
            self.lost or self.wrong_value or self.misplaced or self.duplicated
            or self.unexpected)

    def describe(self) -> str:
        parts = [f"{self.found}/{self.expected} keys found"]
        for name in ("lost", "wrong_value", "misplaced", "duplicated", "unexpected"):
            keys: list[str] = getattr(self, name)
            if keys:
                parts.append(f"{len(keys)} {name.replace('_', ' ')} (e.g. {keys[0]})")
        return ", ".join(parts)


def audit(found: Mapping[str, Mapping[str, str | None]], expected: Mapping[str, str],
          owner: Callable[[str], str], *, also_accept: Mapping[str, str] | None = None
          ) -> Audit:
    """Compare what each node holds (``found``, by node name) with ``expected``.

    Args:
        found: every key and value read back from each node.
        expected: every key and the value it must hold.
        owner: the node name each key must be on.
        also_accept: another acceptable value per key (a write that raised may have landed).
    """
    also_accept = also_accept or {}
    where: dict[str, list[str]] = {}
    for node, values in found.items():
        for key in values:
            where.setdefault(key, []).append(node)
    lost, wrong, misplaced, duplicated = [], [], [], []
    for key, value in expected.items():
        nodes = where.get(key, [])
        if not nodes:
            lost.append(key)
            continue
        if len(nodes) > 1:
            duplicated.append(key)
        if owner(key) not in nodes:
            misplaced.append(key)
        if any(found[n][key] not in (value, also_accept.get(key, value)) for n in nodes):
            wrong.append(key)
    unexpected = sorted(set(where) - set(expected))
    return Audit(len(expected), len(set(where) & set(expected)), lost, wrong, misplaced,
                 duplicated, unexpected)


# --- what the exercise reports --------------------------------------------------------

TRAFFIC_COLUMNS = ["phase", "ops", "reads", "writes", "errors", "wrong values", "missing"]


def traffic_rows(traffic: LiveTraffic) -> list[list[object]]:
    """One row of :data:`TRAFFIC_COLUMNS` per phase of ``traffic``."""
    return [[phase, c.ops, c.reads, c.writes, c.errors, c.wrong_values, c.missing]
            for phase, c in traffic.counts.items()]


def describe_movement(name: str, moves: Movement, theory: float) -> str:
    """How many keys moved, against the theory's fraction."""
    return (f"{name}: {len(moves.moved)}/{moves.total} keys moved = {moves.fraction:.3f}, "
            f"theory {theory:.3f}, off by {abs(moves.fraction - theory):.3f}")


def cluster_nodes(masters: Sequence[Node], clients: Mapping[str, redis.Redis]
                  ) -> tuple[list[ClusterNode], dict[str, str]]:
    """The masters as the resharding sees them (``clients`` by server name), and each
    one's server name by node id."""
    nodes = [ClusterNode(node_id(s), s.host, s.port, clients[s.name]) for s in masters]
    return nodes, {node.node_id: s.name for node, s in zip(nodes, masters, strict=True)}


def await_one_slot_map(nodes: Sequence[ClusterNode], names: Mapping[str, str],
                       masters: Sequence[Node], timeout_s: float
                       ) -> tuple[dict[str, list[str | None]], dict[str, str]]:
    """Wait (bounded) until every master reports the same slot map and cluster_state:ok.

    Returns what they said last, settled or not, by server name: each node's slot map
    and each master's cluster_state; the caller judges them.
    """
    views: dict[str, list[str | None]] = {}
    states: dict[str, str] = {}

    def settled() -> bool:
        nonlocal views, states
        views = {names[node.node_id]: slot_owners(node.client) for node in nodes}
        states = {m.name: info_cluster(m)["cluster_state"] for m in masters}
        return (all(state == "ok" for state in states.values())
                and len({tuple(view) for view in views.values()}) == 1)

    poll_until(settled, timeout_s=timeout_s, interval_s=0.05, error=None,
               what="every master to report one slot map and cluster_state:ok")
    return views, states
