"""Adding a shard: moved keys, live migration between shards, and a Cluster reshard."""

from __future__ import annotations

import random
from typing import Any

import pytest
import redis

from cachelab.caching.resharding import (
    CLUSTER_SLOTS,
    TRAFFIC_COLUMNS,
    ClusterNode,
    LiveTraffic,
    MigratingRouter,
    SlotMigration,
    audit,
    await_one_slot_map,
    cluster_nodes,
    describe_movement,
    expected_moved_fraction,
    load,
    migrate_keys,
    migrate_moved,
    modulo_owner,
    movement,
    plan_reshard,
    read_all,
    slot_owners,
    traffic_rows,
)
from cachelab.caching.sharding import ShardRing, key_slot
from cachelab.lab import Lab
from cachelab.servers.redis_server import RedisServer
from cachelab.workload.redis_info import node_id

KEYS = [f"user:{i}" for i in range(1, 5001)]


def _address(server: RedisServer) -> tuple[str, int]:
    return server.host, server.port


def _servers(lab: Lab, *names: str) -> tuple[dict[str, RedisServer], dict[str, redis.Redis]]:
    servers = {name: lab.redis_server(name) for name in names}
    clients = {name: server.client() for name, server in servers.items()}
    for client in clients.values():
        lab.callback(client.close)
    return servers, clients


# --- which keys move ---------------------------------------------------------------


def test_theory_is_n_over_n_plus_one_for_modulo_and_one_over_it_for_a_ring() -> None:
    assert expected_moved_fraction("modulo", 3) == pytest.approx(0.75)
    assert expected_moved_fraction("ring", 3) == pytest.approx(0.25)
    assert expected_moved_fraction("modulo", 1) == expected_moved_fraction("ring", 1) == 0.5
    with pytest.raises(ValueError):
        expected_moved_fraction("ring", 0)


def test_modulo_moves_most_keys_and_the_ring_only_the_new_shards_share() -> None:
    old = ["a", "b", "c"]
    modulo = movement(KEYS, modulo_owner(old), modulo_owner([*old, "d"]))
    ring = movement(KEYS, ShardRing(old).shard_for, ShardRing([*old, "d"]).shard_for)

    assert modulo.total == ring.total == len(KEYS)
    assert modulo.fraction == pytest.approx(0.75, abs=0.03)
    assert ring.fraction == pytest.approx(0.25, abs=0.05)
    # The ring moves keys only to the new shard; modulo shuffles the old ones too.
    assert ring.not_to("d") == 0 and set(ring.routes()) == {(s, "d") for s in old}
    assert modulo.not_to("d") > len(KEYS) / 3
    assert all(ShardRing(old).shard_for(k) == o and n == "d" for k, (o, n) in ring.moved.items())
    assert describe_movement("ring", ring, 0.25).startswith(
        f"ring: {len(ring.moved)}/{len(KEYS)} keys moved = {ring.fraction:.3f}, theory 0.250")


def test_modulo_owner_names_the_shard_that_modulo_shard_picks() -> None:
    owner = modulo_owner(["x", "y"])
    assert {owner(k) for k in KEYS} == {"x", "y"}


# --- live traffic ----------------------------------------------------------------------


def test_traffic_on_a_faithful_store_sees_no_wrong_value(lab: Lab) -> None:
    client = lab.redis("store")
    values = {k: f"{k}#0" for k in KEYS[:200]}
    client.mset(values)
    with LiveTraffic(client.get, client.set, values, rng=random.Random(1),
                     write_ratio=0.5, rate_per_s=5000) as traffic:
        assert traffic.wait_for(300)
        traffic.phase = "second"
        assert traffic.wait_for(100)
    total = traffic.total()
    assert set(traffic.counts) == {"before", "second"}
    rows = traffic_rows(traffic)
    assert [row[0] for row in rows] == ["before", "second"]
    assert all(len(row) == len(TRAFFIC_COLUMNS) and row[1] == row[2] + row[3] for row in rows)
    assert total.reads > 0 and total.writes > 0
    assert total.wrong_values == total.missing == total.errors == 0
    assert read_all(client) == traffic.expected


def test_traffic_counts_stale_and_missing_reads_and_errors(lab: Lab) -> None:
    writes_to, reads_from = lab.redis("writes"), lab.redis("reads")
    values = {k: f"{k}#0" for k in KEYS[:50]}
    reads_from.mset(dict(list(values.items())[:25]))  # half the keys are not there at all
    failing = {"left": 20}

    def put(key: str, value: str) -> Any:
        if failing["left"] > 0:
            failing["left"] -= 1
            raise redis.ConnectionError("refused")
        return writes_to.set(key, value)

    with LiveTraffic(reads_from.get, put, values, rng=random.Random(2), write_ratio=0.5,
                     rate_per_s=5000) as traffic:
        assert traffic.wait_for(400)
    total = traffic.total()
    assert total.errors == 20 and traffic.error_types == {"ConnectionError": 20}
    assert total.missing > 0  # keys never on the read side
    assert total.wrong_values > 0  # writes that the read side never saw


