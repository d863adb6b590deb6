"""Reading what a Redis node says of itself: INFO counters, replication progress, its
clocks and its cluster view. Nothing here writes to a node."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:  # redis is imported by whoever builds the client
    import redis

CLUSTER_SLOTS = 16384


class Node(Protocol):
    """One Redis node as the harness and the strategies see it: a name, an address and
    clients. A server the lab starts, a container and a part of an existing deployment
    all are one: the read-only view of :class:`cachelab.servers.node.RedisNode`."""

    @property
    def name(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    def client(self, **kwargs: Any) -> redis.Redis: ...


def info(server: Node, section: str) -> dict[str, Any]:
    """One INFO section, from a short-lived client (the topology may be changing)."""
    with server.client(socket_timeout=2) as client:
        return client.info(section)


def replica_synced(primary: Node, replica: Node) -> bool:
    """The replica's link is up and it has applied everything the primary had written
    when asked (asked first: under live writes the two offsets are never equal at once)."""
    goal = int(info(primary, "replication")["master_repl_offset"])
    ours = info(replica, "replication")
    if ours.get("master_link_status") != "up" or ours.get("master_sync_in_progress"):
        return False
    return int(ours.get("slave_repl_offset", -1)) >= goal


def info_cluster(node: Node) -> dict[str, str]:
    """``CLUSTER INFO`` as a dict (redis-py returns it parsed on some versions only)."""
    with node.client(socket_timeout=2) as client:
        raw = client.execute_command("CLUSTER", "INFO")
    if isinstance(raw, dict):
        return {k: str(v) for k, v in raw.items()}
    return dict(line.split(":", 1) for line in str(raw).split() if ":" in line)


def node_id(node: Node) -> str:
    with node.client(socket_timeout=2) as client:
        return str(client.execute_command("CLUSTER", "MYID"))


def redis_clock_us(client: redis.Redis) -> int:
    """Redis's own clock (``TIME``) in microseconds: one clock for every client."""
    seconds, micros = client.time()
    return int(seconds) * 1_000_000 + int(micros)


def stat(client: redis.Redis, name: str, section: str = "stats") -> int:
    """One integer field of ``INFO section``, e.g. ``evicted_keys``."""
    return int(client.info(section)[name])


def lru_clock(client: redis.Redis) -> int:
    """Redis's LRU clock (``INFO server``): seconds, the stamp a key gets when touched."""
    return stat(client, "lru_clock", "server")


def keyspace_counters(client: redis.Redis) -> dict[str, int]:
    """Redis's own view: keyspace hits and misses, evictions and expirations."""
    stats = client.info("stats")
    return {name: int(stats[name]) for name in
            ("keyspace_hits", "keyspace_misses", "evicted_keys", "expired_keys")}


def counter_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """What each of two :func:`keyspace_counters` readings counted in between."""
    return {name: after[name] - before[name] for name in before}


def command_calls(client: redis.Redis, commands: Iterable[str] = ("get",)) -> int:
    """Calls of ``commands`` this node served, from its own ``INFO commandstats``."""
    stats = client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c.lower()}", {}).get("calls", 0)) for c in commands)


def used_memory_ratio(client: redis.Redis) -> float:
    """``used_memory / maxmemory`` from the server's own ``INFO memory`` (0 if unlimited)."""
    memory: Any = client.info("memory")
    return int(memory["used_memory"]) / int(memory["maxmemory"]) if memory["maxmemory"] else 0.0


def replication_offset(client: redis.Redis) -> int:
    """How much of the replication stream this node has applied."""
    replication: Any = client.info("replication")
    return int(replication.get("slave_repl_offset", replication["master_repl_offset"]))


def replication_offsets(primary: redis.Redis, replicas: Sequence[redis.Redis]
                        ) -> tuple[int, list[int]]:
    """The primary's ``master_repl_offset`` and each replica's applied offset, in bytes.

    The primary is asked first, so a replica that catches up meanwhile only makes its
    lag look smaller: ``primary - replica`` never overstates the lag.
    """
    head = int(primary.info("replication")["master_repl_offset"])
    return head, [int(r.info("replication")["slave_repl_offset"]) for r in replicas]


def replication_lag_bytes(primary: redis.Redis, replicas: Sequence[redis.Redis]) -> list[int]:
    """How many bytes of the replication stream each replica has yet to apply."""
    head, offsets = replication_offsets(primary, replicas)
    return [max(0, head - offset) for offset in offsets]


def key_values(client: redis.Redis, pattern: str) -> dict[Any, Any]:
    """Every key matching ``pattern`` with its value, read back in key order."""
    keys = sorted(client.scan_iter(pattern, count=1000))
    return dict(zip(keys, client.mget(keys), strict=True)) if keys else {}


class MemoryUsage(NamedTuple):
    """How full a node is, by its own DBSIZE, INFO memory and INFO stats."""

    keys: int
    used_mb: float
    used_ratio: float  # used_memory / maxmemory; 0.0 without a limit
    evicted_keys: int


def memory_usage(client: redis.Redis) -> MemoryUsage:
    """The node's keys, used memory (MB and share of maxmemory) and evictions so far."""
    memory: Any = client.info("memory")
    stats: Any = client.info("stats")
    used, limit = int(memory["used_memory"]), int(memory["maxmemory"])
    return MemoryUsage(int(client.dbsize()), used / 2**20, used / limit if limit else 0.0,
                       int(stats["evicted_keys"]))


def read_values(client: redis.Redis, keys: Sequence[str], *, batch: int = 500
                ) -> dict[str, str | None]:
    """GET of many keys, in MGET batches; None for a key that is not there."""
    values: dict[str, str | None] = {}
    for start in range(0, len(keys), batch):
        chunk = list(keys[start:start + batch])
        replies: Any = client.mget(chunk)
        values.update(zip(chunk, replies, strict=True))
    return values
