"""Hit and miss analysis: log every cache access, watch it live, then size the cache.

Rendered profile pages are cached in Redis with cache-aside. Every read is timed and
reported three ways at once: a JSON-lines access log, a live terminal view, and a
Prometheus endpoint that a real Prometheus or Grafana can scrape. The three, the
cache's own counts and Redis's INFO must tell the same story. Then the log is put to
work: its key sequence is replayed against short-lived redis-servers of growing
``maxmemory`` under an eviction policy, and the smallest size that reaches the target
hit ratio is recommended.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from cachelab.caching import CacheAside
from cachelab.caching.monitor import (
    AccessLog,
    CacheMonitor,
    MonitoredCache,
    PrometheusExporter,
    hit_ratio_by_slice,
    read_access_log,
    scrape_totals,
)
from cachelab.caching.sizing import redis_size, replay_at_size
from cachelab.errors import UsageError
from cachelab.exercise import ExerciseInfo, Opt, Result
from cachelab.shop.pages import ProfilePages
from cachelab.workload.measure import LATENCY_COLUMNS, key_sampler, latency_row, ratio
from cachelab.workload.redis_info import counter_delta, keyspace_counters

if TYPE_CHECKING:
    from cachelab.lab import Lab

INFO = ExerciseInfo(
    id="exercise-9",
    slug="hit-miss-analysis",
    title="Hit and miss analysis, and sizing the cache",
    concept="Cache hit/miss ratio",
    scenario=(
        "Profile pages are cached, but nobody knows how well: is the hit ratio good, "
        "which reads miss, and how much memory does the cache really need? Log every "
        "access, watch the ratio live and from Prometheus, then replay the logged traffic "
        "against caches of different sizes and pick the smallest one that is good enough."
    ),
    walkthrough=(
        "Start a Prometheus endpoint on 127.0.0.1 (--metrics-port), a redis-server with "
        "memory to spare, and the shop database.",
        "Serve a seeded Zipf stream of profile-page reads through cache-aside; time every "
        "read and report it to a JSON-lines access log, live counters (shown as a "
        "dashboard on a terminal) and Prometheus counters and a latency histogram.",
        "Compare the cache's counts with Redis's keyspace_hits/misses, read the log back "
        "line by line, and scrape the endpoint over HTTP with prometheus-client's parser.",
        "Replay the logged key sequence against fresh redis-servers of growing maxmemory "
        "with an eviction policy, next to an exact LRU of as many keys.",
        "Chart the hit ratio against memory and recommend the smallest maxmemory that "
        "reaches the target hit ratio.",
    ),
    fixtures=("redis", "shop-db", "prometheus-endpoint"),
    checks=(
        "cache counts match Redis INFO",
        "the access log has one line per access",
        "the Prometheus endpoint reports the same totals",
        "the hit ratio does not fall as memory grows",
        "a swept size reaches the target hit ratio",
    ),
    metrics=(
        "requests", "hits", "misses", "hit_ratio", "redis_keyspace_hits", "redis_keyspace_misses",
        "log_lines", "prometheus_hits", "prometheus_misses", "recommended_maxmemory_mb",
        "hit_ratio_at_recommended", "best_sweep_hit_ratio", "hit_p50_ms", "miss_p50_ms",
        "ops_per_s",
    ),
    headline="recommended_maxmemory_mb",
    own_servers="sets maxmemory on servers it starts, one size after another",
)

NAMESPACE = "page"
#: Redis samples keys to approximate LRU, so a bigger cache can lose a little by chance.
MONOTONE_TOLERANCE = 0.02


def run(
    lab: Lab,
    *,
    requests: Annotated[int, Opt("Profile-page reads in the workload.", min=100)] = 2500,
    zipf_s: Annotated[float, Opt("Zipf exponent: higher means hotter hot pages.",
                                 min=0.5, max=5)] = 1.1,
    value_kb: Annotated[int, Opt("Size of a cached page, in KB.", min=1, max=256)] = 8,
    ttl_s: Annotated[float, Opt("TTL of a cached page, in seconds.", min=60)] = 3600.0,
    metrics_port: Annotated[int, Opt("Port of the Prometheus endpoint on 127.0.0.1; 0 picks "
                                     "a free one.", min=0, max=65535)] = 0,
    linger_s: Annotated[float, Opt("Keep the Prometheus endpoint up this long after the "
                                   "workload, for a real Prometheus to scrape.",
                                   min=0, max=3600)] = 0.0,
    access_log: Annotated[str, Opt("JSON-lines access log to write (replaced if it exists); "
                                   "empty: a new file in the results folder.")] = "",
    policy: Annotated[Literal["allkeys-lru", "allkeys-lfu", "allkeys-random"],
                      Opt("Eviction policy of the sized caches.")] = "allkeys-lru",
    sweep_min_mb: Annotated[float, Opt("Smallest maxmemory of the sweep, in MB.", min=0.5,
                                       max=4096)] = 2.0,
    sweep_max_mb: Annotated[float, Opt("Largest maxmemory of the sweep, in MB.", min=1,
                                       max=4096)] = 6.0,
    sweep_points: Annotated[int, Opt("Sizes swept, evenly from --sweep-min-mb to "
                                     "--sweep-max-mb.", min=2, max=32)] = 5,
    target_hit_ratio: Annotated[float, Opt("Hit ratio the recommended size must reach.",
                                           min=0.01, max=1)] = 0.7,
) -> Result:
    result = Result(INFO)
    if sweep_max_mb <= sweep_min_mb:
        raise UsageError(f"--sweep-max-mb {sweep_max_mb:g} must exceed --sweep-min-mb "
                         f"{sweep_min_mb:g}")
    step = (sweep_max_mb - sweep_min_mb) / (sweep_points - 1)
    sizes = [round(sweep_min_mb + step * k, 3) for k in range(sweep_points)]

    # 1. The endpoint first: a busy --metrics-port fails before anything else starts.
    exporter = PrometheusExporter(cache=NAMESPACE)
    metrics = lab.enter_context(exporter.serve(metrics_port))
    # The file the run logs to: --access-log, else a new file in the results folder.
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = (Path(access_log).expanduser() if access_log else
            lab.kept_file("access-logs", f"{INFO.id}-{stamp}-{uuid.uuid4().hex[:6]}.jsonl"))
    try:
        log = lab.enter_context(AccessLog(path))
    except OSError as exc:
        raise UsageError(f"--access-log {path}: cannot write there ({exc.strerror}); "
                         "pick another file") from None
    monitor = CacheMonitor(log=log, exporter=exporter)
    cache = lab.redis()
    db = lab.shop()
    loader = ProfilePages(db, value_kb)
    pages = MonitoredCache(CacheAside(cache, namespace=NAMESPACE, loader=loader, ttl_s=ttl_s),
                           monitor)

    # 2. The workload, watched live on a terminal.
    next_user = key_sampler(db.size.users, "zipf", zipf_s=zipf_s, rng=lab.rng("users"))
    trace = [next_user() for _ in range(requests)]
    redis_before = keyspace_counters(cache)
    started = time.perf_counter()
    with lab.live(f"{INFO.id}: profile-page reads, live",
                  lambda: {**monitor.snapshot(), "Prometheus endpoint": metrics.url}):
        for user_id in trace:
            pages.fetch(user_id)
    elapsed_s = time.perf_counter() - started
    redis_seen = counter_delta(redis_before, keyspace_counters(cache))
    stats, counters = pages.stats, monitor.counters

    # 3. Read back what each view recorded.
    log.close()
    logged = read_access_log(path)
    scraped = scrape_totals(metrics.url, cache=NAMESPACE)
    if linger_s:
        time.sleep(linger_s)

    # 4. Size the cache: replay the logged key sequence at each maxmemory.
    logged_trace = [int(a.key.rsplit(":", 1)[1]) for a in logged]
    sweep = []
    for k, mb in enumerate(lab.track(sizes, f"replaying {len(logged_trace)} reads per size",
                                     len(sizes)), 1):
        sized = lab.own_redis_server(f"sweep-{k}", maxmemory=redis_size(mb),
                                     maxmemory_policy=policy)
        with sized.client() as client:
            sweep.append(replay_at_size(client, mb, logged_trace, loader.pages,
                                        namespace=NAMESPACE, ttl_s=ttl_s))
        sized.stop()  # the Lab would stop it at the end; no need to keep it until then
    good = [p for p in sweep if p.hit_ratio >= target_hit_ratio]
    chosen = good[0] if good else None
    best = max(sweep, key=lambda p: p.hit_ratio)
    falls = [(a, b) for a, b in zip(sweep, sweep[1:], strict=False)
             if b.hit_ratio < a.hit_ratio - MONOTONE_TOLERANCE]

    result.table("Hits and misses, four ways",
                 ["view", "requests", "hits", "misses", "hit ratio"],
                 [["the cache's own counts", stats.requests, stats.hits, stats.misses,
                   stats.hit_ratio],
                  ["Redis INFO keyspace", sum(redis_seen[k] for k in ("keyspace_hits",
                                                                         "keyspace_misses")),
                   redis_seen["keyspace_hits"], redis_seen["keyspace_misses"],
                   ratio(redis_seen["keyspace_hits"],
                         redis_seen["keyspace_hits"] + redis_seen["keyspace_misses"])],
                  ["access log", len(logged), sum(a.hit for a in logged),
                   sum(not a.hit for a in logged), ratio(sum(a.hit for a in logged),
                                                         len(logged))],
                  ["Prometheus scrape", int(scraped.hits + scraped.misses), int(scraped.hits),
                   int(scraped.misses), ratio(scraped.hits, scraped.hits + scraped.misses)]])
    result.table("Read latency (cache-aside, a miss includes the database)", LATENCY_COLUMNS,
                 [latency_row("hit", counters.hit_latency),
                  latency_row("miss", counters.miss_latency)])
    timeline = hit_ratio_by_slice(logged, 10)
    result.chart("Hit ratio over the workload (from the access log)", "from read",
                 [start + 1 for start, _ in timeline], {"hit ratio": [r for _, r in timeline]})
    result.table(f"Sizing sweep: the logged reads replayed ({policy})",
                 ["maxmemory MB", "keys held", "evicted", "hit ratio",
                  "exact LRU, as many keys", "refused writes"],
                 [[p.maxmemory_mb, p.keys_held, p.evicted, p.hit_ratio, p.lru_hit_ratio,
                   p.refused_writes] for p in sweep]
                 + [["no limit (the workload)", int(cache.dbsize()), 0,
                     stats.hit_ratio, stats.hit_ratio, 0]])
    result.chart("Hit ratio by maxmemory", "maxmemory MB", [f"{p.maxmemory_mb:g}" for p in sweep],
                 {f"Redis {policy}": [p.hit_ratio for p in sweep],
                  "exact LRU, as many keys": [p.lru_hit_ratio for p in sweep]})

    hit_ms, miss_ms = counters.hit_latency.summary_ms(), counters.miss_latency.summary_ms()
    result.add_metrics({
        "requests": stats.requests, "hits": stats.hits, "misses": stats.misses,
        "hit_ratio": stats.hit_ratio,
        "redis_keyspace_hits": redis_seen["keyspace_hits"],
        "redis_keyspace_misses": redis_seen["keyspace_misses"],
        "log_lines": len(logged),
        "prometheus_hits": int(scraped.hits), "prometheus_misses": int(scraped.misses),
        "recommended_maxmemory_mb": chosen.maxmemory_mb if chosen else -1.0,
        "hit_ratio_at_recommended": chosen.hit_ratio if chosen else -1.0,
        "best_sweep_hit_ratio": best.hit_ratio,
        "hit_p50_ms": hit_ms["p50"], "miss_p50_ms": miss_ms["p50"],
        "ops_per_s": ratio(stats.requests, elapsed_s),
    })

    disagree = [p for p in sweep if not p.agrees_with_redis]
    result.check("cache counts match Redis INFO",
                 (stats.hits, stats.misses) == (redis_seen["keyspace_hits"],
                                                redis_seen["keyspace_misses"])
                 and counters.requests == stats.requests and not disagree,
                 f"workload: cache {stats.hits}/{stats.misses}, Redis "
                 f"{redis_seen['keyspace_hits']}/{redis_seen['keyspace_misses']} (hits/misses); "
                 f"sweep: {len(sweep) - len(disagree)}/{len(sweep)} replays agree")
    same_keys = [a.key for a in logged] == [pages.key(u) for u in trace]
    result.check("the access log has one line per access",
                 len(logged) == stats.requests == log.lines and same_keys
                 and sum(a.hit for a in logged) == stats.hits,
                 f"{len(logged)} lines for {stats.requests} reads, "
                 f"{'in order, key for key' if same_keys else 'keys differ from the reads'}; "
                 f"{sum(a.hit for a in logged)} hits logged, {stats.hits} counted")
    result.check("the Prometheus endpoint reports the same totals",
                 (scraped.hits, scraped.misses, scraped.latency_count)
                 == (stats.hits, stats.misses, stats.requests),
                 f"scraped {scraped.hits:g} hits, {scraped.misses:g} misses, "
                 f"{scraped.latency_count:g} latency observations from {metrics.url}")
    result.check("the hit ratio does not fall as memory grows", not falls,
                 " → ".join(f"{p.hit_ratio:.3f}" for p in sweep)
                 + f" over {sizes[0]:g}..{sizes[-1]:g} MB (tolerance {MONOTONE_TOLERANCE})"
                 + "".join(f"; falls from {a.maxmemory_mb:g} to {b.maxmemory_mb:g} MB"
                           for a, b in falls))
    result.check("a swept size reaches the target hit ratio", chosen is not None,
                 f"{chosen.maxmemory_mb:g} MB reaches {chosen.hit_ratio:.3f} ≥ "
                 f"{target_hit_ratio:g}" if chosen else
                 f"the best was {best.hit_ratio:.3f} at {best.maxmemory_mb:g} MB, under "
                 f"{target_hit_ratio:g}; with no limit the workload reached "
                 f"{stats.hit_ratio:.3f} (first reads of a page always miss)")

    result.note(f"Access log: {path} ({len(logged)} JSON lines: time, key, result, latency_ms). "
                "By default each run writes a new file next to the results store; "
                "--access-log PATH picks the file.")
    result.note(f"Prometheus served {metrics.url} during the run (port "
                f"{metrics.port}; --metrics-port fixes it, --linger-s keeps it up for a "
                "scraper). Hit ratio in PromQL: sum(rate(cachelab_cache_requests_total"
                "{result=\"hit\"}[1m])) / sum(rate(cachelab_cache_requests_total[1m])).")
    if chosen:
        result.note(f"Recommendation: maxmemory {redis_size(chosen.maxmemory_mb)} with {policy} "
                    f"reaches a hit ratio of {chosen.hit_ratio:.3f} (target "
                    f"{target_hit_ratio:g}); the sweep's best was {best.hit_ratio:.3f} at "
                    f"{best.maxmemory_mb:g} MB.")
    result.note(f"An empty redis-server already uses {sweep[0].empty_used_mb:.2f} MB of its "
                "maxmemory (the sweep's first server, from INFO memory): below that, Redis "
                "refuses writes instead of caching.")
    if policy == "allkeys-lru":
        result.note("Redis's LRU clock ticks once a second and eviction samples a few keys, "
                    "so in a replay this short allkeys-lru evicts almost at random: compare "
                    "it with the exact LRU column, and try --policy allkeys-lfu.")
    return result
