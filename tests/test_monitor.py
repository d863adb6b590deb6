"""The monitoring pieces on real Redis and over real HTTP: log, counters, exporter, wrapper."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from cachelab.caching import CacheAside
from cachelab.caching.monitor import (
    Access,
    AccessCounters,
    AccessLog,
    CacheMonitor,
    MetricsServer,
    MonitoredCache,
    PrometheusExporter,
    hit_ratio_by_slice,
    read_access_log,
    scrape_totals,
)
from cachelab.cli import app
from cachelab.errors import UsageError
from cachelab.lab import Lab
from cachelab.workload.redis_info import counter_delta, keyspace_counters


def test_access_log_round_trips_one_line_per_access(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "access.jsonl"  # the folder is created
    accesses = [Access(1700000000.25, "user:1", False, 1.5),
                Access(1700000000.5, "user:1", True, 0.125)]
    with AccessLog(path) as log:
        for access in accesses:
            log.write(access)
    assert log.lines == 2
    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == {"time": 1700000000.25, "key": "user:1", "result": "miss",
                                    "latency_ms": 1.5}
    assert read_access_log(path) == accesses


def test_a_new_access_log_replaces_an_old_file(tmp_path: Path) -> None:
    path = tmp_path / "access.jsonl"
    path.write_text("left over from another run\n")
    with AccessLog(path) as log:
        log.write(Access(1.0, "k", True, 0.1))
    assert [a.key for a in read_access_log(path)] == ["k"]


def test_a_bad_line_is_named_by_its_number(tmp_path: Path) -> None:
    path = tmp_path / "access.jsonl"
    path.write_text(Access(1.0, "k", True, 0.1).to_json() + '\n{"time": 2, "key": "k", '
                    '"result": "maybe", "latency_ms": 1}\n')
    with pytest.raises(ValueError, match=r"access.jsonl:2: .*hit or miss"):
        read_access_log(path)


def test_threads_share_one_log_without_tearing_lines(tmp_path: Path) -> None:
    path = tmp_path / "access.jsonl"
    with AccessLog(path) as log:
        def write(worker: int) -> None:
            for i in range(500):
                log.write(Access(time.time(), f"w{worker}:{i}", i % 2 == 0, 0.01))

        threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    logged = read_access_log(path)
    assert len(logged) == log.lines == 2000
    assert len({a.key for a in logged}) == 2000


def test_hit_ratio_by_slice_covers_every_access_once() -> None:
    accesses = [Access(0.0, "k", hit, 0.0) for hit in [False] * 4 + [True] * 6]
    slices = hit_ratio_by_slice(accesses, 3)
    assert [start for start, _ in slices] == [0, 3, 6]
    assert [round(r, 3) for _, r in slices] == [0.0, 0.667, 1.0]
    assert hit_ratio_by_slice([], 3) == []


def test_counters_snapshot_shows_totals_and_a_trend() -> None:
    counters = AccessCounters(window_s=0.05)
    for i in range(10):
        counters.record(hit=i >= 4, latency_ns=200_000 if i < 4 else 50_000)
    time.sleep(0.12)  # let the window close, so it shows in the trend
    snap = counters.snapshot()
    assert (snap["requests"], snap["hits"], snap["misses"]) == (10, 6, 4)
    assert snap["hit ratio"] == pytest.approx(0.6)
    assert snap["hit ratio trend (0.05 s a bar)"] == "▅"  # 0.6 of eight levels
    assert counters.miss_latency.percentile_ms(50) > counters.hit_latency.percentile_ms(50)


def test_monitored_cache_agrees_with_redis_the_log_and_prometheus(lab: Lab,
                                                                 tmp_path: Path) -> None:
    client = lab.redis()
    loads: list[int] = []

    def load(item: int) -> dict[str, int]:
        loads.append(item)
        return {"id": item}

    exporter = PrometheusExporter(cache="user")
    server = lab.enter_context(exporter.serve())
    log = lab.enter_context(AccessLog(tmp_path / "a.jsonl"))
    monitor = CacheMonitor(log=log, exporter=exporter)
    cache = MonitoredCache(CacheAside(client, namespace="user", loader=load, ttl_s=60),
                           monitor)
    before = keyspace_counters(client)
    reads = [1, 2, 1, 1, 3, 2]
    expected = [False, False, True, True, False, True]
    assert [cache.fetch(i) for i in reads] == [({"id": i}, hit) for i, hit in
                                               zip(reads, expected, strict=True)]
    redis_seen = counter_delta(before, keyspace_counters(client))
    log.close()

    assert (cache.stats.hits, cache.stats.misses) == (3, 3) == (
        redis_seen["keyspace_hits"], redis_seen["keyspace_misses"])
    assert loads == [1, 2, 3]
    assert (monitor.counters.hits, monitor.counters.misses) == (3, 3)
    logged = read_access_log(tmp_path / "a.jsonl")
    assert [(a.key, a.hit) for a in logged] == [(f"user:{i}", hit) for i, hit in
                                                zip(reads, expected, strict=True)]
    assert all(a.latency_ms > 0 for a in logged)
    totals = scrape_totals(server.url, cache="user")
    assert (totals.hits, totals.misses, totals.latency_count) == (3, 3, 6)


def test_the_endpoint_speaks_prometheus_text_over_http() -> None:
    exporter = PrometheusExporter(cache="page")
    with exporter.serve(port=0) as server:
        assert server.port > 0 and server.url.startswith("http://127.0.0.1:")
        # Both series exist before any traffic, so a dashboard's ratio is defined at once.
        assert scrape_totals(server.url, cache="page") == scrape_totals(server.url, "page")
        assert scrape_totals(server.url, cache="page").hits == 0
        exporter.observe(hit=True, latency_s=0.0002)
        exporter.observe(hit=False, latency_s=0.003)
        with urllib.request.urlopen(server.url, timeout=5) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            text = response.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    histogram = families["cachelab_cache_request_duration_seconds"]
    assert histogram.type == "histogram"
    buckets = {(s.labels["result"], s.labels["le"]): s.value for s in histogram.samples
               if s.name.endswith("_bucket")}
    # The hit fell in a sub-millisecond bucket that Prometheus's defaults would not have.
    assert buckets[("hit", "0.00025")] == 1 and buckets[("hit", "0.0001")] == 0
    assert buckets[("miss", "0.0025")] == 0 and buckets[("miss", "0.005")] == 1
    assert families["cachelab_cache_requests"].type == "counter"


def test_stopping_the_endpoint_closes_the_port_and_joins_its_thread() -> None:
    server = PrometheusExporter().serve().start()
    port, url = server.port, server.url
    assert any(t.name == f"metrics-{port}" for t in threading.enumerate())
    server.stop()
    server.stop()  # twice is harmless
    assert not any(t.name == f"metrics-{port}" for t in threading.enumerate())
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=2)


def test_the_lab_stops_the_endpoint() -> None:
    with Lab() as lab:
        server = lab.enter_context(PrometheusExporter().serve())
        port = server.port
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_two_exporters_live_side_by_side() -> None:
    """Each has its own registry: no 'Duplicated timeseries' from prometheus_client."""
    first, second = PrometheusExporter(cache="a"), PrometheusExporter(cache="a")
    first.observe(hit=True, latency_s=0.001)
    with first.serve() as one, second.serve() as two:
        assert scrape_totals(one.url, cache="a").hits == 1
        assert scrape_totals(two.url, cache="a").hits == 0


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_busy_port_is_a_usage_error(busy_port: int) -> None:
    with pytest.raises(UsageError, match=rf"127\.0\.0\.1:{busy_port}: the port is in use; "
                                         "pick another port, or 0"):
        MetricsServer(PrometheusExporter().registry, busy_port).start()


def test_the_cli_turns_a_busy_metrics_port_into_exit_2(busy_port: int) -> None:
    result = CliRunner().invoke(app, ["run", "exercise-9", "--metrics-port", str(busy_port),
                                      "--no-save"], prog_name="cachelab")
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"Error: cannot serve metrics on 127.0.0.1:{busy_port}: ")
    assert "pick another port, or 0" in result.stderr
    assert result.stdout == ""