def test_a_write_that_raised_is_settled_by_the_next_read(lab: Lab) -> None:
    client = lab.redis("store")
    client.set("k", "k#0")

    def landed_then_raised(key: str, value: str) -> None:
        client.set(key, value)
        raise redis.TimeoutError("reply lost")

    traffic = LiveTraffic(client.get, landed_then_raised, {"k": "k#0"},
                          rng=random.Random(3), write_ratio=1.0, rate_per_s=1)
    traffic._write("k", traffic._count())
    assert traffic.unsettled == {"k": "k#1"} and traffic.expected == {"k": "k#0"}
    traffic._read("k", traffic._count())
    assert traffic.expected == {"k": "k#1"} and not traffic.unsettled
    assert traffic.total().wrong_values == 0 and traffic.total().errors == 1


# --- standalone shards -----------------------------------------------------------------


def test_migrate_keys_moves_them_and_keeps_a_newer_copy_on_the_target(lab: Lab) -> None:
    servers, clients = _servers(lab, "old", "new")
    old, new = clients["old"], clients["new"]
    old.mset({f"k{i}": f"v{i}" for i in range(10)})
    new.set("k3", "newer")  # written on the new owner during the migration

    report = migrate_keys(old, _address(servers["new"]), [f"k{i}" for i in range(8)],
                          batch=3)
    assert report.planned == 8 and report.calls == 3
    assert report.migrated == 7 and report.newer_on_target == 1 and report.settled == 8
    assert sorted(old.keys()) == ["k8", "k9"]  # the keys not asked for stay
    assert new.get("k3") == "newer" and new.get("k0") == "v0" and new.dbsize() == 8


def test_migrate_moved_moves_exactly_the_moved_keys(lab: Lab) -> None:
    names = ["s1", "s2", "s3"]
    servers, clients = _servers(lab, *names)
    before, after = ShardRing(names[:2]), ShardRing(names)
    values = {k: k.upper() for k in KEYS[:2000]}
    written = load(values, before.shard_for, clients)
    assert sum(written.values()) == 2000 and "s3" not in written

    moves = movement(values, before.shard_for, after.shard_for)
    report = migrate_moved(moves, clients, {n: _address(s) for n, s in servers.items()})
    assert report.settled == report.migrated == len(moves.moved) > 0
    found = {name: read_all(client) for name, client in clients.items()}
    assert set(found["s3"]) == set(moves.moved)
    checked = audit(found, values, after.shard_for)
    assert checked.ok, checked.describe()


def test_router_reads_fall_back_to_the_old_owner_during_a_migration(lab: Lab) -> None:
    servers, clients = _servers(lab, "s1", "s2")
    before, after = ShardRing(["s1"]), ShardRing(["s1", "s2"])
    values = {k: "old" for k in KEYS[:300]}
    load(values, before.shard_for, clients)
    moves = movement(values, before.shard_for, after.shard_for)
    moved = sorted(moves.moved)

    router = MigratingRouter({"s1": clients["s1"]}, before)
    with pytest.raises(ValueError, match="no client"):
        router.begin(after)
    router.begin(after, {"s2": clients["s2"]})
    assert router.get(moved[0]) == "old" and router.counts.fallback == 1
    router.set(moved[1], "new")  # a write goes to the new owner only
    assert clients["s2"].get(moved[1]) == "new" and clients["s1"].get(moved[1]) == "old"
    assert router.get(moved[1]) == "new" and router.counts.new_owner == 1

    report = migrate_moved(moves, clients, {n: _address(s) for n, s in servers.items()})
    assert report.newer_on_target == 1 and clients["s2"].get(moved[1]) == "new"
    assert router.get(moved[0]) == "old" and router.counts.new_owner == 2
    router.finish()
    assert all(router.get(k) is not None for k in values)
    assert router.counts.missing == 0
    with pytest.raises(RuntimeError):
        router.finish()


class MigratesOnRead(redis.Redis):
    """A real client of the old owner that migrates the key just before reading it:
    the race in which a key leaves between the router's first and second read."""

    target: tuple[str, int]

    def get(self, name: Any) -> Any:
        migrate_keys(self, self.target, [name])
        return super().get(name)


