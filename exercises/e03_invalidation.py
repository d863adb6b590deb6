"""Invalidation on update: write to the database, then delete the cached profile.

Cache-aside alone serves a profile from Redis until its TTL runs out, even after the
user changed it. Deleting the cache entry right after the database update makes the
next read miss and load the new profile. The same seeded stream of reads and updates
is played twice, with invalidation and with TTL-only expiry, and every read is
compared with the database at that moment.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from cachelab.caching import CacheAside
from cachelab.exercise import ExerciseInfo, Opt, Result
from cachelab.workload.measure import key_sampler
from cachelab.workload.profile_edits import play_profile_edits

if TYPE_CHECKING:
    from cachelab.lab import Lab

INFO = ExerciseInfo(
    id="exercise-3",
    slug="invalidation",
    title="Cache invalidation on profile update",
    concept="Cache coherence",
    scenario=(
        "Users edit their profiles while others keep reading them. A lazily cached "
        "profile must not outlive the edit: when the update reaches the database, the "
        "cached copy is deleted, and the next read brings the new one into the cache."
    ),
    walkthrough=(
        "Build two identical shop databases and cache profiles lazily in one Redis.",
        "Play one seeded stream of profile reads and updates with invalidation: update the "
        "database, then DEL user:<id>.",
        "Play the same stream with TTL-only expiry: update the database and leave the cache.",
        "Compare every read with the database at that moment to count stale reads, and "
        "follow the first read after each update: a miss that loads the new profile.",
    ),
    fixtures=("redis", "shop-db"),
    checks=(
        "no stale reads with invalidation",
        "stale reads without invalidation",
        "the read after an invalidation misses and returns the new data",
    ),
    metrics=(
        "operations", "reads", "updates", "stale_reads_with_invalidation", "stale_reads_ttl_only",
        "stale_ratio_ttl_only", "max_stale_age_s_ttl_only", "repopulations",
        "first_reads_after_update", "hit_ratio_with_invalidation", "hit_ratio_ttl_only",
        "db_queries_with_invalidation", "db_queries_ttl_only",
    ),
    headline="stale_reads_ttl_only",
)

def run(
    lab: Lab,
    *,
    operations: Annotated[int, Opt("Reads and updates in the stream.", min=1)] = 2000,
    update_ratio: Annotated[float, Opt("Share of operations that are updates.", min=0.01,
                                       max=0.9)] = 0.1,
    ttl_s: Annotated[float, Opt("TTL of a cached profile, in seconds.", min=1)] = 300.0,
) -> Result:
    result = Result(INFO)
    server = lab.redis_server()
    cache = lab.closing(server.client())
    runs = {}
    for strategy in ("invalidate", "ttl-only"):  # the same seeded stream for both
        db = lab.shop(f"shop-{strategy}")
        profiles = CacheAside(cache, namespace=server.keys(f"user-{strategy}"),
                              loader=db.user_profile, ttl_s=ttl_s)
        runs[strategy] = play_profile_edits(
            profiles, db, invalidate=strategy == "invalidate",
            operations=lab.track(range(operations), f"reads and updates ({strategy})",
                                 operations),
            update_ratio=update_ratio, rng=lab.rng("operations"),
            next_user=key_sampler(db.size.users, "zipf", zipf_s=1.1, rng=lab.rng("users")))
    inv, ttl = runs["invalidate"], runs["ttl-only"]

    result.table("Strategies", ["strategy", "reads", "updates", "hits", "misses",
                                "stale reads", "db queries"],
                 [[name, o.reads, o.updates, o.hits, o.reads - o.hits, o.stale_reads,
                   o.db_queries] for name, o in runs.items()])
    if ttl.example:
        user_id, cached_version, db_version = ttl.example
        result.table("First stale read without invalidation", ["user", "cached version",
                                                               "database version"],
                     [[user_id, cached_version, db_version]])

    result.add_metrics({
        "operations": operations, "reads": inv.reads, "updates": inv.updates,
        "stale_reads_with_invalidation": inv.stale_reads,
        "stale_reads_ttl_only": ttl.stale_reads,
        "stale_ratio_ttl_only": ttl.stale_reads / ttl.reads if ttl.reads else 0.0,
        "max_stale_age_s_ttl_only": ttl.max_stale_age_s,
        "repopulations": inv.repopulations,
        "first_reads_after_update": inv.first_reads_after_update,
        "hit_ratio_with_invalidation": inv.hits / inv.reads if inv.reads else 0.0,
        "hit_ratio_ttl_only": ttl.hits / ttl.reads if ttl.reads else 0.0,
        "db_queries_with_invalidation": inv.db_queries, "db_queries_ttl_only": ttl.db_queries,
    })

    result.check("no stale reads with invalidation", inv.reads > 0 and inv.stale_reads == 0,
                 f"{inv.stale_reads} of {inv.reads} reads differed from the database")
    result.check("stale reads without invalidation", ttl.stale_reads > 0,
                 f"{ttl.stale_reads} of {ttl.reads} reads differed from the database, "
                 f"the oldest {ttl.max_stale_age_s:.2f}s after its update")
    result.check("the read after an invalidation misses and returns the new data",
                 inv.first_reads_after_update > 0
                 and inv.repopulations == inv.first_reads_after_update,
                 f"{inv.repopulations}/{inv.first_reads_after_update} first reads after an "
                 "update missed and loaded the new profile")

    result.note(f"Invalidation cost {inv.db_queries - ttl.db_queries:+d} database queries "
                f"against TTL-only: every invalidated profile is loaded again.")
    result.note("Deleting after the update leaves a small window: a reader that loaded the "
                "old row just before the update can still SET it afterwards (the stale-set "
                "race). Try --update-ratio 0.5 for a write-heavy mix.")
    return result
