"""A service process with in-process caches, driven through Redis by the lab.

Each service (``python -m cachelab.children service``) is its own OS process in front of
the shared Redis, with one :class:`LocalCache` per bus (``none``, ``pubsub``,
``stream``, ``tracking``) and a subscriber for each bus that has one. It takes
commands from its list ``svc:<name>:cmd`` and answers on ``svc:<name>:replies``, so
the lab drives reads and writes and every measurement is taken by the process that
sees it. Every invalidation it handles is recorded in Redis: the drop time (wall
clock, the same clock the writer stamped the message with) per key, and a log line.

On an existing deployment the parent passes its address in the environment
(``RedisNode.child_env``) and every key, channel, stream and connection name below
starts with its prefix (``key_prefix``); on a server the lab owns that prefix is "".
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cachelab.caching.invalidation import (
    BUSES,
    CHANNEL,
    STREAM,
    Bus,
    Invalidation,
    LocalCache,
    PubSubSubscriber,
    StreamSubscriber,
    Subscriber,
    TrackingSubscriber,
    stream_tail,
    write_and_publish,
)
from cachelab.servers.process import ChildProcess, stop_condition

if TYPE_CHECKING:
    from collections.abc import Mapping

    import redis


def command_key(name: str, prefix: str = "") -> str:
    return f"{prefix}svc:{name}:cmd"


def reply_key(name: str, prefix: str = "") -> str:
    return f"{prefix}svc:{name}:replies"


def ready_key(name: str, prefix: str = "") -> str:
    return f"{prefix}svc:{name}:ready"


def drops_key(bus: Bus, name: str, prefix: str = "") -> str:
    """Hash: key -> wall-clock ns when ``name`` last dropped it on ``bus``."""
    return f"{prefix}inval:{bus}:drops:{name}"


def log_key(bus: Bus, name: str, prefix: str = "") -> str:
    """List of ``<seq> <key> <drop ns>`` per invalidation ``name`` handled (seq -1: tracking)."""
    return f"{prefix}inval:{bus}:log:{name}"


def data_key(bus: Bus, item: int | str, prefix: str = "") -> str:
    """Each bus has its own copy of the data, so that its measurements stand alone."""
    return f"{prefix}{bus}:profile:{item}"


def connection_name(service: str, bus: Bus, prefix: str = "") -> str:
    """The ``CLIENT SETNAME`` of a service's subscriber connection on ``bus`` (the prefix
    keeps it apart from other clients' connections on a shared server)."""
    return f"{prefix}{service}-{bus}"


