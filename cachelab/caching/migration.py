"""Moving a live cache to a larger instance, and an application that follows the move.

- :func:`write_config` and :class:`ConfigWatcher`: the application's cache address lives
  in a small JSON file, replaced atomically with ``os.replace``; every worker notices a
  new file (inode, mtime or size changed) before its next command and reconnects.
- :class:`ReplicationMove`: make the target a replica of the source, let it follow the
  live writes, then pause the source's writes, wait until the replica has applied
  everything, and promote it (``REPLICAOF NO ONE``).
- :func:`copy_keys`, :func:`snapshot`, :func:`restore` and :func:`compare`: the other
  way, ``SCAN`` + ``DUMP``/``PTTL`` and ``RESTORE ... REPLACE`` in pipelines, keeping
  TTLs, and a key-by-key comparison of two states (value and TTL).
- :class:`LiveWorkload`: application threads that read and write their own keys through
  the configured address, remember what they wrote, judge every value they read, and
  count the errors a move makes them see.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cachelab.workload.poll import poll_until
from cachelab.workload.redis_info import Node, info, replica_synced
from cachelab.workload.threads import StartedWith

if TYPE_CHECKING:
    import redis



# ------------------------------------------------------------------- configuration


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


# ------------------------------------------------------------------------ clients


def disconnect_clients(client: redis.Redis, name_prefix: str) -> int:
    """Close every connection whose name starts with ``name_prefix``; how many.

    A command held back by ``CLIENT PAUSE`` on such a connection is dropped with it,
    never run: its client sees a connection error and can retry elsewhere.
    """
    killed = 0
    for entry in client.client_list():
        if str(entry.get("name", "")).startswith(name_prefix):
            killed += int(client.client_kill_filter(_id=entry["id"]))
    return killed


# ----------------------------------------------------------------- by replication


class ReplicationMove:
    """Move ``source``'s data to ``target`` by replication, then promote ``target``.

    :meth:`attach` makes ``target`` a replica and waits for the initial sync; from then
    on every write to ``source`` streams to ``target``. :meth:`cut_over` stops the
    writes at the source (``CLIENT PAUSE ... WRITE``: reads go on, and expiry and
    eviction are paused too, so the source's data stands still), waits until the
    replica's offset equals the source's, and promotes the replica. The source stays
    paused; whoever owns it stops it after the application has moved.
    """

    def __init__(self, source: Node, target: Node, *,
                 timeout_s: float = 20.0) -> None:
        self.source = source
        self.target = target
        self.timeout_s = timeout_s
        self.started_at: float | None = None
        self.synced_at: float | None = None
        self.paused_at: float | None = None
        self.promoted_at: float | None = None

    def attach(self) -> float:
        """``REPLICAOF source`` on the target; seconds until the initial sync completed.

        Synced means the replica has applied everything the source had written when the
        wait began: under live writes the two offsets are never equal at one instant.
        """
        with self.source.client() as client:
            # Diskless sync waits this long (5 s by default in 7.0) for more replicas to
            # share the transfer; a move has one replica and no reason to wait.
            client.config_set("repl-diskless-sync-delay", 0)
        self.started_at = time.monotonic()
        with self.target.client() as client:
            client.replicaof(self.source.host, self.source.port)
        self._wait_applied("in sync with")
        self.synced_at = time.monotonic()
        return self.synced_at - self.started_at

    def _wait_applied(self, what: str, interval_s: float = 0.01) -> None:
        """Wait until the target's link is up and its offset reached the source's, as of now."""
        import redis

        goal = int(info(self.source, "replication")["master_repl_offset"])

        def applied() -> bool:
            ours = info(self.target, "replication")
            return (ours.get("master_link_status") == "up"
                    and not ours.get("master_sync_in_progress")
                    and int(ours.get("slave_repl_offset", -1)) >= goal)

        poll_until(applied, timeout_s=self.timeout_s, interval_s=interval_s,
                   what=f"{self.target.name} {what} {self.source.name}",
                   ignoring=(redis.ConnectionError, redis.TimeoutError))

    def cut_over(self, pause_ms: int = 30_000) -> float:
        """Pause the source's writes, let the replica catch up, promote it; seconds taken.

        ``pause_ms`` only bounds the pause if the caller dies: the source is meant to be
        stopped while still paused, so that no write held back by the pause lands there
        after the replica was promoted.
        """
        if self.synced_at is None:
            raise RuntimeError("attach() the replica before cutting over")
        self.paused_at = time.monotonic()
        with self.source.client() as client:
            client.execute_command("CLIENT", "PAUSE", pause_ms, "WRITE")
        # Paused, the source's offset stands still: the two offsets end up equal.
        self._wait_applied("caught up with", interval_s=0.001)
        if not replica_synced(self.source, self.target):
            raise RuntimeError(f"{self.target.name} is not in step with the paused "
                               f"{self.source.name}: did something still write to it?")
        with self.target.client() as client:
            client.replicaof("NO", "ONE")
        self.promoted_at = time.monotonic()
        return self.promoted_at - self.paused_at

    @property
    def seconds(self) -> float:
        """From ``REPLICAOF`` to the promotion: the whole move."""
        if self.started_at is None or self.promoted_at is None:
            return 0.0
        return self.promoted_at - self.started_at


# ------------------------------------------------------------ by DUMP and RESTORE


@dataclass(frozen=True)
class Entry:
    """One key as ``DUMP`` serialises it, with its expiry as an absolute Unix time."""

    payload: bytes
    expire_at_ms: int | None  # None: the key has no TTL


def _scan_batches(client: redis.Redis, match: str, batch: int) -> Iterator[list[bytes]]:
    if client.get_connection_kwargs().get("decode_responses"):
        raise ValueError("DUMP payloads are binary: use a client with decode_responses=False")
    cursor: Any = 0
    while True:
        reply: Any = client.scan(cursor, match=match, count=batch)
        cursor, keys = reply
        if keys:
            yield [bytes(key) for key in keys]
        if int(cursor) == 0:
            return


def dump_entries(client: redis.Redis, keys: Sequence[bytes]) -> dict[bytes, Entry]:
    """``DUMP`` and ``PTTL`` of ``keys`` in one pipeline; keys gone meanwhile are left out.

    PTTL is relative to when Redis ran it, somewhere inside the round trip: the middle
    of the round trip is taken as that moment, so the error is half a round trip.
    """
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.dump(key)
        pipe.pttl(key)
    sent_ms = time.time() * 1000
    replies = pipe.execute()
    now_ms = (sent_ms + time.time() * 1000) / 2
    entries = {}
    for key, payload, pttl in zip(keys, replies[::2], replies[1::2], strict=True):
        if payload is None or pttl == -2:  # expired or evicted since SCAN listed it
            continue
        entries[key] = Entry(bytes(payload), None if pttl < 0 else round(now_ms + pttl))
    return entries


def restore(client: redis.Redis, entries: Mapping[bytes, Entry]) -> int:
    """``RESTORE key ttl payload REPLACE [ABSTTL]`` for every entry, pipelined.

    The absolute expiry (``ABSTTL``) keeps the TTL exact however long the copy takes;
    a key whose expiry has passed is not created. Returns how many were restored.
    """
    pipe = client.pipeline(transaction=False)
    for key, entry in entries.items():
        if entry.expire_at_ms is None:
            pipe.execute_command("RESTORE", key, 0, entry.payload, "REPLACE")
        else:
            pipe.execute_command("RESTORE", key, entry.expire_at_ms, entry.payload,
                                 "REPLACE", "ABSTTL")
    return len(pipe.execute()) if entries else 0


def snapshot(client: redis.Redis, *, match: str = "*", batch: int = 200
             ) -> dict[bytes, Entry]:
    """Every key matching ``match`` with its serialised value and expiry.

    The client must not decode responses (payloads are binary). Exact when nothing
    writes meanwhile; on a live server each batch is its own moment.
    """
    entries: dict[bytes, Entry] = {}
    for keys in _scan_batches(client, match, batch):
        entries.update(dump_entries(client, keys))
    return entries


@dataclass
class CopyReport:
    """What one pass of :func:`copy_keys` did."""

    keys: int = 0
    vanished: int = 0  # listed by SCAN, gone by the time DUMP ran
    batches: int = 0
    seconds: float = 0.0


def copy_keys(source: redis.Redis, target: redis.Redis, *, match: str = "*",
              batch: int = 200) -> CopyReport:
    """Copy every key from ``source`` to ``target`` with its TTL, a batch at a time.

    Both clients must not decode responses. On a live source this is a moving
    picture: a key written after SCAN passed it is not copied, and a key deleted or
    evicted after it was copied stays on the target. Replies of a batch sit in the
    source's memory until sent, which on a full instance counts against maxmemory:
    keep batches small there.
    """
    report = CopyReport()
    started = time.perf_counter()
    for keys in _scan_batches(source, match, batch):
        entries = dump_entries(source, keys)
        report.keys += restore(target, entries)
        report.vanished += len(keys) - len(entries)
        report.batches += 1
    report.seconds = time.perf_counter() - started
    return report


@dataclass
class Comparison:
    """Two states of a keyspace, key by key: the source's and the target's."""

    keys: int
    missing: list[bytes]
    extra: list[bytes]
    value_mismatches: list[bytes]
    ttl_mismatches: list[bytes]
    ttl_tolerance_ms: int

    @property
    def equal(self) -> bool:
        return not (self.missing or self.extra or self.value_mismatches or self.ttl_mismatches)

    @property
    def differing(self) -> int:
        return (len(self.missing) + len(self.extra) + len(self.value_mismatches)
                + len(self.ttl_mismatches))


def compare(source: Mapping[bytes, Entry], target: Mapping[bytes, Entry], *,
            ttl_tolerance_ms: int = 1000) -> Comparison:
    """Which keys of ``source`` are missing, different or with another TTL on ``target``.

    Values are compared as ``DUMP`` payloads (type, encoding and content together, the
    same bytes for the same value on the same Redis version); TTLs as absolute expiry
    times, which must both be absent or within ``ttl_tolerance_ms`` of each other.
    """
    missing, values, ttls = [], [], []
    for key, entry in source.items():
        other = target.get(key)
        if other is None:
            missing.append(key)
            continue
        if other.payload != entry.payload:
            values.append(key)
        if (entry.expire_at_ms is None) != (other.expire_at_ms is None) or (
                entry.expire_at_ms is not None and other.expire_at_ms is not None
                and abs(entry.expire_at_ms - other.expire_at_ms) > ttl_tolerance_ms):
            ttls.append(key)
    extra = [key for key in target if key not in source]
    return Comparison(len(source), missing, extra, values, ttls, ttl_tolerance_ms)


def catch_up(target: redis.Redis, final: Mapping[bytes, Entry], drift: Comparison) -> int:
    """Make ``target`` equal ``final`` by fixing only what ``drift`` found; keys touched."""
    fix = {key: final[key] for key in (*drift.missing, *drift.value_mismatches,
                                       *drift.ttl_mismatches)}
    touched = restore(target, fix)
    if drift.extra:
        pipe = target.pipeline(transaction=False)
        for start in range(0, len(drift.extra), 500):
            pipe.delete(*drift.extra[start:start + 500])
        pipe.execute()
    return touched + len(drift.extra)


# ---------------------------------------------------------------- the application


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
        except BaseException as exc:  # raised again by LiveWorkload.stop()
            self.workload.error = exc
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
        self.stopping = threading.Event()
        self.error: BaseException | None = None
        self.workers = [_Worker(i, self, rng) for i, rng in enumerate(rngs)]
        self._threads: list[threading.Thread] = []

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

        if self._threads:
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
        if self._threads:
            raise RuntimeError("the workload was already started")
        self.workers[0].close()  # fill()'s connection: each thread opens its own
        self._threads = [threading.Thread(target=w.run, name=f"app worker {w.index}",
                                          daemon=True) for w in self.workers]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop and join every worker; raise what ended one, if anything did."""
        self.stopping.set()
        limit = timeout_s if timeout_s is not None else self.socket_timeout_s + 5
        for thread in self._threads:
            thread.join(limit)
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            raise RuntimeError(f"{', '.join(alive)} did not stop within {limit:g}s")
        error, self.error = self.error, None
        if error is not None:
            raise error

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
