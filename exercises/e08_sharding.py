"""Sharding writes: user data spread over independent shards by user id, three ways.

One Redis cannot take every write, so the keyspace is split over N independent
redis-servers and each write goes to the shard its user id maps to: by modulo
hashing, by a ketama consistent-hash ring, and by Redis Cluster's hash slots, where
the cluster client does the routing. Every user's keys carry the user id as a hash
tag (``user:{42}:profile``), so all three route by the same sharding key and keep a
user's keys together. Each scheme gets the same pipelined writes; then every shard is
scanned to find each key, and each shard's own counters say how many writes it took.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

from cachelab.caching.sharding import (
    SchemeAudit,
    ShardedWriter,
    ShardRing,
    SlotMap,
    audit_scheme,
    count_keys_in_slots,
    key_slot,
    modulo_shard,
    write_and_audit,
    write_through_cluster,
)
from cachelab.exercise import ExerciseInfo, Opt, Result
from cachelab.workload.redis_info import command_calls

if TYPE_CHECKING:
    from cachelab.lab import Lab

INFO = ExerciseInfo(
    id="exercise-8",
    slug="sharding",
    title="Sharding writes by user id: modulo, ketama ring and Redis Cluster",
    concept="Sharding",
    scenario=(
        "Write volume has outgrown one cache server. Split the keyspace over several "
        "independent Redis shards, each taking only its users' writes: route every write "
        "by the user id, with plain modulo hashing, with a consistent-hash ring as "
        "memcached clients use (ketama), and with Redis Cluster's hash slots. Then look "
        "on every shard to prove each key is where its router said, and compare how "
        "evenly each scheme spreads the load."
    ),
    walkthrough=(
        "Start N independent redis-servers (shard-0 ... shard-N-1) and a Redis Cluster "
        "of N masters without replicas; draw a seeded set of user ids.",
        "Write every user's keys (user:{id}:profile, user:{id}:cart, ...) in pipelines, "
        "one per shard, routed by modulo hashing of the user id: hash mod N.",
        "Empty the shards and write the same keys routed by a ketama ring of the shard "
        "names (MD5 points, 160 per shard).",
        "Write the same keys through redis-py's cluster client, which sends each to the "
        "master owning its hash slot; the user id in braces is the hash tag.",
        "After each scheme, SCAN every shard and compare each key's shard with the "
        "router's; read each shard's own INFO commandstats and DBSIZE; for the cluster, "
        "check each key's slot (CRC16) against CLUSTER SLOTS and CLUSTER COUNTKEYSINSLOT.",
    ),
    fixtures=("redis-shards", "redis-cluster"),
    checks=(
        "scanning every shard finds every key where its router put it",
        "the ketama ring's load balance (max/mean) is at most 1.15",
        "the cluster spreads keys over all masters",
        "writes per shard from each shard's own counters match the router's",
    ),
    metrics=(
        "shards", "users", "keys", "misplaced_keys", "balance_modulo", "balance_ring",
        "balance_cluster", "writes_per_s", "writes_per_s_modulo", "writes_per_s_ring",
        "writes_per_s_cluster", "writes_per_s_unpipelined", "ring_points",
        "cluster_slot_mismatches",
    ),
    headline="balance_ring",
    own_servers="starts its own shards and a Redis Cluster",
)

MAX_RING_BALANCE = 1.15
FIELDS = ("profile", "cart", "session", "prefs")
USER_ID_SPACE = 10_000_000  # ids are drawn from here, so a seed changes the placement
UNPIPELINED_WRITES = 1000  # the baseline: enough round trips for a steady rate, quickly


def run(
    lab: Lab,
    *,
    shards: Annotated[int, Opt("Independent shards, and masters of the cluster.", min=2,
                               max=12)] = 3,
    users: Annotated[int, Opt("Users whose keys are written (ids drawn by the seed).",
                              min=100, max=1_000_000)] = 10_000,
    keys_per_user: Annotated[int, Opt("Keys written per user (profile, cart, session, "
                                      "prefs), all routed by the user id.", min=1,
                                      max=len(FIELDS))] = 2,
    value_bytes: Annotated[int, Opt("Size of every value, in bytes.", min=1,
                                    max=100_000)] = 100,
    batch: Annotated[int, Opt("Writes per pipeline.", min=1, max=100_000)] = 1000,
    ring_points: Annotated[int, Opt("Points per shard on the ring; 160 is ketama's.", min=1,
                                    max=5000)] = 160,
) -> Result:
    from cachelab.workload.redis_info import CLUSTER_SLOTS

    result = Result(INFO)
    user_ids = lab.rng("users").sample(range(1, USER_ID_SPACE), users)
    fields = FIELDS[:keys_per_user]
    value = "v" * value_bytes
    keys = [(str(uid), f"user:{{{uid}}}:{name}") for uid in user_ids for name in fields]

    # N independent shards: nothing connects them but the router.
    servers = [lab.redis_server(f"shard-{i}") for i in range(shards)]
    clients = {server.name: server.client() for server in servers}
    for client in clients.values():
        lab.callback(client.close)
    names = list(clients)
    ring = ShardRing(names, vnodes=ring_points)
    routers: dict[str, tuple[Callable[[str], str], dict[str, float]]] = {
        "modulo": (lambda key: names[modulo_shard(key, shards)],
                   dict.fromkeys(names, 1 / shards)),
        "ring": (ring.shard_for, ring.shares()),
    }
    # The baseline: one round trip per write, to one shard.
    first = names[0]
    unpipelined = ShardedWriter({first: clients[first]}, lambda _: first, batch=1).write(
        (sharding_key, f"baseline:{key}", value)
        for sharding_key, key in keys[:UNPIPELINED_WRITES])
    runs: list[SchemeAudit] = [
        write_and_audit(scheme, clients, routers[scheme][0], keys, value, batch=batch,
                        expected_share=routers[scheme][1])
        for scheme in lab.track(routers, "sharded writes", len(routers))]

    # Redis Cluster: the cluster client routes each key to its slot's master.
    cluster = lab.cluster(masters=shards, replicas=0, name="cluster")
    cluster_client = lab.closing(cluster.client())
    masters = {f"{m.host}:{m.port}": m for m in cluster.masters()}
    master_clients = {address: m.client() for address, m in masters.items()}
    for client in master_clients.values():
        lab.callback(client.close)
    slot_map = SlotMap.from_node(next(iter(master_clients.values())))
    ordered = {address: master_clients[address] for address in slot_map.masters
               if address in master_clients}
    before = {address: command_calls(client, ["set"]) for address, client in ordered.items()}
    report = write_through_cluster(cluster_client, ((key, value) for _, key in keys),
                                   batch=batch)
    expected = {key: slot_map.owner_of_key(key) for _, key in keys}
    labels = {address: masters[address].name for address in ordered}
    cluster_run = audit_scheme("cluster", ordered, labels, report, expected, before,
                               {a: slot_map.slots_of(a) / CLUSTER_SLOTS for a in ordered})
    runs.append(cluster_run)
    slot_counts = count_keys_in_slots(ordered, slot_map,
                                      Counter(key_slot(key) for _, key in keys))
    slot_mismatches = sum(count.differ for count in slot_counts)

    # Tables and metrics, all from what the shards reported.
    by_scheme = {r.scheme: r for r in runs}
    rows = []
    for r in runs:
        for shard in r.shards:
            rows.append([r.scheme, r.labels[shard], r.report.acknowledged[shard],
                         r.set_calls[shard], r.dbsize[shard], r.found(shard),
                         round(r.found(shard) / len(keys), 3), round(r.expected_share[shard], 3)])
    result.table(f"Keys per shard ({users} users x {keys_per_user} keys): the router's count, "
                 "the shard's own INFO commandstats and DBSIZE, and SCAN",
                 ["scheme", "shard", "router", "SET calls", "DBSIZE", "SCAN", "share",
                  "expected"], rows)
    result.table("Placement, balance and write rate by scheme (unpipelined: one round trip "
                 "per write, to shard-0)",
                 ["scheme", "keys", "misplaced", "max/mean", "pipelines", "seconds",
                  "writes/s"],
                 [[r.scheme, r.report.writes, r.placement.misplaced, round(r.balance, 3),
                   r.report.pipelines, round(r.report.seconds, 3),
                   round(r.report.writes_per_s)] for r in runs]
                 + [["unpipelined", unpipelined.writes, "", "", unpipelined.writes,
                     round(unpipelined.seconds, 3), round(unpipelined.writes_per_s)]])
    result.table("Cluster slots: CLUSTER COUNTKEYSINSLOT on each master against CRC16 of "
                 "each key",
                 ["master", "slots", "with keys", "keys counted", "expected", "differ"],
                 [[labels[c.master], c.slots, c.with_keys, c.counted, c.expected, c.differ]
                  for c in slot_counts])
    result.chart("Keys per shard, by scheme", "shard", [f"#{i}" for i in range(shards)],
                 {r.scheme: [r.found(s) for s in r.shards] for r in runs})

    misplaced = sum(r.placement.misplaced for r in runs)
    seconds = sum(r.report.seconds for r in runs)
    writes = sum(r.report.writes for r in runs)
    result.add_metrics({
        "shards": shards, "users": users, "keys": len(keys), "misplaced_keys": misplaced,
        "balance_modulo": by_scheme["modulo"].balance, "balance_ring": by_scheme["ring"].balance,
        "balance_cluster": cluster_run.balance,
        "writes_per_s": writes / seconds if seconds else 0.0,
        "writes_per_s_modulo": by_scheme["modulo"].report.writes_per_s,
        "writes_per_s_ring": by_scheme["ring"].report.writes_per_s,
        "writes_per_s_cluster": cluster_run.report.writes_per_s,
        "writes_per_s_unpipelined": unpipelined.writes_per_s,
        "ring_points": ring_points, "cluster_slot_mismatches": slot_mismatches,
    })

    # Checks.
    every_key = all(r.placement.found == len(keys) for r in runs)
    result.check("scanning every shard finds every key where its router put it",
                 misplaced == 0 and every_key and slot_mismatches == 0,
                 "; ".join(f"{r.scheme}: {r.placement.found}/{len(keys)} found, "
                           f"{r.placement.on_wrong_shard} on a wrong shard, "
                           f"{r.placement.missing} missing, {r.placement.unexpected} "
                           "unexpected" for r in runs)
                 + f"; {slot_mismatches} cluster slots whose key count differs from CRC16's")
    ring_run = by_scheme["ring"]
    result.check("the ketama ring's load balance (max/mean) is at most 1.15",
                 ring_run.placement.found == len(keys) and ring_run.balance <= MAX_RING_BALANCE,
                 f"max/mean {ring_run.balance:.3f} over keys found per shard ("
                 + ", ".join(f"{s} {ring_run.found(s)}" for s in ring_run.shards)
                 + f"); the ring's arcs give {max(ring_run.expected_share.values()) * shards:.3f}"
                 f"; modulo {by_scheme['modulo'].balance:.3f}, cluster "
                 f"{cluster_run.balance:.3f}")
    covered = sum(last - first + 1 for first, last, _ in slot_map.ranges)
    spread = (len(ordered) == shards and covered == CLUSTER_SLOTS
              and all(cluster_run.dbsize[a] > 0 for a in ordered))
    result.check("the cluster spreads keys over all masters", spread,
                 f"{len(ordered)}/{shards} masters in CLUSTER SLOTS covering "
                 f"{covered}/{CLUSTER_SLOTS} slots; DBSIZE per master "
                 + ", ".join(str(cluster_run.dbsize[a]) for a in ordered))
    disagreements = [f"{r.scheme} {d}" for r in runs for d in r.disagreements()]
    result.check("writes per shard from each shard's own counters match the router's",
                 not disagreements
                 and all(sum(r.set_calls.values()) == len(keys) for r in runs),
                 "; ".join(disagreements) or
                 f"router, INFO commandstats SET calls and DBSIZE agree on all "
                 f"{sum(len(r.shards) for r in runs)} shards of the three schemes, e.g. "
                 + ", ".join(f"{r.scheme} {r.labels[r.shards[0]]} {r.set_calls[r.shards[0]]}"
                             for r in runs))

    # What adding a shard would move, from the routers alone (exercise 16 does it live).
    grown = ShardRing([*names, f"shard-{shards}"], vnodes=ring_points)
    ids = [sharding_key for sharding_key, _ in keys[::keys_per_user]]
    moved_modulo = sum(modulo_shard(k, shards) != modulo_shard(k, shards + 1) for k in ids)
    moved_ring = sum(ring.shard_for(k) != grown.shard_for(k) for k in ids)
    result.note(f"Adding a shard would move {moved_modulo / len(ids):.0%} of the users under "
                f"modulo hashing but {moved_ring / len(ids):.0%} on the ring (about 1/"
                f"{shards + 1}): see exercise 16.")
    result.note("Every key carries its user id as a hash tag, so a user's keys share one "
                "shard in all three schemes, and multi-key commands on one user still work "
                "in the cluster.")
    result.note(f"The ring places shards by name (shard-0 ...): how much of the ring each "
                f"shard owns depends only on the names and the points per shard "
                f"({ring_points}). ketama clients often name shards host:port, so moving a "
                f"shard to another port moves its keys. Try --ring-points 8 to see an uneven "
                f"ring fail the balance check, --shards 6, or --users 100000 for a longer "
                f"write burst.")
    result.note(f"All writes come from one client thread. Pipelines of {batch} wrote "
                f"{by_scheme['ring'].report.writes_per_s:,.0f} keys/s to the ring's shards, "
                f"against {unpipelined.writes_per_s:,.0f}/s with one round trip per write; "
                f"the cluster client managed {cluster_run.report.writes_per_s:,.0f}/s, as it "
                "computes each key's slot and groups the pipeline by node in Python.")
    return result
