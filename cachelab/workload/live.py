"""The live application workloads the exercises drive, and judge as they go.

- :class:`LiveWorkload`: application threads that read and write their own keys through
  the cache address in a configuration file, remember what they wrote, judge every
  value they read, and count the errors a move of the cache makes them see. The file is
  written by :func:`write_config`, replaced atomically with ``os.replace``; every worker
  notices a new file (inode, mtime or size changed) before its next command and
  reconnects (:class:`ConfigWatcher`).
- :class:`StreamWriters`: writer threads committing a seeded stream of rows through the
  application's own write function, noting when each commit returned.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cachelab.workload.threads import StartedWith, ThreadGroup

if TYPE_CHECKING:
    import redis


# ------------------------------------------------- where the application finds its cache


@dataclass(frozen=True)
class CacheAddress:
    """Where the application's cache is, as its configuration file says."""

    host: str
    port: int
    version: int = 1

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def write_config(path: Path, address: CacheAddress) -> None:
    """Write the configuration next to ``path`` and move it over ``path`` in one step.

    A reader opens either the whole old file or the whole new one, never half of it:
    ``os.replace`` swaps the directory entry atomically on POSIX (same filesystem).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        json.dump({"cache": str(address), "version": address.version}, out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def read_config(path: Path) -> CacheAddress:
    data = json.loads(path.read_text(encoding="utf-8"))
    host, port = str(data["cache"]).rsplit(":", 1)
    return CacheAddress(host, int(port), int(data.get("version", 1)))


class ConfigWatcher:
    """The configured cache address, re-read only when the file was replaced.

    One ``os.stat`` per call: a replaced file has a new inode (and usually a new mtime
    and size), so the check is cheap enough to make before every command.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.reloads = 0
        self._stamp: tuple[int, int, int] | None = None
        self._address: CacheAddress | None = None

    def current(self) -> CacheAddress:
        st = os.stat(self.path)
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp != self._stamp or self._address is None:
            self._address = read_config(self.path)
            self._stamp = stamp
            self.reloads += 1
        return self._address


# ----------------------------------------- application threads that follow a cache move


@dataclass(frozen=True)
class WorkloadError:
    """One command the workload saw fail (it was retried)."""

    worker: int
    at: float  # time.monotonic()
    address: str
    kind: str


@dataclass
class WorkerStats:
    """One worker's own counts; read them after the workload stopped."""

    reads: int = 0
    writes: int = 0
    hits: int = 0
    misses: int = 0
    wrong_reads: int = 0  # a value other than the last one this worker wrote there
    oom_refusals: int = 0  # writes a full noeviction server refused
    failed_ops: int = 0  # gave up after retrying for retry_for_s
    reads_by_address: Counter[str] = field(default_factory=Counter)
    hits_by_address: Counter[str] = field(default_factory=Counter)
    refusals_by_address: Counter[str] = field(default_factory=Counter)
    first_success_at: dict[str, float] = field(default_factory=dict)
    errors: list[WorkloadError] = field(default_factory=list)
    # (acknowledged at, key, address) of every write, in order
    write_log: list[tuple[float, str, str]] = field(default_factory=list)


class _Refused(Exception):
    """The server at ``address`` answered a write with an OOM error."""

    def __init__(self, address: str) -> None:
        super().__init__(address)
        self.address = address


