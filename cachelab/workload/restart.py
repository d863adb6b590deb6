"""Restarting a cache server for real, and the stream played on it window by window."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cachelab.workload.measure import ratio

if TYPE_CHECKING:
    import redis

    from cachelab.servers.redis_server import RedisServer

#: Where :meth:`Restarter.set_snapshot_aside` keeps dump.rdb: a name redis-server does not load.
SNAPSHOT = "snapshot.rdb"


@dataclass(frozen=True)
class Restart:
    """What one restart did, as read back from the new process."""

    seconds: float  # from starting the process to its first PONG (loading included)
    old_run_id: str
    new_run_id: str
    had_dump: bool  # a dump.rdb was in the folder when the process started
    keys: int

    @property
    def new_process(self) -> bool:
        return self.old_run_id != self.new_run_id

    def describe(self) -> str:
        return (f"run_id {self.old_run_id[:6]}→{self.new_run_id[:6]}, "
                f"{'a' if self.had_dump else 'no'} dump.rdb, {self.keys} keys")


class Restarter:
    """Restarts one cache server for real and hands out a client of the new process."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.client = self._connect()

    def _connect(self) -> redis.Redis:
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # No retries: a command to a stopped server should fail now, not after backoff.
        return self.server.client(retry=Retry(NoBackoff(), 0))

    def set_snapshot_aside(self) -> None:
        """SAVE an RDB snapshot and move it aside, so that a plain restart loads nothing."""
        self.client.save()
        (self.server.dir / "dump.rdb").replace(self.server.dir / SNAPSHOT)

    def restart(self, *, with_snapshot: bool = False) -> Restart:
        """Stop the process and start a new one in the same folder, on a new port.

        With ``with_snapshot`` the snapshot set aside is put back as dump.rdb first, which
        redis-server loads at start-up; without it the folder holds no dump.rdb.
        """
        old_id = str(self.client.info("server")["run_id"])
        self.client.close()
        self.server.stop()
        dump, snapshot = self.server.dir / "dump.rdb", self.server.dir / SNAPSHOT
        if with_snapshot:
            snapshot.replace(dump)
        had_dump = dump.exists()
        start = time.perf_counter()
        self.server.start()
        seconds = time.perf_counter() - start
        self.client = self._connect()
        return Restart(seconds, old_id, str(self.client.info("server")["run_id"]), had_dump,
                       self.client.dbsize())

    def close(self) -> None:
        self.client.close()


@dataclass
class WindowedStart:
    """The stream played on one fresh start of the cache, counted window by window."""

    name: str
    restart: Restart
    hits: list[int] = field(default_factory=list)      # per window
    db_reads: list[int] = field(default_factory=list)  # per window
    requests: list[int] = field(default_factory=list)  # per window

    def play(self, fetch: Callable[[int], tuple[Any, bool]], stream: Sequence[int],
             windows: Iterable[int], window: int, db_queries: Callable[[], int]) -> None:
        """Serve ``stream[i:i + window]`` for each ``i`` of ``windows`` through ``fetch``,
        counting hits and the ``db_queries()`` each window cost."""
        for i in windows:
            chunk = stream[i:i + window]
            q0 = db_queries()
            self.hits.append(sum(fetch(item)[1] for item in chunk))
            self.db_reads.append(db_queries() - q0)
            self.requests.append(len(chunk))

    def window_ratio(self, i: int) -> float:
        return ratio(self.hits[i], self.requests[i])

    @property
    def hit_ratio(self) -> float:
        return ratio(sum(self.hits), sum(self.requests))
