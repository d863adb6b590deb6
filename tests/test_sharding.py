"""Sharding: the ketama ring against uhashring, routed writes and slot maps on real Redis."""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest
from uhashring import HashRing

from cachelab.caching.sharding import (
    KETAMA_POINTS,
    ShardedWriter,
    ShardRing,
    SlotMap,
    audit_scheme,
    check_placement,
    count_keys_in_slots,
    ketama_hash,
    ketama_points,
    key_slot,
    modulo_shard,
    scan_keys,
    write_and_audit,
    write_through_cluster,
)
from cachelab.lab import Lab
from cachelab.servers.topology import CLUSTER_SLOTS
from cachelab.workload.redis_info import command_calls

KEYS = [f"user:{i}" for i in range(20_000)]
NODE_SETS = [
    ["shard-0", "shard-1", "shard-2"],
    ["127.0.0.1:6379", "127.0.0.1:6380"],
    [f"cache{i}.example:11211" for i in range(7)],
    ["solo"],
]


# ---------------------------------------------------------------- ketama compatibility


def test_key_position_is_ketamas() -> None:
    reference = HashRing(["a"], hash_fn="ketama")
    for key in [*KEYS[:2000], "", "ключ", "user:{42}:profile"]:
        assert ketama_hash(key) == reference.get_key(key)


def test_a_shard_gets_160_points_four_per_md5_digest() -> None:
    points = ketama_points("shard-0")
    assert len(points) == KETAMA_POINTS == 160
    digest = hashlib.md5(b"shard-0-39").digest()
    assert points[-4:] == [int.from_bytes(digest[i:i + 4], "little") for i in (0, 4, 8, 12)]
    assert ketama_points("shard-0", 6) == points[:6]


@pytest.mark.parametrize("nodes", NODE_SETS, ids=lambda n: f"{len(n)} nodes")
def test_ring_routes_every_key_as_uhashring_ketama_does(nodes: list[str]) -> None:
    ring, reference = ShardRing(nodes), HashRing(nodes, hash_fn="ketama")
    assert [ring.shard_for(k) for k in KEYS] == [reference.get_node(k) for k in KEYS]


def test_points_per_shard_match_uhashring_vnodes_times_four() -> None:
    nodes = NODE_SETS[0]
    for vnodes in (1, 10, 100):
        ring = ShardRing(nodes, vnodes=4 * vnodes)
        reference = HashRing(nodes, hash_fn="ketama", vnodes=vnodes)
        assert [ring.shard_for(k) for k in KEYS] == [reference.get_node(k) for k in KEYS]


def test_ring_still_matches_after_removing_and_adding_shards() -> None:
    nodes = NODE_SETS[2]
    ring, reference = ShardRing(nodes), HashRing(nodes, hash_fn="ketama")
    ring.remove(nodes[3])
    reference.remove_node(nodes[3])
    ring.add("new:11211")
    reference.add_node("new:11211")
    assert [ring.shard_for(k) for k in KEYS] == [reference.get_node(k) for k in KEYS]


# ---------------------------------------------------------------- balance and shares


def test_arc_shares_sum_to_one_and_predict_where_keys_go() -> None:
    ring = ShardRing(NODE_SETS[0])
    shares = ring.shares()
    assert sum(shares.values()) == pytest.approx(1.0)
    keys = [f"k{i}" for i in range(120_000)]
    counts = Counter(ring.shard_for(k) for k in keys)
    for shard, share in shares.items():
        assert counts[shard] / len(keys) == pytest.approx(share, abs=0.006)


def test_few_points_balance_worse_than_ketamas_160() -> None:
    nodes = [f"shard-{i}" for i in range(3)]

    def arc_balance(vnodes: int) -> float:
        return max(ShardRing(nodes, vnodes=vnodes).shares().values()) * len(nodes)

    assert arc_balance(160) < 1.15 < arc_balance(4)



