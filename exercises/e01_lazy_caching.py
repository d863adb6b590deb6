"""Lazy caching of user profiles: cache-aside with a TTL in front of the shop database.

The profile endpoint looks in Redis first. Only on a miss does it ask the database,
and then it stores the profile under ``user:<id>`` with a TTL, so that a profile
nobody reads again leaves the cache by itself.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Annotated, Literal

from cachelab.caching import CacheAside
from cachelab.exercise import ExerciseInfo, Opt, Result
from cachelab.workload.measure import (
    LATENCY_COLUMNS,
    LatencyHistogram,
    key_sampler,
    latency_row,
    wait_for_expiry,
)
from cachelab.workload.redis_info import counter_delta, keyspace_counters

if TYPE_CHECKING:
    from cachelab.lab import Lab

INFO = ExerciseInfo(
    id="exercise-1",
    slug="lazy-caching",
    title="Lazy caching of user profiles",
    concept="Lazy (cache-aside) population",
    scenario=(
        "A profile endpoint reads a user's profile from the database on every call. "
        "Put Redis in front of it lazily: a profile enters the cache the first time "
        "someone asks for it, and leaves when its TTL runs out."
    ),
    walkthrough=(
        "Start a redis-server and build the shop database.",
        "Serve profile reads through cache-aside: GET user:<id>; on a miss, query the "
        "database and SET the profile with a TTL (spread by jitter).",
        "Drive the endpoint with a seeded workload (Zipf by default: a few users are "
        "popular) and time every read, hits and misses apart.",
        "Compare the cache's own hit/miss counts with Redis's keyspace_hits/misses, and "
        "every cached profile and its TTL with the database.",
        "Cache one profile with a short TTL, wait for Redis to expire it, and read it again.",
    ),
    fixtures=("redis", "shop-db"),
    checks=(
        "database queries equal cache misses",
        "cache counts match Redis INFO",
        "cached profiles match the database",
        "every cached key has a TTL in range",
        "hits are faster than misses at p50",
        "an expired profile is reloaded on the next read",
    ),
    metrics=(
        "requests", "hits", "misses", "hit_ratio", "db_queries", "redis_keyspace_hits",
        "redis_keyspace_misses", "hit_p50_ms", "hit_p95_ms", "hit_p99_ms", "miss_p50_ms",
        "miss_p95_ms", "miss_p99_ms", "cached_keys", "ttl_min_s", "ttl_max_s", "expired_after_s",
    ),
    headline="hit_ratio",
)


def run(
    lab: Lab,
    *,
    requests: Annotated[int, Opt("Profile reads in the workload.", min=1)] = 3000,
    distribution: Annotated[Literal["zipf", "uniform"], Opt("Which users are read.")] = "zipf",
    zipf_s: Annotated[float, Opt("Zipf exponent: higher means hotter hot keys.",
                                 min=0.1, max=5)] = 1.1,
    ttl_s: Annotated[float, Opt("TTL of a cached profile, in seconds.", min=1)] = 300.0,
    jitter: Annotated[float, Opt("TTLs spread over ttl_s * (1 ± jitter).", min=0,
                                 max=0.9)] = 0.1,
    expiry_ttl_s: Annotated[float, Opt("TTL used to show expiry, in seconds.", min=0.1,
                                       max=30)] = 1.0,
) -> Result:
    result = Result(INFO)
    server = lab.redis_server()
    cache = lab.closing(server.client())
    db = lab.shop()
    profiles = CacheAside(cache, namespace=server.keys("user"), loader=db.user_profile,
                          ttl_s=ttl_s, jitter=jitter, rng=lab.rng("ttl"))

    # The workload: the endpoint under a seeded stream of user ids.
    next_user = key_sampler(db.size.users, distribution, zipf_s=zipf_s, rng=lab.rng("users"))
    hit_latency, miss_latency = LatencyHistogram(), LatencyHistogram()
    redis_before, db_before = keyspace_counters(cache), db.queries
    started = time.monotonic()
    for _ in lab.track(range(requests), "profile reads", requests):
        user_id = next_user()
        t0 = time.perf_counter_ns()
        _, hit = profiles.fetch(user_id)
        (hit_latency if hit else miss_latency).record_ns(time.perf_counter_ns() - t0)
    redis_seen = counter_delta(redis_before, keyspace_counters(cache))
    db_queries = db.queries - db_before
    stats = profiles.stats

    # What is in the cache now, read back after the counters were taken.
    low_ms, high_ms = profiles.ttl_range_ms
    elapsed_ms = (time.monotonic() - started) * 1000

    def id_of(key: str) -> int:
        return int(key.rsplit(":", 1)[1])  # the prefix has colons of its own

    keys = sorted(cache.scan_iter(server.keys.pattern("user:*"), count=1000), key=id_of)
    ttls_ms: list[int] = []
    sample: list[list[object]] = []
    matching = 0
    for key in keys:
        user_id = id_of(key)
        ttl_ms = cache.pttl(key)
        same = json.loads(cache.get(key) or "null") == db.profile_now(user_id)
        ttls_ms.append(ttl_ms)
        matching += same
        if len(sample) < 5:
            sample.append([key, ttl_ms / 1000, same])
    ttl_ok = sum(low_ms - elapsed_ms - 1000 <= t <= high_ms for t in ttls_ms)

    # Expiry: a short-lived copy expires and the next read goes to the database again.
    short = CacheAside(cache, namespace=server.keys("user-short-ttl"),
                       loader=db.user_profile, ttl_s=expiry_ttl_s)
    user_id = keys and id_of(keys[0]) or 1
    timeline = []
    for step in ("first read", "second read"):
        q0 = db.queries
        _, hit = short.fetch(user_id)
        timeline.append([step, "hit" if hit else "miss", db.queries - q0])
    expired_after = wait_for_expiry(cache, short.key(user_id), timeout_s=expiry_ttl_s * 2 + 2)
    q0 = db.queries
    value, hit = short.fetch(user_id)
    timeline.append([f"read after expiry ({expired_after or 0:.2f}s)", "hit" if hit else "miss",
                     db.queries - q0])
    reloaded = (expired_after is not None and [r[1] for r in timeline] == ["miss", "hit", "miss"]
                and timeline[-1][2] == 1 and value == db.user_profile(user_id)
                and cache.pttl(short.key(user_id)) > 0)

    hit_ms, miss_ms = hit_latency.summary_ms(), miss_latency.summary_ms()
    result.table("Profile reads", LATENCY_COLUMNS,
                 [latency_row("hit", hit_latency), latency_row("miss", miss_latency)])
    result.table("Cached keys (first five)", ["key", "TTL s", "equals database"], sample)
    result.table("Expiry", ["step", "outcome", "database queries"], timeline)

    result.add_metrics({
        "requests": stats.requests, "hits": stats.hits, "misses": stats.misses,
        "hit_ratio": stats.hit_ratio, "db_queries": db_queries,
        "redis_keyspace_hits": redis_seen["keyspace_hits"],
        "redis_keyspace_misses": redis_seen["keyspace_misses"],
        "hit_p50_ms": hit_ms["p50"], "hit_p95_ms": hit_ms["p95"], "hit_p99_ms": hit_ms["p99"],
        "miss_p50_ms": miss_ms["p50"], "miss_p95_ms": miss_ms["p95"],
        "miss_p99_ms": miss_ms["p99"], "cached_keys": len(keys),
        "ttl_min_s": min(ttls_ms, default=0) / 1000, "ttl_max_s": max(ttls_ms, default=0) / 1000,
        "expired_after_s": expired_after if expired_after is not None else -1.0,
    })

    result.check("database queries equal cache misses", db_queries == stats.misses,
                 f"{db_queries} queries, {stats.misses} misses")
    seen = (redis_seen["keyspace_hits"], redis_seen["keyspace_misses"])
    result.check_counts("cache counts match Redis INFO", (stats.hits, stats.misses), seen,
                        shared=lab.shared,
                        detail=f"cache {stats.hits}/{stats.misses}, Redis {seen[0]}/{seen[1]} "
                               "(hits/misses)")
    result.check("cached profiles match the database", bool(keys) and matching == len(keys),
                 f"{matching}/{len(keys)} equal")
    result.check("every cached key has a TTL in range", bool(keys) and ttl_ok == len(keys),
                 f"{ttl_ok}/{len(keys)} within {low_ms / 1000:g}-{high_ms / 1000:g}s "
                 "less the time since set")
    result.check("hits are faster than misses at p50",
                 hit_latency.count > 0 and miss_latency.count > 0
                 and hit_ms["p50"] < miss_ms["p50"],
                 f"hit p50 {hit_ms['p50']:.3f} ms, miss p50 {miss_ms['p50']:.3f} ms")
    result.check("an expired profile is reloaded on the next read", reloaded,
                 " → ".join(f"{r[1]} ({r[2]} q)" for r in timeline))

    result.note(f"{stats.hit_ratio:.0%} of reads never reached the database; each miss paid "
                f"the database round trip ({db.describe_latency()}).")
    if lab.shared:
        result.note("On a shared server, redis_keyspace_hits/misses include other clients' "
                    "reads during the workload; hits and misses are the cache's own.")
    result.note("Try --distribution uniform: with no hot users, fewer reads repeat and the "
                "hit ratio falls. Try --db-latency-ms 0 to see raw in-process SQLite.")
    return result
