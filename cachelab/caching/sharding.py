"""Sharding: which shard holds a key, writes routed there, and proof of where keys landed.

Three routers, all keyed by a sharding key (a user id, say): :func:`modulo_shard`
(hash mod N), :class:`ShardRing` (a ketama-compatible consistent-hash ring) and
:class:`SlotMap` (Redis Cluster's 16384 hash slots, as ``CLUSTER SLOTS`` assigns them).
:class:`ShardedWriter` sends pipelined writes to independent shards by a router;
:func:`check_placement` compares where keys were found with where a router said;
:func:`write_and_audit` and :func:`count_keys_in_slots` read back what every shard (or
cluster master) holds and counted after a scheme's writes.
"""

from __future__ import annotations

import bisect
import hashlib
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cachelab.workload.measure import balance
from cachelab.workload.redis_info import command_calls

if TYPE_CHECKING:  # redis is imported by whoever builds the client
    import redis
    from redis.cluster import RedisCluster

#: libketama's points per shard: 40 MD5 digests of ``"<shard>-<i>"``, 4 points each.
KETAMA_POINTS = 160
_POINTS_PER_DIGEST = 4
RING_SIZE = 2**32


def ring_hash(text: str) -> int:
    """A stable 64-bit hash (unlike ``hash()``, the same in every process and run)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def ketama_hash(text: str) -> int:
    """libketama's key position: the first 4 bytes of ``md5(text)``, little-endian."""
    return int.from_bytes(hashlib.md5(text.encode()).digest()[:4], "little")


