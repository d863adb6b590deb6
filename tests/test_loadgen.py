"""The load driver over real sockets: the shop API, raw Redis, and servers that fail."""

from __future__ import annotations

import multiprocessing
import random
import socket
from collections import Counter
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from cachelab.lab import Lab
from cachelab.servers.ports import claim_port
from cachelab.workload.loadgen import (
    HttpTarget,
    LatencyHistogram,
    LoadError,
    LoadSpec,
    RedisTarget,
    Resource,
    request_plan,
    run_load,
)


def measured_part(plan: list[str], spec: LoadSpec) -> list[str]:
    """The plan entries the measured phase plays (the plan repeats when shorter)."""
    return [plan[i % len(plan)] for i in range(spec.warmup, spec.warmup + spec.requests)]


class StatsProbe:
    """Reads an API server's own counters right before and after the measured phase."""

    def __init__(self, api: Any) -> None:
        self.api = api
        self.marks: list[dict[str, Any]] = []

    def __call__(self) -> None:
        self.marks.append(self.api.stats())

    def delta(self, name: str) -> int:
        before, after = self.marks
        return int(after[name] - before[name])


# ------------------------------------------------------------------ the plan


def test_a_seed_gives_the_same_plan_and_weights_set_the_mix() -> None:
    resources = [Resource.ids("/users/{}", 50, 3.0), Resource.ids("/products/{}", 20, 1.0)]

    def plan(seed: int) -> list[str]:
        return request_plan(resources, 4000, rng=random.Random(seed))

    assert plan(1) == plan(1) and plan(1) != plan(2)
    drawn = plan(1)
    users = sum(p.startswith("/users/") for p in drawn)
    assert 0.7 < users / len(drawn) < 0.8  # weight 3 of 4
    assert set(drawn) <= {*resources[0].items, *resources[1].items}


def test_zipf_concentrates_the_plan_on_a_few_items_and_uniform_does_not() -> None:
    items = Resource.ids("k{}", 200)
    zipf = Counter(request_plan([items], 5000, rng=random.Random(3), zipf_s=1.2))
    uniform = Counter(request_plan([items], 5000, rng=random.Random(3),
                                   distribution="uniform"))
    top10 = sum(n for _, n in zipf.most_common(10))
    assert top10 > 0.4 * 5000
    assert sum(n for _, n in uniform.most_common(10)) < 0.15 * 5000


def test_bad_plans_and_specs_are_refused() -> None:
    with pytest.raises(ValueError):
        request_plan([], 10, rng=random.Random(1))
    with pytest.raises(ValueError):
        request_plan([Resource(("a",), weight=0)], 10, rng=random.Random(1))
    with pytest.raises(ValueError):
        LoadSpec(concurrency=2, processes=3)
    with pytest.raises(ValueError):
        LoadSpec(requests=0)
    with pytest.raises(ValueError):
        HttpTarget.from_url("https://127.0.0.1:1/")


def test_histograms_merge_through_their_encoding() -> None:
    a, b = LatencyHistogram(), LatencyHistogram()
    for ms in (1, 2, 3):
        a.record_ns(ms * 1_000_000)
    b.record_ns(50_000_000)
    a.add_encoded(b.encode())
    assert a.count == 4
    assert a.summary_ms()["max"] == pytest.approx(50, rel=0.01)
    assert a.percentile_ms(50) == pytest.approx(2, rel=0.01)


# ------------------------------------------------------------------ HTTP


def test_every_answer_is_counted_and_matches_the_servers_own_counters(lab: Lab) -> None:
    api = lab.shop_api("lazy")
    shop_size = 30
    plan = request_plan([Resource.ids("/users/{}", shop_size),
                         Resource.ids("/products/{}", shop_size)], 400, rng=lab.rng("plan"))
    spec = LoadSpec(concurrency=8, requests=300, warmup=100)
    probe = StatsProbe(api)
    result = run_load(HttpTarget.from_url(api.url), plan, spec,
                      before_measure=probe, after_measure=probe)

    assert result.warmup.responses == 100 and result.responses == 300
    assert result.errors == 0 and result.latency.count == 300
    # Every answer said hit or miss, and the server counted exactly the same.
    assert sum(result.outcomes.values()) == 300
    assert result.outcomes["hit"] == probe.delta("cache_hits")
    assert result.outcomes["miss"] == probe.delta("cache_misses")
    assert probe.delta("db_queries") == result.outcomes["miss"]  # only misses query
    # Each answer's latency is in the histogram of its X-Cache value too.
    assert {k: h.count for k, h in result.latency_by_outcome.items()} == dict(result.outcomes)
    # The warm-up cached what it asked for, so only new items miss: each at least once,
    # more only when several connections asked for it at the same time.
    measured = measured_part(plan, spec)
    new = set(measured) - set(plan[:100])
    assert len(new) <= result.outcomes["miss"] <= sum(p in new for p in measured)
    assert result.rps > 0 and result.elapsed_s > 0


