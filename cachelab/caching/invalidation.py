"""Invalidation between services: an in-process cache and three ways to hear of changes.

Each service keeps a :class:`LocalCache` in front of the shared Redis. When a service
writes a key it drops its own copy and tells the others, who drop theirs:

- ``pubsub``: the write and a ``PUBLISH`` on :data:`CHANNEL` in one transaction. Pub/sub
  delivers at most once: a subscriber that is not connected at that moment never
  hears of it.
- ``stream``: the write and an ``XADD`` to :data:`STREAM` in one transaction; each
  reader remembers the id of the last entry it handled and, after a disconnect,
  resumes reading from there, so it misses nothing the stream still holds.
- ``tracking``: Redis's own server-assisted client-side caching. The connection that
  reads keys has ``CLIENT TRACKING ON REDIRECT <id> NOLOOP``; Redis itself sends the
  names of changed keys to the redirect connection on ``__redis__:invalidate``. While
  that connection is down, Redis drops the messages, so the rule is to flush the whole
  local cache whenever it reconnects.

The channel and stream names are parameters (defaults :data:`CHANNEL`, :data:`STREAM`),
so that a run on a shared Redis can keep them under its key prefix.

Each :class:`Subscriber` runs its connection on its own thread and can really
disconnect (close the socket) and reconnect, which is what the exercise shows.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

from cachelab.workload.poll import poll_until

if TYPE_CHECKING:  # redis is imported by whoever builds the clients
    import redis

Bus = Literal["none", "pubsub", "stream", "tracking"]
BUSES: tuple[Bus, ...] = ("none", "pubsub", "stream", "tracking")

CHANNEL = "inval:channel"
STREAM = "inval:stream"
TRACKING_CHANNEL = "__redis__:invalidate"
#: Entries the stream keeps (approximately): a reader away for longer than that misses some.
STREAM_MAXLEN = 10_000

#: ``factory(client_name)`` gives a new RESP2 client of the shared Redis (connections
#: are opened on first use and named). RESP2 matters for tracking: a RESP3 redirect
#: connection gets invalidations as push messages, not on ``__redis__:invalidate``.
ClientFactory = Callable[[str], "redis.Redis"]


@dataclass(frozen=True)
class Invalidation:
    """One message on the bus: drop ``key``; ``seq`` numbers the write that changed it."""

    key: str
    seq: int
    origin: str
    publish_ns: int

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Invalidation:
        return cls(**json.loads(text))

    def to_fields(self) -> dict[str, str]:
        return {name: str(value) for name, value in asdict(self).items()}

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> Invalidation:
        return cls(key=fields["key"], seq=int(fields["seq"]), origin=fields["origin"],
                   publish_ns=int(fields["publish_ns"]))


class LocalCache:
    """A service's in-process cache: a dict behind a lock.

    A fill races an invalidation: a value read from Redis just before a write can
    arrive after the invalidation of that write was handled, and would then stay
    forever. So every drop bumps the key's generation (and a clear bumps an epoch), and
    a loaded value is kept only if neither moved while it was being loaded.
    """

    def __init__(self) -> None:
        self._values: dict[str, str] = {}
        self._generations: dict[str, int] = {}
        self._epoch = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.drops = 0  # invalidations that removed a cached value
        self.flushes = 0
        self.flushed_entries = 0

    def get(self, key: str, load: Callable[[str], str | None]) -> tuple[str | None, bool]:
        """The cached value, or ``load(key)`` kept for next time; returns (value, hit)."""
        with self._lock:
            if key in self._values:
                self.hits += 1
                return self._values[key], True
            self.misses += 1
            epoch, generation = self._epoch, self._generations.get(key, 0)
        value = load(key)
        with self._lock:
            if (value is not None and epoch == self._epoch
                    and generation == self._generations.get(key, 0)):
                self._values[key] = value
        return value, False

    def drop(self, key: str) -> bool:
        """Forget ``key``; True if a value was cached."""
        with self._lock:
            self._generations[key] = self._generations.get(key, 0) + 1
            dropped = self._values.pop(key, None) is not None
            self.drops += dropped
            return dropped

    def clear(self) -> int:
        """Forget everything; returns how many values were cached."""
        with self._lock:
            self._epoch += 1
            flushed = len(self._values)
            self._values.clear()
            self.flushes += 1
            self.flushed_entries += flushed
            return flushed

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._values

    def __len__(self) -> int:
        with self._lock:
            return len(self._values)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"size": len(self._values), "hits": self.hits, "misses": self.misses,
                    "drops": self.drops, "flushes": self.flushes,
                    "flushed_entries": self.flushed_entries}


def write_and_publish(client: redis.Redis, bus: Bus, key: str, value: str,
                      invalidation: Invalidation, *, channel: str = CHANNEL,
                      stream: str = STREAM) -> None:
    """Write ``key`` and announce it on ``bus``, in one MULTI/EXEC: both happen or neither.

    With ``tracking`` and ``none`` there is nothing to announce (Redis does it, or
    nobody does): a plain SET. Pass the tracking connection itself for ``tracking``;
    outside MULTI, because Redis defers the invalidations of a transaction and then
    sends them to the writer too, NOLOOP or not.
    """
    if bus not in ("pubsub", "stream"):
        client.set(key, value)
        return
    pipe = client.pipeline(transaction=True)
    pipe.set(key, value)
    if bus == "pubsub":
        pipe.publish(channel, invalidation.to_json())
    else:
        pipe.xadd(stream, invalidation.to_fields(),  # type: ignore[arg-type]
                  maxlen=STREAM_MAXLEN, approximate=True)
    pipe.execute()


def stream_tail(client: redis.Redis, stream: str = STREAM) -> str:
    """The id of the stream's last entry, ``0-0`` when empty: where a new reader starts."""
    last = client.xrevrange(stream, count=1)
    return str(last[0][0]) if last else "0-0"


