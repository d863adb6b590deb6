"""The outbox listener as its own OS process: it applies the transactional outbox to the
cache until SIGTERM, its parent's death or a deadline."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cachelab.caching.outbox import LISTENER_KEY, CommentCache, OutboxListener
from cachelab.servers.process import ChildProcess, stop_condition

if TYPE_CHECKING:
    import redis


class ListenerProcess(ChildProcess):
    """The listener as its own OS process (``python -m cachelab.children outbox-listener``).

    It runs in its own session (a terminal's Ctrl-C reaches only the lab, which then
    stops it), exits by itself when its parent dies or after ``max_seconds``, and writes
    its output to ``log_path``. A SIGTERM lets it finish its batch; :meth:`kill` does not.

    Args:
        client: a client of the Redis it updates, used to see it become ready.
        redis_port: that Redis's port on 127.0.0.1.
        db_path: the shop database.
        log_path: where its stdout and stderr go.
        list_size, batch, poll_ms, rewind: passed to :class:`OutboxListener`.
        max_seconds: it stops by itself after this long.
        ready_timeout_s: how long to wait for it to start polling.
    """

    def __init__(self, client: redis.Redis, *, redis_port: int, db_path: Path, log_path: Path,
                 list_size: int = 10, batch: int = 100, poll_ms: float = 1.0, rewind: int = 0,
                 max_seconds: float = 120.0, ready_timeout_s: float = 20.0) -> None:
        super().__init__(
            client, program="outbox-listener", ready_key=LISTENER_KEY,
            label="outbox listener", log_path=log_path, ready_timeout_s=ready_timeout_s,
            args=["--db", str(db_path), "--redis-port", str(redis_port), "--list-size",
                  str(list_size), "--batch", str(batch), "--poll-ms", str(poll_ms),
                  "--rewind", str(rewind), "--max-seconds", str(max_seconds)])


def main(argv: Sequence[str]) -> int:
    """The listener process: apply the outbox until SIGTERM, its parent's death or a deadline."""
    import redis

    parser = argparse.ArgumentParser(prog="python -m cachelab.children outbox-listener",
                                     description=main.__doc__)
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--redis-port", type=int, required=True)
    parser.add_argument("--list-size", type=int, default=10)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--poll-ms", type=float, default=1.0)
    parser.add_argument("--rewind", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    parser.add_argument("--parent-pid", type=int, default=os.getppid())
    args = parser.parse_args(argv)
    if not args.db.exists():
        parser.error(f"no database at {args.db}")

    should_stop = stop_condition(args.parent_pid, args.max_seconds)
    client = redis.Redis(host="127.0.0.1", port=args.redis_port, decode_responses=True)
    try:
        cache = CommentCache(client, list_size=args.list_size)
        listener = OutboxListener(cache, args.db, batch=args.batch, poll_s=args.poll_ms / 1000)
        listener.run(should_stop, rewind=args.rewind,
                     on_ready=lambda: client.set(LISTENER_KEY, os.getpid()))
    finally:
        client.close()
    return 0