class Service:
    """The service itself: caches, subscribers and the command handlers.

    Args:
        name: the service's name, e.g. ``svc-1``.
        port: the shared Redis on 127.0.0.1, unless the environment names another.
        prefix: what every key, channel and connection name of it starts with.
    """

    def __init__(self, name: str, port: int, prefix: str = "") -> None:
        from cachelab.deployment.deployment import client_from_env  # imports redis: only here

        self.name = name
        self.prefix = prefix
        self.channel, self.stream_key = f"{prefix}{CHANNEL}", f"{prefix}{STREAM}"
        url = f"redis://127.0.0.1:{port}"

        def factory(client_name: str, **kwargs: Any) -> redis.Redis:
            client: redis.Redis = client_from_env(
                url, decode_responses=True, client_name=client_name, protocol=2, **kwargs)
            return client

        self.client = factory(f"{prefix}{name}-main")
        # Reads and writes of the tracking cache go through this one tracked connection
        # (tracking is a property of a connection, not of a client's pool).
        self.tracked = factory(f"{prefix}{name}-tracked", single_connection_client=True)
        self.caches: dict[Bus, LocalCache] = {bus: LocalCache() for bus in BUSES}
        self.tracking = TrackingSubscriber(connection_name(name, "tracking", prefix), factory,
                                           self._on_tracking)
        # A new reader starts at the stream's end: older entries concern no cache of its.
        self.stream = StreamSubscriber(connection_name(name, "stream", prefix), factory,
                                       lambda inv: self._on_message("stream", inv),
                                       offset=stream_tail(self.client, self.stream_key),
                                       stream=self.stream_key)
        self.subscribers: dict[Bus, Subscriber] = {
            "pubsub": PubSubSubscriber(connection_name(name, "pubsub", prefix), factory,
                                       lambda inv: self._on_message("pubsub", inv),
                                       channel=self.channel),
            "stream": self.stream,
            "tracking": self.tracking,
        }

    def start(self) -> None:
        for subscriber in self.subscribers.values():
            subscriber.start()
        self._retrack()

    def stop(self) -> None:
        for subscriber in self.subscribers.values():  # all at once, then wait for each
            subscriber.stop(wait=False)
        for subscriber in self.subscribers.values():
            subscriber.stop()
        self.tracked.close()
        self.client.close()

    def _retrack(self) -> int:
        """Point tracking at the (new) redirect connection and flush what may be stale."""
        self.tracking.track(self.tracked)
        return self.caches["tracking"].clear()

    def _record(self, bus: Bus, key: str, seq: int) -> None:
        drop_ns = time.time_ns()
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(drops_key(bus, self.name, self.prefix), key, drop_ns)
        pipe.rpush(log_key(bus, self.name, self.prefix), f"{seq} {key} {drop_ns}")
        pipe.execute()

    def _on_message(self, bus: Bus, invalidation: Invalidation) -> None:
        if invalidation.origin == self.name:  # the writer dropped its own copy already
            return
        self.caches[bus].drop(invalidation.key)
        self._record(bus, invalidation.key, invalidation.seq)

    def _on_tracking(self, keys: list[str] | None) -> None:
        if keys is None:
            self.caches["tracking"].clear()
            return
        for key in keys:
            self.caches["tracking"].drop(key)
            self._record("tracking", key, -1)

    def _connection(self, bus: Bus) -> redis.Redis:
        return self.tracked if bus == "tracking" else self.client

    # Commands: each takes the command's fields and returns the reply's.

    def read(self, bus: Bus, keys: list[str]) -> dict[str, Any]:
        """Read through the bus's cache; returns each key's version and whether it hit."""
        load = self._connection(bus).get
        versions, hits = [], []
        for key in keys:
            value, hit = self.caches[bus].get(key, load)  # type: ignore[arg-type]
            versions.append(None if value is None else json.loads(value)["version"])
            hits.append(hit)
        return {"versions": versions, "hits": hits}

    def update(self, bus: Bus, key: str, seq: int, bio: str) -> dict[str, Any]:
        """Write a new version of ``key``, drop the own copy, announce it on the bus."""
        connection = self._connection(bus)
        current = json.loads(connection.get(key) or "{}")
        value = {**current, "bio": bio, "version": int(current.get("version", 0)) + 1}
        self.caches[bus].drop(key)
        publish_ns = time.time_ns()
        write_and_publish(connection, bus, key, json.dumps(value),
                          Invalidation(key, seq, self.name, publish_ns),
                          channel=self.channel, stream=self.stream_key)
        return {"publish_ns": publish_ns, "version": value["version"]}

    def disconnect(self, bus: Bus) -> dict[str, Any]:
        self.subscribers[bus].set_connected(False)
        return {}

    def connect(self, bus: Bus) -> dict[str, Any]:
        self.subscribers[bus].set_connected(True)
        flushed = self._retrack() if bus == "tracking" else 0
        return {"flushed": flushed}

    def stats(self) -> dict[str, Any]:
        return {"caches": {bus: cache.stats() for bus, cache in self.caches.items()},
                "offset": self.stream.offset}

    def handle(self, command: dict[str, Any]) -> dict[str, Any]:
        args = {k: v for k, v in command.items() if k not in ("op", "id")}
        handlers: dict[str, Callable[..., dict[str, Any]]] = {
            "read": self.read, "update": self.update, "disconnect": self.disconnect,
            "connect": self.connect, "stats": self.stats}
        return handlers[command["op"]](**args)

    def serve(self, should_stop: Callable[[], bool]) -> None:
        """Answer commands until ``should_stop()``; an error is answered, not fatal."""
        self.client.set(ready_key(self.name, self.prefix), os.getpid())
        while not should_stop():
            popped = self.client.blpop([command_key(self.name, self.prefix)], timeout=0.1)
            if not popped:
                continue
            command = json.loads(popped[1])
            try:
                reply = {"id": command["id"], **self.handle(command)}
            except Exception as exc:  # the lab raises it on its side
                reply = {"id": command["id"], "error": f"{type(exc).__name__}: {exc}"}
            self.client.rpush(reply_key(self.name, self.prefix), json.dumps(reply))


