"""The failover pieces on real redis-server processes: the numbered writer, the
health-check failover and the Sentinel event recorder."""

from __future__ import annotations

import time

import pytest
import redis

from cachelab.caching.failover import (
    ACKED,
    FAILED,
    UNCONFIRMED,
    Event,
    HealthCheckFailover,
    SentinelEvents,
    SequenceWriter,
    first_of_each,
    healthcheck_failover,
    present,
    switched_to,
)
from cachelab.lab import Lab
from cachelab.servers.redis_server import RedisServer
from cachelab.servers.topology import ReplicaSet
from cachelab.workload.poll import poll_until
from cachelab.workload.redis_info import info, replication_offset

#: A replica being pointed at a new primary may drop a connection meanwhile: ask again.
REPOINTING = (redis.ConnectionError, redis.TimeoutError)


def address(server: RedisServer) -> tuple[str, int]:
    return server.host, server.port


def online_replica_set(lab: Lab, replicas: int) -> ReplicaSet:
    """A replica set whose primary streams to every replica: WAIT confirms a write on all.

    Right after a diskless sync the primary holds a replica's stream until its first
    REPLCONF ACK, up to a second later.
    """
    replica_set = lab.replica_set(replicas=replicas, name="rs")
    with replica_set.primary.client() as client:
        client.set("ready", 1)
        client.delete("ready")
        assert client.execute_command("WAIT", replicas, 10_000) == replicas
    return replica_set


def test_writer_records_acknowledged_and_failed_writes_and_reads_them_back(lab: Lab) -> None:
    first, second = lab.redis_server("first"), lab.redis_server("second")
    clients = {"now": first.client(socket_timeout=1)}
    writer = SequenceWriter(lambda: clients["now"])
    for n in range(1, 11):
        assert writer.write(n).outcome == ACKED
    before_kill = time.monotonic()
    first.kill()
    failed = writer.write(11)
    assert failed.outcome == FAILED and "ConnectionError" in failed.error
    clients["now"] = second.client(socket_timeout=1)
    for n in range(12, 16):
        writer.write(n)
    assert writer.numbers(ACKED) == [*range(1, 11), *range(12, 16)]
    assert writer.numbers(FAILED) == [11]
    assert writer.counts == {ACKED: 14, FAILED: 1, UNCONFIRMED: 0}
    # The first acknowledged write sent after the kill is the first one on `second`.
    after = writer.first_acked_since(before_kill)
    assert after is not None and after.n == 12
    with second.client() as client:
        assert present(client, "seq", range(1, 16)) == set(range(12, 16))
        client.set("seq:20", "not twenty")  # a key whose value is not its number
        assert present(client, "seq", [20]) == set()
    for client in clients.values():
        client.close()


def test_writer_with_wait_counts_a_write_only_when_replicas_confirm_it(lab: Lab) -> None:
    replicas = lab.replica_set(replicas=1, name="rs")
    with replicas.primary.client() as primary:
        one = SequenceWriter(lambda: primary, prefix="one", wait_replicas=1,
                             wait_timeout_ms=2000)
        assert one.write(1).outcome == ACKED
        # Two replicas asked of a set that has one: WAIT times out and says so.
        two = SequenceWriter(lambda: primary, prefix="two", wait_replicas=2,
                             wait_timeout_ms=20)
        assert two.write(1).outcome == UNCONFIRMED
        assert two.numbers(ACKED) == []
    with replicas.replicas[0].client() as replica:
        assert present(replica, "one", [1]) == {1}  # WAIT 1 returned: the replica has it


def test_writer_thread_is_bounded_by_its_rate_and_stops(lab: Lab) -> None:
    client = lab.redis()
    with SequenceWriter(lambda: client, max_rate=100) as writer:
        time.sleep(0.3)
    written = len(writer.writes)
    assert 0 < written <= 100 * 0.3 + 10  # never faster than max_rate
    assert [w.n for w in writer.writes] == list(range(1, written + 1))
    assert present(client, "seq", range(1, written + 1)) == set(range(1, written + 1))
    time.sleep(0.05)
    assert len(writer.writes) == written  # stopped means stopped


def test_health_check_fails_over_only_after_n_failures_in_a_row(lab: Lab) -> None:
    replicas = online_replica_set(lab, 2)
    lagging, current = replicas.replicas[1], replicas.replicas[0]
    with replicas.primary.client() as primary:
        primary.set("before", 1)
        replicas.wait_synced()
        # A replica that fell behind: detached, it misses every write that follows.
        with lagging.client() as client:
            client.execute_command("REPLICAOF", "NO", "ONE")
        for i in range(100):
            primary.set(f"later:{i}", i)
        primary.execute_command("WAIT", 1, 2000)
    health = HealthCheckFailover(address(replicas.primary),
                                 [address(r) for r in replicas.replicas],
                                 timeout_s=0.5, failures=3)
    try:
        assert health.check() is None and health.failed_in_a_row == 0  # healthy
        replicas.primary.kill()
        assert health.check() is None and health.check() is None  # two misses: wait
        promotion = health.check()
        assert promotion is not None
        assert promotion.promoted == address(current)  # the higher offset wins
        offsets = promotion.offsets
        assert offsets[address(current)] > offsets[address(lagging)]  # type: ignore[operator]
        assert promotion.repointed == [address(lagging)]
        assert health.primary == address(current)
        assert info(current, "replication")["role"] == "master"
        # The writers' client now reaches the promoted replica, which accepts writes.
        health.client().set("after", 1)
        poll_until(lambda: info(lagging, "replication").get("master_link_status") == "up",
                   timeout_s=10, what="the lagging replica following the new primary",
                   ignoring=REPOINTING)
        with lagging.client() as client:
            poll_until(lambda: client.get("after") == "1", timeout_s=10,
                       what="the write on the lagging replica", ignoring=REPOINTING)
            assert client.get("later:99") == "99"  # it caught up on what it had missed
            assert replication_offset(client) >= replication_offset(health.client())
    finally:
        health.stop()