def ketama_points(shard: str, count: int = KETAMA_POINTS) -> list[int]:
    """A shard's ``count`` ring points as libketama places them.

    Digest ``i`` is ``md5(f"{shard}-{i}")``; each digest gives four 32-bit little-endian
    points. With the default 160 that is exactly libketama's continuum for equal weights;
    other counts continue (or cut short) the same sequence.
    """
    points: list[int] = []
    for i in range(-(-count // _POINTS_PER_DIGEST)):
        digest = hashlib.md5(f"{shard}-{i}".encode()).digest()
        points += (int.from_bytes(digest[j:j + 4], "little") for j in range(0, 16, 4))
    return points[:count]


class ShardRing:
    """A ketama-compatible consistent-hash ring: shards at ``vnodes`` points each.

    A key belongs to the first shard point at or after :func:`ketama_hash` of the key,
    wrapping around (libketama's ``ketama_get_server``). Many points per shard spread
    each shard's share evenly; adding a shard takes over only the keys that fall just
    before its new points, about ``1 / shards`` of them, and moves none between the
    shards that were already there.

    With the default 160 points a shard it routes every key as libketama and
    uhashring's ``HashRing(nodes, hash_fn="ketama")`` do (equal weights); those take a
    key whose hash equals a point exactly to the next point, a 1-in-10-million case.

    Args:
        shards: shard names (e.g. ``"shard-1"`` or ``"127.0.0.1:6380"``).
        vnodes: points per shard (libketama's 160 by default).
    """

    def __init__(self, shards: Iterable[str] = (), *, vnodes: int = KETAMA_POINTS) -> None:
        if vnodes < 1:
            raise ValueError("vnodes must be at least 1")
        self.vnodes = vnodes
        self._points: list[int] = []
        self._owner: dict[int, str] = {}
        self._shards: list[str] = []
        for shard in shards:
            self.add(shard)

    @property
    def shards(self) -> list[str]:
        return list(self._shards)

    def add(self, shard: str) -> None:
        if shard in self._shards:
            raise ValueError(f"shard {shard!r} is already on the ring")
        for point in ketama_points(shard, self.vnodes):
            # A 32-bit collision is rare (about 1 in 4 million pairs of points); the
            # first owner keeps the point, so adding a shard never moves keys between
            # the shards already there.
            if point not in self._owner:
                self._owner[point] = shard
                bisect.insort(self._points, point)
        self._shards.append(shard)

    def remove(self, shard: str) -> None:
        if shard not in self._shards:
            raise ValueError(f"shard {shard!r} is not on the ring")
        self._points = [p for p in self._points if self._owner[p] != shard]
        self._owner = {p: s for p, s in self._owner.items() if s != shard}
        self._shards.remove(shard)

    def shard_for(self, key: str) -> str:
        if not self._points:
            raise LookupError("the ring has no shards")
        index = bisect.bisect_left(self._points, ketama_hash(key)) % len(self._points)
        return self._owner[self._points[index]]

    def shares(self) -> dict[str, float]:
        """Each shard's share of the ring: the arcs that end at its points, summed.

        This is the share of keys a shard gets as the number of keys grows.
        """
        arcs = dict.fromkeys(self._shards, 0)
        if self._points:
            previous = self._points[-1] - RING_SIZE  # the arc that wraps past zero
            for point in self._points:
                arcs[self._owner[point]] += point - previous
                previous = point
        return {shard: arc / RING_SIZE for shard, arc in arcs.items()}


def modulo_shard(key: str, shards: int) -> int:
    """The shard index under plain modulo hashing: even, but a new shard moves most keys."""
    if shards < 1:
        raise ValueError("shards must be at least 1")
    return ring_hash(key) % shards


# ---------------------------------------------------------------- Redis Cluster's slots


class SlotMap:
    """Which master owns each hash slot, as one node's ``CLUSTER SLOTS`` says.

    Args:
        ranges: ``(first slot, last slot, "host:port")`` for each assigned range.
    """

    def __init__(self, ranges: Iterable[tuple[int, int, str]]) -> None:
        self.ranges = sorted(ranges)
        self._firsts = [first for first, _, _ in self.ranges]

    @classmethod
    def from_node(cls, client: redis.Redis) -> SlotMap:
        """Ask one cluster node; each entry is ``[first, last, [host, port, id, ...], ...]``."""
        reply: Any = client.execute_command("CLUSTER", "SLOTS")
        return cls((int(first), int(last), f"{_text(master[0])}:{int(master[1])}")
                   for first, last, master, *_replicas in reply)

    @property
    def masters(self) -> list[str]:
        """The masters' addresses, in slot order."""
        return list(dict.fromkeys(owner for _, _, owner in self.ranges))

    def slots_of(self, master: str) -> int:
        return sum(last - first + 1 for first, last, owner in self.ranges if owner == master)

    def owner(self, slot: int) -> str:
        index = bisect.bisect_right(self._firsts, slot) - 1
        if index < 0 or slot > self.ranges[index][1]:
            raise LookupError(f"slot {slot} is not assigned to any master")
        return self.ranges[index][2]

    def owner_of_key(self, key: str) -> str:
        return self.owner(key_slot(key))


def key_slot(key: str) -> int:
    """Redis Cluster's slot of ``key`` (CRC16 of its hash tag, or of the key, mod 16384)."""
    from redis.crc import key_slot as crc_slot

    return int(crc_slot(key.encode()))


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


# ---------------------------------------------------------------- writing and verifying


@dataclass
class WriteReport:
    """What a batch of pipelined writes did, as the router counted it."""

    acknowledged: Counter[str] = field(default_factory=Counter)  # OK replies per shard
    seconds: float = 0.0
    pipelines: int = 0  # round trips

    @property
    def writes(self) -> int:
        return sum(self.acknowledged.values())

    @property
    def writes_per_s(self) -> float:
        return self.writes / self.seconds if self.seconds else 0.0


class ShardedWriter:
    """Routes each write to one of several independent shards, pipelined per shard.

    Writes are buffered per shard and sent as one pipeline (no MULTI) when a shard's
    buffer holds ``batch`` of them, so that every shard gets full batches whatever
    the order of the keys.

    Args:
        shards: a client per shard name.
        route: the shard name for a sharding key.
        batch: writes per pipeline.
    """

    def __init__(self, shards: Mapping[str, redis.Redis], route: Callable[[str], str], *,
                 batch: int = 1000) -> None:
        if batch < 1:
            raise ValueError("batch must be at least 1")
        self.shards = dict(shards)
        self.route = route
        self.batch = batch

    def write(self, items: Iterable[tuple[str, str, str]]) -> WriteReport:
        """SET every ``(sharding key, key, value)`` on its shard; errors are raised."""
        report = WriteReport()
        pending: dict[str, list[tuple[str, str]]] = {name: [] for name in self.shards}
        start = time.perf_counter()
        for sharding_key, key, value in items:
            shard = self.route(sharding_key)
            buffer = pending[shard]
            buffer.append((key, value))
            if len(buffer) >= self.batch:
                self._flush(shard, buffer, report)
        for shard, buffer in pending.items():
            if buffer:
                self._flush(shard, buffer, report)
        report.seconds = time.perf_counter() - start
        return report

    def _flush(self, shard: str, buffer: list[tuple[str, str]], report: WriteReport) -> None:
        pipe = self.shards[shard].pipeline(transaction=False)
        for key, value in buffer:
            pipe.set(key, value)
        report.acknowledged[shard] += sum(reply is True for reply in pipe.execute())
        report.pipelines += 1
        buffer.clear()


def write_through_cluster(client: RedisCluster, items: Iterable[tuple[str, str]], *,
                          batch: int = 1000) -> WriteReport:
    """Pipelined SETs through redis-py's ``RedisCluster``, which groups them by node.

    The router here is the cluster client itself: ``acknowledged`` counts each OK under
    the node the client routes the key to (``get_node_from_key``), ``"host:port"``.
    Only building and sending the pipelines is timed, not that bookkeeping.
    """
    if batch < 1:
        raise ValueError("batch must be at least 1")
    report = WriteReport()
    chunk: list[tuple[str, str]] = []
    node_of_slot: dict[int, str] = {}  # the client's answer, asked once a slot

    def node_of(key: str) -> str:
        slot = key_slot(key)
        if slot not in node_of_slot:
            node_of_slot[slot] = client.get_node_from_key(key).name
        return node_of_slot[slot]

    def flush() -> None:
        start = time.perf_counter()
        pipe = client.pipeline()
        for key, value in chunk:
            pipe.set(key, value)
        replies = pipe.execute()
        report.seconds += time.perf_counter() - start
        for (key, _), reply in zip(chunk, replies, strict=True):
            if reply is True:
                report.acknowledged[node_of(key)] += 1
        report.pipelines += 1
        chunk.clear()

    for item in items:
        chunk.append(item)
        if len(chunk) >= batch:
            flush()
    if chunk:
        flush()
    return report


def scan_keys(client: redis.Redis, match: str = "*", count: int = 1000) -> list[str]:
    """Every key on one server (or one cluster node) matching ``match``, by SCAN."""
    return [_text(key) for key in client.scan_iter(match=match, count=count)]


@dataclass(frozen=True)
class Placement:
    """Where keys were found, against where a router said they belong."""

    expected: int  # keys the router placed
    found: int  # keys found on all shards, copies counted
    on_wrong_shard: int  # found on a shard the router did not choose
    missing: int  # placed by the router, found on no shard at all
    unexpected: int  # found, but the router never placed them
    per_shard: dict[str, int]  # keys found on each shard

    @property
    def misplaced(self) -> int:
        return self.on_wrong_shard + self.missing + self.unexpected


def check_placement(expected: Mapping[str, str], found: Mapping[str, Iterable[str]]
                    ) -> Placement:
    """Compare ``key -> shard`` from a router with ``shard -> keys`` found by scanning."""
    anywhere: set[str] = set()
    wrong = unexpected = 0
    per_shard: dict[str, int] = {}
    for shard, keys in found.items():
        count = 0
        for key in keys:
            count += 1
            anywhere.add(key)
            owner = expected.get(key)
            if owner is None:
                unexpected += 1
            elif owner != shard:
                wrong += 1
        per_shard[shard] = count
    return Placement(expected=len(expected), found=sum(per_shard.values()),
                     on_wrong_shard=wrong, missing=sum(key not in anywhere for key in expected),
                     unexpected=unexpected, per_shard=per_shard)


# ---------------------------------------------------------------- auditing a scheme


@dataclass
class SchemeAudit:
    """One routing scheme's writes and what its shards said about them afterwards."""

    scheme: str
    shards: list[str]  # shard keys (names, or the cluster's master addresses), in order
    labels: dict[str, str]  # the server's name for each
    report: WriteReport  # the router's own counts
    routed: Counter[str]  # the router's choice for every key, recomputed
    set_calls: dict[str, int]  # INFO commandstats, delta over the writes
    dbsize: dict[str, int]
    placement: Placement
    expected_share: dict[str, float]

    def found(self, shard: str) -> int:
        return self.placement.per_shard.get(shard, 0)

    @property
    def balance(self) -> float:
        """Keys found on the fullest shard over the mean (1.0 is perfectly even)."""
        return balance(self.found(s) for s in self.shards)[0]

    def disagreements(self) -> list[str]:
        """Shards whose own counts differ from the router's (acknowledged and recomputed)."""
        return [f"{self.labels[s]}: router {self.report.acknowledged[s]} (recomputed "
                f"{self.routed[s]}), SET calls {self.set_calls[s]}, DBSIZE {self.dbsize[s]}"
                for s in self.shards
                if not self.report.acknowledged[s] == self.routed[s] == self.set_calls[s]
                == self.dbsize[s]]


def audit_scheme(scheme: str, clients: Mapping[str, redis.Redis], labels: dict[str, str],
                 report: WriteReport, expected: dict[str, str], calls_before: dict[str, int],
                 expected_share: dict[str, float]) -> SchemeAudit:
    """Read back from every shard: SCAN for the keys, INFO and DBSIZE for the counts.

    ``expected`` is the router's shard for every key written, ``calls_before`` each
    shard's SET calls before the writes.
    """
    found = {name: scan_keys(client, "user:*") for name, client in clients.items()}
    return SchemeAudit(
        scheme=scheme, shards=list(clients), labels=labels, report=report,
        routed=Counter(expected.values()),
        set_calls={n: command_calls(c, ["set"]) - calls_before[n] for n, c in clients.items()},
        dbsize={n: int(c.dbsize()) for n, c in clients.items()},
        placement=check_placement(expected, found), expected_share=expected_share)


def write_and_audit(scheme: str, clients: Mapping[str, redis.Redis], route: Callable[[str], str],
                    keys: Sequence[tuple[str, str]], value: str, *, batch: int,
                    expected_share: dict[str, float]) -> SchemeAudit:
    """Empty the shards, write ``(sharding key, key)`` pairs by ``route``, audit them.

    Every shard starts empty, so DBSIZE and SCAN see this scheme's keys only.
    """
    for client in clients.values():
        client.flushall()
    before = {name: command_calls(client, ["set"]) for name, client in clients.items()}
    report = ShardedWriter(clients, route, batch=batch).write(
        (sharding_key, key, value) for sharding_key, key in keys)
    expected = {key: route(sharding_key) for sharding_key, key in keys}
    return audit_scheme(scheme, clients, {name: name for name in clients}, report, expected,
                        before, expected_share)


@dataclass(frozen=True)
class MasterSlotCount:
    """``CLUSTER COUNTKEYSINSLOT`` over one master's slots, against the expected counts."""

    master: str  # "host:port", as CLUSTER SLOTS names it
    slots: int  # slots the master owns
    with_keys: int  # of those, slots holding at least one key
    counted: int  # keys the master counted in its slots
    expected: int  # keys whose CRC16 slot is one of them
    differ: int  # slots whose count is not the expected one


def count_keys_in_slots(masters: Mapping[str, redis.Redis], slot_map: SlotMap,
                        expected: Mapping[int, int]) -> list[MasterSlotCount]:
    """Ask every master for the key count of each slot it owns, one pipeline a master.

    ``expected`` is the number of keys per slot as the writer computed it (CRC16).
    """
    counts = []
    for address, client in masters.items():
        owned = [slot for first, last, owner in slot_map.ranges if owner == address
                 for slot in range(first, last + 1)]
        pipe = client.pipeline(transaction=False)
        for slot in owned:
            pipe.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot)
        replies = [int(n) for n in pipe.execute()]
        counts.append(MasterSlotCount(
            master=address, slots=len(owned), with_keys=sum(1 for n in replies if n),
            counted=sum(replies), expected=sum(expected.get(slot, 0) for slot in owned),
            differ=sum(n != expected.get(slot, 0)
                       for slot, n in zip(owned, replies, strict=True))))
    return counts