def test_router_finds_a_key_that_moved_between_its_two_reads(lab: Lab) -> None:
    servers, clients = _servers(lab, "s1", "s2")
    old = MigratesOnRead(host=servers["s1"].host, port=servers["s1"].port,
                         decode_responses=True)
    lab.callback(old.close)
    old.target = _address(servers["s2"])
    before, after = ShardRing(["s1"]), ShardRing(["s1", "s2"])
    key = next(k for k in KEYS if after.shard_for(k) == "s2")
    old.set(key, "value")

    router = MigratingRouter({"s1": old, "s2": clients["s2"]}, before)
    router.begin(after)
    assert router.get(key) == "value"
    assert router.counts.reread == 1 and router.counts.missing == 0
    assert clients["s2"].get(key) == "value" and not clients["s1"].exists(key)


def test_audit_names_lost_wrong_misplaced_duplicated_and_unexpected_keys(lab: Lab) -> None:
    _servers_, clients = _servers(lab, "a", "b")
    expected = {"k1": "1", "k2": "2", "k3": "3", "k4": "4", "k5": "5"}
    owner = {"k1": "a", "k2": "a", "k3": "b", "k4": "b", "k5": "b"}.__getitem__
    clients["a"].mset({"k1": "1", "k2": "two", "k4": "4", "stray": "x"})
    clients["b"].mset({"k3": "3", "k4": "4"})  # k5 is nowhere; k4 also on a

    checked = audit({n: read_all(c) for n, c in clients.items()}, expected, owner)
    assert not checked.ok
    assert checked.lost == ["k5"] and checked.wrong_value == ["k2"]
    assert checked.duplicated == ["k4"] and checked.misplaced == []
    assert checked.unexpected == ["stray"] and checked.found == 4
    assert audit({n: read_all(c) for n, c in clients.items()}, expected, owner,
                 also_accept={"k2": "two"}).wrong_value == []
    assert "1 lost (e.g. k5)" in checked.describe()


# --- Redis Cluster ---------------------------------------------------------------------


def test_plan_takes_an_even_share_from_each_source_from_its_highest_slots() -> None:
    owners: list[str | None] = ["a"] * 8000 + ["b"] * 8384
    plan = plan_reshard(owners, ["a", "b"], 4097)
    assert len(plan["a"]) == 2049 and len(plan["b"]) == 2048
    assert plan["a"] == list(range(8000 - 2049, 8000))
    assert plan["b"] == list(range(CLUSTER_SLOTS - 2048, CLUSTER_SLOTS))
    with pytest.raises(ValueError, match="fewer"):
        plan_reshard(owners, ["a"], 9000)


def test_slot_migration_reshards_to_a_new_node_under_a_cluster_client(lab: Lab) -> None:
    cluster = lab.cluster(masters=2, replicas=0)
    masters = cluster.masters()
    nodes, names = cluster_nodes(masters, {s.name: lab.closing(s.client()) for s in masters})
    assert [names[n.node_id] for n in nodes] == [s.name for s in masters]
    assert [(n.host, n.port) for n in nodes] == [(s.host, s.port) for s in masters]
    owners = slot_owners(nodes[0].client)
    values = {k: k for k in KEYS[:3000]}
    load(values, lambda k: names[owners[key_slot(k)] or ""],
         {names[n.node_id]: n.client for n in nodes}, cluster=True)

    added = cluster.add_node()
    cluster.wait_ok()
    target = ClusterNode(node_id(added), added.host, added.port, added.client())
    lab.callback(target.client.close)
    names[target.node_id] = added.name
    plan = plan_reshard(owners, [n.node_id for n in nodes], 600)
    migration = SlotMigration([*nodes, target], target, plan, slots_per_step=64,
                              keys_per_migrate=2)
    assert migration.step_count == 10  # 300 slots from each source, 64 a step
    assert sum(migration.steps()) == 600
    report = migration.report
    moved_slots = {slot for slots in plan.values() for slot in slots}
    in_moved = [k for k in values if key_slot(k) in moved_slots]
    assert report.slots_moved == 600 and report.keys_moved == len(in_moved) > 0
    assert report.migrate_calls >= report.keys_moved / 2

    # Every master was told: each one's map gives the target exactly the moved slots.
    for node in [*nodes, target]:
        view = slot_owners(node.client)
        assert {s for s, o in enumerate(view) if o == target.node_id} == moved_slots
        assert None not in view
    views, states = await_one_slot_map([*nodes, target], names, [*masters, added], 10)
    assert states == {s.name: "ok" for s in [*masters, added]}
    assert len({tuple(view) for view in views.values()}) == 1 and set(views) == {
        s.name for s in [*masters, added]}
    assert sorted(read_all(target.client, cluster=True)) == sorted(in_moved)

    after = slot_owners(target.client)
    found = {names[n.node_id]: read_all(n.client, cluster=True) for n in [*nodes, target]}
    checked = audit(found, values, lambda k: names[after[key_slot(k)] or ""])
    assert checked.ok, checked.describe()
    with cluster.client() as client:  # follows MOVED to the new owner
        assert all(client.get(k) == k for k in in_moved[:50])
