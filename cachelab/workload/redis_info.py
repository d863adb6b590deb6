"""Reading a Redis node's own view of itself: INFO sections and replication progress."""

from __future__ import annotations

from typing import Any, Protocol

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
