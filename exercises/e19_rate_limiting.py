"""API rate limiting with Redis: four limiters, a burst across a boundary, real clients.

Each user may send ``limit`` requests per ``window_s``. The counts live in Redis, so
every API process shares them, and each limiter decides in one Lua script on Redis's
clock, atomically. Four ways: a fixed window (``INCR`` per window of the clock, its
expiry set in the same step), a sliding log (a sorted set of admission times), a
sliding-window counter (two counters, the previous one weighted) and a token bucket
(half the limit as its capacity, refilled with the other half every window).

In any stretch of time ``s`` the token bucket admits at most ``capacity + rate * s /
window_s`` (what it held plus what dripped in): with capacity and rate adding up to the
limit, no window of ``window_s`` ever holds more than ``limit``. The run checks that
bound for every stretch between two admissions, and the limit in every window.
"""

from __future__ import annotations

import itertools
import json
from typing import TYPE_CHECKING, Annotated, Any, Literal

from cachelab.caching.rate_limit import (
    ALGORITHMS,
    LimitSpec,
    TokenBucketLimiter,
    max_in_any_window,
)
from cachelab.caching.rate_limit_burst import boundary_burst
from cachelab.exercise import ExerciseInfo, Opt, Result
from cachelab.shop.database import ShopDatabase, build_shop
from cachelab.shop.middleware import DECIDED_HEADER
from cachelab.workload.limit_walk import Row, shorten_rows, walk_to_429
from cachelab.workload.ttl_sampler import TtlSampler

if TYPE_CHECKING:
    from cachelab.lab import Lab

INFO = ExerciseInfo(
    id="exercise-19",
    slug="rate-limiting",
    title="API rate limiting with Redis counters",
    concept="Cache-aided rate limiting",
    scenario=(
        "A public API must stop one user, or one IP, from flooding it. Keep each user's "
        "request count in Redis, where every API process sees it, and refuse requests "
        "over the limit with 429 and a Retry-After. Compare four ways of counting: the "
        "simple fixed window lets a burst through twice at a window boundary; a sliding "
        "log, a sliding-window counter and a token bucket do not. And make sure that "
        "many clients at once never get more than the limit."
    ),
    walkthrough=(
        "Start a redis-server and a small shop database, and the shop API in its own "
        "process, limited per X-User-Id with --api-algorithm.",
        "Wait on Redis's clock until just before a fixed-window boundary, send --limit "
        "requests to each of the four limiters, then --limit more just after the "
        "boundary; count what each admitted in any window of --window-s.",
        "Start --clients client processes that hit the four limiters for one user, and "
        "the API over HTTP, as fast as they can for --duration-s; merge the admission "
        "times they recorded (Redis's clock) and hold each limiter to its guarantee.",
        "While they run, sample every limiter key's TTL: none may be without an expiry.",
        "Over HTTP, send requests as a new user until a 429: RateLimit-Remaining counts "
        "down to 0, the 429 carries Retry-After, and after waiting that long the next "
        "request passes.",
    ),
    fixtures=("redis", "shop-db", "http-api", "client-processes"),
    checks=(
        "every limiter admits a full quota from a fresh start",
        "the fixed window lets more than the limit through across a boundary",
        "sliding log and token bucket stay within the limit in any window",
        "concurrent clients never get more than the limit per window",
        "over-limit answers are 429 with Retry-After and RateLimit headers",
        "no limiter key is ever left without an expiry",
    ),
    metrics=(
        "limit", "window_s", "clients", "requests", "allowed_fixed", "denied_fixed",
        "max_in_any_window_fixed", "allowed_sliding_log", "denied_sliding_log",
        "max_in_any_window_sliding_log", "allowed_sliding_counter", "denied_sliding_counter",
        "max_in_any_window_sliding_counter", "allowed_token_bucket", "denied_token_bucket",
        "max_in_any_window_token_bucket", "keys_without_ttl", "ttl_samples", "burst_attempts",
        "http_requests", "http_allowed", "http_denied",
    ),
    headline="max_in_any_window_fixed",
)

PREFIX = "ratelimit"  # the direct limiters', named by the server: server.keys(PREFIX); the
# API's own live under ratelimit:api