def test_health_check_thread_promotes_and_the_writer_follows(lab: Lab) -> None:
    replicas = online_replica_set(lab, 2)
    health = HealthCheckFailover(address(replicas.primary),
                                 [address(r) for r in replicas.replicas],
                                 interval_s=0.05, timeout_s=0.2, failures=2)
    writer = SequenceWriter(health.client, max_rate=500)
    with health, writer:
        poll_until(lambda: writer.counts[ACKED] >= 20, timeout_s=10,
                   what="20 acknowledged writes before the kill")
        replicas.primary.kill()
        dead = time.monotonic()
        poll_until(lambda: writer.first_acked_since(dead) is not None, timeout_s=10,
                   what="a write acknowledged after the kill")
    promotion = health.promotions[0]
    new = next(r for r in replicas.replicas if address(r) == promotion.promoted)
    acked = writer.numbers(ACKED)
    with new.client() as client:
        assert set(acked) <= present(client, "seq", acked)  # nothing acknowledged lost
    assert writer.counts[FAILED] >= 1  # the dead primary refused at least one write


def test_a_healthy_primary_is_never_failed_over(lab: Lab) -> None:
    replicas = lab.replica_set(replicas=1, name="rs")
    health = HealthCheckFailover(address(replicas.primary), [address(replicas.replicas[0])],
                                 failures=1)
    try:
        for _ in range(5):
            assert health.check() is None
        assert health.promotions == [] and health.checks == 5
    finally:
        health.stop()


def test_health_check_with_no_replica_alive_says_so(lab: Lab) -> None:
    replicas = lab.replica_set(replicas=1, name="rs")
    health = HealthCheckFailover(address(replicas.primary), [address(replicas.replicas[0])],
                                 failures=1)
    replicas.replicas[0].kill()
    replicas.primary.kill()
    with pytest.raises(RuntimeError, match="no replica answers"):
        health.check()
    health.stop()


def test_sentinel_events_are_recorded_with_their_arrival_time(lab: Lab) -> None:
    # Sentinel publishes its events as plain pub/sub messages: any Redis shows the parsing.
    server = lab.redis_server("announcer")
    recorder = SentinelEvents(server.client(), channels=("+sdown", "+switch-master"))
    with recorder, server.client() as publisher:
        start = time.monotonic()
        publisher.publish("+sdown", "slave 127.0.0.1:1 127.0.0.1 1 @ mymaster 127.0.0.1 7")
        publisher.publish("+sdown", "master mymaster 127.0.0.1 7")
        publisher.publish("+odown", "master mymaster 127.0.0.1 7 #quorum 2/2")  # not asked
        publisher.publish("+switch-master", "mymaster 127.0.0.1 7 127.0.0.1 8")
        poll_until(lambda: len(recorder.events) == 3, timeout_s=5, what="the three events")
    sdown = recorder.first("+sdown")
    assert sdown is not None and sdown.data == "master mymaster 127.0.0.1 7"
    assert sdown.at_s >= start
    assert recorder.first("+odown") is None
    switch = recorder.first("+switch-master", "mymaster")
    assert switch is not None and switched_to(switch) == ("127.0.0.1", 8)
    recorder.client.close()


def test_writer_errors_do_not_escape_the_thread(lab: Lab) -> None:
    server = lab.redis_server("gone")
    client = server.client(socket_timeout=0.2)
    server.kill()
    with SequenceWriter(lambda: client, error_pause_s=0.05) as writer:
        time.sleep(0.2)
    assert writer.writes and all(w.outcome == FAILED for w in writer.writes)
    assert len(writer.writes) <= 0.2 / 0.05 + 2  # the pause bounds a failing writer
    client.close()


def test_healthcheck_failover_kills_promotes_repoints_and_reads_back(lab: Lab) -> None:
    replica_set = lab.replica_set(replicas=2, name="rs")
    primary = replica_set.primary.name
    run, health, followed, how = healthcheck_failover(
        replica_set, interval_ms=50, timeout_ms=100, failures=2, max_rate=500,
        before_kill_s=0.2, after_s=0.1)
    assert run.promotion is not None and run.new_primary is not None
    assert run.name_of(run.promotion.promoted) == run.new_primary.name != primary
    assert followed, how
    assert run.detected_s is not None and run.switched_s is not None
    assert run.first_ack_after is not None
    assert 0 < run.detected_s <= run.switched_s <= run.first_ack_after
    assert run.acked_before_kill > 0 and run.acked_after_kill
    assert set(run.acked_after_kill) <= run.found  # written on the new primary, read back
    assert run.phantoms == 0 and run.errors >= 1 and health.checks >= 2
    assert run.error_kinds()["ConnectionError"] >= 1  # the dead primary refused
    edges = [-0.2, 0.0, 0.2]
    windows = run.acks_per_window(edges, 0.2)
    assert sum(windows) <= len(run.acked) and windows[0] > 0


def test_first_of_each_keeps_the_first_announcement_of_every_channel() -> None:
    events = [("sentinel-1", Event(1.0, "+sdown", "master a")),
              ("sentinel-2", Event(1.1, "+sdown", "master a")),
              ("sentinel-2", Event(1.5, "+odown", "master a #quorum 2/2")),
              ("sentinel-3", Event(1.6, "+sdown", "slave b"))]
    assert first_of_each(events) == [events[0], events[2]]