def test_modulo_shard_is_stable_and_in_range() -> None:
    chosen = [modulo_shard(k, 3) for k in KEYS]
    assert chosen == [modulo_shard(k, 3) for k in KEYS]
    assert set(chosen) == {0, 1, 2}
    moved = sum(a != modulo_shard(k, 4) for k, a in zip(KEYS, chosen, strict=True))
    assert moved > 0.6 * len(KEYS)  # the reason rings exist: most keys move


# ---------------------------------------------------------------- placement


def test_check_placement_tells_wrong_shard_missing_and_unexpected() -> None:
    expected = {"a": "s0", "b": "s1", "c": "s1", "d": "s0"}
    found = {"s0": ["a", "b", "zz"], "s1": ["c"]}  # b is on s0, d nowhere, zz unknown
    placement = check_placement(expected, found)
    assert (placement.on_wrong_shard, placement.missing, placement.unexpected) == (1, 1, 1)
    assert placement.misplaced == 3 and placement.found == 4
    assert placement.per_shard == {"s0": 3, "s1": 1}
    clean = check_placement(expected, {"s0": ["a", "d"], "s1": ["b", "c"]})
    assert clean.misplaced == 0


def test_sharded_writer_puts_each_key_on_its_shard_and_counts_match(lab: Lab) -> None:
    servers = [lab.redis_server(f"shard-{i}") for i in range(3)]
    clients = {s.name: s.client() for s in servers}
    ring = ShardRing(clients)
    users = [str(u) for u in range(1, 1201)]
    items = [(u, f"user:{{{u}}}:{field}", "v") for u in users for field in ("a", "b")]
    before = {name: command_calls(c, ["set"]) for name, c in clients.items()}
    report = ShardedWriter(clients, ring.shard_for, batch=100).write(items)

    routed = Counter(ring.shard_for(u) for u, _, _ in items)
    assert report.acknowledged == routed and report.writes == len(items)
    assert report.pipelines == sum(-(-n // 100) for n in routed.values())
    for name, client in clients.items():
        assert client.dbsize() == routed[name] == command_calls(client, ["set"]) - before[name]
    expected = {key: ring.shard_for(u) for u, key, _ in items}
    found = {name: scan_keys(c, "user:*") for name, c in clients.items()}
    assert check_placement(expected, found).misplaced == 0

    # A key written behind the router's back is seen as misplaced.
    key = items[0][1]
    owner = expected[key]
    stranger = next(name for name in clients if name != owner)
    clients[owner].delete(key)
    clients[stranger].set(key, "v")
    found = {name: scan_keys(c, "user:*") for name, c in clients.items()}
    assert check_placement(expected, found).on_wrong_shard == 1
    for client in clients.values():
        client.close()


def test_writer_refuses_an_empty_batch(lab: Lab) -> None:
    with pytest.raises(ValueError):
        ShardedWriter({"s": lab.redis()}, lambda _: "s", batch=0)


# ---------------------------------------------------------------- Redis Cluster's slots


def test_hash_tag_puts_a_users_keys_in_one_slot() -> None:
    assert key_slot("user:{42}:profile") == key_slot("user:{42}:cart") == key_slot("42")
    assert 0 <= key_slot("anything") < CLUSTER_SLOTS


def test_slot_map_owner_and_unassigned_slots() -> None:
    slots = SlotMap([(100, 199, "b:2"), (0, 99, "a:1")])
    assert slots.masters == ["a:1", "b:2"]
    assert (slots.owner(0), slots.owner(99), slots.owner(100)) == ("a:1", "a:1", "b:2")
    assert slots.slots_of("b:2") == 100
    with pytest.raises(LookupError):
        slots.owner(200)


def test_cluster_writes_land_on_the_master_cluster_slots_names(lab: Lab) -> None:
    cluster = lab.cluster(masters=3, replicas=0)
    masters = {f"{m.host}:{m.port}": m.client() for m in cluster.masters()}
    slots = SlotMap.from_node(next(iter(masters.values())))
    assert sorted(slots.masters) == sorted(masters)
    assert sum(slots.slots_of(m) for m in slots.masters) == CLUSTER_SLOTS

    keys = [f"user:{{{u}}}:profile" for u in range(3000)]
    before = {a: command_calls(c, ["set"]) for a, c in masters.items()}
    with cluster.client() as client:
        report = write_through_cluster(client, ((k, "v") for k in keys), batch=500)
        assert all(slots.owner_of_key(k) == client.get_node_from_key(k).name for k in keys)
    expected = {k: slots.owner_of_key(k) for k in keys}
    found = {a: scan_keys(c, "user:*") for a, c in masters.items()}
    placement = check_placement(expected, found)
    assert placement.misplaced == 0 and placement.found == len(keys)
    routed = Counter(expected.values())
    assert report.acknowledged == routed and report.pipelines == 6
    for address, client in masters.items():
        sets = command_calls(client, ["set"]) - before[address]
        assert client.dbsize() == routed[address] == sets > 0
        slot = key_slot(next(k for k in keys if expected[k] == address))
        assert client.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == Counter(
            key_slot(k) for k in keys)[slot]
        client.close()


# ---------------------------------------------------------------- auditing a scheme


def test_write_and_audit_agrees_with_every_shard_and_flags_a_stray_write(lab: Lab) -> None:
    servers = [lab.redis_server(f"shard-{i}") for i in range(3)]
    clients = {s.name: lab.closing(s.client()) for s in servers}
    ring = ShardRing(clients)
    keys = [(str(u), f"user:{{{u}}}:{field}") for u in range(1, 901) for field in ("a", "b")]
    clients["shard-0"].set("user:{0}:left-over", "v")  # an earlier run's key is flushed

    audit = write_and_audit("ring", clients, ring.shard_for, keys, "v", batch=64,
                            expected_share=ring.shares())
    routed = Counter(ring.shard_for(u) for u, _ in keys)
    assert audit.disagreements() == [] and audit.placement.misplaced == 0
    assert audit.set_calls == audit.dbsize == dict(routed) and audit.routed == routed
    assert [audit.found(s) for s in audit.shards] == [routed[s] for s in clients]
    assert audit.balance == max(routed.values()) / (len(keys) / 3)

    # A write behind the router's back shows on that shard's own counters and in SCAN.
    before = {name: command_calls(c, ["set"]) - audit.set_calls[name]
              for name, c in clients.items()}  # each shard's SET calls before the writes
    clients["shard-1"].set("user:{stray}:a", "v")
    expected = {key: ring.shard_for(u) for u, key in keys}
    again = audit_scheme("ring", clients, audit.labels, audit.report, expected, before,
                         audit.expected_share)
    assert again.placement.unexpected == 1
    assert [d.split(":")[0] for d in again.disagreements()] == ["shard-1"]


def test_count_keys_in_slots_matches_crc16_and_names_a_wrong_count(lab: Lab) -> None:
    cluster = lab.cluster(masters=3, replicas=0)
    masters = {f"{m.host}:{m.port}": lab.closing(m.client()) for m in cluster.masters()}
    slots = SlotMap.from_node(next(iter(masters.values())))
    keys = [f"user:{{{u}}}:profile" for u in range(2000)]
    with cluster.client() as client:
        write_through_cluster(client, ((k, "v") for k in keys), batch=500)
    per_slot = Counter(key_slot(k) for k in keys)

    counts = count_keys_in_slots(masters, slots, per_slot)
    assert sum(c.slots for c in counts) == CLUSTER_SLOTS
    assert sum(c.counted for c in counts) == sum(c.expected for c in counts) == len(keys)
    assert all(c.differ == 0 and c.with_keys > 0 for c in counts)

    missed = key_slot(keys[0])  # the writer forgot one key: its slot's count differs
    counts = count_keys_in_slots(masters, slots, {**per_slot, missed: per_slot[missed] - 1})
    assert {c.master: c.differ for c in counts if c.differ} == {slots.owner(missed): 1}
