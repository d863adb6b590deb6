"""The read-replica balancer on a real primary with real replicas: where reads and writes
go, what each node's own INFO says, and read-your-writes with WAIT and from the primary."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import pytest
import redis

from cachelab.caching.replicas import (
    LagSampler,
    Node,
    Read,
    ReadYourWritesTally,
    ReplicaBalancer,
    page_version,
    replica_mismatches,
    versioned_page,
    wait_converged,
)
from cachelab.lab import Lab
from cachelab.servers.topology import ReplicaSet
from cachelab.workload.measure import balance
from cachelab.workload.redis_info import command_calls, replication_lag_bytes, replication_offsets


@dataclass
class Nodes:
    topology: ReplicaSet
    primary: redis.Redis
    replicas: list[redis.Redis]

    @property
    def all(self) -> list[redis.Redis]:
        return [self.primary, *self.replicas]


@pytest.fixture
def nodes(lab: Lab) -> Nodes:
    topology = lab.replica_set(replicas=2)
    clients = []
    for server in [topology.primary, *topology.replicas]:
        client = server.client()
        lab.callback(client.close)
        clients.append(client)
    return Nodes(topology, clients[0], clients[1:])


def _loaded(nodes: Nodes, keys: int = 20) -> None:
    nodes.primary.mset({f"k:{i}": f"v{i}" for i in range(keys)})
    assert wait_converged(nodes.primary, nodes.replicas) is not None


def _gets(nodes: Nodes) -> list[int]:
    return [command_calls(c) for c in nodes.all]


def test_round_robin_splits_reads_evenly_over_the_replicas_only(nodes: Nodes) -> None:
    _loaded(nodes)
    balancer = ReplicaBalancer(nodes.primary, nodes.replicas)
    before = _gets(nodes)

    values = [balancer.get(f"k:{i % 20}") for i in range(60)]

    served = [after - b for after, b in zip(_gets(nodes), before, strict=True)]
    assert values == [f"v{i % 20}" for i in range(60)]  # replicas hold the primary's data
    assert served == [0, 30, 30]  # each node's own cmdstat_get
    assert [balancer.stats.reads[n.name] for n in balancer.nodes] == served
    assert [n.name for n in balancer.readers] == ["replica-1", "replica-2"]


def test_the_primary_serves_reads_only_when_included(nodes: Nodes) -> None:
    _loaded(nodes)
    balancer = ReplicaBalancer(nodes.primary, nodes.replicas, include_primary=True,
                               names=["p", "r1", "r2"])
    before = _gets(nodes)

    for i in range(30):
        read = balancer.read(f"k:{i % 20}")
        assert read.value == f"v{i % 20}"

    served = [after - b for after, b in zip(_gets(nodes), before, strict=True)]
    assert served == [10, 10, 10]
    assert dict(balancer.stats.reads) == {"p": 10, "r1": 10, "r2": 10}


def test_random_policy_is_seeded_and_uses_every_reader(nodes: Nodes) -> None:
    _loaded(nodes)

    def picks(seed: int) -> list[str]:
        balancer = ReplicaBalancer(nodes.primary, nodes.replicas, policy="random",
                                   include_primary=True, rng=random.Random(seed))
        return [balancer.read("k:1").node.name for _ in range(300)]

    first = picks(3)
    assert first == picks(3)
    assert first != picks(4)
    max_over_mean, min_over_mean = balance(first.count(n) for n in set(first))
    assert set(first) == {"primary", "replica-1", "replica-2"}
    assert 0.7 < min_over_mean <= 1 <= max_over_mean < 1.3  # seeded, so not flaky


def test_writes_go_to_the_primary_and_replicate(nodes: Nodes) -> None:
    balancer = ReplicaBalancer(nodes.primary, nodes.replicas)
    sets_before = command_calls(nodes.primary, ["set"])

    assert balancer.write({f"w:{i}": str(i) for i in range(10)}) is None  # async: no WAIT
    assert balancer.set("w:last", "x") is None

    assert command_calls(nodes.primary, ["set"]) - sets_before == 11
    assert balancer.stats.writes == 11
    assert wait_converged(nodes.primary, nodes.replicas) is not None
    assert replication_lag_bytes(nodes.primary, nodes.replicas) == [0, 0]
    head, offsets = replication_offsets(nodes.primary, nodes.replicas)
    assert head > 0 and offsets == [head, head]
    for replica in nodes.replicas:
        assert replica.mget([f"w:{i}" for i in range(10)]) == [str(i) for i in range(10)]


def test_wait_mode_reads_own_writes_from_replicas(nodes: Nodes) -> None:
    session = ReplicaBalancer(nodes.primary, nodes.replicas, consistency="wait")
    waits_before = command_calls(nodes.primary, ["wait"])
    big = "x" * 8192  # enough bytes that an async replica is sometimes caught behind

    for t in range(30):
        acked = session.write({f"doc:{j}": f"{t}|{big}" for j in range(20)})
        read = session.read("doc:19")
        assert acked == 2
        assert read.node.role == "replica" and (read.value or "").startswith(f"{t}|")

    assert session.stats.waits == 30 and session.stats.waits_short == 0
    assert session.stats.min_acked == 2 and session.stats.pinned_reads == 0
    # WAIT really ran, once a write
    assert command_calls(nodes.primary, ["wait"]) - waits_before == 30


def test_a_short_wait_sends_the_written_keys_to_the_primary(nodes: Nodes) -> None:
    _loaded(nodes)
    nodes.topology.replicas[1].kill()  # it can no longer acknowledge anything
    session = ReplicaBalancer(nodes.primary, nodes.replicas, consistency="wait",
                              wait_timeout_ms=100)

    acked = session.set("k:1", "new")
    read = session.read("k:1")

    assert acked == 1  # WAIT's own reply: one of the two replicas
    assert session.stats.waits_short == 1
    assert read.node.role == "primary" and read.value == "new"
    assert session.stats.pinned_reads == 1


def test_primary_mode_pins_own_writes_for_a_while(nodes: Nodes) -> None:
    _loaded(nodes)
    session = ReplicaBalancer(nodes.primary, nodes.replicas, consistency="primary",
                              sticky_s=0.2)

    session.set("k:1", "mine")
    assert session.read("k:1").node.role == "primary"
    assert session.read("k:1").value == "mine"
    assert session.read("k:2").node.role == "replica"  # not written: replicas as usual
    assert session.stats.pinned_reads == 2

    time.sleep(0.3)  # past sticky_s: the pin has expired
    assert session.read("k:1").node.role == "replica"
    assert session.stats.pinned_reads == 2


def test_lag_sampler_samples_every_replica_until_stopped(nodes: Nodes) -> None:
    writer = ReplicaBalancer(nodes.primary, nodes.replicas)
    with LagSampler(nodes.primary, nodes.replicas, interval_s=0.001) as sampler:
        for b in range(20):
            writer.write({f"bulk:{j}": f"{b}|{'y' * 4096}" for j in range(100)})
        time.sleep(0.02)  # a few samples even if the writes were very fast
    assert not sampler.running
    counts = {len(samples) for samples in sampler.samples}
    assert len(counts) == 1 and counts.pop() > 0
    assert all(lag >= 0 for samples in sampler.samples for lag in samples)
    assert wait_converged(nodes.primary, nodes.replicas) is not None


def test_balance_is_max_and_min_over_mean() -> None:
    assert balance([10, 10, 10]) == (1.0, 1.0)
    assert balance([5, 15]) == (1.5, 0.5)
    assert balance([]) == (0.0, 0.0)


def test_bad_settings_are_refused(nodes: Nodes) -> None:
    with pytest.raises(ValueError, match="policy"):
        ReplicaBalancer(nodes.primary, nodes.replicas, policy="sticky")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no node would serve reads"):
        ReplicaBalancer(nodes.primary, [])
    with pytest.raises(ValueError, match="one distinct name"):
        ReplicaBalancer(nodes.primary, nodes.replicas, names=["a", "a", "b"])
    ReplicaBalancer(nodes.primary, [], include_primary=True)  # a primary alone may serve


def test_a_versioned_page_tells_its_version() -> None:
    assert page_version(versioned_page(3, 7, "a|b")) == 7
    assert page_version(None) is None and page_version("no version|x") is None


def test_read_your_writes_tally_counts_stale_reads_and_where_they_came_from(
        nodes: Nodes) -> None:
    session = ReplicaBalancer(nodes.primary, nodes.replicas, consistency="wait")
    tally = ReadYourWritesTally("wait")
    for version in (1, 2, 3):
        session.set("doc", versioned_page(0, version, "x"))
        tally.record(session.read("doc"), version=version)
    # An old value read from the primary is stale too.
    tally.record(Read(versioned_page(0, 2, "x"), Node("p", "primary", nodes.primary)), version=4)
    tally.take_waits(session.stats)
    assert (tally.trials, tally.stale, tally.from_replicas, tally.from_primary) == (4, 1, 3, 1)
    assert (tally.waits, tally.waits_short, tally.min_acked) == (3, 0, 2)


def test_replica_mismatches_counts_each_replicas_differing_keys(nodes: Nodes) -> None:
    _loaded(nodes)
    keys = [f"k:{i}" for i in range(20)]
    assert replica_mismatches(nodes.primary, nodes.replicas, keys, chunk=7) == [0, 0]
    detached = nodes.replicas[1]
    detached.execute_command("REPLICAOF", "NO", "ONE")  # writable, and no longer following
    detached.set("k:3", "changed")
    detached.delete("k:15")
    assert replica_mismatches(nodes.primary, nodes.replicas, keys, chunk=7) == [0, 2]
