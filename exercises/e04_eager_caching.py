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

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

from cachelab.caching import CacheAside
from cachelab.caching.eager import WriteThrough
from cachelab.exercise import ExerciseInfo, Opt, Result
from cachelab.shop.database import ShopDatabase
from cachelab.workload.measure import (
    LATENCY_COLUMNS,
    LatencyHistogram,
    key_sampler,
    latency_row,
    ratio,
)
from cachelab.workload.redis_info import counter_delta, keyspace_counters
from cachelab.workload.threads import run_concurrently

if TYPE_CHECKING:
    import redis

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

# The catalogue in one query, with the columns of ShopDatabase.PRODUCT_SQL.
CATALOGUE_SQL = """
    SELECT p.id, p.name, c.name AS category, p.price_cents, p.description, p.stock,
           p.version
    FROM products p JOIN categories c ON c.id = p.category_id ORDER BY p.id"""

Fetch = Callable[[int], "tuple[Any, bool]"]
Update = Callable[[int, int, int], bool]  # (product, price_cents, stock) -> cache updated


@dataclass
class Launch:
    """What one play of the launch measured."""

    requests: int = 0
    hits: int = 0
    db_reads: int = 0  # product reads the storefront's database connection counted
    office_queries: int = 0  # the back office's writes (and write-through's read-backs)
    updates: int = 0
    cache_updated: int = 0  # updates whose cache write (or delete) succeeded
    next_reads_fresh: int = 0  # reads right after an update that equal the database
    reads_after_update: int = 0
    stale_reads: int = 0
    seconds: float = 0.0
    redis: dict[str, int] = field(default_factory=dict)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    opening: LatencyHistogram = field(default_factory=LatencyHistogram)  # the first tenth
    changes: list[list[object]] = field(default_factory=list)

    @property
    def hit_ratio(self) -> float:
        return ratio(self.hits, self.requests)


def is_stale(value: dict[str, Any] | None, acknowledged: dict[str, Any]) -> bool:
    """Older than (or different from) the row an already finished update left behind."""
    if value is None or value["version"] < acknowledged["version"]:
        return True
    return value["version"] == acknowledged["version"] and value != acknowledged


def launch(cache: redis.Redis, storefront: ShopDatabase, office: ShopDatabase, *,
           stream: list[int],
           plan: dict[int, tuple[int, int]], fetch: Fetch, update: Update,
           workers: int) -> Launch:
    """Play the burst: ``stream[i]`` is request i's product; ``plan[i]`` updates it first."""
    n = len(stream)
    durations, hits, checked, stale = [0] * n, [False] * n, [False] * n, [False] * n
    acknowledged: dict[int, dict[str, Any]] = {}  # product -> row its last finished update left
    out = Launch(requests=n)
    back_office = threading.Lock()  # one writer at a time, as write-through assumes

    def read(i: int, product: int) -> Any:
        floor = acknowledged.get(product)  # taken before the read starts
        t0 = time.perf_counter_ns()
        value, hits[i] = fetch(product)
        durations[i] = time.perf_counter_ns() - t0
        if floor is not None:
            checked[i], stale[i] = True, is_stale(value, floor)
        return value

    def request(i: int) -> None:
        product = stream[i]
        if i not in plan:
            read(i, product)
            return
        with back_office:
            before = storefront.product_now(product)
            cached = update(product, *plan[i])
            truth = storefront.product_now(product)
            if truth is None:  # the plan only changes products that exist
                raise LookupError(f"product {product} vanished from the shop database")
            acknowledged[product] = truth
            value = read(i, product)  # the very next read, by the one who wrote
            out.updates += 1
            out.cache_updated += cached
            out.next_reads_fresh += value == truth
            out.changes.append([product, before["version"] if before else None,
                                truth["version"], value["version"] if value else None,
                                "hit" if hits[i] else "miss", value == truth])

    redis_before, reads_before = keyspace_counters(cache), storefront.queries
    office_before = office.queries
    out.seconds = run_concurrently(request, workers=workers, requests=n)
    out.redis = counter_delta(redis_before, keyspace_counters(cache))
    out.db_reads = storefront.queries - reads_before
    out.office_queries = office.queries - office_before
    out.hits = sum(hits)
    out.reads_after_update, out.stale_reads = sum(checked), sum(stale)
    for i, ns in enumerate(durations):
        out.latency.record_ns(ns)
        if i < n // 10:  # while a lazy cache is still cold
            out.opening.record_ns(ns)
    return out