class Subscriber:
    """One connection to a bus, served by its own thread.

    ``set_connected(False)`` makes the thread close its socket (Redis sees the client
    leave), ``set_connected(True)`` makes it open a new one; both wait until done.
    A connection lost by itself is reopened after ``retry_s``.

    Args:
        name: names the thread, and the connection (``CLIENT SETNAME``).
        factory: opens a client of the shared Redis.
        poll_s: how long one poll blocks, so that stop and disconnect stay prompt.
    """

    bus: Bus = "none"

    def __init__(self, name: str, factory: ClientFactory, *, poll_s: float = 0.05,
                 retry_s: float = 0.05) -> None:
        self.name = name
        self.factory = factory
        self.poll_s = poll_s
        self.retry_s = retry_s
        self.connects = 0
        self._want = False
        self._open = False
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _subscribed(self, client: redis.Redis, channel: str) -> Any:
        """A pub/sub on ``channel``, returned once Redis has confirmed the subscription."""
        pubsub = client.pubsub()
        pubsub.subscribe(channel)

        def confirmed() -> bool:
            message = pubsub.get_message(timeout=self.poll_s)  # blocks: no pause needed
            return bool(message and message["type"] == "subscribe")

        poll_until(confirmed, timeout_s=10, interval_s=0, error=TimeoutError,
                   what=f"{self.name}'s subscription to {channel} to be confirmed")
        return pubsub

    @property
    def connected(self) -> bool:
        return self._open

    def start(self, timeout_s: float = 10.0) -> None:
        self._thread.start()
        self.set_connected(True, timeout_s)

    def set_connected(self, connected: bool, timeout_s: float = 10.0) -> None:
        """Connect or disconnect, and wait until the thread has done it."""
        with self._changed:
            self._want = connected
            done = self._changed.wait_for(
                lambda: self._open == connected or self._error is not None
                or not self._thread.is_alive(), timeout_s)
        if self._error is not None:
            raise RuntimeError(f"{self.name} failed: {self._error!r}") from self._error
        if not done or self._open != connected:
            raise TimeoutError(f"{self.name} did not {'connect' if connected else 'disconnect'} "
                               f"within {timeout_s:g}s")

    def stop(self, wait: bool = True) -> None:
        """Stop the thread (it closes its connection); ``wait=False`` only asks."""
        self._stop.set()
        if wait and self._thread.is_alive():
            self._thread.join()

    def _set_open(self, value: bool) -> None:
        with self._changed:
            self._open = value
            self._changed.notify_all()

    def _run(self) -> None:
        import redis

        try:
            while not self._stop.is_set():
                if self._want and not self._open:
                    try:
                        self._connect()
                    except redis.ConnectionError:
                        self._stop.wait(self.retry_s)
                        continue
                    self.connects += 1
                    self._set_open(True)
                elif not self._want and self._open:
                    self._disconnect()
                    self._set_open(False)
                if not self._open:
                    self._stop.wait(0.005)
                    continue
                try:
                    self._poll()
                except redis.ConnectionError:  # lost by itself (e.g. CLIENT KILL): reconnect
                    self._disconnect()
                    self._set_open(False)
        except BaseException as exc:  # handed to set_connected
            with self._changed:
                self._error = exc
                self._changed.notify_all()
        finally:
            if self._open:
                self._disconnect()
                self._set_open(False)

    def _connect(self) -> None:
        raise NotImplementedError

    def _poll(self) -> None:
        raise NotImplementedError

    def _disconnect(self) -> None:
        raise NotImplementedError


