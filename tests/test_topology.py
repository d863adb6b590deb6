"""Replicas, Sentinel and Cluster on real redis-server processes, and their teardown."""

from __future__ import annotations

import psutil
import pytest

from cachelab.errors import ServerStartError
from cachelab.lab import Lab
from cachelab.workload.redis_info import CLUSTER_SLOTS, info, info_cluster, replica_synced


def test_replica_set_replicates_writes_to_every_replica(lab: Lab) -> None:
    replicas = lab.replica_set(replicas=2, name="rs")
    with replicas.primary.client() as primary:
        primary.set("greeting", "hello")
        primary.execute_command("WAIT", 2, 2000)
    for replica in replicas.replicas:
        with replica.client() as client:
            assert client.get("greeting") == "hello"
        assert info(replica, "replication")["role"] == "slave"
        assert replica_synced(replicas.primary, replica)
    assert [row["role"] for row in replicas.describe()] == ["primary", "replica", "replica"]


def test_sentinels_know_the_primary_its_replicas_and_each_other(lab: Lab) -> None:
    replicas = lab.replica_set(replicas=2, name="rs")
    sentinels = lab.sentinels(replicas, count=3, quorum=2)
    client = sentinels.client()
    assert client.discover_master("mymaster") == (replicas.primary.host, replicas.primary.port)
    assert sorted(client.discover_slaves("mymaster")) == sorted(
        (r.host, r.port) for r in replicas.replicas)
    primary = client.master_for("mymaster")
    primary.set("through-sentinel", 1)
    assert primary.get("through-sentinel") == "1"
    primary.close()


def test_cluster_assigns_every_slot_and_spreads_keys_over_masters(lab: Lab) -> None:
    cluster = lab.cluster(masters=3, replicas=1)
    for node in cluster.servers:
        state = info_cluster(node)
        assert state["cluster_state"] == "ok"
        assert int(state["cluster_slots_assigned"]) == CLUSTER_SLOTS
    roles = [row["role"] for row in cluster.describe()]
    assert roles.count("master") == 3 and roles.count("replica") == 3
    with cluster.client() as client:
        for i in range(300):
            client.set(f"user:{i}", i)
        assert client.get("user:7") == "7"
    sizes = [node.client().dbsize() for node in cluster.masters()]
    assert sum(sizes) == 300 and all(size > 0 for size in sizes)


def test_an_added_cluster_node_joins_as_an_empty_master(lab: Lab) -> None:
    cluster = lab.cluster(masters=3, replicas=0)
    node = cluster.add_node()
    assert int(info_cluster(node)["cluster_known_nodes"]) == 4
    assert node in cluster.masters()
    assert node in lab.servers


@pytest.mark.parametrize("interrupt", [RuntimeError, KeyboardInterrupt])
def test_topologies_stop_every_process_when_the_lab_block_raises(
        interrupt: type[BaseException]) -> None:
    with pytest.raises(interrupt):
        with Lab() as lab:
            replicas = lab.replica_set(replicas=1, name="rs")
            lab.sentinels(replicas, count=1, quorum=1)
            lab.cluster(masters=1, replicas=1)
            processes = [psutil.Process(s.pid) for s in lab.servers]
            assert len(processes) == 5
            raise interrupt("inside the lab")
    assert not any(p.is_running() for p in processes)


def test_a_topology_that_cannot_start_leaves_nothing_running(lab: Lab) -> None:
    with pytest.raises(ServerStartError, match="maxmemory-policy|not-a-policy"):
        lab.replica_set(replicas=1, name="bad", maxmemory_policy="not-a-policy")
    assert lab.servers == []


def test_topology_names_must_not_collide(lab: Lab) -> None:
    lab.replica_set(replicas=1, name="rs")
    with pytest.raises(ValueError, match="already runs"):
        lab.replica_set(replicas=1, name="rs")