def run(
    lab: Lab,
    *,
    limit: Annotated[int, Opt("Requests admitted per window, per user.", min=2,
                              max=10_000)] = 20,
    window_s: Annotated[float, Opt("The window's length in seconds.", min=0.1,
                                   max=60)] = 1.0,
    clients: Annotated[int, Opt("Client processes hammering the limits at once.", min=1,
                                max=32)] = 4,
    duration_s: Annotated[float, Opt("How long the clients hammer, in seconds.", min=0.2,
                                     max=300)] = 2.0,
    api_algorithm: Annotated[
        Literal["fixed", "sliding_log", "sliding_counter", "token_bucket"],
        Opt("The limiter of the HTTP API.")] = "token_bucket",
) -> Result:
    from cachelab.children import stop_all
    from cachelab.children.rate_limit import HammerProcess, results_key
    from cachelab.shop.server import ApiServer
    from cachelab.workload.poll import poll_until
    from cachelab.workload.redis_info import redis_clock_us

    result = Result(INFO)
    server = lab.redis_server("redis")
    client = lab.closing(server.client())
    # The limit is the subject here, not the data: a small shop starts the API sooner.
    shop_path = lab.workdir / "api-shop.db"
    size = build_shop(shop_path, scale=0.05, seed=lab.settings.seed)
    db = ShopDatabase(shop_path, latency_ms=lab.settings.db_latency_ms, size=size)
    lab.callback(db.close)

    # The API server puts its limiter's keys under server.keys("ratelimit:api") itself.
    prefix, results = server.keys(PREFIX), results_key(server.keys.prefix)
    specs = [LimitSpec(algorithm, limit, window_s) for algorithm in ALGORITHMS]
    limiters = [spec.limiter(client, prefix=prefix) for spec in specs]
    by_name = {lim.algorithm: lim for lim in limiters}
    api_spec = LimitSpec(api_algorithm, limit, window_s)
    api_limiter = api_spec.limiter(client, prefix=f"{prefix}:api")  # its bound, for checks
    window_us = limiters[0].window_us

    # Everything that takes a second to start starts now, and boots during the burst.
    api = ApiServer(server, db, caching="lazy", log_dir=lab.workdir, name="api",
                    rate_limit=str(api_spec))
    hammers = [HammerProcess(client, name=f"client-{i}", redis_port=server.port, specs=specs,
                             prefix=prefix, identity="hammer", api_url=api.url,
                             log_path=lab.workdir / f"client-{i}.log",
                             max_seconds=duration_s + 120, key_prefix=server.keys.prefix,
                             env=server.child_env())
               for i in range(1, clients + 1)]
    children = [api, *hammers]
    lab.callback(lambda: stop_all(children))
    for child in children:
        child.launch()

    # 1. The burst across a boundary, from this process.
    sampler = TtlSampler(client, server.keys, PREFIX)
    burst = boundary_burst(client, limiters, limit, window_us)
    sampler.sample()

    # 2. Concurrent client processes, all for one user, directly and over HTTP.
    for child in children:
        child.wait_ready()
    start_us = redis_clock_us(client) + 100_000
    for hammer in hammers:
        hammer.go(start_us, start_us + round(duration_s * 1e6))
    reports: list[dict[str, Any]] = []

    def all_reported() -> bool:
        sampler.sample()
        popped = client.blpop([results], timeout=0.05)  # blocks: no pause needed
        if popped:
            reports.append(json.loads(popped[1]))
            return len(reports) >= clients
        # A client that died without reporting ends the wait: the checks below say so.
        return all(h.returncode is not None for h in hammers) and not client.llen(results)

    poll_until(all_reported, timeout_s=duration_s + 60, interval_s=0, error=None,
               what="every client's report")
    sampler.sample()
    concurrent: dict[str, list[int]] = {a: [] for a in ALGORITHMS}
    denied: dict[str, int] = dict.fromkeys(ALGORITHMS, 0)
    http_allowed: list[int] = []
    http_denied = http_errors = 0
    for report in reports:
        for algorithm, seen in report["direct"].items():
            concurrent[algorithm] += seen["allowed"]
            denied[algorithm] += seen["denied"]
        http_allowed += report["http"]["allowed"]
        http_denied += report["http"]["denied"]
        http_errors += report["http"]["errors"]

    # 3. Over HTTP as one new user, until the limiter says no.
    walk, after_wait = walk_to_429(api.url, limit, decided_header=DECIDED_HEADER)
    sampler.sample()

    # What each limiter admitted, against its guarantee.
    burst_bounds = {a: by_name[a].bound(burst.admitted(a)) for a in ALGORITHMS}
    concurrent_bounds = {a: by_name[a].bound(concurrent[a]) for a in ALGORITHMS}
    http_bound = api_limiter.bound(http_allowed)
    most = {a: max(max_in_any_window(burst.admitted(a), window_us),
                   max_in_any_window(concurrent[a], window_us)) for a in ALGORITHMS}
    burst_most = {a: max_in_any_window(burst.admitted(a), window_us) for a in ALGORITHMS}

    result.table(
        f"Burst across a boundary: {limit} requests {burst.lead_us / 1000:g} ms before "
        f"it, {limit} just after (attempt {burst.attempts})",
        ["algorithm", "admitted before", "admitted after", f"most in any {window_s:g}s",
         "tightest spot: admitted ≤ bound", "held"],
        [[a, sum(d.allowed for d in burst.before[a]), sum(d.allowed for d in burst.after[a]),
          burst_most[a], str(b), "yes" if b.held else "NO"] for a, b in burst_bounds.items()])
    result.table(
        f"{clients} client processes for {duration_s:g}s, one user",
        ["algorithm", "requests", "admitted", "refused", f"most in any {window_s:g}s",
         "tightest spot: admitted ≤ bound", "held"],
        [*([a, len(concurrent[a]) + denied[a], len(concurrent[a]), denied[a],
            max_in_any_window(concurrent[a], window_us), str(b), "yes" if b.held else "NO"]
           for a, b in concurrent_bounds.items()),
         [f"{api_algorithm} (HTTP)", len(http_allowed) + http_denied + http_errors,
          len(http_allowed), http_denied, max_in_any_window(http_allowed, window_us),
          str(http_bound), "yes" if http_bound.held else "NO"]])
    result.table("Clients", ["client", "direct decisions", "admitted", "HTTP requests",
                             "HTTP 200", "HTTP 429"],
                 [[r["name"], sum(len(s["allowed"]) + s["denied"] for s in r["direct"].values()),
                   sum(len(s["allowed"]) for s in r["direct"].values()),
                   len(r["http"]["allowed"]) + r["http"]["denied"] + r["http"]["errors"],
                   len(r["http"]["allowed"]), r["http"]["denied"]]
                  for r in sorted(reports, key=lambda r: r["name"])])
    result.table(f"One user over HTTP until a 429 ({api_spec}), in the order decided",
                 ["request", "status", "RateLimit-Limit", "RateLimit-Remaining",
                  "RateLimit-Reset", "Retry-After", "X-Cache"],
                 [["-" if v is None else v for v in r] for r in [*shorten_rows(walk), after_wait]])
    result.table("Limiter keys and their TTLs",
                 ["limiter", "keys seen", "without TTL"],
                 [[part, sampler.seen_of(part), sampler.seen_of(part, sampler.without_ttl)]
                  for part in (*ALGORITHMS, f"api:{api_algorithm}")])

    direct_requests = sum(len(concurrent[a]) + denied[a] for a in ALGORITHMS)
    burst_requests = 2 * limit * len(ALGORITHMS) * burst.attempts
    http_requests = len(http_allowed) + http_denied + http_errors
    result.add_metrics({"limit": limit, "window_s": window_s, "clients": clients,
                        "requests": burst_requests + direct_requests + http_requests
                        + len(walk) + 1})
    for a in ALGORITHMS:
        result.add_metrics({
            f"allowed_{a}": len(burst.admitted(a)) + len(concurrent[a]),
            f"denied_{a}": sum(not d.allowed for d in burst.before[a] + burst.after[a])
            + denied[a],
            f"max_in_any_window_{a}": most[a]})
    result.add_metrics({"keys_without_ttl": len(sampler.without_ttl),
                        "ttl_samples": sampler.samples, "burst_attempts": burst.attempts,
                        "http_requests": http_requests, "http_allowed": len(http_allowed),
                        "http_denied": http_denied})

    first = {a: sum(d.allowed for d in burst.before[a]) for a in ALGORITHMS}
    quota = {a: by_name[a].quota for a in ALGORITHMS}  # the bucket's is its capacity
    result.check("every limiter admits a full quota from a fresh start",
                 all(n == quota[a] for a, n in first.items()),
                 ", ".join(f"{a} {n}/{quota[a]}" for a, n in first.items())
                 + " of the first batch")
    result.check("the fixed window lets more than the limit through across a boundary",
                 burst.placed and burst_most["fixed"] > limit,
                 f"{burst_most['fixed']} admitted within {window_s:g}s against a limit of "
                 f"{limit}" + ("" if burst.placed else
                               f"; no batch landed on its side in {burst.attempts} tries"))
    strict = [(f"{a} ({phase})", bound)
              for phase, bounds in (("burst", burst_bounds), ("concurrent", concurrent_bounds))
              for a, bound in bounds.items() if a in ("sliding_log", "token_bucket")]
    within = {a: max(burst_most[a], max_in_any_window(concurrent[a], window_us))
              for a in ("sliding_log", "token_bucket")}
    result.check("sliding log and token bucket stay within the limit in any window",
                 all(b.held for _, b in strict) and all(n <= limit for n in within.values()),
                 ", ".join(f"{a} at most {n}" for a, n in within.items())
                 + f" in any {window_s:g}s against a limit of {limit}; "
                 + "; ".join(f"{name} {b}" for name, b in strict))
    # A limit never reached proves nothing: each must have refused some requests.
    busy = [a for a in ALGORITHMS if denied[a] == 0] + ([] if http_denied else ["HTTP"])
    concurrent_ok = (len(reports) == clients and all(b.held for b in concurrent_bounds.values())
                     and http_bound.held and not busy and not http_errors)
    result.check("concurrent clients never get more than the limit per window", concurrent_ok,
                 f"{len(reports)}/{clients} clients reported; "
                 + "; ".join(f"{a} {b}" for a, b in concurrent_bounds.items())
                 + f"; HTTP {http_bound}, {http_errors} errors"
                 + (f"; the clients never reached the limit of {', '.join(busy)}: "
                    "try a lower --limit or more --clients" if busy else ""))
    walk_ok, walk_detail = _judge_walk(walk, after_wait, limit, api_limiter.quota)
    result.check("over-limit answers are 429 with Retry-After and RateLimit headers",
                 walk_ok, walk_detail)
    unseen = [a for a in ALGORITHMS if not sampler.seen_of(a)]
    result.check("no limiter key is ever left without an expiry",
                 not sampler.without_ttl and not unseen and sampler.seen_of("api") > 0,
                 f"{len(sampler.without_ttl)} of {len(sampler.seen)} keys without a TTL in "
                 f"{sampler.samples} TTL reads" + (f"; no keys seen of {unseen}" if unseen else ""))

    tb = burst_bounds["token_bucket"]
    result.note(f"Across the boundary the fixed window admitted {burst_most['fixed']} "
                f"requests within {window_s:g}s: each window's count was within {limit}, "
                "but the windows are the clock's, not the client's.")
    bucket = by_name["token_bucket"]
    assert isinstance(bucket, TokenBucketLimiter)  # its capacity and rate, for the note
    result.note(f"The token bucket holds {bucket.capacity} tokens and gets {bucket.rate} back "
                f"every {window_s:g}s: at most {bucket.capacity} + {bucket.rate} = {limit} in "
                f"any window; in the burst, {tb}. A bucket holding the whole limit and "
                f"refilling it every window would let up to {2 * limit} through after a "
                "quiet spell: the capacity sets the burst, the rate the average.")
    if most["sliding_counter"] > limit:
        result.note(f"The sliding-window counter let {most['sliding_counter']} through in one "
                    f"{window_s:g}s window while each estimate stayed within {limit}: it "
                    "assumes the previous window's requests were spread evenly, and they "
                    "came in a burst. Two counters instead of a log, at that price.")
    result.note("Every decision used Redis's clock (TIME inside the script), so admissions "
                "recorded by different processes line up on one time axis.")
    result.note("Try --api-algorithm fixed, or --clients 8; try --window-s 0.2 for many "
                "windows in a short run.")
    if lab.shared:
        result.note(f"On this shared Redis every limiter key starts with {prefix!r} (the "
                    "API's too), and the TTL samples SCAN for that prefix only. Other "
                    "clients' commands may delay a decision, never split one: each is "
                    "one script.")
    return result


def _judge_walk(walk: list[Row], after_wait: Row, limit: int, quota: int
                ) -> tuple[bool, str]:
    allowed, refused = walk[:-1], walk[-1]
    headers_ok = all(r[2] == str(limit) and str(r[3]).isdigit() and str(r[4]).isdigit()
                     for r in walk)
    remaining = [int(r[3]) for r in allowed if str(r[3]).isdigit()]
    counts_down = (len(remaining) == len(allowed) >= quota and remaining[0] == quota - 1
                   and remaining[-1] == 0
                   and all(b >= a - 1 for a, b in itertools.pairwise(remaining)))
    refused_ok = (refused[1] == 429 and refused[3] == "0" and str(refused[5]).isdigit()
                  and int(refused[5]) > 0 and refused[6] is None)
    passed = all(r[1] == 200 and r[6] for r in allowed)
    again = after_wait[1] == 200
    ok = headers_ok and counts_down and refused_ok and passed and again
    return ok, (f"{len(allowed)} admitted, Remaining {remaining[0] if remaining else '-'}→"
                f"{remaining[-1] if remaining else '-'}, then {refused[1]} with Retry-After "
                f"{refused[5]}s; after waiting it: {after_wait[1]}")
