"""Load testing with and without caching: the shop API under the same seeded HTTP load.

Two copies of the shop API run over real HTTP, one reading the database on every
request and one caching lazily in Redis. The same seeded plan of profile, product and
sales-report requests is played against each by an async load driver at a fixed
concurrency, for several trials: throughput, latency percentiles from HDR histograms
(warm-up excluded), errors, the server's own database queries and cache hits, and the
CPU of the server process, side by side.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from cachelab.errors import UsageError
from cachelab.exercise import ExerciseInfo, Opt, Result
from cachelab.shop.traffic import shop_request_plan
from cachelab.workload.measure import ratio
from cachelab.workload.server_runs import ServerRuns, measure_run, report_side_by_side

if TYPE_CHECKING:
    from cachelab.lab import Lab

INFO = ExerciseInfo(
    id="exercise-14",
    slug="load-testing",
    title="Load testing the shop API with and without caching",
    concept="Measuring a cache under load",
    scenario=(
        "Before a sale, the team wants numbers, not hopes: how many requests a second "
        "the shop API serves, how slow the slowest answers get, and how hard the "
        "database works, with the cache off and on. Play the same seeded workload "
        "against both over real HTTP, a few times over, and compare throughput, "
        "latency percentiles, database queries a second, hit ratio and server CPU."
    ),
    walkthrough=(
        "Build the shop database and start two shop API servers over it (one uvicorn "
        "process each): one without caching, one with lazy caching in its own Redis.",
        "Draw one seeded plan of GETs: user profiles, products and sales reports (the "
        "five-table query), items chosen by a Zipf (or uniform) distribution.",
        "For each trial and each server (the order alternates, the cache is flushed "
        "first): warm up with the plan's first requests, read the server's counters and "
        "CPU time, play the measured requests at the given concurrency, read them again.",
        "Record every answer's latency in an HDR histogram, count failures by kind and "
        "the X-Cache header of every answer.",
        "Compare the median trial side by side: throughput, p50/p95/p99/max, database "
        "queries per request and per second, hit ratio, server CPU; check that nothing "
        "failed, that the server's hits match the headers, and what caching saved.",
    ),
    fixtures=("shop-db", "redis", "shop-api"),
    checks=(
        "no request failed",
        "the server's hit and miss counts match the X-Cache headers",
        "caching cuts database queries at least in proportion to the hit ratio",
        "caching raises throughput",
        "caching lowers p50 latency",
    ),
    metrics=(
        "concurrency", "requests", "trials", "processes", "rps_no_cache", "rps_cache",
        "speedup_rps", "rps_spread_no_cache", "rps_spread_cache", "p50_ms_no_cache", "p50_ms_cache",
        "p95_ms_no_cache", "p95_ms_cache", "p99_ms_no_cache", "p99_ms_cache", "max_ms_no_cache",
        "max_ms_cache", "db_qps_no_cache", "db_qps_cache", "db_queries_per_request_no_cache",
        "db_queries_per_request_cache", "hit_ratio", "p50_ms_hit", "p50_ms_miss",
        "cpu_ms_per_request_no_cache", "cpu_ms_per_request_cache", "cpu_pct_no_cache",
        "cpu_pct_cache", "errors",
    ),
    headline="speedup_rps",
)

def run(
    lab: Lab,
    *,
    concurrency: Annotated[int, Opt("Connections, each with one request in flight.",
                                    min=1, max=1024)] = 16,
    requests: Annotated[int, Opt("Measured requests per trial and server.", min=10)] = 400,
    duration_s: Annotated[float, Opt("Also stop each measured run after this many seconds "
                                     "(0: bounded by --requests only).", min=0)] = 0.0,
    warmup: Annotated[int, Opt("Requests played first and left out of every figure.",
                               min=0)] = 100,
    trials: Annotated[int, Opt("Trials; figures are the median trial's.", min=1,
                               max=50)] = 3,
    distribution: Annotated[Literal["zipf", "uniform"],
                            Opt("Which profiles, products and reports are asked for.")
                            ] = "zipf",
    zipf_s: Annotated[float, Opt("Zipf exponent: higher means hotter hot items.",
                                 min=0.1, max=5)] = 1.1,
    report_share: Annotated[float, Opt("Share of requests for a sales report (the "
                                       "five-table query); the rest are profile and "
                                       "product lookups.", min=0, max=1)] = 0.8,
    processes: Annotated[int, Opt("Load driver processes sharing the connections.",
                                  min=1, max=64)] = 1,
) -> Result:
    from cachelab.workload.loadgen import LoadSpec

    if processes > concurrency:
        raise UsageError(f"--processes {processes} is more than --concurrency {concurrency}: "
                         "each driver process needs at least one connection")
    result = Result(INFO)
    db = lab.shop()
    none_redis, cache_redis = lab.redis_server("api-none-redis"), lab.redis_server("api-lazy-redis")
    # Both servers read one database file; each runs in its own process, so its CPU
    # time is its own, and each has its own Redis (the uncached one never reads it).
    none_api, cache_api = lab.shop_apis(db, [("none", "api-none", none_redis),
                                             ("lazy", "api-lazy", cache_redis)])
    modes = [ServerRuns("no_cache", none_api), ServerRuns("cache", cache_api)]
    plan = shop_request_plan(db, warmup + requests, rng=lab.rng("workload"),
                             distribution=distribution, zipf_s=zipf_s,
                             report_share=report_share)
    spec = LoadSpec(concurrency=concurrency, requests=requests, warmup=warmup,
                    duration_s=duration_s or None, processes=processes)

    for trial in lab.track(range(trials), "trials (no cache, cache)", trials):
        # Alternate the order so that a slow spell of the machine hits both alike.
        for mode in modes if trial % 2 == 0 else modes[::-1]:
            # Every trial starts cold: the trials are repeats, not a ramp. clear() is
            # FLUSHALL on the lab's own server, only this part's keys on a deployment.
            cache_redis.clear()
            mode.runs.append(measure_run(mode, plan, spec))

    none, cached = modes
    report_side_by_side(result, modes)
    speedup = ratio(cached.median("rps"), none.median("rps"))
    hits, misses = cached.total("cache_hits"), cached.total("cache_misses")
    hit_ratio = ratio(hits, hits + misses)
    errors = sum(m.total("errors") for m in modes)
    by_outcome = cached.by_outcome()
    result.add_metrics({
        "concurrency": concurrency, "requests": requests, "trials": trials,
        "processes": processes,
        "rps_no_cache": none.median("rps"), "rps_cache": cached.median("rps"),
        "speedup_rps": speedup,
        "rps_spread_no_cache": ratio(max(r.rps for r in none.runs)
                                     - min(r.rps for r in none.runs), none.median("rps")),
        "rps_spread_cache": ratio(max(r.rps for r in cached.runs)
                                  - min(r.rps for r in cached.runs), cached.median("rps")),
        **{f"{p}_ms_{m.name}": m.p_median(p) for p in ("p50", "p95", "p99", "max")
           for m in modes},
        **{f"db_qps_{m.name}": m.median("db_qps") for m in modes},
        **{f"db_queries_per_request_{m.name}": ratio(m.total("db_queries"), m.requests)
           for m in modes},
        "hit_ratio": hit_ratio,
        "p50_ms_hit": by_outcome["hit"].percentile_ms(50) if "hit" in by_outcome else 0.0,
        "p50_ms_miss": by_outcome["miss"].percentile_ms(50) if "miss" in by_outcome else 0.0,
        **{f"cpu_ms_per_request_{m.name}": m.median("cpu_ms_per_request") for m in modes},
        **{f"cpu_pct_{m.name}": m.median("cpu_pct") for m in modes},
        "errors": errors,
    })

    kinds = none.error_kinds() + cached.error_kinds()
    played = sum(m.requests + sum(r.load.warmup.responses for r in m.runs) for m in modes)
    # Every planned request answered too (a duration bound may end a run early).
    answered = all(r.load.warmup.responses == warmup
                   and (r.load.responses == requests or duration_s > 0)
                   for m in modes for r in m.runs)
    result.check("no request failed", errors == 0 and answered,
                 f"{played} answers over {2 * trials} runs, warm-ups included; "
                 + (", ".join(f"{n} {kind}" for kind, n in kinds.most_common())
                    or "no failure"))

    seen = cached.header_counts()
    bypassed = none.header_counts()
    result.check("the server's hit and miss counts match the X-Cache headers",
                 (seen["hit"], seen["miss"]) == (hits, misses) and hits + misses
                 == cached.requests and bypassed["bypass"] == none.requests
                 and none.total("cache_hits") + none.total("cache_misses") == 0,
                 f"cached server: {hits} hits, {misses} misses by its /_lab/stats, "
                 f"{seen['hit']} and {seen['miss']} by the headers of {cached.requests} "
                 f"answers; uncached server: {bypassed['bypass']}/{none.requests} "
                 "answers said bypass")

    # Exact integers on both sides, so no tolerance: with cache-aside a hit costs no
    # query and a miss costs what an uncached read costs, so equality is the most
    # caching can cost; more would mean hits or misses query more than they should.
    q_none, n_none = none.total("db_queries"), none.requests
    q_cache, n_cache = cached.total("db_queries"), cached.requests
    bound = ratio(misses, hits + misses) * ratio(q_none, n_none)
    result.check("caching cuts database queries at least in proportion to the hit ratio",
                 n_none > 0 and hits + misses > 0
                 and q_cache * n_none * (hits + misses) <= misses * q_none * n_cache,
                 f"{ratio(q_cache, n_cache):.3f} queries per request with the cache, at most "
                 f"(1 - hit ratio {hit_ratio:.3f}) × {ratio(q_none, n_none):.3f} without it "
                 f"= {bound:.3f} ({q_cache} queries for {n_cache} requests against "
                 f"{q_none} for {n_none})")

    result.check("caching raises throughput", cached.median("rps") > none.median("rps"),
                 f"median of {trials} trials: {cached.median('rps'):.0f} requests/s cached "
                 f"against {none.median('rps'):.0f} uncached ({speedup:.2f}x) at "
                 f"concurrency {concurrency}")
    result.check("caching lowers p50 latency",
                 cached.p_median("p50") < none.p_median("p50"),
                 f"median p50 {cached.p_median('p50'):.2f} ms cached against "
                 f"{none.p_median('p50'):.2f} ms uncached ({db.describe_latency()})")

    result.note(f"Each server is one uvicorn process; the database is {db.describe_latency()}. "
                f"Warm-up: the first {warmup} requests of each run, left out of every figure. "
                "Server CPU is the server process's user + system time over the measured "
                "phase (psutil).")
    if lab.shared:
        result.note("The cached server's Redis is the existing deployment: its network round "
                    "trip and its other clients' load are in every cached answer. Every "
                    "figure here is the API's own count or the driver's timing, none a "
                    "server-wide Redis statistic; each trial starts cold by deleting this "
                    "run's keys only.")
    if "hit" in by_outcome and "miss" in by_outcome:
        hit, miss = by_outcome["hit"], by_outcome["miss"]
        result.note(f"With the cache, hits answered at p50 {hit.percentile_ms(50):.1f} ms and "
                    f"misses at {miss.percentile_ms(50):.1f} ms (p99 "
                    f"{hit.percentile_ms(99):.1f} and {miss.percentile_ms(99):.1f} ms): at "
                    "full load every answer also waits its turn on a busy server, so both "
                    "include queueing.")
    result.note("The server's CPU, not the modelled database latency, sets the pace at this "
                "concurrency: caching pays where it saves work. Try --report-share 0 (only "
                "single-row profile and product lookups, which SQLite answers cheaply), "
                "--concurrency 1 (no queueing), --distribution uniform (a lower hit ratio), "
                "--db-latency-ms 5, or --processes 2.")
    return result