class ServiceError(RuntimeError):
    """A service answered a command with an error, or not at all."""


class ServiceProcess(ChildProcess):
    """One service as its own OS process: started ready, driven by commands, always reaped.

    ``launch()`` then ``wait_ready()`` lets several start at once; as a context manager
    it does both. It stops on SIGTERM, when its parent dies, or after ``max_seconds``.

    Args:
        client: a client of the shared Redis (the lab's side of the command lists).
        name: the service's name.
        redis_port: the shared Redis's port on 127.0.0.1.
        log_path: where its stdout and stderr go.
        max_seconds: it stops by itself after this long.
        reply_timeout_s: how long a command may take before it counts as lost.
        key_prefix: the server's ``prefix``, which the child reads from ``env``.
        env: ``RedisNode.child_env()``: another Redis than ``redis_port``, if any.
    """

    def __init__(self, client: redis.Redis, *, name: str, redis_port: int, log_path: Path,
                 max_seconds: float = 120.0, ready_timeout_s: float = 20.0,
                 reply_timeout_s: float = 10.0, key_prefix: str = "",
                 env: Mapping[str, str] | None = None) -> None:
        super().__init__(
            client, program="service", ready_key=ready_key(name, key_prefix),
            label=f"service {name}", log_path=log_path, ready_timeout_s=ready_timeout_s,
            args=["--name", name, "--redis-port", str(redis_port),
                  "--max-seconds", str(max_seconds)], env=env)
        self.name = name
        self.key_prefix = key_prefix
        self.reply_timeout_s = reply_timeout_s
        self._ids = itertools.count(1)

    def launch(self) -> ServiceProcess:
        self.client.delete(command_key(self.name, self.key_prefix),
                           reply_key(self.name, self.key_prefix))
        super().launch()
        return self

    def send(self, op: str, **args: Any) -> int:
        """Queue a command; returns its id for :meth:`receive`."""
        command_id = next(self._ids)
        self.client.rpush(command_key(self.name, self.key_prefix),
                          json.dumps({"op": op, "id": command_id, **args}))
        return command_id

    def receive(self, command_id: int) -> dict[str, Any]:
        """The reply to ``command_id`` (replies come in command order)."""
        popped = self.client.blpop([reply_key(self.name, self.key_prefix)],
                                   timeout=self.reply_timeout_s)
        if not popped:
            code = self.returncode
            state = "is not running" if code is not None else "did not answer"
            raise ServiceError(self.failure(f"{state} within {self.reply_timeout_s:g}s"))
        reply: dict[str, Any] = json.loads(popped[1])
        if reply.get("id") != command_id:
            raise ServiceError(f"service {self.name}: reply {reply.get('id')} to "
                               f"command {command_id}")
        if "error" in reply:
            raise ServiceError(f"service {self.name}: {reply['error']}")
        return reply

    def request(self, op: str, **args: Any) -> dict[str, Any]:
        return self.receive(self.send(op, **args))


def main(argv: Sequence[str]) -> int:
    """A service: serve commands until SIGTERM, its parent's death or a deadline."""
    parser = argparse.ArgumentParser(prog="python -m cachelab.children service",
                                     description=main.__doc__)
    parser.add_argument("--name", required=True)
    parser.add_argument("--redis-port", type=int, required=True)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    parser.add_argument("--parent-pid", type=int, default=os.getppid())
    args = parser.parse_args(argv)

    from cachelab.deployment.deployment import child_prefix

    should_stop = stop_condition(args.parent_pid, args.max_seconds)
    service = Service(args.name, args.redis_port, child_prefix())
    try:
        service.start()
        service.serve(should_stop)
    finally:
        service.stop()
    return 0
