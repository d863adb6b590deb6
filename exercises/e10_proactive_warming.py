"""Proactive warming before a celebrity's surge, and a bake-off of stampede guards.

The most followed account posts, and the app announces the post on a Redis Stream. A
watcher thread follows the stream and, on the celebrity's post, loads the account page
(profile and latest posts) from the database and stores it in Redis before the
followers arrive. The same surge of concurrent readers is played against a cold cache
with no protection, against the warmed cache, and against a cold cache guarded by a
``SET NX PX`` lock. Then one entry expires again and again under steady traffic: with
no protection, with XFetch (probabilistic early recomputation) as published, and with
XFetch plus a lock. A load is one call of the page loader, which makes two database
queries.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Any

from cachelab.caching import CacheAside
from cachelab.caching.warming import LockedCache, StreamWatcher, Warmer, XFetchCache
from cachelab.exercise import ExerciseInfo, Opt, Result
from cachelab.workload.surge import CountingLoader, TrafficRow, play_steady, play_surge
from cachelab.workload.threads import run_concurrently

if TYPE_CHECKING:
    from cachelab.lab import Lab

INFO = ExerciseInfo(
    id="exercise-10",
    slug="proactive-warming",
    title="Proactive warming before a celebrity's surge",
    concept="Proactive caching and stampede prevention",
    scenario=(
        "A celebrity is about to post, and their followers will rush to the account page "
        "within moments. If the page is not cached when they arrive, every one of them "
        "misses at once and asks the database (a stampede). Watch the account's posts and "
        "put the page into Redis the moment a post appears, before the rush; then compare "
        "that with guarding the miss by a lock, and with refreshing an expiring entry early."
    ),
    walkthrough=(
        "Start a redis-server, build the shop database and pick its celebrity, the most "
        "followed account.",
        "Cold: the celebrity posts (a row in the database, then XADD to the posts stream) "
        "and a burst of concurrent readers asks for the page through plain cache-aside.",
        "Warmed: a watcher thread blocks on XREAD; on the post it loads the page and SETs "
        "it. The readers do not wait for it: they arrive a fixed delay after the post, and "
        "timestamps show whether the watcher's write came before the first read.",
        "Lock: the same cold surge, but on a miss only the reader holding SET NX PX loads; "
        "the others poll for the value and take over if the lock expires.",
        "Steady traffic: a paced stream of reads crosses several expiries of a short-lived "
        "entry, with no protection, with XFetch as published, and with XFetch plus a lock; "
        "loads are counted per expiry.",
        "Compare every read with the database and every load count with the database's "
        "query count, and put the strategies side by side.",
    ),
    fixtures=("redis", "shop-db"),
    checks=(
        "the warm write precedes the first surge read",
        "the warmed surge makes zero database loads",
        "without protection the surge stampedes the database",
        "the lock holds the surge to at most two loads",
        "XFetch with a lock holds each expiry to at most two loads",
        "every read returned the current account page",
        "load counts match the database's query count",
    ),
    metrics=(
        "surge_readers", "surge_requests", "warm_ms", "warm_lead_ms", "db_loads_cold",
        "db_loads_warmed", "db_loads_warmer", "db_loads_lock", "p50_ms_cold", "p99_ms_cold",
        "p50_ms_warmed", "p99_ms_warmed", "p50_ms_lock", "p99_ms_lock", "steady_requests",
        "expiries_xfetch", "db_loads_unprotected", "db_loads_xfetch_published", "db_loads_xfetch",
        "max_loads_per_expiry_unprotected", "max_loads_per_expiry_xfetch_published",
        "max_loads_per_expiry_xfetch", "p99_ms_unprotected", "p99_ms_xfetch", "xfetch_lead_ms",
    ),
    headline="warm_lead_ms",
)

STREAM = "posts"  # named by the server, like every key: server.keys(STREAM)
QUERIES_PER_LOAD = 2  # ShopDatabase.account_page: the account, then its latest posts


def run(
    lab: Lab,
    *,
    surge_readers: Annotated[int, Opt("Concurrent readers in the surge after the post.",
                                      min=2, max=256)] = 32,
    surge_requests: Annotated[int, Opt("Page reads in each surge, shared by the readers.",
                                       min=2, max=1_000_000)] = 1000,
    surge_delay_ms: Annotated[float, Opt("From the post to the first follower's read, in ms: "
                                         "the watcher's head start.", min=0,
                                         max=60_000)] = 100.0,
    page_ttl_s: Annotated[float, Opt("TTL of the page during the surge, in seconds.", min=10,
                                     max=86_400)] = 300.0,
    lock_ttl_ms: Annotated[int, Opt("PX of the loader's lock: how long a crashed holder "
                                    "blocks the others.", min=1, max=60_000)] = 250,
    steady_rate: Annotated[int, Opt("Reads per second of the steady traffic.", min=50,
                                    max=20_000)] = 2000,
    steady_s: Annotated[float, Opt("Length of each steady-traffic run, in seconds.", min=0.1,
                                   max=600)] = 1.2,
    steady_readers: Annotated[int, Opt("Reader threads of the steady traffic.", min=1,
                                       max=128)] = 8,
    expiry_ttl_s: Annotated[float, Opt("TTL of the entry under steady traffic, in seconds.",
                                       min=0.05, max=300)] = 0.5,
    beta: Annotated[float, Opt("XFetch's beta: higher refreshes earlier (the paper's "
                               "default is 1; 0 never refreshes early).", min=0,
                               max=50)] = 2.0,
) -> Result:
    result = Result(INFO)
    server = lab.redis_server()
    client = lab.closing(server.client())
    stream = server.keys(STREAM)
    db = lab.shop()
    celebrity = int(db.celebrity()["id"])
    surge_options: dict[str, Any] = {
        "readers": surge_readers, "requests": surge_requests, "delay_ms": surge_delay_ms,
        "stream": stream}

    # Warm-up, not measured: one connection a reader thread, so that the first surge
    # does not pay for connecting while the later ones reuse the pool.
    run_concurrently(lambda _: client.ping(), workers=max(surge_readers, steady_readers),
                     requests=4 * max(surge_readers, steady_readers))

    # 1. Cold: nobody warms the page, every reader that misses loads it.
    cold_loader = CountingLoader(db.account_page)
    cold = TrafficRow("surge: cold")
    cold_cache = CacheAside(client, namespace=server.keys("page-cold"), loader=cold_loader,
                            ttl_s=page_ttl_s)
    surges = [play_surge(client, db, celebrity, cold_cache.fetch, cold,
                         loads=lambda: cold_loader.calls, title="cold open", **surge_options)]

    # 2. Warmed: the watcher sees the post on the stream and stores the page.
    reader_loader = CountingLoader(db.account_page)
    warm_loader = CountingLoader(db.account_page)  # the watcher's
    warmed = TrafficRow("surge: warmed")
    warmed_cache = CacheAside(client, namespace=server.keys("page-warmed"), loader=reader_loader,
                              ttl_s=page_ttl_s)
    warmer = Warmer(client, namespace=server.keys("page-warmed"), loader=warm_loader,
                    ttl_s=page_ttl_s, accounts={celebrity})
    watcher = lab.enter_context(StreamWatcher(client, stream, warmer.on_entry, block_ms=100))
    warm_surge = play_surge(client, db, celebrity, warmed_cache.fetch, warmed,
                            loads=lambda: reader_loader.calls, title="warm welcome",
                            settle=watcher.stop, **surge_options)  # joined before the counts
    surges.append(warm_surge)
    warm = next((r for r in warmer.records if r.entry_id == warm_surge.entry_id), None)

    # 3. Lock: a cold cache again, but only the lock's holder loads.
    lock_loader = CountingLoader(db.account_page)
    locked = TrafficRow("surge: lock")
    lock_cache = LockedCache(client, namespace=server.keys("page-lock"), loader=lock_loader,
                             ttl_s=page_ttl_s, lock_ttl_ms=lock_ttl_ms)
    surges.append(play_surge(client, db, celebrity, lock_cache.fetch, locked,
                             loads=lambda: lock_loader.calls, title="locked in",
                             **surge_options))

    # 4. Steady traffic across expiries of a short-lived entry.
    expected = db.account_page(celebrity)  # the truth, read before the counts start

    def steady(strategy: str, namespace: str, *, beta: float,
               lock: bool) -> tuple[TrafficRow, XFetchCache[int]]:
        """Steady traffic through XFetch on its own keys, its draws seeded by
        ``namespace`` alone, so that a seed repeats them whatever the server's prefix."""
        loader = CountingLoader(db.account_page)
        cache = XFetchCache(client, namespace=server.keys(namespace), loader=loader,
                            ttl_s=expiry_ttl_s, beta=beta, lock=lock, lock_ttl_ms=lock_ttl_ms,
                            rng=lab.rng(namespace))
        row = TrafficRow(strategy)
        play_steady(cache, loader, db, celebrity, expected, row, rate=steady_rate,
                    duration_s=steady_s, readers=steady_readers)
        return row, cache

    unprotected, _ = steady("steady: no guard", "steady-none", beta=0, lock=False)
    published, _ = steady("steady: XFetch", "steady-xfetch", beta=beta, lock=False)
    xfetch, xfetch_cache = steady("steady: XFetch+lock", "steady-xfetch-lock", beta=beta,
                                  lock=True)
    rows = [cold, warmed, locked, unprotected, published, xfetch]

    # What the measurements say.
    warm_ms = (warm.written_ns - warm_surge.post_ns) / 1e6 if warm else -1.0
    warm_lead_ms = (warm_surge.first_read_ns - warm.written_ns) / 1e6 if warm else -1.0
    leads = sorted(xfetch_cache.refresh_leads_ms)
    xfetch_lead_ms = leads[len(leads) // 2] if leads else 0.0  # the median (upper)
    expiries = len(xfetch.per_expiry)

    result.table("Bake-off", ["strategy", "reads", "misses", "loads", "max/expiry", "p50 ms",
                              "p99 ms", "max ms"],
                 [[r.strategy, r.latency.count, r.misses, r.loads, r.max_per_expiry,
                   r.ms["p50"], r.ms["p99"], r.ms["max"]] for r in rows])
    if warm:
        result.table("Warming timeline", ["event", "ms after the post"], [
            ["post announced (XADD)", 0.0],
            ["watcher read it (XREAD)", (warm.seen_ns - warm_surge.post_ns) / 1e6],
            ["page loaded from the database", (warm.loaded_ns - warm_surge.post_ns) / 1e6],
            ["page stored (SET acknowledged)", warm_ms],
            ["first surge read (GET sent)",
             (warm_surge.first_read_ns - warm_surge.post_ns) / 1e6],
        ])
    steady_rows = [unprotected, published, xfetch]
    generations = sorted({g for r in steady_rows for g in r.per_expiry})
    result.table("Loads per expiry under steady traffic",
                 ["expiry", *[r.strategy.removeprefix("steady: ") for r in steady_rows]],
                 [[g, *[r.per_expiry.get(g, 0) for r in steady_rows]] for g in generations])

    result.add_metrics({
        "surge_readers": surge_readers, "surge_requests": surge_requests,
        "warm_ms": warm_ms, "warm_lead_ms": warm_lead_ms,
        "db_loads_cold": cold.loads, "db_loads_warmed": warmed.loads,
        "db_loads_warmer": warm_loader.calls, "db_loads_lock": locked.loads,
        "p50_ms_cold": cold.ms["p50"], "p99_ms_cold": cold.ms["p99"],
        "p50_ms_warmed": warmed.ms["p50"], "p99_ms_warmed": warmed.ms["p99"],
        "p50_ms_lock": locked.ms["p50"], "p99_ms_lock": locked.ms["p99"],
        "steady_requests": xfetch.latency.count, "expiries_xfetch": expiries,
        "db_loads_unprotected": unprotected.loads,
        "db_loads_xfetch_published": published.loads, "db_loads_xfetch": xfetch.loads,
        "max_loads_per_expiry_unprotected": unprotected.max_per_expiry,
        "max_loads_per_expiry_xfetch_published": published.max_per_expiry,
        "max_loads_per_expiry_xfetch": xfetch.max_per_expiry,
        "p99_ms_unprotected": unprotected.ms["p99"], "p99_ms_xfetch": xfetch.ms["p99"],
        "xfetch_lead_ms": xfetch_lead_ms,
    })

    if warm:
        timing = (f"page stored {warm_ms:.1f} ms after the post, "
                  + (f"{warm_lead_ms:.1f} ms before the first surge read" if warm_lead_ms > 0
                     else f"{-warm_lead_ms:.1f} ms after the first surge read"))
    else:
        timing = f"the watcher stored nothing for entry {warm_surge.entry_id}"
    result.check("the warm write precedes the first surge read",
                 warm is not None and warm.written_ns < warm_surge.first_read_ns, timing)
    result.check("the warmed surge makes zero database loads",
                 warmed.loads == 0 and warmed.misses == 0 and warm_loader.calls == 1,
                 f"{warmed.loads} loads and {warmed.misses} misses in "
                 f"{warmed.latency.count} reads; the watcher loaded {warm_loader.calls} time"
                 f"{'s' * (warm_loader.calls != 1)}")
    result.check("without protection the surge stampedes the database", cold.loads > 1,
                 f"{cold.loads} loads of one page by {surge_readers} concurrent readers")
    result.check("the lock holds the surge to at most two loads", 1 <= locked.loads <= 2,
                 f"{locked.loads} load{'s' * (locked.loads != 1)}; "
                 f"{lock_cache.stats.waits} readers waited for it, "
                 f"{lock_cache.stats.takeovers} took over an expired lock, "
                 f"{lock_cache.stats.fallbacks} gave up waiting")
    result.check("XFetch with a lock holds each expiry to at most two loads",
                 expiries >= 1 and xfetch.max_per_expiry <= 2
                 and xfetch_cache.stats.early_refreshes >= 1,
                 f"{expiries} expir{'ies' if expiries != 1 else 'y'} in {steady_s:g}s of "
                 f"traffic (TTL {expiry_ttl_s:g}s): loads "
                 f"{', '.join(map(str, xfetch.per_expiry.values())) or 'none'}; "
                 f"{xfetch_cache.stats.early_refreshes} early refreshes, median "
                 f"{xfetch_lead_ms:.1f} ms before expiry; {xfetch.misses} misses "
                 f"(as published: at most {published.max_per_expiry}, "
                 f"no protection: at most {unprotected.max_per_expiry})")
    reads = sum(r.latency.count for r in rows)
    wrong = sum(r.wrong for r in rows)
    on_top = sum(s.post_on_top for s in surges)
    result.check("every read returned the current account page",
                 reads > 0 and wrong == 0 and on_top == len(surges),
                 f"{reads - wrong}/{reads} reads equal the page in the database; it showed "
                 f"the new post first after {on_top}/{len(surges)} posts")
    watcher_loads = {warmed.strategy: warm_loader.calls}
    mismatched = [r.strategy for r in rows if r.db_queries
                  != QUERIES_PER_LOAD * (r.loads + watcher_loads.get(r.strategy, 0))]
    result.check("load counts match the database's query count", not mismatched,
                 f"{QUERIES_PER_LOAD} queries per load in every row" if not mismatched
                 else f"query count differs from {QUERIES_PER_LOAD} per load for "
                 + ", ".join(mismatched))

    result.note(f"A load is one call of the page loader: {QUERIES_PER_LOAD} queries, each "
                f"with {db.describe_latency()}. In the surge the empty cache at the post is "
                "the one expiry.")
    result.note(f"The watcher needed {warm_ms:.1f} ms from the post to a stored page; the "
                f"readers came {surge_delay_ms:g} ms after the post. Warming needs that head "
                "start: try --surge-delay-ms 0 --db-latency-ms 20, and the readers win.")
    result.note("The surge's p50 is mostly readers queueing for one Python interpreter "
                f"({surge_readers} threads); its p99 and loads show the stampede.")
    if beta > 0:
        result.note("XFetch as published lets every reader that draws an early refresh load: "
                    "readers that draw one while a refresh is in flight load again (about "
                    f"e^(1/beta) - 1 = {math.exp(1 / beta) - 1:.2f} extra per expiry under "
                    "heavy traffic, more when a load runs slower than the last), and a "
                    "refresh that starts too late lets the misses stampede. The lock leaves "
                    "one load per expiry. Try --beta 1, the paper's default.")
    if lab.shared:
        result.note("On this existing deployment every key and the stream are under "
                    f"{server.keys.prefix}. Loads, misses and the warming timeline are this "
                    "run's own counts and clocks; latencies include the network and the "
                    "deployment's other clients, so they differ from a local run.")
    return result

