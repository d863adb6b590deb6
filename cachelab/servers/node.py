"""One Redis node as a run's code sees it, whoever runs it: a redis-server process the lab
started, a container, or a named part of an existing deployment.

It is what ``Lab.redis_server`` hands out and what an exercise that may run on an
existing deployment relies on; starting, stopping and killing belong to the servers the
lab owns (:class:`~cachelab.servers.redis_server.RedisServer`). It satisfies the
harness's read-only :class:`~cachelab.workload.redis_info.Node`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from cachelab.workload.keyspace import Keyspace

if TYPE_CHECKING:
    import redis


class RedisNode(ABC):
    """A name, an address, a keyspace, and clients.

    Args:
        name: a short name used in messages (and, where the lab starts it, its folder).
        host: the address clients connect to.
        keys: the names its users give their keys: as written on a server the lab owns;
            under a per-run prefix on an existing deployment's part.
    """

    def __init__(self, name: str, *, host: str, keys: Keyspace | None = None) -> None:
        self.name = name
        self.host = host
        self.keys = keys or Keyspace()

    @property
    @abstractmethod
    def port(self) -> int:
        """The port clients connect to."""

    @property
    @abstractmethod
    def pid(self) -> int | None:
        """The host's pid of the server, or None where cachelab does not run it."""

    @property
    def url(self) -> str:
        """Where the node is, for a child's command line and for showing."""
        return f"redis://{self.host}:{self.port}/0"

    @abstractmethod
    def client(self, **kwargs: Any) -> redis.Redis:
        """A new redis-py client of this node (``decode_responses`` on by default)."""

    @abstractmethod
    def clear(self) -> None:
        """Drop every key this node's users wrote, and no other."""

    def child_env(self) -> dict[str, str]:
        """Environment a child process needs to reach this node besides its URL."""
        return {}
