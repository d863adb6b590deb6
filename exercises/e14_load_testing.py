"""Load testing with and without caching: the shop API under the same seeded HTTP load.

Two copies of the shop API run over real HTTP, one reading the database on every
request and one caching lazily in Redis. The same seeded plan of profile, product and
sales-report requests is played against each by an async load driver at a fixed
concurrency, for several trials: throughput, latency percentiles from HDR histograms
(warm-up excluded), errors, the server's own database queries and cache hits, and the
CPU of the server process, side by side.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlencode

from cachelab.errors import UsageError
from cachelab.exercise import ExerciseInfo, Opt, Result
from cachelab.shop.database import report_parameter_sets
from cachelab.workload.measure import LATENCY_COLUMNS, latency_row, ratio

if TYPE_CHECKING:
    from cachelab.lab import Lab
    from cachelab.servers.node import RedisNode
    from cachelab.shop.app import Caching
    from cachelab.shop.database import ShopDatabase
    from cachelab.shop.server import ApiServer
    from cachelab.workload.loadgen import LatencyHistogram, LoadResult

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

REPORT_SETS = 48  # distinct (period, city) sales reports the plan asks for


@dataclass
class Run:
    """One measured run of the plan against one server."""

    load: LoadResult
    db_queries: int
    cache_hits: int
    cache_misses: int
    cpu_s: float

    @property
    def rps(self) -> float:
        return self.load.rps

    def p(self, name: str) -> float:
        return self.load.latency.summary_ms()[name]

    @property
    def db_qps(self) -> float:
        return ratio(self.db_queries, self.load.elapsed_s)

    @property
    def db_per_request(self) -> float:
        return ratio(self.db_queries, self.load.responses)

    @property
    def hit_ratio(self) -> float:
        return ratio(self.cache_hits, self.cache_hits + self.cache_misses)

    @property
    def cpu_ms_per_request(self) -> float:
        return ratio(self.cpu_s * 1000, self.load.responses)

    @property
    def cpu_pct(self) -> float:
        return ratio(self.cpu_s * 100, self.load.elapsed_s)

    @property
    def errors(self) -> int:
        return self.load.errors + sum(self.load.warmup.errors.values())


@dataclass
class Mode:
    """One server and its runs, trial by trial."""

    name: str
    api: ApiServer
    runs: list[Run] = field(default_factory=list)

    def median(self, value: str) -> float:
        return float(statistics.median(getattr(r, value) for r in self.runs))

    def p_median(self, name: str) -> float:
        return float(statistics.median(r.p(name) for r in self.runs))

    def spread(self, value: str, fmt: str = "{:.1f}") -> str:
        values = [getattr(r, value) for r in self.runs]
        return f"{fmt.format(min(values))}–{fmt.format(max(values))}"

    def total(self, value: str) -> int:
        return sum(getattr(r, value) for r in self.runs)

    @property
    def requests(self) -> int:
        return sum(r.load.responses for r in self.runs)

    def by_outcome(self) -> dict[str, LatencyHistogram]:
        """Latencies of each X-Cache value, every trial together."""
        from cachelab.workload.loadgen import LatencyHistogram

        merged: dict[str, LatencyHistogram] = {}
        for r in self.runs:
            for outcome, hist in r.load.latencies.by_outcome.items():
                merged.setdefault(outcome, LatencyHistogram()).add_encoded(hist.encode())
        return merged

    def header_counts(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for r in self.runs:
            counts.update(r.load.outcomes)
        return counts

    def error_kinds(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for r in self.runs:
            counts.update(r.load.measured.errors)
            counts.update(r.load.warmup.errors)
        return counts


def start_apis(lab: Lab, db: ShopDatabase,
               servers: list[tuple[Caching, str, RedisNode]]) -> list[ApiServer]:
    """``lab.shop_api`` for several servers at once: each spends a second or two
    importing its framework, so they start side by side; the lab stops them all."""
    from cachelab.shop.server import ApiServer

    started = []
    for caching, name, redis_server in servers:
        api = ApiServer(redis_server, db, caching=caching, log_dir=lab.workdir, name=name)
        lab.callback(api.stop)  # registered first: stopped even if the launch fails
        started.append(api.launch())
    for api in started:
        api.wait_ready()
    return started


def plan_for(lab: Lab, db: ShopDatabase, count: int, *, distribution: Literal["zipf", "uniform"],
             zipf_s: float, report_share: float) -> list[str]:
    """Profiles and products in equal parts, plus ``report_share`` of sales reports."""
    from cachelab.workload.loadgen import Resource, request_plan

    lookups = (1 - report_share) / 2
    resources = [Resource.ids("/users/{}", db.size.users, lookups),
                 Resource.ids("/products/{}", db.size.products, lookups)]
    if report_share > 0:
        reports = tuple("/reports/sales?" + urlencode({"start": s, "end": e, "city": c})
                        for s, e, c in report_parameter_sets(REPORT_SETS))
        resources.append(Resource(reports, report_share))
    resources = [r for r in resources if r.weight > 0]
    return request_plan(resources, count, rng=lab.rng("workload"),
                        distribution=distribution, zipf_s=zipf_s)


def measure(mode: Mode, plan: list[str], spec: Any) -> Run:
    """Play ``plan`` against ``mode``'s server, with its counters and CPU read around the
    measured phase (after the warm-up, with nothing in flight)."""
    import psutil

    from cachelab.workload.loadgen import HttpTarget, run_load

    server = psutil.Process(mode.api.pid)
    marks: list[tuple[dict[str, Any], float]] = []

    def mark() -> None:
        times = server.cpu_times()
        marks.append((mode.api.stats(), times.user + times.system))

    load = run_load(HttpTarget.from_url(mode.api.url), plan, spec,
                    before_measure=mark, after_measure=mark)
    (before, cpu0), (after, cpu1) = marks
    return Run(load, after["db_queries"] - before["db_queries"],
               after["cache_hits"] - before["cache_hits"],
               after["cache_misses"] - before["cache_misses"], cpu1 - cpu0)


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
    none_api, cache_api = start_apis(lab, db, [("none", "api-none", none_redis),
                                               ("lazy", "api-lazy", cache_redis)])
    modes = [Mode("no_cache", none_api), Mode("cache", cache_api)]
    plan = plan_for(lab, db, warmup + requests, distribution=distribution, zipf_s=zipf_s,
                    report_share=report_share)
    spec = LoadSpec(concurrency=concurrency, requests=requests, warmup=warmup,
                    duration_s=duration_s or None, processes=processes)

    for trial in lab.track(range(trials), "trials (no cache, cache)", trials):
        # Alternate the order so that a slow spell of the machine hits both alike.
        for mode in modes if trial % 2 == 0 else modes[::-1]:
            # Every trial starts cold: the trials are repeats, not a ramp. clear() is
            # FLUSHALL on the lab's own server, only this part's keys on a deployment.
            cache_redis.clear()
            mode.runs.append(measure(mode, plan, spec))

    none, cached = modes
    report(result, modes)
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


def report(result: Result, modes: list[Mode]) -> None:
    """The side-by-side table, the per-trial table and a throughput chart."""
    none, cached = modes

    def row(label: str, value: str, fmt: str = "{:.1f}") -> list[object]:
        a, b = none.median(value), cached.median(value)
        return [label, fmt.format(a), none.spread(value, fmt), fmt.format(b),
                cached.spread(value, fmt), f"{ratio(b, a):.2f}x" if a else "-"]

    def p_row(name: str) -> list[object]:
        a, b = none.p_median(name), cached.p_median(name)
        spread = [f"{min(r.p(name) for r in m.runs):.2f}–{max(r.p(name) for r in m.runs):.2f}"
                  for m in modes]
        return [f"{name} ms", f"{a:.2f}", spread[0], f"{b:.2f}", spread[1],
                f"{ratio(b, a):.2f}x"]

    result.table(f"Median of {len(none.runs)} trials, caching off and on",
                 ["", "no cache", "range", "cache", "range", "cache / no cache"],
                 [row("throughput, requests/s", "rps", "{:.0f}"),
                  *(p_row(p) for p in ("p50", "p95", "p99", "max")),
                  row("errors", "errors", "{:.0f}"),
                  row("database queries/s", "db_qps", "{:.0f}"),
                  row("database queries per request", "db_per_request", "{:.3f}"),
                  row("hit ratio", "hit_ratio", "{:.3f}"),
                  row("server CPU ms per request", "cpu_ms_per_request", "{:.2f}"),
                  row("server CPU %", "cpu_pct", "{:.0f}")])
    result.table("Latency by X-Cache, every trial together", LATENCY_COLUMNS,
                 [latency_row(f"{m.name}: {outcome}", hist)
                  for m in modes for outcome, hist in sorted(m.by_outcome().items())])
    result.table("Trial by trial", ["trial", "server", "answers", "s", "rps", "p50 ms",
                                    "p99 ms", "db queries", "hits", "misses", "CPU ms/req"],
                 [[i + 1, m.name, r.load.responses, round(r.load.elapsed_s, 2), round(r.rps),
                   round(r.p("p50"), 2), round(r.p("p99"), 2), r.db_queries, r.cache_hits,
                   r.cache_misses, round(r.cpu_ms_per_request, 2)]
                  for i in range(len(none.runs)) for m in modes for r in [m.runs[i]]])
    result.chart("Throughput per trial", "trial", list(range(1, len(none.runs) + 1)),
                 {m.name: [round(r.rps) for r in m.runs] for m in modes}, unit=" rps")
