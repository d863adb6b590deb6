"""Caching a complex query: the result of a four-table join, keyed by a hash of the query.

Revenue by category for one city over a date range joins orders, order items,
products, categories and users, then aggregates. The same report is asked for again
and again with a handful of parameter sets, so its rows are cached under
``query:<sha256 of the normalised SQL and its parameters>``.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING, Annotated, Any

from cachelab.caching import QueryCache, query_key
from cachelab.exercise import ExerciseInfo, Opt, Result
from cachelab.shop.database import REPORT_SQL, report_parameter_sets
from cachelab.workload.measure import (
    LATENCY_COLUMNS,
    LatencyHistogram,
    key_sampler,
    latency_row,
    ratio,
    wait_for_expiry,
)

if TYPE_CHECKING:
    from cachelab.lab import Lab

INFO = ExerciseInfo(
    id="exercise-2",
    slug="query-caching",
    title="Caching a complex query",
    concept="Lazy population of query results",
    scenario=(
        "A sales report joins orders, order items, products, categories and users and "
        "aggregates revenue by category. Dashboards ask for it constantly with a few "
        "parameter sets. Cache each result under a hash of the query and its parameters "
        "so the database computes it once per TTL."
    ),
    walkthrough=(
        "Write the report query: a five-table join with GROUP BY, parameterised by a date "
        "range and a city.",
        "Run a seeded stream of report requests straight against the database, timing each.",
        "Run the same stream through the query cache: normalise the SQL, hash it with its "
        "parameters into a key, GET; on a miss execute, SET with a TTL.",
        "Compare the cached rows with a fresh execution, count executions per distinct "
        "query, and watch a short-lived entry expire.",
    ),
    fixtures=("redis", "shop-db"),
    checks=(
        "cached results equal fresh results",
        "each distinct query executes once per TTL",
        "a re-spelled query hits the same entry",
        "cached results expire",
    ),
    metrics=(
        "distinct_queries", "requests", "db_executions_uncached", "db_executions_cached",
        "db_load_reduction", "hit_ratio", "query_p50_ms_uncached", "query_p50_ms_cached",
        "query_p99_ms_uncached", "query_p99_ms_cached", "speedup_p50", "expired_after_s",
    ),
    headline="speedup_p50",
)

# The same query as another developer might type it: one cache entry must serve both.
RESPELLED_SQL = " ".join(REPORT_SQL.split()).replace("SELECT", "select").replace(
    "GROUP BY", "group   by") + " ;"


def run(
    lab: Lab,
    *,
    requests: Annotated[int, Opt("Report requests in each phase.", min=1)] = 400,
    distinct_queries: Annotated[int, Opt("Distinct parameter sets asked for.", min=1,
                                         max=96)] = 8,
    ttl_s: Annotated[float, Opt("TTL of a cached result, in seconds.", min=1)] = 120.0,
    expiry_ttl_s: Annotated[float, Opt("TTL used to show expiry, in seconds.", min=0.1,
                                       max=30)] = 1.0,
) -> Result:
    result = Result(INFO)
    server = lab.redis_server()
    cache = lab.closing(server.client())
    db = lab.shop()
    params = report_parameter_sets(distinct_queries)
    next_set = key_sampler(distinct_queries, "zipf", zipf_s=1.0, rng=lab.rng("reports"))
    stream = [params[next_set() - 1] for _ in range(requests)]

    # Phase 1: every request goes to the database.
    uncached = LatencyHistogram()
    q0 = db.queries
    for p in lab.track(stream, "uncached reports", requests):
        with uncached.time():
            db.query(REPORT_SQL, p)
    executions_uncached = db.queries - q0

    # Phase 2: the same stream through the query cache, counting executions per key.
    executions: Counter[str] = Counter()

    def run_query(sql: str, p: Any) -> list[dict[str, Any]]:
        executions[query_key(sql, p)] += 1
        return db.query(sql, p)

    reports = QueryCache(cache, run_query, ttl_s=ttl_s, namespace=server.keys("query"))
    cached = LatencyHistogram()
    q0, started = db.queries, time.monotonic()
    for p in lab.track(stream, "cached reports", requests):
        with cached.time():
            reports.rows(REPORT_SQL, p)
    phase_s = time.monotonic() - started
    executions_cached = db.queries - q0
    hits, misses = reports.stats.hits, reports.stats.misses

    # Checks on what the cache now holds.
    asked = sorted(set(stream))
    equal = sum(reports.rows(REPORT_SQL, p)[0] == db.rows(REPORT_SQL, p) for p in asked)
    windows = int(phase_s // ttl_s) + 1  # TTL windows the phase spanned
    once_per_ttl = sum(1 <= executions[query_key(REPORT_SQL, p)] <= windows for p in asked)
    before = db.queries
    _, respelled_hit = reports.rows(RESPELLED_SQL, asked[0])
    respelled_queries = db.queries - before

    short = QueryCache(cache, db.query, ttl_s=expiry_ttl_s,
                       namespace=server.keys("query-short-ttl"))
    q0 = db.queries
    short.rows(REPORT_SQL, asked[0])
    expired_after = wait_for_expiry(cache, short.key((REPORT_SQL, asked[0])),
                                    timeout_s=expiry_ttl_s * 2 + 2)
    _, hit_after_expiry = short.rows(REPORT_SQL, asked[0])
    expiry_executions = db.queries - q0

    u, c = uncached.summary_ms(), cached.summary_ms()
    result.table("Report latency", LATENCY_COLUMNS,
                 [latency_row("uncached", uncached), latency_row("cached", cached)])
    result.table("Executions by parameter set", ["start", "end", "city", "requests",
                                                 "db executions"],
                 [[*p, stream.count(p), executions[query_key(REPORT_SQL, p)]] for p in asked])

    result.add_metrics({
        "distinct_queries": len(asked), "requests": requests,
        "db_executions_uncached": executions_uncached,
        "db_executions_cached": executions_cached,
        "db_load_reduction": 1 - ratio(executions_cached, executions_uncached),
        "hit_ratio": ratio(hits, hits + misses),
        "query_p50_ms_uncached": u["p50"], "query_p50_ms_cached": c["p50"],
        "query_p99_ms_uncached": u["p99"], "query_p99_ms_cached": c["p99"],
        "speedup_p50": ratio(u["p50"], c["p50"]),
        "expired_after_s": expired_after if expired_after is not None else -1.0,
    })

    result.check("cached results equal fresh results", equal == len(asked),
                 f"{equal}/{len(asked)} parameter sets equal a fresh execution")
    result.check("each distinct query executes once per TTL", once_per_ttl == len(asked)
                 and executions_cached == sum(executions.values()),
                 f"{executions_cached} executions for {len(asked)} distinct queries over "
                 f"{phase_s:.1f}s ({windows} TTL window{'s' * (windows > 1)} of {ttl_s:g}s); "
                 f"uncached: {executions_uncached}")
    result.check("a re-spelled query hits the same entry", respelled_hit
                 and respelled_queries == 0,
                 f"{'hit' if respelled_hit else 'miss'}, {respelled_queries} executions")
    result.check("cached results expire", expired_after is not None and not hit_after_expiry
                 and expiry_executions == 2,
                 f"entry gone after {expired_after or 0:.2f}s (TTL {expiry_ttl_s:g}s); "
                 f"next request executed again: {expiry_executions} executions in all")

    result.note(f"The report takes {u['p50']:.2f} ms at p50 from the database "
                f"({db.describe_latency()}) and {c['p50']:.3f} ms from Redis.")
    result.note("Caching whole query results trades freshness for load: a new order shows "
                "up in the report only after the TTL. Exercise 13 invalidates on change.")
    return result
