"""Invalidation buses, client-side tracking and service processes, on a real redis-server."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import pytest
import redis

from cachelab.caching.invalidation import (
    CHANNEL,
    TRACKING_CHANNEL,
    ClientFactory,
    Invalidation,
    LocalCache,
    PubSubSubscriber,
    StreamSubscriber,
    TrackingSubscriber,
    stream_tail,
    write_and_publish,
)
from cachelab.children.service import ServiceError, ServiceProcess, data_key
from cachelab.lab import Lab
from cachelab.servers.process import stop_all
from cachelab.servers.redis_server import RedisServer


def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


@pytest.fixture
def server(lab: Lab) -> RedisServer:
    return lab.redis_server()


@pytest.fixture
def client(lab: Lab, server: RedisServer) -> redis.Redis:
    c = server.client()
    lab.callback(c.close)
    return c


@pytest.fixture
def factory(server: RedisServer) -> ClientFactory:
    def make(name: str) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=server.port, decode_responses=True,
                           client_name=name, protocol=2)
    return make


def invalidation(key: str, seq: int, origin: str = "writer") -> Invalidation:
    return Invalidation(key, seq, origin, time.time_ns())


def test_local_cache_hits_after_a_miss_and_forgets_on_drop() -> None:
    cache, loads = LocalCache(), []

    def load(key: str) -> str:
        loads.append(key)
        return f"value of {key}"

    assert cache.get("a", load) == ("value of a", False)
    assert cache.get("a", load) == ("value of a", True)
    assert cache.drop("a") and not cache.drop("a")
    assert cache.get("a", load) == ("value of a", False)
    assert loads == ["a", "a"]
    assert cache.clear() == 1 and len(cache) == 0
    assert cache.stats()["hits"] == 1 and cache.stats()["misses"] == 2


def test_a_fill_racing_an_invalidation_is_not_kept() -> None:
    """A value loaded while its invalidation arrived may be old: it must not stay cached."""
    cache = LocalCache()

    def load_while_dropped(key: str) -> str:
        cache.drop(key)  # the invalidation lands between the read and the store
        return "maybe old"

    def load_while_flushed(key: str) -> str:
        cache.clear()
        return "maybe old"

    assert cache.get("a", load_while_dropped) == ("maybe old", False)
    assert "a" not in cache
    assert cache.get("b", load_while_flushed) == ("maybe old", False)
    assert "b" not in cache
    assert cache.get("a", lambda key: "new") == ("new", False) and "a" in cache


def test_invalidation_survives_both_encodings() -> None:
    message = invalidation("user:1", 7)
    assert Invalidation.from_json(message.to_json()) == message
    assert Invalidation.from_fields(message.to_fields()) == message


def test_pubsub_loses_what_is_published_while_disconnected(client: redis.Redis,
                                                           factory: ClientFactory) -> None:
    received: list[Invalidation] = []
    subscriber = PubSubSubscriber("svc-pubsub", factory, received.append)
    subscriber.start()
    try:
        assert client.pubsub_numsub(CHANNEL) == [(CHANNEL, 1)]
        write_and_publish(client, "pubsub", "k", "1", invalidation("k", 1))
        assert wait_until(lambda: len(received) == 1)
        assert client.get("k") == "1"  # the write and its message went together

        subscriber.set_connected(False)
        assert client.pubsub_numsub(CHANNEL) == [(CHANNEL, 0)]  # Redis saw it leave
        for seq in (2, 3):
            write_and_publish(client, "pubsub", "k", str(seq), invalidation("k", seq))
        subscriber.set_connected(True)
        write_and_publish(client, "pubsub", "k", "4", invalidation("k", 4))
        assert wait_until(lambda: len(received) == 2)
        time.sleep(0.05)  # nothing else is on its way
        assert [m.seq for m in received] == [1, 4]
        assert subscriber.connects == 2
    finally:
        subscriber.stop()
    assert not subscriber.connected


def test_a_stream_reader_resumes_from_its_offset(client: redis.Redis,
                                                 factory: ClientFactory) -> None:
    write_and_publish(client, "stream", "k", "0", invalidation("k", 0))  # before it started
    received: list[Invalidation] = []
    reader = StreamSubscriber("svc-stream", factory, received.append, offset=stream_tail(client))
    reader.start()
    try:
        write_and_publish(client, "stream", "k", "1", invalidation("k", 1))
        assert wait_until(lambda: len(received) == 1)
        reader.set_connected(False)
        names = [c["name"] for c in client.client_list()]
        assert "svc-stream" not in names  # its connection is really closed
        for seq in (2, 3, 4):
            write_and_publish(client, "stream", f"k{seq}", str(seq), invalidation(f"k{seq}", seq))
        time.sleep(0.05)
        assert len(received) == 1
        reader.set_connected(True)
        assert wait_until(lambda: len(received) == 4)
        assert [m.seq for m in received] == [1, 2, 3, 4]
        assert reader.offset == stream_tail(client)
    finally:
        reader.stop()


def test_tracking_reports_keys_others_change_and_loses_them_while_away(
        server: RedisServer, client: redis.Redis, factory: ClientFactory) -> None:
    keys: list[str] = []
    lock = threading.Lock()

    def on_keys(changed: list[str] | None) -> None:
        with lock:
            keys.extend(changed or ["<flush>"])

    data = redis.Redis(host="127.0.0.1", port=server.port, decode_responses=True,
                       protocol=2, single_connection_client=True)
    tracker = TrackingSubscriber("svc-tracking", factory, on_keys)
    tracker.start()
    try:
        tracker.track(data)
        client.set("a", "1")
        client.set("b", "1")
        assert data.get("a") == "1" and data.get("b") == "1"  # now tracked
        client.set("a", "2")
        assert wait_until(lambda: keys == ["a"])
        data.set("b", "2")  # NOLOOP: its own write is not reported back
        client.set("untracked", "1")
        time.sleep(0.05)
        assert keys == ["a"]

        assert data.get("a") == "2"
        tracker.set_connected(False)
        assert client.pubsub_numsub(TRACKING_CHANNEL) == [(TRACKING_CHANNEL, 0)]
        client.set("a", "3")  # Redis has nowhere to send this one: lost
        tracker.set_connected(True)
        tracker.track(data)
        assert data.get("a") == "3"
        client.set("a", "4")
        assert wait_until(lambda: keys == ["a", "a"])
    finally:
        tracker.stop()
        data.close()


def test_services_invalidate_each_other_through_pubsub(lab: Lab, server: RedisServer,
                                                       client: redis.Redis) -> None:
    key = data_key("pubsub", 1)
    client.set(key, json.dumps({"id": 1, "bio": "old", "version": 1}))
    fleet = [ServiceProcess(client, name=f"svc-{i}", redis_port=server.port,
                            log_path=lab.workdir / f"svc-{i}.log") for i in (1, 2)]
    for service in fleet:
        lab.callback(service.stop)
        service.launch()
    for service in fleet:
        service.wait_ready()
    writer, reader = fleet
    assert reader.request("read", bus="pubsub", keys=[key]) == {
        "id": 1, "versions": [1], "hits": [False]}
    assert reader.request("read", bus="pubsub", keys=[key])["hits"] == [True]

    update = writer.request("update", bus="pubsub", key=key, seq=1, bio="new")
    assert update["version"] == 2
    assert wait_until(lambda: client.hget(f"inval:pubsub:drops:{reader.name}", key) is not None)
    dropped_ns = int(client.hget(f"inval:pubsub:drops:{reader.name}", key))  # type: ignore[arg-type]
    assert dropped_ns >= update["publish_ns"]
    assert reader.request("read", bus="pubsub", keys=[key])["versions"] == [2]
    # With no bus, the reader keeps the old version it cached.
    none_key = data_key("none", 1)
    client.set(none_key, json.dumps({"id": 1, "bio": "old", "version": 1}))
    reader.request("read", bus="none", keys=[none_key])
    writer.request("update", bus="none", key=none_key, seq=2, bio="new")
    assert reader.request("read", bus="none", keys=[none_key])["versions"] == [1]

    with pytest.raises(ServiceError, match="KeyError"):
        reader.request("stats-of-nothing")
    stop_all(fleet)
    assert all(service.returncode is not None for service in fleet)
