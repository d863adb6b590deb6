"""Warm-up after a restart: pre-load the most read profiles before traffic returns.

A redis-server without persistence comes back from a restart empty, and every first
read of a popular profile goes to the database. While the cache ran, each read was
counted in a sorted set on a separate stats Redis, which the restart does not touch.
After a real restart (a new process, on a new port) the top K profiles are loaded
before the workload resumes. The same post-restart stream is played on a cold cache,
a warmed one, and one restored from an RDB snapshot, window by window.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Annotated

from cachelab.caching.cache_aside import CacheAside
from cachelab.caching.warmup import AccessRecorder, TopKWarmer, lfu_top, topk_overlap
from cachelab.exercise import ExerciseInfo, Opt, Result
from cachelab.workload.measure import key_sampler, ratio
from cachelab.workload.redis_info import key_values
from cachelab.workload.restart import Restarter, WindowedStart

if TYPE_CHECKING:
    from cachelab.lab import Lab

INFO = ExerciseInfo(
    id="exercise-15",
    slug="warm-up-after-restart",
    title="Warming the cache after a restart",
    concept="Cache warming",
    scenario=(
        "The cache server is restarted for an upgrade and, having no persistence, comes "
        "back empty just as traffic returns. Count which profiles are read most while "
        "the cache runs, keep the counts where the restart cannot reach them, and load "
        "the top K into the new cache at start-up; then watch the hit ratio of the first "
        "requests against a cold start and against a restart from an RDB snapshot."
    ),
    walkthrough=(
        "Start a cache Redis (LFU policy, no persistence), a separate stats Redis, and "
        "the shop database.",
        "Serve a seeded Zipf stream of profile reads through cache-aside, counting each "
        "read with ZINCRBY in the stats Redis (batched), and read LFU's OBJECT FREQ of "
        "every key for comparison.",
        "Take an RDB snapshot (SAVE) and move dump.rdb aside, so that the plain restarts "
        "find none.",
        "Restart the cache process for real (stop it, start a new one on a new port) and "
        "play the post-restart stream cold, counting hits and database reads per window.",
        "Restart it again, load the recorded top K profiles in a few bulk queries, and "
        "play the same stream warm.",
        "Restart it once more with the snapshot back in place as dump.rdb, compare what "
        "it loaded with what was saved, and play the stream a third time.",
    ),
    fixtures=("redis", "redis-stats", "shop-db"),
    checks=(
        "the recorded top K overlaps the true top K by at least 90%",
        "the cache is empty after the plain restart",
        "the warmed start's first-window hit ratio beats the cold start's",
        "the RDB restart keeps the keys",
    ),
    metrics=(
        "top_k", "topk_overlap", "lfu_topk_overlap", "warmed_keys", "warmup_s", "warmup_db_reads",
        "cold_hit_ratio_first_window", "warm_hit_ratio_first_window", "rdb_hit_ratio_first_window",
        "cold_hit_ratio", "warm_hit_ratio", "rdb_hit_ratio", "db_reads_cold", "db_reads_warm",
        "db_reads_rdb", "snapshot_keys", "rdb_keys_restored", "plain_restart_s", "rdb_restart_s",
    ),
    headline="warm_hit_ratio_first_window",
    own_servers="restarts its Redis server",
)

MIN_OVERLAP = 0.9


def run(
    lab: Lab,
    *,
    requests: Annotated[int, Opt("Profile reads recorded before the restart.", min=100)] = 3000,
    after_requests: Annotated[int, Opt("Profile reads played after each restart.",
                                       min=10)] = 2000,
    window: Annotated[int, Opt("Requests per window of the hit-ratio series.", min=10)] = 200,
    top_k: Annotated[int, Opt("Profiles loaded by the warm-up.", min=1)] = 100,
    zipf_s: Annotated[float, Opt("Zipf exponent: higher means hotter hot profiles.",
                                 min=0.5, max=5)] = 1.1,
    ttl_s: Annotated[float, Opt("TTL of a cached profile, in seconds.", min=60)] = 3600.0,
    flush_every: Annotated[int, Opt("Reads counted in memory per ZINCRBY round trip.",
                                    min=1, max=10000)] = 100,
) -> Result:
    result = Result(INFO)
    stats = lab.redis("stats")
    # LFU policy only so that OBJECT FREQ answers; with no maxmemory nothing is evicted.
    server = lab.own_redis_server("cache", maxmemory_policy="allkeys-lfu", dbfilename="dump.rdb")
    cache = lab.closing(Restarter(server))
    db = lab.shop()
    top_k = min(top_k, db.size.users)

    # One popularity for the whole run: the restart does not change who is read most.
    next_user = key_sampler(db.size.users, "zipf", zipf_s=zipf_s, rng=lab.rng("users"))
    before = [next_user() for _ in range(requests)]
    after = [next_user() for _ in range(after_requests)]
    true_counts = Counter(before)

    def cache_aside() -> CacheAside[int]:
        return CacheAside(cache.client, namespace="user", loader=db.user_profile, ttl_s=ttl_s,
                          jitter=0.1, rng=lab.rng("ttl"))

    def play(start: WindowedStart, profiles: CacheAside[int]) -> WindowedStart:
        windows = lab.track(range(0, len(after), window), f"after restart ({start.name})",
                            -(-len(after) // window))
        start.play(profiles.fetch, after, windows, window, db_queries=lambda: db.queries)
        return start

    # Phase 1: the cache at work, every read counted in the stats Redis.
    recorder = AccessRecorder(stats, key="access:user", flush_every=flush_every)
    profiles = cache_aside()
    for user_id in lab.track(before, "recorded reads", requests):
        recorder.record(user_id)
        profiles.fetch(user_id)
    recorder.flush()
    lfu = [int(key.split(":")[1]) for key, _freq in lfu_top(cache.client, "user:*", top_k)]

    # The snapshot for the RDB start, moved aside so the plain restarts load nothing.
    saved = key_values(cache.client, "user:*")
    cache.set_snapshot_aside()

    # Cold: a new, empty process.
    plain = [cache.restart()]
    cold = play(WindowedStart("cold", plain[0]), cache_aside())

    # Warm: a new, empty process, loaded with the recorded top K before the stream.
    plain.append(cache.restart())
    profiles = cache_aside()
    warmer = TopKWarmer(recorder, parse=int, load_many=db.user_profiles,
                        rng=lab.rng("warm-ttl"))
    q0 = db.queries
    report = warmer.warm(profiles, top_k)
    warmup_db_reads = db.queries - q0
    warmed_keys = cache.client.dbsize()
    warm = play(WindowedStart("warm", plain[1]), profiles)

    # RDB: a new process that loads the snapshot taken before the first restart.
    from_rdb = cache.restart(with_snapshot=True)
    restored = key_values(cache.client, "user:*")
    kept = sum(restored.get(key) == value for key, value in saved.items())
    rdb = play(WindowedStart("rdb", from_rdb), cache_aside())

    overlap = topk_overlap(report.items, true_counts, top_k)
    lfu_overlap = topk_overlap(lfu, true_counts, top_k)
    starts = (cold, warm, rdb)

    result.table(f"Hit ratio after the restart, per window of {window} requests",
                 ["requests", "cold", "warm", "rdb", "db reads cold", "db reads warm",
                  "db reads rdb"],
                 [[f"{i * window + 1}-{i * window + cold.requests[i]}",
                   *(s.window_ratio(i) for s in starts), *(s.db_reads[i] for s in starts)]
                  for i in range(len(cold.requests))])
    result.chart("Hit ratio after the restart, by window", "from request",
                 [i * window + 1 for i in range(len(cold.requests))],
                 {s.name: [s.window_ratio(i) for i in range(len(cold.requests))]
                  for s in starts})
    result.table("Restarts", ["start", "restart s", "keys at start", "start-up db reads",
                              "db reads after", "hit ratio after"],
                 [[cold.name, cold.restart.seconds, cold.restart.keys, 0, sum(cold.db_reads),
                   cold.hit_ratio],
                  [warm.name, warm.restart.seconds, warmed_keys, warmup_db_reads,
                   sum(warm.db_reads), warm.hit_ratio],
                  [rdb.name, rdb.restart.seconds, rdb.restart.keys, 0, sum(rdb.db_reads),
                   rdb.hit_ratio]])
    result.table("Recorded top K (first ten)", ["rank", "user", "recorded reads",
                                                 "reads in the trace"],
                 [[rank, user_id, recorder.count(user_id), true_counts[user_id]]
                  for rank, user_id in enumerate(report.items[:10], 1)])

    result.add_metrics({
        "top_k": top_k, "topk_overlap": overlap, "lfu_topk_overlap": lfu_overlap,
        "warmed_keys": warmed_keys, "warmup_s": report.seconds,
        "warmup_db_reads": warmup_db_reads,
        "cold_hit_ratio_first_window": cold.window_ratio(0),
        "warm_hit_ratio_first_window": warm.window_ratio(0),
        "rdb_hit_ratio_first_window": rdb.window_ratio(0),
        "cold_hit_ratio": cold.hit_ratio, "warm_hit_ratio": warm.hit_ratio,
        "rdb_hit_ratio": rdb.hit_ratio, "db_reads_cold": sum(cold.db_reads),
        "db_reads_warm": sum(warm.db_reads), "db_reads_rdb": sum(rdb.db_reads),
        "snapshot_keys": len(saved), "rdb_keys_restored": len(restored),
        "plain_restart_s": cold.restart.seconds, "rdb_restart_s": rdb.restart.seconds,
    })

    result.check("the recorded top K overlaps the true top K by at least 90%",
                 len(report.items) == min(top_k, len(true_counts)) and overlap >= MIN_OVERLAP,
                 f"{overlap:.0%} of the {top_k} most read profiles in the trace, read back "
                 f"from the stats Redis after the restarts (ids tied with the {top_k}th "
                 f"count count as top K); LFU's OBJECT FREQ found {lfu_overlap:.0%}")
    result.check("the cache is empty after the plain restart",
                 all(r.new_process and not r.had_dump and r.keys == 0 for r in plain),
                 "; ".join(f"before {name}: {r.describe()}"
                           for name, r in zip(("cold", "warm"), plain, strict=True)))
    result.check("the warmed start's first-window hit ratio beats the cold start's",
                 warm.hits[0] > cold.hits[0],
                 f"first {warm.requests[0]} requests: warm {warm.window_ratio(0):.0%} "
                 f"({warm.db_reads[0]} db reads) against cold {cold.window_ratio(0):.0%} "
                 f"({cold.db_reads[0]} db reads), after warming {warmed_keys} keys in "
                 f"{report.seconds * 1000:.0f} ms with {warmup_db_reads} queries")
    result.check("the RDB restart keeps the keys",
                 from_rdb.new_process and from_rdb.had_dump and bool(saved)
                 and kept == len(saved) == len(restored),
                 f"{kept}/{len(saved)} saved keys came back with the same value "
                 f"({from_rdb.describe()})")

    won_back = ratio(warm.hits[0] - cold.hits[0], rdb.hits[0] - cold.hits[0])
    result.note(f"Warming {warmed_keys} of the {len(saved)} profiles cached before the "
                f"restart won back {won_back:.0%} "
                "of the extra first-window hits a full RDB snapshot gives over a cold start, "
                f"for {warmup_db_reads} bulk queries ({db.describe_latency()}).")
    result.note("The counts live in a separate stats Redis: a cache that restarts empty loses "
                "its own LFU counters, and a deploy that restarts the application loses its "
                "memory. An RDB snapshot keeps everything but may be stale on restart; warming "
                "reloads fresh rows. Try --top-k 20 or --zipf-s 0.8 (a flatter workload).")
    return result
