"""Cache dependencies: a cached report dropped when any table it reads from changes.

The revenue report of exercise 2 joins orders, order items, products, categories and
users. Each cached result registers its dependencies in Redis sets; SQLite triggers
record every insert, update and delete in a changes table inside the writing
transaction; a notifier turns each change into invalidations. Two dependency policies
run side by side on the same stream: table-level (any change to a table drops every
entry that reads it) and row-level (a change drops only the entries whose city, date
range or categories it can touch). Every drop is judged by comparing what was cached
with a fresh query: an equal result means the drop was unnecessary.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import TYPE_CHECKING, Annotated, Any

from cachelab.caching import QueryCache
from cachelab.caching.dependencies import (
    ChangeNotifier,
    DependencyIndex,
    DependentQueryCache,
    install_change_capture,
    table_rule,
    table_tags,
)
from cachelab.exercise import ExerciseInfo, Opt, Result
from cachelab.shop.database import REPORT_SQL, report_parameter_sets
from cachelab.shop.report_dependencies import REPORT_CONTEXT, report_rule, report_tags
from cachelab.shop.writes import apply_write, write_stream
from cachelab.workload.measure import key_sampler

if TYPE_CHECKING:
    from cachelab.lab import Lab

INFO = ExerciseInfo(
    id="exercise-13",
    slug="cache-dependencies",
    title="Cache dependency management",
    concept="Cache dependencies",
    scenario=(
        "A sales report reads five tables. Caching it is only safe if the cached result "
        "goes away whenever any of those tables changes in a way that matters, whoever "
        "made the change. Triggers capture every change in the database itself, a "
        "dependency index in Redis says which entries each change touches, and a "
        "notifier drops them. How fine the dependencies are decides how much is dropped "
        "for nothing."
    ),
    walkthrough=(
        "List the tables the report reads (orders, order_items, products, categories, "
        "users) and install insert, update and delete triggers on every table of the "
        "shop, writing each row's old and new image to cache_changes in the same "
        "transaction.",
        "Cache each report result under a hash of its query, and register it in Redis "
        "sets: per table (table-level), or per city, day and category (row-level).",
        "Play a seeded stream of report reads and writes to dependent and unrelated "
        "tables; after each write the notifier drains the changes table and drops the "
        "entries registered under the tags each change touches.",
        "Compare every read, and every entry left cached after a change, with a fresh "
        "query; compare every dropped entry with a fresh query to count unnecessary "
        "drops.",
    ),
    fixtures=("redis", "shop-db"),
    checks=(
        "every committed change is captured",
        "a change to any dependent table invalidates",
        "the next read recomputes a fresh result",
        "a change to an unrelated table invalidates nothing",
        "zero stale reads",
        "without dependencies the same reads go stale",
        "row-level dependencies drop fewer entries for nothing",
    ),
    metrics=(
        "dependent_tables", "entries", "reads", "writes", "changes", "unrelated_changes",
        "invalidations", "invalidations_table_level", "invalidations_row_level",
        "over_invalidations_table_level", "over_invalidations_row_level", "stale_reads",
        "stale_reads_without_dependencies", "hit_ratio_table_level", "hit_ratio_row_level",
        "db_executions_table_level", "db_executions_row_level",
    ),
    headline="over_invalidations_table_level",
)

DEPENDENT_TABLES = ("orders", "order_items", "products", "categories", "users")
UNRELATED_TABLES = ("comments", "profiles", "posts", "accounts")


def run(
    lab: Lab,
    *,
    operations: Annotated[int, Opt("Reads and writes in the stream.", min=20)] = 300,
    write_ratio: Annotated[float, Opt("Share of operations that are writes.", min=0.05,
                                      max=0.9)] = 0.3,
    distinct_queries: Annotated[int, Opt("Distinct report parameter sets read.", min=1,
                                         max=96)] = 8,
    ttl_s: Annotated[float, Opt("TTL of a cached report, in seconds.", min=10)] = 600.0,
) -> Result:
    result = Result(INFO)
    server = lab.redis_server()
    client = lab.closing(server.client())
    db = lab.shop()
    install_change_capture(db.path, DEPENDENT_TABLES + UNRELATED_TABLES, REPORT_CONTEXT)

    indexes = {"table": DependencyIndex(client, prefix=server.keys("deps-table")),
               "row": DependencyIndex(client, prefix=server.keys("deps-row"))}
    caches = {
        "table": DependentQueryCache(client, db.query, index=indexes["table"],
                                     tags=lambda p, rows: table_tags(DEPENDENT_TABLES),
                                     ttl_s=ttl_s, namespace=server.keys("report-table")),
        "row": DependentQueryCache(client, db.query, index=indexes["row"], tags=report_tags,
                                   ttl_s=ttl_s, namespace=server.keys("report-row")),
        "none": QueryCache(client, db.query, ttl_s=ttl_s,
                           namespace=server.keys("report-none")),
    }
    notifier = ChangeNotifier(db.path, client, {"table": (indexes["table"], table_rule),
                                                "row": (indexes["row"], report_rule)},
                              cursor_key=server.keys("deps:changes:last_id"))
    lab.callback(notifier.close)
    notifier.skip_to_end()

    params = report_parameter_sets(distinct_queries)
    keys = {name: {cache.key((REPORT_SQL, p)): p for p in params}
            for name, cache in caches.items()}
    next_set = key_sampler(distinct_queries, "zipf", zipf_s=0.8, rng=lab.rng("reports"))
    rng = lab.rng("writes")
    stream = write_stream(lab.rng("stream"), operations, write_ratio)

    # The truth: only this run writes, so a fresh result stays fresh until its next write.
    fresh: dict[tuple[str, str, str], list[dict[str, Any]]] = {}

    def truth(p: tuple[str, str, str]) -> list[dict[str, Any]]:
        if p not in fresh:
            fresh[p] = db.rows(REPORT_SQL, p)
        return fresh[p]

    def cached(policy: str) -> dict[str, Any]:
        """Every entry of ``policy`` cached now, decoded."""
        names = list(keys[policy])
        return {k: json.loads(v) for k, v in zip(names, client.mget(names), strict=True)
                if v is not None}

    reads = writes = rows_written = changes = 0
    stale: Counter[str] = Counter()
    drops: Counter[tuple[str, str]] = Counter()  # (policy, table) -> entries dropped
    unnecessary: Counter[tuple[str, str]] = Counter()
    changes_by_table: Counter[str] = Counter()
    kept_all_dropped = dependent_writes_with_entries = 0
    survivors_stale = unrelated_writes_with_entries = unrelated_kept = 0
    awaiting: dict[str, set[str]] = {"table": set(), "row": set()}  # dropped, not read yet
    recomputed = recomputed_fresh = 0
    db_queries_before = db.queries

    for op in lab.track(stream, "report reads and writes", len(stream)):
        if op is None:
            p = params[next_set() - 1]
            reads += 1
            for name, cache in caches.items():
                rows, hit = cache.rows(REPORT_SQL, p)
                if hit and rows != truth(p):
                    stale[name] += 1
                if name in awaiting and cache.key((REPORT_SQL, p)) in awaiting[name]:
                    awaiting[name].discard(cache.key((REPORT_SQL, p)))
                    recomputed += 1
                    recomputed_fresh += (not hit) and rows == truth(p)
            continue

        before = {policy: cached(policy) for policy in ("table", "row")}
        rows_written += apply_write(db, op, rng)
        writes += 1
        fresh.clear()
        done = notifier.drain()
        tables = {inv.change.table for inv in done}
        changes += sum(inv.policy == "table" for inv in done)
        changes_by_table.update(inv.change.table for inv in done if inv.policy == "table")
        for inv in done:
            drops[inv.policy, inv.change.table] += len(inv.dropped)
            for key, value in inv.dropped.items():
                awaiting[inv.policy].add(key)
                unnecessary[inv.policy, inv.change.table] += (
                    json.loads(value) == truth(keys[inv.policy][key]))
        after = {policy: cached(policy) for policy in ("table", "row")}
        # Whatever survived a change must still be what the database says.
        survivors_stale += sum(value != truth(keys[policy][key])
                               for policy in after for key, value in after[policy].items())
        if tables & set(DEPENDENT_TABLES) and before["table"]:
            dependent_writes_with_entries += 1
            kept_all_dropped += not after["table"]
        if tables and tables <= set(UNRELATED_TABLES) and (before["table"] or before["row"]):
            unrelated_writes_with_entries += 1
            unrelated_kept += before == after

    def total(counter: Counter[tuple[str, str]], policy: str,
              tables: tuple[str, ...] = DEPENDENT_TABLES + UNRELATED_TABLES) -> int:
        return sum(counter[policy, table] for table in tables)

    over = {policy: total(unnecessary, policy) for policy in ("table", "row")}
    dropped = {policy: total(drops, policy) for policy in ("table", "row")}
    unrelated_drops = sum(total(drops, policy, UNRELATED_TABLES) for policy in ("table", "row"))
    unrelated_changes = sum(changes_by_table[t] for t in UNRELATED_TABLES)
    stats = {name: cache.stats for name, cache in caches.items()}

    result.table("Changes and invalidations by table",
                 ["table", "depends", "changes", "table-level drops", "unneeded (table)",
                  "row-level drops", "unneeded (row)"],
                 [[t, "yes" if t in DEPENDENT_TABLES else "no", changes_by_table[t],
                   drops["table", t], unnecessary["table", t], drops["row", t],
                   unnecessary["row", t]]
                  for t in DEPENDENT_TABLES + UNRELATED_TABLES if changes_by_table[t]])
    result.table("Dependency policies",
                 ["policy", "reads", "hits", "misses (db executions)", "stale reads",
                  "drops", "drops for nothing"],
                 [[name, s.requests, s.hits, s.misses, stale[name],
                   dropped.get(name, "-"), over.get(name, "-")] for name, s in stats.items()])
    result.chart("Entries dropped by table", "table", list(DEPENDENT_TABLES),
                 {"table-level": [drops["table", t] for t in DEPENDENT_TABLES],
                  "row-level": [drops["row", t] for t in DEPENDENT_TABLES]})

    result.add_metrics({
        "dependent_tables": len(DEPENDENT_TABLES), "entries": len(params),
        "reads": reads, "writes": writes, "changes": changes,
        "unrelated_changes": unrelated_changes,
        "invalidations": dropped["table"] + dropped["row"],
        "invalidations_table_level": dropped["table"],
        "invalidations_row_level": dropped["row"],
        "over_invalidations_table_level": over["table"],
        "over_invalidations_row_level": over["row"],
        "stale_reads": stale["table"] + stale["row"],
        "stale_reads_without_dependencies": stale["none"],
        "hit_ratio_table_level": stats["table"].hit_ratio,
        "hit_ratio_row_level": stats["row"].hit_ratio,
        "db_executions_table_level": stats["table"].misses,
        "db_executions_row_level": stats["row"].misses,
    })

    result.check("every committed change is captured", changes > 0 and changes == rows_written,
                 f"{changes} changes captured by triggers for {rows_written} rows written "
                 f"in {writes} writes")
    missing = [t for t in DEPENDENT_TABLES if not changes_by_table[t]]
    result.check("a change to any dependent table invalidates",
                 not missing and dependent_writes_with_entries > 0
                 and kept_all_dropped == dependent_writes_with_entries
                 and survivors_stale == 0,
                 f"changes to {len(DEPENDENT_TABLES) - len(missing)}/{len(DEPENDENT_TABLES)} "
                 f"dependent tables; table-level: {kept_all_dropped}/"
                 f"{dependent_writes_with_entries} such writes dropped every cached entry; "
                 f"{survivors_stale} entries left cached after a change differed from the "
                 "database")
    result.check("the next read recomputes a fresh result",
                 recomputed > 0 and recomputed_fresh == recomputed,
                 f"{recomputed_fresh}/{recomputed} first reads after a drop missed and equal "
                 "a fresh query")
    result.check("a change to an unrelated table invalidates nothing",
                 unrelated_writes_with_entries > 0 and unrelated_drops == 0
                 and unrelated_kept == unrelated_writes_with_entries,
                 f"{unrelated_changes} changes to "
                 f"{', '.join(t for t in UNRELATED_TABLES if changes_by_table[t])}: "
                 f"{unrelated_drops} entries dropped; all cached entries kept across "
                 f"{unrelated_kept}/{unrelated_writes_with_entries} such writes")
    hits = stats["table"].hits + stats["row"].hits
    result.check("zero stale reads", hits > 0 and stale["table"] + stale["row"] == 0,
                 f"{stale['table'] + stale['row']} of {hits} cache hits (table- and "
                 "row-level) differed from a fresh query")
    result.check("without dependencies the same reads go stale", stale["none"] > 0,
                 f"{stale['none']} of {stats['none'].hits} hits of a cache without "
                 "dependencies differed from a fresh query")
    result.check("row-level dependencies drop fewer entries for nothing",
                 over["row"] < over["table"],
                 f"unnecessary drops: row-level {over['row']} of {dropped['row']}, "
                 f"table-level {over['table']} of {dropped['table']}")

    result.note("The notifier runs synchronously after each write: it drains the changes "
                "table before the next read, so a stale read can only come from a missing "
                "dependency, never from notifier lag. A polling thread would catch writes "
                "from other processes sooner than the next write, at the price of a window.")
    result.note(f"Row-level dependencies cost {len(report_tags(params[0], []))}+ Redis set "
                "members per entry (one per city and day); table-level cost five. "
                f"{db.queries - db_queries_before} counted database queries in all "
                f"({db.describe_latency()}).")
    result.note("Try --write-ratio 0.6 for a write-heavy shop, or --distinct-queries 48 to "
                "put several entries in each city.")
    if lab.shared:
        result.note("On this existing deployment the entries, their dependency sets and the "
                    f"notifier's cursor are under {server.keys.prefix}; every count above is "
                    "this run's own, so it matches a local run with the same seed.")
    return result