def test_failed_requests_are_counted_by_kind(lab: Lab) -> None:
    api = lab.shop_api("none")
    plan = ["/users/1", "/users/99999999", "/users/abc", "/no/such/path", "/products/2"]
    spec = LoadSpec(concurrency=4, requests=250, warmup=0)
    result = run_load(HttpTarget.from_url(api.url), plan, spec)

    assert result.responses == 250  # an HTTP error is still an answer
    assert result.measured.errors == Counter({"HTTP 404": 100, "HTTP 422": 50})
    assert result.outcomes == Counter({"bypass": 100})  # only the 200s carry X-Cache


def test_several_worker_processes_share_the_plan_and_leave_nothing_behind(lab: Lab) -> None:
    api = lab.shop_api("none")
    plan = request_plan([Resource.ids("/users/{}", 40)], 700, rng=lab.rng("plan"))
    spec = LoadSpec(concurrency=6, requests=600, warmup=100, processes=3)
    probe = StatsProbe(api)
    result = run_load(HttpTarget.from_url(api.url), plan, spec,
                      before_measure=probe, after_measure=probe)

    # Each plan entry was played once, by one of the workers: merged counts add up.
    assert result.warmup.responses == 100 and result.responses == 600
    assert result.latency.count == 600 and result.errors == 0
    assert result.outcomes == Counter({"bypass": 600})
    assert result.latency_by_outcome["bypass"].count == 600
    assert probe.delta("db_queries") == 600
    assert multiprocessing.active_children() == []


def load_workers() -> list[psutil.Process]:
    """Worker processes (multiprocessing's spawn) of this process still alive."""
    alive = []
    for child in psutil.Process().children():
        try:
            if "spawn_main" in " ".join(child.cmdline()) and child.status() != "zombie":
                alive.append(child)
        except psutil.NoSuchProcess:
            pass
    return alive


def test_ctrl_c_in_the_parent_ends_every_worker(lab: Lab) -> None:
    api = lab.shop_api("none")
    started: list[int] = []

    def interrupt() -> None:  # Ctrl-C, with the workers warm and waiting for the go
        started.extend(p.pid for p in load_workers())
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_load(HttpTarget.from_url(api.url), ["/users/1"],
                 LoadSpec(concurrency=2, requests=10_000, warmup=20, processes=2),
                 before_measure=interrupt)
    assert len(started) == 2
    assert multiprocessing.active_children() == [] and load_workers() == []


# ------------------------------------------------------------------ raw Redis


def test_redis_gets_count_hits_misses_and_error_replies(lab: Lab) -> None:
    server = lab.redis_server()
    client = server.client()
    lab.callback(client.close)
    client.mset({f"k:{i}": "v" * 10 for i in range(10)})
    client.rpush("a-list", "x")
    plan = [f"k:{i}" for i in range(15)] + ["a-list"]  # 10 hits, 5 misses, 1 WRONGTYPE
    spec = LoadSpec(concurrency=4, requests=1600, warmup=160)
    before = client.info("stats")
    result = run_load(RedisTarget(server.host, server.port), plan, spec)
    after = client.info("stats")

    assert result.outcomes == Counter({"hit": 1000, "miss": 500})
    assert result.measured.errors == Counter({"redis WRONGTYPE": 100})
    assert result.warmup.responses == 160 and result.responses == 1600
    # Redis's own counters agree with what the driver saw, warm-up included (Redis
    # finds the list before it refuses the GET, so a WRONGTYPE counts as a hit there).
    assert after["keyspace_hits"] - before["keyspace_hits"] == 1100 + 110
    assert after["keyspace_misses"] - before["keyspace_misses"] == 550


def test_a_duration_bounds_a_run_whatever_the_request_count(lab: Lab) -> None:
    server = lab.redis_server()
    spec = LoadSpec(concurrency=2, requests=10**9, duration_s=0.3, processes=2)
    result = run_load(RedisTarget(server.host, server.port), ["k"], spec)
    assert 0 < result.responses < 10**9
    assert result.outcomes["miss"] == result.responses and result.errors == 0


# ------------------------------------------------------------------ servers that fail


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    claim = claim_port()
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        claim.release()
        listener.bind(("127.0.0.1", claim.port))
        listener.listen(64)
        yield claim.port


def test_unanswered_requests_time_out_and_the_run_still_ends(silent_port: int) -> None:
    spec = LoadSpec(concurrency=1, requests=3, timeout_s=0.2)
    result = run_load(RedisTarget("127.0.0.1", silent_port), ["k"], spec)
    assert result.responses == 0
    assert result.measured.errors == Counter({"timeout": 3})


def test_nothing_listening_is_a_clear_error() -> None:
    claim = claim_port()
    claim.release()  # free, and nobody listens on it
    with pytest.raises(LoadError, match=f"cannot connect to 127.0.0.1:{claim.port}"):
        run_load(HttpTarget("127.0.0.1", claim.port), ["/"], LoadSpec(requests=1))
