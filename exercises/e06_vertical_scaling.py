"""Vertical scaling: move a full cache to a larger instance while the application runs.

A small Redis (a few MB of ``maxmemory``) is filled by the application until its own
``INFO`` shows it at the limit, evicting (or refusing writes, with ``noeviction``). A
larger instance is started and made a replica of it; it follows the live writes until
the cut-over pauses the old one's writes, lets the replica catch up and promotes it.
For comparison a second larger instance gets a copy by ``SCAN`` + ``DUMP``/``PTTL`` and
``RESTORE``, taken live, then completed by a catch-up pass from the paused old
instance. The application's configuration, a JSON file it re-reads when it changes,
is replaced atomically, its connections to the old instance are closed, and the old
instance, read one last time, is stopped. Both copies are compared key by key, value
and TTL, with that final state; the servers' own counters show where the application's
reads went; the workload's errors are counted and timed.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING, Annotated, Literal

from cachelab.exercise import ExerciseInfo, Opt, Result
from cachelab.workload.redis_info import (
    command_calls,
    counter_delta,
    keyspace_counters,
    memory_usage,
    read_values,
    used_memory_ratio,
)

if TYPE_CHECKING:
    from cachelab.lab import Lab

INFO = ExerciseInfo(
    id="exercise-6",
    slug="vertical-scaling",
    title="Vertical scaling: a live move to a larger cache instance",
    concept="Vertical scaling",
    scenario=(
        "The cache instance has reached its memory limit: it evicts keys the application "
        "still wants, or refuses its writes. Give it a larger instance without stopping "
        "the application: move the data across while the traffic keeps coming, point the "
        "application at the new instance, and retire the old one, losing no key and no TTL "
        "on the way."
    ),
    walkthrough=(
        "Start a small Redis and point the application at it through a JSON config file. "
        "Fill it with the application's writes until INFO memory shows it at maxmemory "
        "and INFO stats counts evictions (or writes fail with OOM, with noeviction).",
        "Keep the workload running (reads and writes of each worker's own keys, a share "
        "of the writes with a TTL) and copy the data into a larger instance by SCAN + "
        "DUMP/PTTL and RESTORE in pipelines, timing the pass.",
        "Start another larger instance, make it a replica of the small one (REPLICAOF), "
        "wait for the sync, and let it follow the live writes for a while.",
        "Cut over: CLIENT PAUSE WRITE on the small instance (reads go on; expiry and "
        "eviction stop), wait until the replica's offset equals the primary's, and "
        "promote it (REPLICAOF NO ONE).",
        "Replace the application's config file atomically (os.replace) and close its "
        "connections to the old instance: writes held by the pause are dropped there, "
        "counted as errors, and retried against the new address.",
        "Read the old instance's final state (paused, and left by the application) key by "
        "key, then stop it; let the workload go on against the new instance.",
        "Compare the promoted replica with that final state, every key, value and TTL "
        "(within a second); keys the application rewrote after the switch must hold its "
        "last value. Finish the DUMP/RESTORE copy with a catch-up pass from the final "
        "state and compare it too.",
        "Check from INFO commandstats and keyspace stats that the application's reads "
        "after the switch reached the new instance, as many as it made there.",
    ),
    fixtures=("redis-small", "redis-large", "redis-large-copy", "config-file"),
    checks=(
        "the small instance is at its memory limit",
        "replication moved every key with its value and TTL",
        "DUMP/RESTORE with a catch-up pass moved every key with its value and TTL",
        "the application reads from the new instance after the switch",
        "the workload never read a wrong value",
        "workload errors only during the switch, every failed command retried",
        "the larger instance runs below its limit",
    ),
    metrics=(
        "keys", "keys_missing", "value_mismatches", "ttl_mismatches", "keys_extra",
        "live_writes_checked", "keys_rewritten_after_switch", "migration_s_replication",
        "replication_sync_s", "write_pause_ms_replication", "migration_s_copy", "copy_bulk_s",
        "copy_catchup_s", "write_pause_ms_copy", "copy_drift_keys", "copy_keys_missing",
        "copy_ttl_mismatches", "workload_errors", "failed_ops", "switch_stall_ms", "reads",
        "wrong_reads", "reads_on_new", "new_get_calls", "old_used_memory_ratio", "old_evicted_keys",
        "oom_refusals", "new_used_memory_ratio", "new_evicted_keys",
    ),
    headline="migration_s_replication",
    own_servers="starts a bigger server and moves the cache onto it",
)

AT_CAPACITY = 0.9  # used_memory / maxmemory at or above this counts as full
ROOMY = 0.9  # the larger instance must stay below this share of its maxmemory
TTL_TOLERANCE_MS = 1000
NAMESPACE = "item"
APP_NAME = "app"  # the application's connections are named app-<worker>
ADMIN_CLIENT = {"socket_timeout": 10}  # the exercise's own reads of each instance
RAW_CLIENT = {**ADMIN_CLIENT, "decode_responses": False}  # DUMP payloads are bytes


def run(
    lab: Lab,
    *,
    old_maxmemory_mb: Annotated[int, Opt("maxmemory of the small instance, in MB.",
                                         min=3, max=1024)] = 4,
    new_maxmemory_mb: Annotated[int, Opt("maxmemory of the larger instances, in MB.",
                                         min=4, max=65536)] = 64,
    policy: Annotated[Literal["allkeys-lru", "noeviction"],
                      Opt("maxmemory-policy of both: evict, or refuse writes when "
                          "full.")] = "allkeys-lru",
    clients: Annotated[int, Opt("Application threads.", min=1, max=16)] = 2,
    value_bytes: Annotated[int, Opt("Length of each cached value.", min=32,
                                    max=100_000)] = 256,
    write_share: Annotated[float, Opt("Share of the application's commands that write.",
                                      min=0.05, max=0.95)] = 0.3,
    ttl_share: Annotated[float, Opt("Share of writes that set a TTL (the rest clear it).",
                                    min=0, max=1)] = 0.5,
    live_s: Annotated[float, Opt("Seconds of workload at capacity, while the replica "
                                 "follows, and after the switch.", min=0.2, max=600)] = 1.0,
    pace_ms: Annotated[float, Opt("Pause between two commands of one application thread, "
                                  "in ms (0: as fast as it can).", min=0, max=1000)] = 0.2,
    batch: Annotated[int, Opt("Keys per SCAN/DUMP/RESTORE pipeline.", min=10,
                              max=10_000)] = 200,
) -> Result:
    from cachelab.caching.migration import (
        ReplicationMove,
        catch_up,
        compare,
        copy_keys,
        disconnect_clients,
        snapshot,
    )
    from cachelab.workload.live import CacheAddress, LiveWorkload, write_config

    result = Result(INFO)
    memory = {"maxmemory_policy": policy}
    # The replication backlog is allocated when the first replica attaches and counts
    # against maxmemory: on a full 4 MB instance the default 1 MB would evict a quarter.
    old = lab.own_redis_server("old", maxmemory=f"{old_maxmemory_mb}mb",
                           repl_backlog_size="16kb", **memory)
    old_admin = lab.closing(old.client(**ADMIN_CLIENT))
    old_raw = lab.closing(old.client(**RAW_CLIENT))
    old_address = f"{old.host}:{old.port}"
    config_path = lab.workdir / "app-cache.json"
    write_config(config_path, CacheAddress(old.host, old.port, version=1))
    workload = LiveWorkload(config_path, clients=clients, namespace=NAMESPACE,
                            rngs=[lab.rng(f"app-{i}") for i in range(clients)],
                            value_bytes=value_bytes, write_share=write_share,
                            ttl_share=ttl_share, client_name=APP_NAME,
                            pace_s=pace_ms / 1000)

    # 1. The application fills the small instance until its own INFO says it is full.
    def full() -> bool:
        return (int(old_admin.info("stats")["evicted_keys"]) > 0
                or workload.total("oom_refusals") > 0)

    def memory_row(phase: str) -> list[object]:
        return [phase, *memory_usage(old_admin), workload.total("oom_refusals")]

    filled = workload.fill(full, batch=batch, max_keys=old_maxmemory_mb * 2**20 // 32)
    phases = [memory_row(f"filled ({filled} writes)")]
    with lab.live(f"{INFO.id}: the application, live", workload.live_counters):
        lab.enter_context(workload)
        time.sleep(live_s)
        old_ratio = used_memory_ratio(old_admin)
        old_evicted = int(old_admin.info("stats")["evicted_keys"])
        phases.append(memory_row(f"after {live_s:g}s of workload"))

        # 2. A live copy by DUMP/RESTORE into one larger instance.
        copy = lab.redis_server("copy", maxmemory=f"{new_maxmemory_mb}mb", **memory)
        copy_raw = lab.closing(copy.client(**RAW_CLIENT))
        bulk = copy_keys(old_raw, copy_raw, match=f"{NAMESPACE}:*", batch=batch)
        phases.append(memory_row("after the DUMP/RESTORE pass"))

        # 3. Another larger instance follows by replication, then is promoted.
        new = lab.redis_server("new", maxmemory=f"{new_maxmemory_mb}mb", **memory)
        new_admin = lab.closing(new.client(**ADMIN_CLIENT))
        new_raw = lab.closing(new.client(**RAW_CLIENT))
        new_address = f"{new.host}:{new.port}"
        move = ReplicationMove(old, new)
        sync_s = move.attach()
        phases.append(memory_row("replica attached and synced"))
        time.sleep(live_s)
        # The pause outlasts reading the old state by far; the old instance is stopped
        # while still paused, so that no held-back write ever lands there.
        pause_s = move.cut_over(pause_ms=600_000)
        phases.append(memory_row("writes paused, replica promoted"))

        new_before = keyspace_counters(new_admin)
        new_gets_before = command_calls(new_admin, ["get"])

        # 4. Switch the application: a new config file, and its connections to the old
        # instance closed, which drops the writes the pause holds there (they are retried).
        write_config(config_path, CacheAddress(new.host, new.port, version=2))
        switched_at = time.monotonic()
        disconnected = disconnect_clients(old_admin, APP_NAME)
        disconnected_at = time.monotonic()

        # 5. Paused and left by the application, the old data stands still: read it, stop.
        t = time.perf_counter()
        final = snapshot(old_raw, match=f"{NAMESPACE}:*", batch=batch)
        final_read_s = time.perf_counter() - t
        final_read_at = time.monotonic()
        old_gets = command_calls(old_admin, ["get"])
        old.stop()
        stopped_at = time.monotonic()
        time.sleep(max(0.0, switched_at + live_s - stopped_at))
        workload.stop()
    ended_at = time.monotonic()
    new_seen = counter_delta(new_before, keyspace_counters(new_admin))
    new_gets = command_calls(new_admin, ["get"]) - new_gets_before
    new_ratio = used_memory_ratio(new_admin)
    new_evicted = int(new_admin.info("stats")["evicted_keys"])

    # The new instance, standing still now, against the old one's final state. Keys the
    # application wrote there after the switch hold its newer values instead.
    on_new = snapshot(new_raw, match=f"{NAMESPACE}:*", batch=batch)
    rewritten = workload.keys_written_at(new_address)
    later = {key.encode() for key in rewritten}
    by_replication = compare({k: e for k, e in final.items() if k not in later},
                             {k: e for k, e in on_new.items() if k not in later},
                             ttl_tolerance_ms=TTL_TOLERANCE_MS)
    rewritten_ok = sum(value is not None and value == workload.expected(key)
                       for key, value in read_values(new_admin, sorted(rewritten)).items())

    # 6. The copy: measure how far the live pass drifted, catch up, compare again.
    t = time.perf_counter()
    drift = compare(final, snapshot(copy_raw, match=f"{NAMESPACE}:*", batch=batch),
                    ttl_tolerance_ms=TTL_TOLERANCE_MS)
    fixed = catch_up(copy_raw, final, drift)
    catchup_s = final_read_s + time.perf_counter() - t
    by_copy = compare(final, snapshot(copy_raw, match=f"{NAMESPACE}:*", batch=batch),
                      ttl_tolerance_ms=TTL_TOLERANCE_MS)

    # What the run measured, gathered.
    assert move.paused_at is not None and move.started_at is not None
    live_written = workload.keys_written_between(move.started_at, move.paused_at)
    live_checked = sum(key.encode() in final and key not in rewritten for key in live_written)
    errors = workload.errors
    switched = {w.index: w.stats.first_success_at.get(new_address) for w in workload.workers}
    explained = [e for e in errors
                 if move.paused_at <= e.at and e.at <= (switched[e.worker] or 0.0)]
    stall_ms = max(((at - move.paused_at) * 1000 for at in switched.values() if at), default=0)
    reads_new, hits_new = workload.reads_at(new_address), workload.hits_at(new_address)
    refused_on_new = sum(w.stats.refusals_by_address[new_address] for w in workload.workers)
    repl_s = sync_s + pause_s
    copy_s = bulk.seconds + catchup_s

    result.table("The small instance filling up (its own INFO)",
                 ["phase", "keys", "used_memory MB", "used / maxmemory", "evicted_keys",
                  "OOM refusals"], phases)
    result.table("Two ways to move, compared with the old instance's final state",
                 ["copy", "keys compared", "missing", "other value", "TTL off > 1s", "extra"],
                 [["replication, promoted (less keys the app rewrote since)",
                   *by_replication.counts()],
                  ["DUMP/RESTORE, live pass only", *drift.counts()],
                  ["DUMP/RESTORE, after the catch-up", *by_copy.counts()]])
    result.table("Time taken", ["copy", "moving s", "writes paused ms", "how"],
                 [["replication", repl_s, pause_s * 1000,
                   f"sync {sync_s * 1000:.0f} ms; then followed {live_s:g}s of live writes; "
                   f"paused, caught up, promoted in {pause_s * 1000:.1f} ms"],
                  ["DUMP/RESTORE", copy_s, catchup_s * 1000,
                   f"live pass {bulk.seconds * 1000:.0f} ms ({bulk.keys} keys, {bulk.batches} "
                   f"pipelines); catch-up: read the paused old state and fix {fixed} keys"]])
    result.table("Where the application's reads went (the servers' own counters)",
                 ["instance", "address", "GET calls (commandstats)", "app reads there",
                  "keyspace hits", "app hits there"],
                 [["old (until stopped)", old_address, old_gets, workload.reads_at(old_address),
                   "-", workload.hits_at(old_address)],
                  ["new (after the switch)", new_address, new_gets, reads_new,
                   new_seen["keyspace_hits"], hits_new]])
    marks = [("replica attached (REPLICAOF)", move.started_at),
             ("old instance's writes paused", move.paused_at),
             ("replica promoted", move.promoted_at or 0.0),
             ("config file replaced", switched_at),
             (f"app's connections to old closed ({disconnected})", disconnected_at),
             ("old instance's final state read", final_read_at),
             ("old instance stopped", stopped_at),
             *((f"worker {i} first command on new", at or 0.0) for i, at in switched.items()),
             ("workload stopped", ended_at)]
    result.table("The switch, in ms since the writes were paused",
                 ["event", "ms"], [[what, (at - move.paused_at) * 1000]
                                   for what, at in sorted(marks, key=lambda m: m[1])])
    kinds = Counter(e.kind for e in errors)
    result.table("Errors the workload saw (first ten)",
                 ["worker", "ms after the pause", "address", "error"],
                 [[e.worker, (e.at - move.paused_at) * 1000, e.address, e.kind]
                  for e in errors[:10]] or [["-", "-", "-", "none"]])

    result.add_metrics({
        "keys": len(final), "keys_missing": len(by_replication.missing),
        "value_mismatches": len(by_replication.value_mismatches),
        "ttl_mismatches": len(by_replication.ttl_mismatches),
        "keys_extra": len(by_replication.extra), "live_writes_checked": live_checked,
        "keys_rewritten_after_switch": len(rewritten),
        "migration_s_replication": repl_s, "replication_sync_s": sync_s,
        "write_pause_ms_replication": pause_s * 1000,
        "migration_s_copy": copy_s, "copy_bulk_s": bulk.seconds, "copy_catchup_s": catchup_s,
        "write_pause_ms_copy": catchup_s * 1000, "copy_drift_keys": drift.differing,
        "copy_keys_missing": len(by_copy.missing),
        "copy_ttl_mismatches": len(by_copy.ttl_mismatches),
        "workload_errors": len(errors), "failed_ops": workload.total("failed_ops"),
        "switch_stall_ms": stall_ms, "reads": workload.total("reads"),
        "wrong_reads": workload.total("wrong_reads"), "reads_on_new": reads_new,
        "new_get_calls": new_gets, "old_used_memory_ratio": old_ratio,
        "old_evicted_keys": old_evicted, "oom_refusals": workload.total("oom_refusals"),
        "new_used_memory_ratio": new_ratio, "new_evicted_keys": new_evicted,
    })

    refusals = workload.total("oom_refusals")
    result.check("the small instance is at its memory limit",
                 old_ratio >= AT_CAPACITY and (old_evicted > 0 or refusals > 0),
                 f"used_memory/maxmemory {old_ratio:.3f} after {live_s:g}s of workload "
                 f"({policy}); {old_evicted} evicted_keys, {refusals} writes refused with OOM")
    result.check("replication moved every key with its value and TTL",
                 by_replication.keys > 0 and by_replication.equal
                 and (live_checked > 0 or not live_written) and rewritten_ok == len(rewritten),
                 f"{by_replication.summary()}; {live_checked} of them written while the "
                 f"replica followed (of {len(live_written)} keys the old instance acknowledged "
                 f"then); {rewritten_ok}/{len(rewritten)} keys the application "
                 "wrote on the new instance after the switch hold its last value")
    result.check("DUMP/RESTORE with a catch-up pass moved every key with its value and TTL",
                 by_copy.keys > 0 and by_copy.equal,
                 f"{by_copy.summary()}; the live pass alone had {drift.differing} keys "
                 f"differing ({len(drift.missing)} missing, {len(drift.value_mismatches)} "
                 f"stale, {len(drift.extra)} extra)")
    every_worker_moved = all(at is not None and at >= switched_at for at in switched.values())
    result.check("the application reads from the new instance after the switch",
                 reads_new > 0 and every_worker_moved and new_gets == reads_new
                 and new_seen["keyspace_hits"] == hits_new
                 and new_seen["keyspace_misses"] == reads_new - hits_new,
                 f"new instance: {new_gets} GET calls and {new_seen['keyspace_hits']} hits/"
                 f"{new_seen['keyspace_misses']} misses by its own INFO, against the app's "
                 f"{reads_new} reads ({hits_new} hits) there; "
                 f"{sum(at is not None for at in switched.values())}/{clients} workers moved")
    reads = workload.total("reads")
    wrong = workload.total("wrong_reads")
    result.check("the workload never read a wrong value",
                 reads > 0 and reads_new > 0 and wrong == 0,
                 f"{wrong} wrong of {reads} reads ({workload.total('hits')} hits, "
                 f"{reads_new} on the new instance); a miss is not wrong, a full cache evicts")
    failed = workload.total("failed_ops")
    what_failed = ", ".join(f"{n} {kind}" for kind, n in kinds.items()) or "none"
    result.check("workload errors only during the switch, every failed command retried",
                 failed == 0 and len(explained) == len(errors),
                 f"{len(errors)} errors ({what_failed}), {len(explained)} between the write "
                 "pause and that worker's first command on the new instance; "
                 f"{failed} commands given up; longest stall "
                 f"{stall_ms:.0f} ms")
    result.check("the larger instance runs below its limit",
                 new_ratio < ROOMY and new_evicted == 0 and refused_on_new == 0,
                 f"used_memory/maxmemory {new_ratio:.3f}, {new_evicted} evicted_keys, "
                 f"{refused_on_new} writes refused, after {live_s:g}s of workload")

    result.note(f"By replication the old instance's writes were paused {pause_s * 1000:.1f} ms "
                f"before the promotion, and no worker waited more than {stall_ms:.0f} ms for "
                "the new instance (pause, promotion, config file, reconnect). The DUMP/RESTORE "
                f"copy would hold writes for {catchup_s * 1000:.0f} ms for its catch-up: its "
                f"live pass missed {drift.differing} changes.")
    result.note("Attaching a replica costs the primary memory (the backlog, the replica's "
                "output buffer) and a fork; on a full instance that shows as evictions in the "
                "first table. Try --policy noeviction (writes refused instead of evictions), "
                "--live-s 5, or --clients 4.")
    return result

