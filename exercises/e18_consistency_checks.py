"""Consistency checks: find, count and repair cache entries that disagree with the database.

Profiles are cached as JSON under ``profile:<id>``, and the application lists every id
it caches in the set ``index:profile``. Three kinds of inconsistency are defined against
that registry and the database: *missing* (the registry lists the id and the row exists,
but the key is gone), *stale* (the cached value differs from the row), and *orphan* (the
row is gone, but the key still exists). The run injects them at a known, seeded rate,
keeping the ground truth to itself; a checker that never sees it samples the registry,
compares, estimates the inconsistent share with a confidence interval, then scans
everything, repairs, and scans again.

The second part reproduces cache-aside's stale-set race deterministically and compares
three fixes: memcache-style leases, a versioned compare-and-set, and a delayed second
delete.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from cachelab.caching.consistency import (
    INJECTIONS,
    KINDS,
    ConsistencyChecker,
    found,
    inject,
    profile_loader,
    wrong_findings,
)
from cachelab.caching.leases import DoubleDeleteCache, LeaseCache, NaiveCache, VersionedCache
from cachelab.caching.stale_set import race_all
from cachelab.exercise import ExerciseInfo, Opt, Result

if TYPE_CHECKING:
    from cachelab.lab import Lab

INFO = ExerciseInfo(
    id="exercise-18",
    slug="consistency-checks",
    title="Consistency checks between cache and database",
    concept="Cache consistency",
    scenario=(
        "Invalidations get lost, a bug writes a wrong value, a row is deleted while its "
        "copy stays cached, a key vanishes from a cache the application thinks is warm. "
        "A periodic checker compares a sample of cached entries with the database, "
        "estimates how much of the cache is wrong, and repairs what it finds. And even a "
        "correct delete-on-write can lose to a slow reader: the stale-set race, and the "
        "fixes that close it."
    ),
    walkthrough=(
        "Cache the profiles of the first --keys users and list their ids in index:profile.",
        "Inject inconsistencies into a seeded share of them (--inject-rate): missed "
        "invalidations (row updated, cache kept), altered cached values, orphans (row "
        "deleted, cache kept) and missing keys; the injector keeps the truth to itself.",
        "Compare a seeded sample of --sample-size registered ids with the database in "
        "batches (MGET and one query each), classify missing, stale and orphan entries, "
        "and estimate their share with a Wilson score interval (finite-population "
        "corrected).",
        "Scan everything (registry and SCAN profile:*), repair what was found (refresh "
        "from the database, or delete orphans) unless --dry-run, then scan again.",
        "Race a reader against a writer, coordinated by events so that every trial runs "
        "reader-load, writer-update-and-invalidate, reader-set; count stale entries left "
        "by plain cache-aside, leases, versioned sets and a delayed double delete.",
    ),
    fixtures=("redis", "shop-db"),
    checks=(
        "the sample finds every injected inconsistency it covers",
        "the full scan finds every injected inconsistency",
        "no false positives",
        "a second pass after repair finds none",
        "the confidence interval contains the true rate",
        "the naive cache-aside keeps stale entries after the race",
        "leases leave no stale entries",
        "versioned sets leave no stale entries",
        "the delayed second delete clears every stale set that landed before it",
    ),
    metrics=(
        "keys", "sampled", "injected", "covered_by_sample", "found_in_sample", "detected",
        "false_positives", "repaired", "remaining_after_repair", "estimated_rate", "ci_low",
        "ci_high", "true_rate", "stale_found", "orphans_found", "missing_found", "race_trials",
        "race_window_ms", "stale_after_race_naive", "stale_after_race_lease",
        "stale_after_race_versioned", "stale_after_race_double_delete",
        "stale_after_race_double_delete_short", "double_delete_delay_ms",
        "double_delete_short_delay_ms",
    ),
    headline="estimated_rate",
)

# The same columns as ShopDatabase.user_profile, for many users in one query.
def run(
    lab: Lab,
    *,
    keys: Annotated[int, Opt("Profiles cached and registered (at most the shop's users).",
                             min=20)] = 1000,
    inject_rate: Annotated[float, Opt("Share of entries made inconsistent.", min=0.01,
                                      max=0.5)] = 0.05,
    sample_size: Annotated[int, Opt("Registered entries the sampling pass compares.",
                                    min=10)] = 250,
    full_scan: Annotated[bool, Opt("Make the first pass a full scan too (exact rate).")
                         ] = False,
    dry_run: Annotated[bool, Opt("Report without repairing.")] = False,
    confidence: Annotated[float, Opt("Confidence level of the rate's interval.", min=0.5,
                                     max=0.999)] = 0.95,
    race_trials: Annotated[int, Opt("Reader-writer races per strategy.", min=1,
                                    max=200)] = 12,
    race_window_ms: Annotated[float, Opt("Reader's wait between the writer's delete and its "
                                         "set, in ms.", min=1, max=1000)] = 20.0,
    double_delete_delay_ms: Annotated[float, Opt("Delay of the second delete, in ms (show "
                                                 "it working: longer than the window).",
                                                 min=0, max=5000)] = 60.0,
    ttl_s: Annotated[float, Opt("TTL of a cached profile, in seconds.", min=1)] = 600.0,
) -> Result:
    result = Result(INFO)
    server = lab.redis_server()
    cache = lab.closing(server.client())
    db = lab.shop()
    keys = min(keys, db.size.users)
    sample_size = min(sample_size, keys)

    # Part 1: fill, break at a known rate, then let the checker find it on its own.
    checker = ConsistencyChecker(cache, namespace=server.keys("profile"),
                                 registry=server.keys("index:profile"),
                                 load_many=profile_loader(db), ttl_s=ttl_s)
    ids = list(range(1, keys + 1))
    checker.store(profile_loader(db)(ids))
    truth = inject(db, cache, checker, ids, inject_rate, lab.rng("inject"))
    true_rate = len(truth) / keys

    # The sampling pass only estimates: run dry, so that the full scan sees the same state.
    sampled = checker.check(sample=None if full_scan else sample_size,
                            rng=lab.rng("sample"), dry_run=True)
    q0 = db.queries
    scan = checker.check(dry_run=dry_run)
    scan_queries = db.queries - q0
    after = checker.check(dry_run=True)
    estimate = sampled.estimate(confidence)

    covered = set(sampled.checked) & set(truth)
    found_sample = found(sampled.findings, truth) & covered
    found_scan = found(scan.findings, truth)
    false_positives = wrong_findings(sampled.findings, truth) + wrong_findings(scan.findings,
                                                                               truth)
    kinds = scan.by_kind()

    # Part 2: the stale-set race, strategy by strategy, on users that still exist.
    window_s = race_window_ms / 1000
    short_delay_ms = race_window_ms / 4
    existing = [row["id"] for row in db.rows("SELECT id FROM users ORDER BY id")]
    race_rng = lab.rng("race")
    strategies: list[tuple[str, NaiveCache]] = [
        ("naive", NaiveCache(cache, namespace=server.keys("race-naive"), ttl_s=ttl_s)),
        ("lease", LeaseCache(cache, namespace=server.keys("race-lease"), ttl_s=ttl_s)),
        ("versioned", VersionedCache(cache, namespace=server.keys("race-versioned"), ttl_s=ttl_s)),
        (f"double delete ({double_delete_delay_ms:g} ms)",
         DoubleDeleteCache(cache, namespace=server.keys("race-dd"), ttl_s=ttl_s,
                           delay_s=double_delete_delay_ms / 1000)),
        (f"double delete ({short_delay_ms:g} ms)",
         DoubleDeleteCache(cache, namespace=server.keys("race-dd-short"), ttl_s=ttl_s,
                           delay_s=short_delay_ms / 1000)),
    ]
    races = []
    for label, strategy in strategies:
        users = race_rng.sample(existing, min(race_trials, len(existing)))
        lab.enter_context(strategy)  # a double delete's pending timers stop with the lab
        races.append(race_all(strategy, db, lab.track(users, f"stale-set race: {label}",
                                                      len(users)),
                              label=label, window_s=window_s))
    naive, lease, versioned, dd_long, dd_short = races

    # Tables.
    by_injection = {name: [i for i, (how, _) in truth.items() if how == name]
                    for name in INJECTIONS}
    result.table("Injected inconsistencies and what the checker found",
                 ["injection", "shows up as", "injected", "in sample", "found in sample",
                  "found by full scan"],
                 [[name, INJECTIONS[name], len(items), len(covered & set(items)),
                   len(found_sample & set(items)), len(found_scan & set(items))]
                  for name, items in by_injection.items()])
    result.table("Checker passes", ["pass", "compared", "missing", "stale", "orphan",
                                    "repaired"],
                 [[label, len(r.checked), *(r.by_kind()[k] for k in KINDS), r.repaired]
                  for label, r in (("full scan" if full_scan else "sample", sampled),
                                   ("full scan" + (" (dry run)" if dry_run else ""), scan),
                                   ("second full scan", after))])
    result.table("Inconsistency rate", ["sampled", "of", "inconsistent", "estimate",
                                        f"{confidence:.0%} low", f"{confidence:.0%} high",
                                        "true rate"],
                 [[estimate.sampled, estimate.population, len(sampled.findings),
                   round(estimate.rate, 4), round(estimate.low, 4), round(estimate.high, 4),
                   round(true_rate, 4)]])
    result.table("Stale-set race", ["strategy", "trials", "old value stored",
                                    "stale after race", "next read fresh"],
                 [[r.label, len(r.trials), r.stored, r.stale, r.fresh] for r in races])
    result.table("One race, step by step (naive, then lease)", ["strategy", "ms", "thread",
                                                                "step"],
                 [[r.label, round(ms, 2), actor, what] for r in (naive, lease)
                  for ms, actor, what in r.trials[0].steps])
    result.chart("Stale entries left by the race", "strategy", [r.label for r in races],
                 {"stale after race": [r.stale for r in races]})

    result.add_metrics({
        "keys": keys, "sampled": len(sampled.checked), "injected": len(truth),
        "covered_by_sample": len(covered), "found_in_sample": len(found_sample),
        "detected": len(scan.findings), "false_positives": false_positives,
        "repaired": scan.repaired, "remaining_after_repair": len(after.findings),
        "estimated_rate": estimate.rate, "ci_low": estimate.low, "ci_high": estimate.high,
        "true_rate": true_rate, "stale_found": kinds["stale"],
        "orphans_found": kinds["orphan"], "missing_found": kinds["missing"],
        "race_trials": len(naive.trials), "race_window_ms": race_window_ms,
        "stale_after_race_naive": naive.stale, "stale_after_race_lease": lease.stale,
        "stale_after_race_versioned": versioned.stale,
        "stale_after_race_double_delete": dd_long.stale,
        "stale_after_race_double_delete_short": dd_short.stale,
        "double_delete_delay_ms": double_delete_delay_ms,
        "double_delete_short_delay_ms": short_delay_ms,
    })

    # Checks, from this run's findings against the injector's ground truth.
    result.check("the sample finds every injected inconsistency it covers",
                 len(covered) > 0 and found_sample == covered,
                 f"{len(found_sample)}/{len(covered)} injected entries in a sample of "
                 f"{len(sampled.checked)} found with the right kind")
    result.check("the full scan finds every injected inconsistency",
                 found_scan == set(truth),
                 f"{len(found_scan)}/{len(truth)} found ({kinds['missing']} missing, "
                 f"{kinds['stale']} stale, {kinds['orphan']} orphan) in {len(scan.checked)} "
                 f"entries, {scan_queries} database queries")
    result.check("no false positives", false_positives == 0,
                 f"{false_positives} findings over both passes were not injected as that kind")
    if dry_run:
        unchanged = ([(f.item, f.kind) for f in after.findings]
                     == [(f.item, f.kind) for f in scan.findings])
        result.check("a second pass after repair finds none", scan.repaired == 0 and unchanged,
                     f"dry run: nothing repaired, and the second pass found the same "
                     f"{len(after.findings)} again")
    else:
        result.check("a second pass after repair finds none",
                     scan.repaired == len(scan.findings) and not after.findings,
                     f"{scan.repaired} repaired, {len(after.findings)} found by the second "
                     "pass")
    result.check("the confidence interval contains the true rate",
                 estimate.sampled > 0 and estimate.contains(true_rate),
                 f"{estimate.rate:.2%} [{estimate.low:.2%}, {estimate.high:.2%}] from "
                 f"{estimate.sampled}/{estimate.population}; true rate {true_rate:.2%}")
    result.check("the naive cache-aside keeps stale entries after the race",
                 naive.stale == len(naive.trials),
                 f"{naive.stale}/{len(naive.trials)} races left the old profile cached; "
                 f"{naive.fresh} next reads were fresh")
    for outcome in (lease, versioned):
        result.check(f"{'leases' if outcome is lease else 'versioned sets'} leave no stale "
                     "entries",
                     outcome.stale == 0 and outcome.stored == 0
                     and outcome.fresh == len(outcome.trials),
                     f"{outcome.stale}/{len(outcome.trials)} stale, {outcome.stored} old "
                     f"values stored, {outcome.fresh} next reads fresh")
    late = {r.label: r.stored - r.cleared for r in (dd_long, dd_short)}
    result.check("the delayed second delete clears every stale set that landed before it",
                 dd_long.cleared > 0 and all(r.stale == late[r.label]
                                             for r in (dd_long, dd_short)),
                 "; ".join(f"{r.label}: {r.cleared}/{r.stored} stale sets cleared, "
                           f"{r.stale} stale left" for r in (dd_long, dd_short))
                 + ("" if dd_long.cleared else " (every stale set landed after the second "
                    f"delete: the delay must exceed the {race_window_ms:g} ms window)"))

    result.note(f"Across seeds the {confidence:.0%} interval holds the true rate about "
                f"{confidence:.0%} of the time; a seed decides the sample, so this run's "
                "check is decided by this run. Try --sample-size 50 for a wider interval, "
                "--full-scan for the exact rate.")
    result.note(f"Double delete works only when its delay ({double_delete_delay_ms:g} ms) is "
                f"longer than the reader's load-to-set window (here {race_window_ms:g} ms "
                "after the delete); until the second delete the stale value is served. "
                "Leases and versioned sets refuse the old value outright.")
    result.note("In a live system, a checker's own refresh has the same race: re-read a "
                "flagged entry before repairing it, or repair with a versioned set.")
    if lab.shared:
        result.note("On this existing deployment the profiles are "
                    f"{server.keys('profile')}:<id>, listed in {server.keys('index:profile')}. "
                    f"The full scan's SCAN MATCH {server.keys.pattern('profile:*')} still walks "
                    "the whole shared keyspace, so it takes longer than locally, but it sees "
                    "this run's keys only.")
    return result