class _Worker:
    """One application thread: its keys, what it last wrote to each, its connection."""

    def __init__(self, index: int, workload: LiveWorkload, rng: random.Random) -> None:
        self.index = index
        self.workload = workload
        self.rng = rng
        self.watcher = ConfigWatcher(workload.config_path)
        self.stats = WorkerStats()
        self.written: dict[str, str] = {}  # key -> the value last acknowledged
        self.keys: list[str] = []
        self.uncertain: set[str] = set()  # a write whose outcome is unknown
        self.next_id = index
        self.seq = 0
        self._client: redis.Redis | None = None
        self._address: CacheAddress | None = None

    # The worker's keys: ids congruent to its index, so that workers never share a key.
    def new_key(self) -> str:
        key = f"{self.workload.namespace}:{self.next_id}"
        self.next_id += self.workload.clients
        return key

    def value(self, key: str) -> str:
        self.seq += 1
        head = f"{key}:{self.index}:{self.seq}:"
        return head + "x" * max(0, self.workload.value_bytes - len(head))

    def px(self) -> int | None:
        low, high = self.workload.ttl_range_s
        if self.rng.random() >= self.workload.ttl_share:
            return None
        return int(self.rng.uniform(low, high) * 1000)

    def client(self) -> tuple[CacheAddress, redis.Redis]:
        address = self.watcher.current()
        if self._client is None or address != self._address:
            self.close()
            self._client = self.workload.connect(address, self.index)
            self._address = address
        assert self._client is not None
        return address, self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def call(self, command: Callable[[redis.Redis], Any]) -> tuple[str, Any] | None:
        """Run ``command`` on the configured cache, retrying connection errors.

        Each failed attempt is recorded; the next attempt re-reads the configuration.
        Returns the address that answered and its reply, or None after ``retry_for_s``.
        """
        import redis

        deadline = time.monotonic() + self.workload.retry_for_s
        while True:
            address = "?"
            try:
                current, client = self.client()
                address = str(current)
                reply = command(client)
            except redis.exceptions.OutOfMemoryError as exc:
                raise _Refused(address) from exc
            # READONLY: a write reached a replica (the app is ahead of a promotion).
            except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ReadOnlyError,
                    OSError) as exc:
                failure: Exception = exc
            else:
                self.stats.first_success_at.setdefault(address, time.monotonic())
                return address, reply
            self.stats.errors.append(WorkloadError(self.index, time.monotonic(), address,
                                                   type(failure).__name__))
            self.close()
            if time.monotonic() > deadline or self.workload.stopping.wait(
                    self.workload.retry_sleep_s):
                self.stats.failed_ops += 1
                return None

    def write(self, key: str) -> None:
        value, px = self.value(key), self.px()
        try:
            done = self.call(lambda c: c.set(key, value, px=px))
        except _Refused as refused:
            self.stats.oom_refusals += 1  # the old value, if any, is still there
            self.stats.refusals_by_address[refused.address] += 1
            return
        if done is None:
            self.uncertain.add(key)  # it may or may not have landed before the error
            return
        self.stats.writes += 1
        self.stats.write_log.append((time.monotonic(), key, done[0]))
        if key not in self.written:
            self.keys.append(key)
        self.written[key] = value
        self.uncertain.discard(key)

    def read(self, key: str) -> None:
        done = self.call(lambda c: c.get(key))
        if done is None:
            return
        address, value = done
        self.stats.reads += 1
        self.stats.reads_by_address[address] += 1
        if value is None:
            self.stats.misses += 1  # evicted (or refused when written): a miss, not wrong
            return
        self.stats.hits += 1
        self.stats.hits_by_address[address] += 1
        if key not in self.uncertain and value != self.written.get(key):
            self.stats.wrong_reads += 1

    def step(self) -> None:
        w = self.workload
        if not self.keys or self.rng.random() < w.write_share:
            fresh = not self.keys or self.rng.random() < w.new_key_share
            self.write(self.new_key() if fresh else self.rng.choice(self.keys))
        else:
            self.read(self.rng.choice(self.keys))

    def run(self) -> None:
        try:
            while not self.workload.stopping.is_set():
                self.step()
                if self.workload.pace_s:
                    time.sleep(self.workload.pace_s)
        finally:
            self.close()


