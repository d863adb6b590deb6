"""Adding a shard: from N shards with data to N+1, moving only the keys that must move.

Routing by ``hash(key) % N`` sends most keys elsewhere when N changes; a consistent
hashing ring sends only the new shard's share, 1/(N+1), and moves nothing between the
shards that were there. Both are measured on the same keys against that theory. Then
N standalone Redis shards holding the keys get a new one, and exactly the keys the
ring moved are migrated to it with MIGRATE while a thread reads and writes through
the application's router. Last, a Redis Cluster of N masters gets a new node and
16384/(N+1) slots are resharded to it with CLUSTER SETSLOT and MIGRATE, as
``redis-cli --cluster reshard`` does, while a workload reads and writes through
redis-py's cluster client. After each move every node is scanned and compared with
every key and value that must be there.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, cast

from cachelab.caching.resharding import (
    CLUSTER_SLOTS,
    TRAFFIC_COLUMNS,
    LiveTraffic,
    MigratingRouter,
    SlotMigration,
    audit,
    await_one_slot_map,
    cluster_nodes,
    describe_movement,
    expected_moved_fraction,
    load,
    migrate_moved,
    modulo_owner,
    movement,
    plan_reshard,
    read_all,
    slot_owners,
    traffic_rows,
)
from cachelab.caching.sharding import ShardRing, key_slot
from cachelab.exercise import ExerciseInfo, Opt, Result
from cachelab.workload.redis_info import command_calls

if TYPE_CHECKING:
    from cachelab.lab import Lab

INFO = ExerciseInfo(
    id="exercise-16",
    slug="adding-a-shard",
    title="Adding a cache shard under traffic",
    concept="Sharding for scalability",
    scenario=(
        "The user base has grown and the sharded cache needs one more shard to take "
        "its share of the writes. With user:<id> as the sharding key, count how many "
        "keys change owner under modulo hashing and under a consistent hashing ring, "
        "move exactly the ring's moved keys to the new shard while the application "
        "keeps reading and writing, then do the same in Redis Cluster: add a node and "
        "reshard slots to it under a live workload, losing nothing."
    ),
    walkthrough=(
        "Route user:1..user:K over N shards and over N+1, by hash modulo and by a ring "
        "with virtual nodes, and count the keys whose owner changes against theory: "
        "N/(N+1) and 1/(N+1).",
        "Load the keys into N standalone Redis shards by the ring, start shard N+1, and "
        "start a paced thread of reads and writes through the application's router.",
        "Switch the router to migration mode: writes go to the new owner, reads try the "
        "new owner, then the old one, then the new one again (a key that moved in "
        "between); MIGRATE exactly the moved keys, then route by the new ring alone.",
        "Scan every shard and compare with every key and the last value written.",
        "Start a Redis Cluster of N masters, load keys on their slots' masters, add "
        "an empty master, and start a workload through redis-py's cluster client.",
        "Reshard 16384/(N+1) slots to the new node, evenly from the masters: SETSLOT "
        "IMPORTING and MIGRATING, GETKEYSINSLOT and MIGRATE until each slot is empty, "
        "then SETSLOT NODE on the new node, the source and every other master.",
        "Wait for cluster_state:ok, read every node's slot map, scan every node, and "
        "count the workload's errors and wrong reads during the reshard.",
    ),
    fixtures=("redis-shards", "redis-cluster"),
    checks=(
        "the ring moves within 0.05 of 1/(N+1) of the keys, all to the new shard",
        "modulo moves within 0.05 of N/(N+1) of the keys",
        "exactly the moved keys migrated while traffic read and wrote",
        "no key lost after the standalone migration",
        "the cluster covers all 16384 slots with cluster_state:ok",
        "the new node owns slots and keys",
        "no key lost after the cluster reshard",
        "the workload read and wrote through the reshard, no wrong value, errors counted",
    ),
    metrics=(
        "shards_before", "shards_after", "keys", "moved_fraction_modulo",
        "expected_fraction_modulo", "moved_fraction_ring", "expected_fraction_ring",
        "ring_moved_between_old_shards", "keys_migrated", "newer_on_new_shard", "fallback_reads",
        "migration_ops", "migration_s", "keys_lost_standalone", "keys_lost_cluster", "keys_lost",
        "cluster_keys", "cluster_slots_moved", "cluster_keys_moved", "new_node_keys", "reshard_s",
        "reshard_ops", "ask_redirects", "workload_errors", "wrong_reads",
    ),
    headline="moved_fraction_ring",
    own_servers="adds a shard to servers and a cluster it starts",
)

TOLERANCE = 0.05
PHASE_OPS = 100  # operations the traffic does before and after each move, at least
SETTLE_S = 15.0  # the longest wait for every node to report the new slot map


def run(
    lab: Lab,
    *,
    shards: Annotated[int, Opt("Shards (and cluster masters) before the new one.",
                               min=1, max=8)] = 3,
    keys: Annotated[int, Opt("Keys user:1..user:K routed and migrated between standalone "
                             "shards.", min=100, max=1_000_000)] = 20000,
    cluster_keys: Annotated[int, Opt("Keys loaded into the cluster before the reshard.",
                                     min=100, max=1_000_000)] = 20000,
    vnodes: Annotated[int, Opt("Points per shard on the ring.", min=1, max=10000)] = 160,
    rate: Annotated[float, Opt("Operations per second of the live traffic.",
                               min=10, max=50000)] = 1000.0,
    write_ratio: Annotated[float, Opt("Share of the traffic that writes.",
                                      min=0, max=1)] = 0.2,
    migrate_batch: Annotated[int, Opt("Keys per MIGRATE call, standalone and cluster.",
                                      min=1, max=10000)] = 50,
    slots_per_step: Annotated[int, Opt("Cluster slots moved together in one step "
                                       "(redis-cli moves one at a time).",
                                       min=1, max=16384)] = 128,
) -> Result:
    result = Result(INFO)
    n = shards
    names = [f"shard-{i}" for i in range(1, n + 2)]
    new_name = names[-1]
    values = {f"user:{i}": f"user:{i}#0" for i in range(1, keys + 1)}

    # 1. Who owns what, before and after, under both schemes: arithmetic on the keys.
    ring_before = ShardRing(names[:n], vnodes=vnodes)
    ring_after = ShardRing(names[:n], vnodes=vnodes)
    ring_after.add(new_name)
    modulo = movement(values, modulo_owner(names[:n]), modulo_owner(names))
    ring = movement(values, ring_before.shard_for, ring_after.shard_for)
    theory_modulo = expected_moved_fraction("modulo", n)
    theory_ring = expected_moved_fraction("ring", n)
    ring_between_old = ring.not_to(new_name)

    # The cluster and its new node start first: a new master refuses keys for about
    # two seconds after it starts, a delay the standalone part below then hides.
    cluster = lab.cluster(masters=n, replicas=0, name="cluster")
    masters = cluster.masters()
    nodes, node_names = cluster_nodes(
        masters, {s.name: lab.closing(s.client()) for s in masters})
    owners = slot_owners(nodes[0].client)
    cluster_values = {f"user:{i}": f"user:{i}#0" for i in range(1, cluster_keys + 1)}
    load(cluster_values, lambda key: node_names[owners[key_slot(key)] or ""],
         {node_names[node.node_id]: node.client for node in nodes}, cluster=True)
    added = cluster.add_node()

    # 2. Standalone shards: load N by the old ring, add one, migrate the moved keys
    #    while a thread reads and writes through the application's router.
    old = names[:-1]
    servers = [lab.redis_server(name) for name in old]
    clients = {server.name: lab.closing(server.client()) for server in servers}
    load(values, ring_before.shard_for, clients)
    sizes_before = {name: clients[name].dbsize() for name in old}
    new_server = lab.redis_server(new_name)
    clients[new_name] = lab.closing(new_server.client())
    addresses = {s.name: (s.host, s.port) for s in [*servers, new_server]}
    router = MigratingRouter({name: clients[name] for name in old}, ring_before)
    traffic = lab.enter_context(LiveTraffic(
        router.get, router.set, values, rng=lab.rng("standalone traffic"),
        write_ratio=write_ratio, rate_per_s=rate))
    traffic.wait_for(PHASE_OPS)
    router.begin(ring_after, {new_name: clients[new_name]})
    traffic.phase = "migrating"
    with lab.live("Standalone migration under traffic", traffic.snapshot):
        report = migrate_moved(ring, clients, addresses, batch=migrate_batch)
    router.finish()
    traffic.phase = "after"
    traffic.wait_for(PHASE_OPS)
    traffic.stop()
    found = {name: read_all(client) for name, client in clients.items()}
    audit_alone = audit(found, traffic.expected, ring_after.shard_for,
                        also_accept=traffic.unsettled)
    sizes_after = {name: len(keys) for name, keys in found.items()}
    owned_by = Counter(ring_after.shard_for(key) for key in values)
    owned_after = {name: owned_by.get(name, 0) for name in names}
    migration_counts = traffic.counts.get("migrating")
    migration_ops = migration_counts.ops if migration_counts else 0
    fallback_reads = router.counts.fallback + router.counts.reread

    # 3. Redis Cluster: reshard an even share of the slots to the new node while a
    #    workload runs through redis-py's cluster client. Known to all is not enough:
    #    until it has learnt the slot map (and its start-up delay passed) the new node
    #    answers CLUSTERDOWN, and refuses what MIGRATE sends.
    cluster.wait_ok()
    masters = cluster.masters()
    nodes, cl_names = cluster_nodes(
        masters, {s.name: lab.closing(s.client()) for s in masters})
    target = next(node for node in nodes if cl_names[node.node_id] == added.name)
    owners_before = slot_owners(target.client)
    plan = plan_reshard(owners_before, [n.node_id for n in nodes if n is not target],
                        CLUSTER_SLOTS // (n + 1))
    planned = {slot for slots in plan.values() for slot in slots}
    keys_before = {cl_names[node.node_id]: node.client.dbsize() for node in nodes}
    asking_before = command_calls(target.client, ["asking"])
    cluster_client = lab.closing(cluster.client())
    # The client decodes its replies, so a GET answers a str or None.
    get = cast(Callable[[str], "str | None"], cluster_client.get)
    workload = lab.enter_context(LiveTraffic(
        get, cluster_client.set, cluster_values, rng=lab.rng("cluster workload"),
        write_ratio=write_ratio, rate_per_s=rate))
    workload.wait_for(PHASE_OPS)
    migration = SlotMigration(nodes, target, plan, slots_per_step=slots_per_step,
                              keys_per_migrate=migrate_batch)
    workload.phase = "resharding"
    with lab.live("Cluster reshard under a workload", workload.snapshot):
        for _ in lab.track(migration.steps(), f"resharding {len(planned)} slots",
                           migration.step_count):
            pass
    workload.phase = "after"
    views, states = await_one_slot_map(nodes, cl_names, masters, SETTLE_S)
    workload.wait_for(PHASE_OPS)
    workload.stop()
    owners_after = views[added.name]
    found = {cl_names[node.node_id]: read_all(node.client, cluster=True) for node in nodes}

    def owner(key: str) -> str:
        node_id = owners_after[key_slot(key)]
        return cl_names.get(node_id, "unowned") if node_id else "unowned"

    audit_cluster = audit(found, workload.expected, owner, also_accept=workload.unsettled)
    keys_after = {name: len(keys) for name, keys in found.items()}
    keys_in_planned = sum(key_slot(key) in planned for key in cluster_values)
    ask_redirects = command_calls(target.client, ["asking"]) - asking_before
    reshard_counts = workload.counts.get("resharding")
    reshard_ops = reshard_counts.ops if reshard_counts else 0

    # 4. Measure and check: tables, metrics, then the claims.
    reshard = migration.report
    live_alone, live_cluster = traffic.total(), workload.total()
    result.table(f"Keys that change owner, {n} → {n + 1} shards ({keys} keys)",
                 ["routing", "moved", "fraction", "theory", "to the new shard",
                  "between old shards"],
                 [["hash % N", len(modulo.moved), modulo.fraction, theory_modulo,
                   len(modulo.moved) - modulo.not_to(new_name), modulo.not_to(new_name)],
                  [f"ring ({vnodes} vnodes)", len(ring.moved), ring.fraction, theory_ring,
                   len(ring.moved) - ring_between_old, ring_between_old]])
    result.table("Standalone shards: keys before and after the migration",
                 ["shard", "keys before", "keys after", "owned under the new ring"],
                 [[name, sizes_before.get(name, 0), sizes_after[name],
                   owned_after[name]] for name in names])
    result.table("Standalone traffic through the router, by phase", TRAFFIC_COLUMNS,
                 traffic_rows(traffic))
    result.table("Cluster masters: slots and keys before and after the reshard",
                 ["node", "slots before", "slots after", "keys before", "keys after",
                  "state"],
                 [[name, owners_before.count(node_id), owners_after.count(node_id),
                   keys_before[name], keys_after[name], states[name]]
                  for node_id, name in cl_names.items()])
    result.table("Cluster workload through redis-py's RedisCluster, by phase",
                 TRAFFIC_COLUMNS, traffic_rows(workload))
    result.table("The reshard", ["slots moved", "keys moved", "steps", "MIGRATE calls",
                                 "seconds", "ASK followed", "errors"],
                 [[reshard.slots_moved, reshard.keys_moved, reshard.steps,
                   reshard.migrate_calls, reshard.seconds, ask_redirects,
                   live_cluster.errors]])

    result.add_metrics({
        "shards_before": n, "shards_after": n + 1, "keys": keys,
        "moved_fraction_modulo": modulo.fraction, "expected_fraction_modulo": theory_modulo,
        "moved_fraction_ring": ring.fraction, "expected_fraction_ring": theory_ring,
        "ring_moved_between_old_shards": ring_between_old,
        "keys_migrated": report.migrated, "newer_on_new_shard": report.newer_on_target,
        "fallback_reads": fallback_reads, "migration_ops": migration_ops,
        "migration_s": report.seconds,
        "keys_lost_standalone": len(audit_alone.lost),
        "keys_lost_cluster": len(audit_cluster.lost),
        "keys_lost": len(audit_alone.lost) + len(audit_cluster.lost),
        "cluster_keys": cluster_keys, "cluster_slots_moved": reshard.slots_moved,
        "cluster_keys_moved": reshard.keys_moved, "new_node_keys": keys_after[added.name],
        "reshard_s": reshard.seconds, "reshard_ops": reshard_ops,
        "ask_redirects": ask_redirects, "workload_errors": live_cluster.errors,
        "wrong_reads": (live_alone.wrong_values + live_alone.missing
                        + live_cluster.wrong_values + live_cluster.missing),
    })

    result.check("the ring moves within 0.05 of 1/(N+1) of the keys, all to the new shard",
                 abs(ring.fraction - theory_ring) <= TOLERANCE and ring_between_old == 0,
                 describe_movement(f"ring with {vnodes} vnodes", ring, theory_ring)
                 + f"; {ring_between_old} moved between old shards")
    result.check("modulo moves within 0.05 of N/(N+1) of the keys",
                 abs(modulo.fraction - theory_modulo) <= TOLERANCE,
                 describe_movement("hash % N", modulo, theory_modulo)
                 + f"; {modulo.not_to(new_name)} of them between old shards")
    exact = (report.planned == report.settled == len(ring.moved)
             and sizes_after == owned_after)
    live_ok = (migration_ops > 0 and live_alone.wrong_values == 0
               and live_alone.missing == 0 and live_alone.errors == 0)
    result.check("exactly the moved keys migrated while traffic read and wrote",
                 exact and live_ok,
                 f"{report.migrated} keys moved by MIGRATE in {report.calls} calls + "
                 f"{report.newer_on_target} written on {new_name} first = {report.settled}"
                 f"/{len(ring.moved)} moved keys, {new_name} holds "
                 f"{sizes_after[new_name]}, "
                 f"{'every' if sizes_after == owned_after else 'not every'} "
                 f"shard holds what the new ring gives it; {migration_ops} operations "
                 f"during the {report.seconds * 1000:.0f} ms migration: "
                 f"{fallback_reads} reads found on the old owner only, "
                 f"{live_alone.wrong_values} wrong, {live_alone.missing} missing, "
                 f"{live_alone.errors} errors")
    result.check("no key lost after the standalone migration", audit_alone.ok,
                 f"scan of all {n + 1} shards: {audit_alone.describe()}, each on its owner "
                 "under the new ring with the last value written")
    covered = sorted({sum(owner is not None for owner in view)
                      for view in views.values()})
    maps = len({tuple(view) for view in views.values()})
    result.check("the cluster covers all 16384 slots with cluster_state:ok",
                 covered == [CLUSTER_SLOTS] and maps == 1
                 and all(state == "ok" for state in states.values()),
                 f"slots covered in the nodes' maps: {covered}, "
                 f"{'one slot map on every node' if maps == 1 else f'{maps} different maps'}"
                 "; cluster_state " + ", ".join(f"{name} {state}"
                                                for name, state in states.items()))
    owned = {slot for slot, owner in enumerate(owners_after)
             if owner and cl_names.get(owner) == added.name}
    new_keys = keys_after[added.name]
    result.check("the new node owns slots and keys",
                 owned == planned and bool(owned)
                 and new_keys == keys_in_planned == reshard.keys_moved > 0,
                 f"{added.name} owns {len(owned)} slots ({len(planned)} planned) and "
                 f"{new_keys} keys; {keys_in_planned} keys hash to those slots, "
                 f"{reshard.keys_moved} moved by MIGRATE")
    result.check("no key lost after the cluster reshard", audit_cluster.ok,
                 f"scan of all {len(cl_names)} masters: {audit_cluster.describe()}, each on the "
                 "node its slot belongs to, with the last value written")
    errors = ", ".join(f"{count} {name}" for name, count in workload.error_types.items())
    result.check("the workload read and wrote through the reshard, no wrong value, "
                 "errors counted",
                 reshard_ops > 0 and live_cluster.wrong_values == 0
                 and live_cluster.missing == 0,
                 f"{reshard_ops} operations during the {reshard.seconds:.2f} s reshard "
                 f"({live_cluster.ops} in all): {live_cluster.wrong_values} wrong, "
                 f"{live_cluster.missing} missing, {live_cluster.errors} errors"
                 + (f" ({errors})" if errors else "")
                 + f"; {ask_redirects} ASK redirects followed")

    result.note("The router's migration mode is a choice: it could keep every operation on "
                "the old owner until all keys moved, then switch, but writes made meanwhile "
                "would have to be copied again. Here writes go to the new owner at once and "
                "a read falls back to the old one: fallback_reads counts the reads that "
                "would have missed had the application switched rings before the keys "
                "moved.")
    if workload.error_types.get("AttributeError"):
        result.note("The AttributeErrors come from redis-py itself: an ASK that points to "
                    "the new node, before the client has seen that node own a slot (CLUSTER "
                    "SLOTS does not list a master without slots), finds no node to follow "
                    "(redis/redis-py issue 4015). Clients with that fix, or a retry, "
                    "hide them.")
    result.note("Try --shards 1 (half the keys move under either scheme), --vnodes 1 (one "
                "point a shard: the new shard's share is luck), or --slots-per-step 1 (slot "
                "by slot, as redis-cli does).")
    return result
