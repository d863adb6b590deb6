"""Eager caching for a product launch: preload the catalogue, then write every update through.

Before the launch, every product's details go into Redis in pipelined batches, with no
TTL: write-through keeps them current, and an expiry in the middle of the launch would
only send readers back to the database. The launch is a burst of concurrent readers
(Zipf over products) while the back office changes prices and stock; each change goes
to the database and then into the cache in one call. The same launch, with the same
reads and changes, is played on a lazy cache-aside cache (delete on update) as the
baseline. Last, Redis is made to refuse writes, to show that a failed cache write is
reported and never served stale.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING, Annotated

from cachelab.caching import CacheAside
from cachelab.caching.eager import WriteThrough, update_while_refusing_writes
from cachelab.exercise import ExerciseInfo, Opt, Result
from cachelab.workload.launch import play_launch
from cachelab.workload.measure import LATENCY_COLUMNS, key_sampler, latency_row

if TYPE_CHECKING:
    from cachelab.lab import Lab

INFO = ExerciseInfo(
    id="exercise-4",
    slug="eager-caching",
    title="Eager caching for a product launch",
    concept="Eager population with write-through",
    scenario=(
        "A product launch is about to send a flood of shoppers to the product pages, and "
        "the back office will keep adjusting prices and stock while it runs. Fill the cache "
        "with the whole catalogue before the doors open, and write every change to the "
        "database and the cache together, so that no shopper waits for the database and "
        "none sees an old price."
    ),
    walkthrough=(
        "Start a redis-server and build two identical shop databases, one per strategy.",
        "Preload every product's details with one catalogue query and pipelined SETs, with "
        "no TTL, and compare each entry with the database.",
        "Launch: concurrent readers released together ask for products (Zipf); every so "
        "often a request first updates the product's price and stock through the cache "
        "(database, then cache) and then reads it back. Every read of an updated product "
        "is compared with the row the database held when its update finished.",
        "Play the same launch on a lazy cache-aside cache that deletes the entry on update, "
        "counting database reads on both sides: the database's counter and the strategy's.",
        "Make Redis refuse writes (maxmemory 1, noeviction), update a product, and follow "
        "the reported failure and the reads after it.",
    ),
    fixtures=("redis", "shop-db"),
    checks=(
        "every product is preloaded and equals the database",
        "the eager launch reads no product from the database and every request hits",
        "the lazy launch reads products from the database",
        "each update is visible on the very next read",
        "no read after an update returns stale data",
        "a refused cache write is reported and never served stale",
    ),
    metrics=(
        "products", "preload_s", "launch_requests", "updates", "launch_hit_ratio_eager",
        "launch_hit_ratio_lazy", "launch_db_reads_eager", "launch_db_reads_lazy",
        "reads_after_update", "stale_reads_after_update", "launch_p50_ms_eager",
        "launch_p99_ms_eager", "launch_p50_ms_lazy", "launch_p99_ms_lazy", "cache_write_failures",
    ),
    headline="launch_db_reads_eager",
    own_servers="makes its Redis refuse writes (CONFIG SET maxmemory 1) to show a failed "
                "eager write",
)

def run(
    lab: Lab,
    *,
    requests: Annotated[int, Opt("Product page reads in the launch burst.", min=100)] = 5000,
    workers: Annotated[int, Opt("Concurrent reader threads.", min=1, max=64)] = 4,
    zipf_s: Annotated[float, Opt("Zipf exponent over products: higher means a hotter launch "
                                 "product.", min=0.1, max=5)] = 1.1,
    updates: Annotated[int, Opt("Price and stock changes spread over the burst (at most a "
                                "quarter of the requests).", min=1, max=1000)] = 25,
    lazy_ttl_s: Annotated[float, Opt("TTL of the lazy baseline's entries, in seconds.",
                                     min=0.1)] = 300.0,
) -> Result:
    result = Result(INFO)
    cache = lab.redis()
    shops = {name: lab.shop(f"shop-{name}") for name in ("eager", "lazy")}
    offices = {name: lab.closing(shop.reopen()) for name, shop in shops.items()}  # counted apart
    products = shops["eager"].size.products

    # One launch for both strategies: the products asked for, and where changes happen.
    next_product = key_sampler(products, "zipf", zipf_s=zipf_s, rng=lab.rng("products"))
    stream = [next_product() for _ in range(requests)]  # drawn before any thread starts
    rng = lab.rng("updates")
    updates = min(updates, requests // 4)  # most requests stay plain reads
    plan = {(k + 1) * requests // (updates + 1): (rng.randint(199, 19999), rng.randint(0, 500))
            for k in range(updates)}

    # Eager: the whole catalogue goes in before the launch.
    storefront, office = shops["eager"], offices["eager"]
    eager = WriteThrough(cache, namespace="product", db_read=storefront.product_details,
                         read_back=office.product_details, db_write=office.update_product)
    started = time.perf_counter()
    catalogue = {row["id"]: row for row in office.catalogue()}
    preloaded = eager.preload(catalogue)
    preload_s = time.perf_counter() - started
    keys = list(cache.scan_iter("product:*", count=1000))
    ids = [int(k.split(":")[1]) for k in keys]
    equal = sum(eager.peek(i) == storefront.product_now(i) for i in ids)
    no_ttl = sum(cache.pttl(k) == -1 for k in keys)

    def write_through(product: int, price: int, stock: int) -> bool:
        return eager.update(product, price_cents=price, stock=stock).cached

    eager_launch = play_launch(cache, storefront, office, stream=stream, plan=plan,
                               fetch=eager.fetch, update=write_through, workers=workers)
    eager_misses = eager.stats.misses

    # Lazy baseline: the same launch on an empty cache-aside cache that deletes on update.
    lazy = CacheAside(cache, namespace="product-lazy", loader=shops["lazy"].product_details,
                      ttl_s=lazy_ttl_s)

    def invalidate(product: int, price: int, stock: int) -> bool:
        offices["lazy"].update_product(product, price_cents=price, stock=stock)
        lazy.invalidate(product)
        return True

    lazy_launch = play_launch(cache, shops["lazy"], offices["lazy"], stream=stream, plan=plan,
                              fetch=lazy.fetch, update=invalidate, workers=workers)

    # A cache write that fails: reported, the old entry removed, the database answers.
    hottest = Counter(stream).most_common(1)[0][0]
    price, stock = rng.randint(199, 19999), rng.randint(0, 500)
    refused = update_while_refusing_writes(cache, eager, hottest, storefront.product_now,
                                           price_cents=price, stock=stock)
    first, (second, third) = refused.while_full, refused.after
    refusal_upheld = (not refused.outcome.cached and bool(refused.outcome.error)
                      and refused.failures >= 1 and refused.outcome.entry_removed
                      and not first.hit and first.value == refused.truth
                      and not second.hit and third.hit
                      and second.value == third.value == refused.truth)
    refusal_steps, failures = refused.steps, refused.failures

    runs = {"eager": eager_launch, "lazy": lazy_launch}
    result.table("Launch", ["strategy", "hits", "db reads", "back-office queries",
                            "stale reads", "burst s"],
                 [[name, f"{r.hits}/{r.requests}", r.db_reads, r.office_queries,
                   f"{r.stale_reads}/{r.reads_after_update}", round(r.seconds, 3)]
                  for name, r in runs.items()])
    result.table("Launch latency", LATENCY_COLUMNS,
                 [latency_row(name, r.latency) for name, r in runs.items()]
                 + [latency_row(f"{name}, first {len(stream) // 10} requests", r.opening)
                    for name, r in runs.items()])
    result.table("Updates during the eager launch (first five)",
                 ["product", "version before", "version after", "next read version",
                  "next read", "equals database"], eager_launch.changes[:5])
    result.table("A refused cache write", ["step", "cache", "entry", "version",
                                           "equals database"], refusal_steps)

    e_ms, l_ms = eager_launch.latency.summary_ms(), lazy_launch.latency.summary_ms()
    result.add_metrics({
        "products": products, "preload_s": preload_s, "launch_requests": requests,
        "updates": eager_launch.updates,
        "launch_hit_ratio_eager": eager_launch.hit_ratio,
        "launch_hit_ratio_lazy": lazy_launch.hit_ratio,
        "launch_db_reads_eager": eager_launch.db_reads,
        "launch_db_reads_lazy": lazy_launch.db_reads,
        "reads_after_update": eager_launch.reads_after_update,
        "stale_reads_after_update": eager_launch.stale_reads,
        "launch_p50_ms_eager": e_ms["p50"], "launch_p99_ms_eager": e_ms["p99"],
        "launch_p50_ms_lazy": l_ms["p50"], "launch_p99_ms_lazy": l_ms["p99"],
        "cache_write_failures": failures,
    })

    e, lz = eager_launch, lazy_launch
    result.check("every product is preloaded and equals the database",
                 preloaded == len(keys) == products and equal == products and no_ttl == products,
                 f"{preloaded} written, {len(keys)} keys for {products} products, {equal} equal "
                 f"the database, {no_ttl} without TTL, in {preload_s:.3f}s")
    result.check("the eager launch reads no product from the database and every request hits",
                 e.db_reads == 0 and eager_misses == 0 and e.hits == e.requests
                 and (e.redis["keyspace_hits"], e.redis["keyspace_misses"]) == (e.requests, 0),
                 f"{e.db_reads} database reads, {e.hits}/{e.requests} hits; Redis counted "
                 f"{e.redis['keyspace_hits']} hits, {e.redis['keyspace_misses']} misses")
    result.check("the lazy launch reads products from the database",
                 lz.db_reads > 0 and lz.db_reads == lazy.stats.misses
                 and lz.redis["keyspace_misses"] == lazy.stats.misses,
                 f"{lz.db_reads} database reads, {lazy.stats.misses} cache misses, Redis counted "
                 f"{lz.redis['keyspace_misses']} misses; hit ratio {lz.hit_ratio:.1%}")
    result.check("each update is visible on the very next read",
                 e.updates == len(plan) and e.cache_updated == e.updates
                 and e.next_reads_fresh == e.updates,
                 f"{e.next_reads_fresh}/{e.updates} reads right after an update equal the "
                 f"database; {e.cache_updated} cache writes succeeded")
    result.check("no read after an update returns stale data",
                 e.reads_after_update > e.updates and e.stale_reads == 0,
                 f"{e.stale_reads} of {e.reads_after_update} reads of updated products "
                 f"({e.reads_after_update - e.updates} by other readers) older than their last "
                 "finished update")
    result.check("a refused cache write is reported and never served stale", refusal_upheld,
                 f"update: {refusal_steps[0][1]}, entry {refusal_steps[0][2]}; {failures} "
                 "failed cache writes reported; reads after it: "
                 + ", ".join(str(step[1]) for step in refusal_steps[1:])
                 + f"; {sum(step[4] is True for step in refusal_steps)}/{len(refusal_steps)} "
                 "equal the database")

    result.note(f"Preloading {products} products took {preload_s * 1000:.0f} ms (one query, "
                f"pipelined SETs); the lazy launch paid {lz.db_reads} database round trips "
                f"instead ({storefront.describe_latency()}).")
    result.note("Eager entries carry no TTL: write-through keeps them current, and an expiry "
                "during the launch would turn misses back into database reads. The price is "
                "memory for the whole catalogue, which is why the last step fills Redis.")
    result.note("Latencies are measured from the reader threads and include waiting for "
                "the GIL: with more --workers than cores they grow for both strategies.")
    result.note(f"The lazy baseline had {lz.stale_reads} stale reads of "
                f"{lz.reads_after_update}: it can serve one only when a reader's load straddles "
                "an update and its SET lands after the delete, a narrow window. Try --workers "
                "32 --updates 200, or --zipf-s 0.6 for a flatter launch that lazy caching "
                "warms more slowly.")
    return result