class PubSubSubscriber(Subscriber):
    """Subscribes to ``channel`` and hands every message to ``on_message``."""

    bus: Bus = "pubsub"

    def __init__(self, name: str, factory: ClientFactory,
                 on_message: Callable[[Invalidation], None], *, channel: str = CHANNEL,
                 **kwargs: Any) -> None:
        super().__init__(name, factory, **kwargs)
        self.on_message = on_message
        self.channel = channel
        self._client: redis.Redis | None = None
        self._pubsub: Any = None

    def _connect(self) -> None:
        self._client = self.factory(self.name)
        # Ready only once Redis confirmed the subscription: messages published earlier
        # are lost to this subscriber, by design.
        self._pubsub = self._subscribed(self._client, self.channel)

    def _poll(self) -> None:
        message = self._pubsub.get_message(timeout=self.poll_s)
        if message and message["type"] == "message":
            self.on_message(Invalidation.from_json(message["data"]))

    def _disconnect(self) -> None:
        if self._pubsub is not None:
            self._pubsub.close()
        if self._client is not None:
            self._client.close()
        self._pubsub = self._client = None


class StreamSubscriber(Subscriber):
    """Reads ``stream`` after ``offset``, the id of the last entry it handled.

    The offset lives on across disconnects: a reconnected reader gets every entry
    written meanwhile. It advances only after ``on_message`` returned.
    """

    bus: Bus = "stream"

    def __init__(self, name: str, factory: ClientFactory,
                 on_message: Callable[[Invalidation], None], *, offset: str = "0-0",
                 batch: int = 100, stream: str = STREAM, **kwargs: Any) -> None:
        super().__init__(name, factory, **kwargs)
        self.on_message = on_message
        self.stream = stream
        self.offset = offset
        self.batch = batch
        self._client: redis.Redis | None = None

    def _connect(self) -> None:
        self._client = self.factory(self.name)
        self._client.ping()

    def _poll(self) -> None:
        assert self._client is not None
        reply: Any = self._client.xread({self.stream: self.offset}, count=self.batch,
                                        block=max(1, int(self.poll_s * 1000)))
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                self.on_message(Invalidation.from_fields(fields))
                self.offset = entry_id

    def _disconnect(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = None


class TrackingSubscriber(Subscriber):
    """The redirect connection of server-assisted client-side caching.

    It subscribes to ``__redis__:invalidate`` on a RESP2 connection of its
    own and hands the key names Redis sends to ``on_keys`` (``None`` means "flush
    everything", which Redis sends on FLUSHALL). :meth:`track` points a data
    connection's tracking at it; call it after every (re)connect, and flush the local
    cache then, because Redis discards invalidations while the redirect connection is
    gone.
    """

    bus: Bus = "tracking"

    def __init__(self, name: str, factory: ClientFactory,
                 on_keys: Callable[[list[str] | None], None], **kwargs: Any) -> None:
        super().__init__(name, factory, **kwargs)
        self.on_keys = on_keys
        self.client_id = 0
        self._client: redis.Redis | None = None
        self._pubsub: Any = None

    def _connect(self) -> None:
        self._client = self.factory(self.name)
        self._pubsub = self._subscribed(self._client, TRACKING_CHANNEL)
        # A subscribed RESP2 connection cannot ask CLIENT ID, so another one looks it up
        # by name: the newest subscribed connection called so (ids only grow).
        lookup = self.factory(f"{self.name}-lookup")
        try:
            self.client_id = max(int(c["id"]) for c in lookup.client_list()
                                 if c.get("name") == self.name and int(c.get("sub", 0)) > 0)
        finally:
            lookup.close()

    def _poll(self) -> None:
        message = self._pubsub.get_message(timeout=self.poll_s)
        if message and message["type"] == "message" and message["channel"] == TRACKING_CHANNEL:
            keys = message["data"]
            self.on_keys(None if keys is None else [str(k) for k in keys])

    def _disconnect(self) -> None:
        if self._pubsub is not None:
            self._pubsub.close()
        if self._client is not None:
            self._client.close()
        self._pubsub = self._client = None

    def track(self, data: redis.Redis) -> None:
        """Send ``data``'s invalidations here (NOLOOP: not those of its own writes)."""
        data.execute_command("CLIENT", "TRACKING", "OFF")
        data.execute_command("CLIENT", "TRACKING", "ON", "REDIRECT", self.client_id, "NOLOOP")