def back_office_of(lab: Lab, storefront: ShopDatabase) -> ShopDatabase:
    """A second connection to the same file: the back office's writes are counted apart."""
    office = ShopDatabase(storefront.path, latency_ms=storefront.latency_ms,
                          size=storefront.size)
    lab.callback(office.close)
    return office


def refused_write(cache: redis.Redis, products: WriteThrough[int], storefront: ShopDatabase,
                  product: int, change: tuple[int, int]) -> tuple[bool, list[list[object]], int]:
    """Update ``product`` while Redis refuses writes; ``(upheld, steps, failures reported)``."""
    failures_before = products.stats.cache_write_failures
    config = cache.config_get("maxmemory*")
    key = products.key(product)
    steps: list[list[object]] = []
    # noeviction and a 1-byte limit: every write command is refused with OOM, reads and
    # DEL still work. This is also what a full eager cache without TTLs runs into.
    cache.config_set("maxmemory-policy", "noeviction")
    cache.config_set("maxmemory", 1)
    try:
        outcome = products.update(product, price_cents=change[0], stock=change[1])
        truth = storefront.product_now(product)
        steps.append(["update while Redis refuses writes",
                      f"refused: {(outcome.error or '').split(':')[0]}" if not outcome.cached
                      else "written",
                      "deleted" if not cache.exists(key) else "still there",
                      outcome.value["version"] if outcome.value else None, outcome.value == truth])
        first, first_hit = products.fetch(product)
        steps.append(["next read, Redis still full", "hit" if first_hit else "miss",
                      "refilled" if cache.exists(key) else "absent",
                      first["version"] if first else None, first == truth])
    finally:
        cache.config_set("maxmemory", str(config["maxmemory"]))
        cache.config_set("maxmemory-policy", str(config["maxmemory-policy"]))
    second, second_hit = products.fetch(product)
    third, third_hit = products.fetch(product)
    for label, value, hit in (("read after memory is back", second, second_hit),
                              ("and the read after it", third, third_hit)):
        steps.append([label, "hit" if hit else "miss",
                      "present" if cache.exists(key) else "absent",
                      value["version"] if value else None, value == truth])
    failures = products.stats.cache_write_failures - failures_before
    upheld = (not outcome.cached and bool(outcome.error) and failures >= 1
              and outcome.entry_removed and not first_hit and first == truth
              and not second_hit and third_hit and second == third == truth)
    return upheld, steps, failures


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
    offices = {name: back_office_of(lab, shop) for name, shop in shops.items()}
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
    catalogue = {row["id"]: row for row in office.query(CATALOGUE_SQL)}
    preloaded = eager.preload(catalogue)
    preload_s = time.perf_counter() - started
    keys = list(cache.scan_iter("product:*", count=1000))
    ids = [int(k.split(":")[1]) for k in keys]
    equal = sum(eager.peek(i) == storefront.product_now(i) for i in ids)
    no_ttl = sum(cache.pttl(k) == -1 for k in keys)

    def write_through(product: int, price: int, stock: int) -> bool:
        return eager.update(product, price_cents=price, stock=stock).cached

    eager_launch = launch(cache, storefront, office, stream=stream, plan=plan,
                          fetch=eager.fetch, update=write_through, workers=workers)
    eager_misses = eager.stats.misses

    # Lazy baseline: the same launch on an empty cache-aside cache that deletes on update.
    lazy = CacheAside(cache, namespace="product-lazy", loader=shops["lazy"].product_details,
                      ttl_s=lazy_ttl_s)

    def invalidate(product: int, price: int, stock: int) -> bool:
        offices["lazy"].update_product(product, price_cents=price, stock=stock)
        lazy.invalidate(product)
        return True

    lazy_launch = launch(cache, shops["lazy"], offices["lazy"], stream=stream, plan=plan,
                         fetch=lazy.fetch, update=invalidate, workers=workers)

    # A cache write that fails: reported, the old entry removed, the database answers.
    hottest = Counter(stream).most_common(1)[0][0]
    refusal_upheld, refusal_steps, failures = refused_write(
        cache, eager, storefront, hottest, (rng.randint(199, 19999), rng.randint(0, 500)))

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