class LiveWorkload(StartedWith):
    """Application threads reading and writing through the address in ``config_path``.

    Each worker owns the keys ``namespace:<id>`` with ``id % clients == index``, so it
    knows the last value it wrote to every one of them: a read that returns anything
    else is *wrong* (a miss is not: a full cache evicts). Writes set a new value, with a
    TTL for a ``ttl_share`` of them; ``new_key_share`` of the writes go to a new key, so
    the data keeps growing. Connection errors are retried against the configuration as
    it is then, for up to ``retry_for_s``, and each is recorded with its time.

    Args:
        config_path: the JSON file written by :func:`write_config`.
        clients: worker threads.
        rngs: one random source per worker.
        namespace: the key prefix.
        value_bytes: length of each value.
        write_share: the share of operations that write.
        new_key_share: the share of writes that go to a key never written before.
        ttl_share: the share of writes that set a TTL (the others clear it).
        ttl_range_s: a TTL is drawn uniformly from this range.
        pace_s: sleep between two operations of a worker (0: as fast as it can).
        socket_timeout_s: the longest wait for one reply.
        retry_for_s: how long one operation is retried before it counts as failed.
        retry_sleep_s: the wait between two attempts.
        client_name: connections are named ``<client_name>-<worker>``.
    """

    def __init__(self, config_path: Path, *, clients: int, rngs: Sequence[random.Random],
                 namespace: str = "item", value_bytes: int = 100, write_share: float = 0.3,
                 new_key_share: float = 0.5, ttl_share: float = 0.5,
                 ttl_range_s: tuple[float, float] = (300.0, 900.0), pace_s: float = 0.0,
                 socket_timeout_s: float = 5.0, retry_for_s: float = 5.0,
                 retry_sleep_s: float = 0.005, client_name: str = "app") -> None:
        if clients < 1 or len(rngs) != clients:
            raise ValueError("give one random source per worker, and at least one worker")
        self.config_path = config_path
        self.clients = clients
        self.namespace = namespace
        self.value_bytes = value_bytes
        self.write_share = write_share
        self.new_key_share = new_key_share
        self.ttl_share = ttl_share
        self.ttl_range_s = ttl_range_s
        self.pace_s = pace_s
        self.socket_timeout_s = socket_timeout_s
        self.retry_for_s = retry_for_s
        self.retry_sleep_s = retry_sleep_s
        self.client_name = client_name
        self.stopping = threading.Event()  # set by stop(), and by a worker's error
        self.workers = [_Worker(i, self, rng) for i, rng in enumerate(rngs)]
        self._group: ThreadGroup | None = None

    def connect(self, address: CacheAddress, worker: int) -> redis.Redis:
        """A client that fails at once: redis-py's own retries would hide the move.

        Its connections are named ``<client_name>-<worker>`` (``CLIENT SETNAME``), so that
        a server can tell the application's connections from others.
        """
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        return redis.Redis(host=address.host, port=address.port, decode_responses=True,
                           socket_timeout=self.socket_timeout_s,
                           socket_connect_timeout=min(1.0, self.socket_timeout_s),
                           retry=Retry(NoBackoff(), 0),
                           client_name=f"{self.client_name}-{worker}")

    def fill(self, until: Callable[[], bool], *, batch: int = 200, max_keys: int = 10_000_000
             ) -> int:
        """Before :meth:`start`: write new keys in pipelined batches until ``until()``.

        The writes go to the configured address exactly as the workers' would, into
        their own key ranges, and count as theirs. Returns how many were written
        (refused ones, on a full noeviction server, are counted as refusals).
        """
        import redis

        if self._group is not None:
            raise RuntimeError("fill() before start()")
        written = 0
        while written < max_keys and not until():
            planned = []
            for n in range(batch):
                worker = self.workers[(written + n) % self.clients]
                key = worker.new_key()
                planned.append((worker, key, worker.value(key), worker.px()))
            address, client = self.workers[0].client()
            pipe = client.pipeline(transaction=False)
            for _worker, key, value, px in planned:
                pipe.set(key, value, px=px)
            replies = pipe.execute(raise_on_error=False)
            now = time.monotonic()
            for (worker, key, value, _px), reply in zip(planned, replies, strict=True):
                if isinstance(reply, Exception):
                    if not isinstance(reply, redis.exceptions.OutOfMemoryError):
                        raise reply
                    worker.stats.oom_refusals += 1
                    continue
                worker.stats.writes += 1
                worker.stats.write_log.append((now, key, str(address)))
                worker.keys.append(key)
                worker.written[key] = value
            written += batch
        return written

    def start(self) -> LiveWorkload:
        if self._group is not None:
            raise RuntimeError("the workload was already started")
        self.workers[0].close()  # fill()'s connection: each thread opens its own
        self._group = ThreadGroup({f"app worker {w.index}": w.run for w in self.workers},
                                  stopping=self.stopping).start()
        return self

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop and join every worker; raise the first error that ended one, if any did."""
        self.stopping.set()
        if self._group is not None:
            # A worker may be in the middle of one reply: give it that long, and some.
            self._group.stop(timeout_s if timeout_s is not None else self.socket_timeout_s + 5)

    # Totals over workers. Plain int reads, safe while running; exact once stopped.
    def total(self, name: str) -> int:
        return sum(int(getattr(w.stats, name)) for w in self.workers)

    def live_counters(self) -> dict[str, Any]:
        """Counters for a live display, read while the workers run."""
        return {"reads": self.total("reads"), "writes": self.total("writes"),
                "errors": sum(len(w.stats.errors) for w in self.workers),
                "wrong reads": self.total("wrong_reads"),
                "addresses": ", ".join(sorted({str(w._address) for w in self.workers}))}

    def reads_at(self, address: str) -> int:
        return sum(w.stats.reads_by_address[address] for w in self.workers)

    def hits_at(self, address: str) -> int:
        return sum(w.stats.hits_by_address[address] for w in self.workers)

    @property
    def errors(self) -> list[WorkloadError]:
        return sorted((e for w in self.workers for e in w.stats.errors), key=lambda e: e.at)

    def keys_written_between(self, start: float, end: float) -> set[str]:
        """Keys with a write acknowledged in ``[start, end]`` (monotonic seconds)."""
        return {key for w in self.workers for at, key, _ in w.stats.write_log
                if start <= at <= end}

    def keys_written_at(self, address: str) -> set[str]:
        """Keys with a write acknowledged by the server at ``address``."""
        return {key for w in self.workers for _, key, where in w.stats.write_log
                if where == address}

    def expected(self, key: str) -> str | None:
        """The value last acknowledged for ``key`` (None if unknown or uncertain)."""
        worker = self.workers[int(key.rsplit(":", 1)[1]) % self.clients]
        return None if key in worker.uncertain else worker.written.get(key)


# ------------------------------------------------------ writers of a stream of commits


class StreamWriters(StartedWith):
    """Writer threads posting ``stream`` through ``post``, each item once, in order taken.

    ``post(*item)`` commits one item and returns its id; each writer notes the wall-clock
    time right after it returned (``committed_ns``), so that whatever carries the commit
    on (a listener, a replica) can be timed from it on the same clock.

    Args:
        post: commits one item, returns its id.
        stream: the items, as ``post``'s arguments.
        writers: threads posting at once.
    """

    def __init__(self, post: Callable[..., int], stream: Sequence[tuple[Any, ...]],
                 writers: int) -> None:
        self.post = post
        self.stream = stream
        self.committed_ns: dict[int, int] = {}  # id -> time post returned
        self._next = itertools.count()  # atomic under the GIL
        self._group = ThreadGroup({f"writer-{i}": self._write for i in range(writers)})

    def _write(self) -> None:
        while not self._group.stopping.is_set():
            i = next(self._next)
            if i >= len(self.stream):
                return
            item_id = self.post(*self.stream[i])
            self.committed_ns[item_id] = time.time_ns()

    @property
    def posted(self) -> int:
        return len(self.committed_ns)

    @property
    def done(self) -> bool:
        return not self._group.running

    def start(self) -> StreamWriters:
        self._group.start()
        return self

    def join(self, timeout_s: float) -> bool:
        """Wait for the stream, then stop the writers; True if all of it was posted.

        A writer's error is raised here.
        """
        self._group.join(timeout_s)
        self.stop()  # on a timeout, each finishes the item in hand
        return self.posted == len(self.stream)

    def stop(self) -> None:
        self._group.stop(timeout_s=None)
