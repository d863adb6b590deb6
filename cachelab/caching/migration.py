"""Moving a live cache to a larger instance.

- :class:`ReplicationMove`: make the target a replica of the source, let it follow the
  live writes, then pause the source's writes, wait until the replica has applied
  everything, and promote it (``REPLICAOF NO ONE``).
- :func:`copy_keys`, :func:`snapshot`, :func:`restore` and :func:`compare`: the other
  way, ``SCAN`` + ``DUMP``/``PTTL`` and ``RESTORE ... REPLACE`` in pipelines, keeping
  TTLs, and a key-by-key comparison of two states (value and TTL).
- :func:`disconnect_clients`: close the application's connections to the old instance.

The application that follows the move (its configuration file, and its threads that
judge every value they read) is :mod:`cachelab.workload.live`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cachelab.workload.poll import poll_until
from cachelab.workload.redis_info import Node, info, replica_synced

if TYPE_CHECKING:
    import redis


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

    def counts(self) -> tuple[int, int, int, int, int]:
        """Keys compared, then how many are missing, other values, TTLs off, extra."""
        return (self.keys, len(self.missing), len(self.value_mismatches),
                len(self.ttl_mismatches), len(self.extra))

    def summary(self) -> str:
        """The comparison in one line, for a check's detail."""
        return (f"{self.keys - len(self.missing)}/{self.keys} keys present, "
                f"{len(self.value_mismatches)} other values, {len(self.ttl_mismatches)} TTLs "
                f"off by more than {self.ttl_tolerance_ms / 1000:g}s, {len(self.extra)} "
                "extra keys")


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
