"""Moving a live cache on real redis-servers: the config file, DUMP/RESTORE, replication,
and an application that follows the move without reading a wrong value."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cachelab.caching.migration import (
    Entry,
    ReplicationMove,
    catch_up,
    compare,
    copy_keys,
    disconnect_clients,
    snapshot,
)
from cachelab.lab import Lab
from cachelab.servers.redis_server import RedisServer
from cachelab.workload.live import (
    CacheAddress,
    ConfigWatcher,
    LiveWorkload,
    read_config,
    write_config,
)
from cachelab.workload.redis_info import command_calls, used_memory_ratio

# redis-py retries with backoff by default, which would hide a paused or stopped server.
NO_RETRY = Retry(NoBackoff(), 0)


def raw(lab: Lab, server: RedisServer) -> redis.Redis:
    client = server.client(decode_responses=False)
    lab.callback(client.close)
    return client


def text(lab: Lab, server: RedisServer) -> redis.Redis:
    client = server.client()
    lab.callback(client.close)
    return client


def seed_keys(client: redis.Redis, n: int = 300) -> None:
    """Strings, a hash and a list; every other key with a TTL."""
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        pipe.set(f"item:{i}", f"value {i} " * (i % 7 + 1), px=600_000 + i if i % 2 else None)
    pipe.hset("item:hash", mapping={"a": "1", "b": "2"})
    pipe.rpush("item:list", "x", "y", "z")
    pipe.pexpire("item:list", 900_000)
    pipe.execute()


# ------------------------------------------------------------------- configuration


def test_config_file_is_replaced_whole_and_reread_only_when_changed(tmp_path: Path) -> None:
    path = tmp_path / "cache.json"
    write_config(path, CacheAddress("127.0.0.1", 7000, version=1))
    watcher = ConfigWatcher(path)
    assert watcher.current() == CacheAddress("127.0.0.1", 7000, 1)
    assert watcher.current() == CacheAddress("127.0.0.1", 7000, 1)
    assert watcher.reloads == 1  # unchanged file: one stat, no read

    write_config(path, CacheAddress("127.0.0.1", 7001, version=2))
    assert watcher.current() == CacheAddress("127.0.0.1", 7001, 2)
    assert watcher.reloads == 2
    assert read_config(path) == CacheAddress("127.0.0.1", 7001, 2)
    assert [p.name for p in tmp_path.iterdir()] == ["cache.json"]  # no temporary left


def test_a_reader_never_sees_half_a_config_file(tmp_path: Path) -> None:
    path = tmp_path / "cache.json"
    write_config(path, CacheAddress("127.0.0.1", 1, version=1))
    stop, seen, errors = threading.Event(), set(), []

    def reader() -> None:
        watcher = ConfigWatcher(path)
        while not stop.is_set():
            try:
                seen.add(watcher.current().port)
            except Exception as exc:  # a torn or missing file would land here
                errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for version in range(2, 300):
            write_config(path, CacheAddress("127.0.0.1", version, version=version))
    finally:
        stop.set()
        thread.join(10)
    assert not errors
    assert len(seen) > 1 and seen <= set(range(1, 300))


# ------------------------------------------------------------ DUMP / RESTORE copies


def test_copy_keeps_values_types_and_ttls(lab: Lab) -> None:
    source, target = lab.redis_server("source"), lab.redis_server("target")
    seed_keys(text(lab, source))
    text(lab, target).set("other:key", "not copied")

    report = copy_keys(raw(lab, source), raw(lab, target), match="item:*", batch=50)

    assert report.keys == 302 and report.vanished == 0 and report.batches >= 6
    before, after = snapshot(raw(lab, source), match="item:*"), snapshot(raw(lab, target),
                                                                         match="item:*")
    result = compare(before, after)
    assert result.equal and result.keys == 302
    ttl_keys = [k for k, e in before.items() if e.expire_at_ms is not None]
    assert len(ttl_keys) == 151  # 150 strings and the list
    dst = text(lab, target)
    assert dst.hgetall("item:hash") == {"a": "1", "b": "2"}
    assert dst.lrange("item:list", 0, -1) == ["x", "y", "z"]
    assert 890_000 < dst.pttl("item:list") <= 900_000
    assert dst.pttl("item:0") == -1  # no TTL stays no TTL
    assert dst.get("other:key") == "not copied"


def test_compare_finds_every_kind_of_difference(lab: Lab) -> None:
    source, target = lab.redis_server("source"), lab.redis_server("target")
    seed_keys(text(lab, source), 20)
    copy_keys(raw(lab, source), raw(lab, target))
    dst = text(lab, target)
    dst.delete("item:1")                                   # missing
    dst.set("item:2", "changed", keepttl=True)             # other value
    dst.pexpire("item:3", 10_000)                          # TTL far off
    dst.persist("item:5")                                  # TTL lost
    dst.pexpire("item:7", dst.pttl("item:7") - 500)        # within the tolerance
    dst.set("item:new", "x")                               # extra

    result = compare(snapshot(raw(lab, source)), snapshot(raw(lab, target)),
                     ttl_tolerance_ms=1000)

    assert result.missing == [b"item:1"]
    assert result.value_mismatches == [b"item:2"]
    assert sorted(result.ttl_mismatches) == [b"item:3", b"item:5"]
    assert result.extra == [b"item:new"]
    assert result.differing == 5 and not result.equal
    assert result.counts() == (22, 1, 1, 2, 1)  # 20 strings, a hash and a list
    assert result.summary() == ("21/22 keys present, 1 other values, 2 TTLs off by more "
                                "than 1s, 1 extra keys")


def test_catch_up_repairs_the_drift_of_a_live_copy(lab: Lab) -> None:
    source, target = lab.redis_server("source"), lab.redis_server("target")
    src = text(lab, source)
    seed_keys(src, 100)
    copy_keys(raw(lab, source), raw(lab, target))
    # The source moves on after the copy: new, changed, re-timed and deleted keys.
    src.set("item:1000", "new")
    src.set("item:4", "changed")
    src.pexpire("item:6", 50_000)
    src.delete("item:8")

    final = snapshot(raw(lab, source))
    drift = compare(final, snapshot(raw(lab, target)))
    assert (len(drift.missing), len(drift.value_mismatches), len(drift.ttl_mismatches),
            len(drift.extra)) == (1, 1, 1, 1)

    assert catch_up(raw(lab, target), final, drift) == 4
    assert compare(final, snapshot(raw(lab, target))).equal


def test_dump_needs_a_binary_client(lab: Lab) -> None:
    server = lab.redis_server()
    with pytest.raises(ValueError, match="decode_responses=False"):
        snapshot(text(lab, server))


def test_an_expiry_already_past_is_not_restored(lab: Lab) -> None:
    source, target = lab.redis_server("source"), lab.redis_server("target")
    text(lab, source).set("k", "v")
    payload = snapshot(raw(lab, source))[b"k"].payload
    stale = {b"k": Entry(payload, round(time.time() * 1000) - 1000)}
    from cachelab.caching.migration import restore

    restore(raw(lab, target), stale)
    assert text(lab, target).exists("k") == 0


# ----------------------------------------------------------------------- replication


def test_replication_move_carries_live_writes_and_promotes(lab: Lab) -> None:
    old, new = lab.redis_server("old"), lab.redis_server("new")
    src = text(lab, old)
    seed_keys(src, 200)
    stop = threading.Event()
    written: list[int] = []

    def writer() -> None:  # keeps writing through attach and up to the pause
        with old.client(socket_timeout=10, retry=NO_RETRY) as client:
            i = 0
            while not stop.is_set():
                try:
                    client.set(f"item:live:{i}", i, px=300_000)
                except redis.ConnectionError:
                    return  # the write held by the pause, dropped when old stopped
                written.append(i)
                i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        move = ReplicationMove(old, new)
        assert move.attach() > 0
        time.sleep(0.2)
        move.cut_over(pause_ms=5000)
    finally:
        stop.set()
        old.stop()  # drops the write held by the pause, if the writer is in one
        thread.join(10)
    dst = text(lab, new)
    assert dst.info("replication")["role"] == "master"
    assert written and all(dst.get(f"item:live:{i}") == str(i) for i in written)
    dst.set("after", "promotion")  # writable: no longer a replica
    assert move.seconds >= (move.promoted_at or 0) - (move.paused_at or 0) > 0


def test_cut_over_pauses_the_source_writes_but_not_its_reads(lab: Lab) -> None:
    old, new = lab.redis_server("old"), lab.redis_server("new")
    text(lab, old).set("k", "v")
    move = ReplicationMove(old, new)
    with pytest.raises(RuntimeError, match="attach"):
        move.cut_over()
    move.attach()
    move.cut_over(pause_ms=5000)
    with old.client(socket_timeout=0.3, retry=NO_RETRY) as client:
        assert client.get("k") == "v"
        with pytest.raises(redis.TimeoutError):
            client.set("k", "w")  # held by the pause
    text(lab, old).execute_command("CLIENT", "UNPAUSE")


# ------------------------------------------------------------------ counters, clients


def test_counters_and_named_disconnects(lab: Lab) -> None:
    server = lab.redis_server(maxmemory="10mb")
    admin = text(lab, server)
    before = command_calls(admin, ["get"])
    with server.client(client_name="app-0") as app, server.client(client_name="other") as other:
        app.get("a")
        app.get("b")
        other.ping()
        assert command_calls(admin, ["get"]) - before == 2
        assert 0 < used_memory_ratio(admin) < 1
        assert disconnect_clients(admin, "app-") == 1
        names = [c["name"] for c in admin.client_list()]
        assert "other" in names and "app-0" not in names
    assert command_calls(admin, ["never-called"]) == 0


# ---------------------------------------------------------------- the application


def workload(path: Path, clients: int = 2, **kwargs: Any) -> LiveWorkload:
    return LiveWorkload(path, clients=clients,
                        rngs=[random.Random(i) for i in range(clients)],
                        value_bytes=64, pace_s=0.0005, retry_for_s=3.0, **kwargs)


def test_the_application_follows_a_move_without_a_wrong_read(lab: Lab) -> None:
    old, new = lab.redis_server("old"), lab.redis_server("new")
    path = lab.workdir / "cache.json"
    write_config(path, CacheAddress(old.host, old.port))
    app = workload(path)
    app.fill(lambda: app.total("writes") >= 500, batch=100)
    with app:
        time.sleep(0.3)
        move = ReplicationMove(old, new)
        move.attach()
        time.sleep(0.3)
        move.cut_over(pause_ms=10_000)
        write_config(path, CacheAddress(new.host, new.port, version=2))
        disconnect_clients(text(lab, old), "app-")
        time.sleep(0.3)
        old.stop()
        time.sleep(0.3)
    new_address = f"{new.host}:{new.port}"
    assert app.total("wrong_reads") == 0 and app.total("failed_ops") == 0
    assert app.reads_at(new_address) > 0
    assert app.reads_at(new_address) == command_calls(text(lab, new), ["get"])
    assert all(new_address in w.stats.first_success_at for w in app.workers)
    assert all(w.watcher.reloads == 2 for w in app.workers)
    assert all(move.paused_at is not None and e.at >= move.paused_at for e in app.errors)
    # No maxmemory, so nothing was evicted: every key the application wrote is on the new
    # instance with the last value it wrote, before or after the move.
    dst = text(lab, new)
    expected = {k: app.expected(k) for w in app.workers for k in w.written}
    assert len(expected) > 500 and None not in expected.values()
    assert dict(zip(expected, dst.mget(list(expected)), strict=True)) == expected


def test_a_value_changed_behind_the_application_is_a_wrong_read(lab: Lab) -> None:
    server = lab.redis_server()
    path = lab.workdir / "cache.json"
    write_config(path, CacheAddress(server.host, server.port))
    app = workload(path, clients=1, write_share=0.05)
    app.fill(lambda: app.total("writes") >= 20, batch=20)
    meddler = text(lab, server)
    for key in app.workers[0].keys:
        meddler.set(key, "someone else's value")
    with app:
        deadline = time.monotonic() + 5
        while app.total("wrong_reads") == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert app.total("wrong_reads") > 0


def test_errors_are_counted_and_given_up_after_the_retry_budget(lab: Lab) -> None:
    server = lab.redis_server()
    path = lab.workdir / "cache.json"
    write_config(path, CacheAddress(server.host, server.port))
    app = LiveWorkload(path, clients=1, rngs=[random.Random(1)], retry_for_s=0.2,
                       pace_s=0.001)
    app.fill(lambda: app.total("writes") >= 10, batch=10)
    with app:
        time.sleep(0.1)
        server.stop()  # and the configuration never moves on
        deadline = time.monotonic() + 5
        while app.total("failed_ops") == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert app.total("failed_ops") >= 1
    assert len(app.errors) > app.total("failed_ops")  # several attempts per given-up command
    assert {e.kind for e in app.errors} <= {"ConnectionError", "TimeoutError"}


def test_a_full_noeviction_server_refuses_and_the_fill_stops(lab: Lab) -> None:
    server = lab.redis_server(maxmemory="3mb", maxmemory_policy="noeviction")
    path = lab.workdir / "cache.json"
    write_config(path, CacheAddress(server.host, server.port))
    app = workload(path)
    written = app.fill(lambda: app.total("oom_refusals") > 0, batch=200)
    assert app.total("oom_refusals") > 0
    assert app.total("writes") + app.total("oom_refusals") == written
    assert used_memory_ratio(text(lab, server)) >= 0.9
    assert sum(len(w.written) for w in app.workers) == text(lab, server).dbsize()
