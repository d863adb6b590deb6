"""Read replicas: a primary and N replicas, reads spread by a client-side balancer.

The cache holds rendered catalogue pages. Writes go to the primary; a balancer in the
client sends each read to a replica (and the primary too, if asked) by round-robin or
at random. Each node's own ``INFO commandstats`` says how many reads it served, which
must agree with the balancer's count and be an even split. Replication is asynchronous:
a write burst is sampled for how many bytes each replica is behind, and a read of
one's own write from a replica is tried plain, after ``WAIT``, and from the primary.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Literal

from cachelab.caching.replicas import (
    CONSISTENCIES,
    LagSampler,
    ReadYourWritesTally,
    ReplicaBalancer,
    page_version,
    replica_mismatches,
    versioned_page,
    wait_converged,
)
from cachelab.exercise import ExerciseInfo, Opt, Result
from cachelab.workload.measure import LatencyHistogram, balance, key_sampler, ratio
from cachelab.workload.redis_info import command_calls, replication_offsets

if TYPE_CHECKING:
    from cachelab.lab import Lab
    from cachelab.servers.redis_server import RedisServer

INFO = ExerciseInfo(
    id="exercise-7",
    slug="read-replicas",
    title="Scaling cache reads out over replicas",
    concept="Horizontal scaling with read replicas",
    scenario=(
        "One Redis serves every catalogue page read and is running out of room. Add "
        "replicas of it and let the application spread its reads over them with a small "
        "client-side balancer, while writes still go to the primary. Then find out what "
        "asynchronous replication costs: how far the replicas fall behind during a write "
        "burst, and whether a user who just saved something reads it back from a replica."
    ),
    walkthrough=(
        "Start a primary and N replicas (REPLICAOF) and load the catalogue pages into the "
        "primary; wait until every replica's offset has caught up.",
        "Read pages through the balancer (round-robin or random; the primary serves reads "
        "only with --include-primary) and take each node's cmdstat_get calls from its own "
        "INFO commandstats before and after.",
        "Write bursts of pages to the primary while a thread samples the primary's "
        "master_repl_offset and then every replica's applied offset: the lag in bytes.",
        "Read-your-writes: write a burst, then at once read its last page through a "
        "replicas-only balancer, in three modes: plain (async), after WAIT on the same "
        "connection, and with one's own recent writes read from the primary.",
        "Wait until every replica's offset equals the primary's and compare every key "
        "on every node with the primary.",
    ),
    fixtures=("redis-primary", "redis-replicas"),
    checks=(
        "reads per serving node are within 15% of an even split",
        "the balancer's counts match each node's INFO commandstats",
        "read-your-writes after WAIT: no stale reads",
        "read-your-writes from the primary: no stale reads",
        "the replication offsets converge",
        "every replica holds the primary's values",
    ),
    metrics=(
        "replicas", "reads", "read_balance_max_over_mean", "read_balance_min_over_mean",
        "primary_reads", "read_p50_ms", "read_p99_ms", "ryw_trials", "ryw_violations_async",
        "ryw_violations_wait", "ryw_violations_primary", "wait_min_acked", "waits_short",
        "max_replication_lag_bytes", "mean_replication_lag_bytes", "lag_samples", "converge_ms",
    ),
    headline="read_balance_max_over_mean",
    own_servers="starts a primary with replicas of its own and stops one of them",
)

BALANCE_TOLERANCE = 0.15
CONVERGE_TIMEOUT_S = 10.0


def run(
    lab: Lab,
    *,
    replicas: Annotated[int, Opt("Replicas of the primary.", min=1, max=8)] = 2,
    policy: Annotated[Literal["round-robin", "random"],
                      Opt("How the balancer picks the node for a read.")] = "round-robin",
    include_primary: Annotated[bool, Opt("Let the primary serve reads too.")] = False,
    reads: Annotated[int, Opt("Reads through the balancer (random needs a few hundred "
                              "per node to split evenly).", min=100)] = 6000,
    keys: Annotated[int, Opt("Catalogue pages in the cache.", min=10)] = 500,
    value_bytes: Annotated[int, Opt("Size of one page, in bytes.", min=16,
                                    max=1_000_000)] = 4096,
    import_pages: Annotated[int, Opt("Pages per write burst (one pipeline) while the lag "
                                     "is sampled.", min=1, max=100_000)] = 200,
    lag_bursts: Annotated[int, Opt("Write bursts while the lag is sampled.", min=1)] = 40,
    burst: Annotated[int, Opt("Pages written per read-your-writes trial (one pipeline).",
                              min=1, max=10_000)] = 20,
    ryw_trials: Annotated[int, Opt("Write-then-read trials per read-your-writes mode.",
                                   min=1)] = 200,
    wait_timeout_ms: Annotated[int, Opt("WAIT timeout in wait mode, in ms.", min=1,
                                        max=60_000)] = 1000,
) -> Result:
    result = Result(INFO)
    topology = lab.replica_set(replicas=replicas)
    servers: list[RedisServer] = [topology.primary, *topology.replicas]
    names = [s.name for s in servers]
    clients = [lab.closing(server.client()) for server in servers]
    primary, copies = clients[0], clients[1:]
    filler = "".join(lab.rng("filler").choices("abcdefghijklmnopqrstuvwxyz <>/", k=value_bytes))

    # Load: every page written to the primary, then replicated before anyone reads.
    loader = ReplicaBalancer(primary, copies, names=names)
    page_keys = [f"page:{i}" for i in range(1, keys + 1)]
    for start in range(0, keys, 100):
        loader.write((f"page:{i}", versioned_page(i, 0, filler))
                     for i in range(start + 1, min(start + 100, keys) + 1))
    loaded_s = wait_converged(primary, copies, timeout_s=CONVERGE_TIMEOUT_S)

    # Reads through the balancer; each node counts its own GETs in INFO commandstats.
    balancer = ReplicaBalancer(primary, copies, names=names, policy=policy,
                               include_primary=include_primary, rng=lab.rng("balancer"))
    next_page = key_sampler(keys, "uniform", rng=lab.rng("pages"))
    latency = {name: LatencyHistogram() for name in names}
    overall = LatencyHistogram()
    wrong = 0
    gets_before = [command_calls(c) for c in clients]
    for _ in lab.track(range(reads), "balanced reads", reads):
        i = next_page()
        t0 = time.perf_counter_ns()
        got = balancer.read(f"page:{i}")
        elapsed = time.perf_counter_ns() - t0
        latency[got.node.name].record_ns(elapsed)
        overall.record_ns(elapsed)
        wrong += page_version(got.value) != 0 or f"|page {i}|" not in (got.value or "")
    served = [command_calls(c) - before
              for c, before in zip(clients, gets_before, strict=True)]
    counted = [balancer.stats.reads[name] for name in names]
    serving = [n.name for n in balancer.readers]
    serving_counts = [served[names.index(name)] for name in serving]
    max_over_mean, min_over_mean = balance(serving_counts)
    balanced = (sum(serving_counts) == reads and max_over_mean <= 1 + BALANCE_TOLERANCE
                and min_over_mean >= 1 - BALANCE_TOLERANCE)

    # Replication lag: a thread samples every replica's offset while bursts are written.
    writer = ReplicaBalancer(primary, copies, names=names)
    import_keys = [f"import:{j}" for j in range(import_pages)]
    sampler = lab.enter_context(LagSampler(primary, copies))
    for b in lab.track(range(lag_bursts), "write bursts", lag_bursts):
        writer.write((key, versioned_page(j, b, filler)) for j, key in enumerate(import_keys))
    sampler.stop()
    lags = sampler.samples

    # Read-your-writes: write a burst, then read its last page back at once.
    runs = []
    ryw_keys = []
    for mode in CONSISTENCIES:
        outcome = ReadYourWritesTally(mode)
        session = ReplicaBalancer(primary, copies, names=names, policy=policy,
                                  include_primary=False, consistency=mode,
                                  wait_timeout_ms=wait_timeout_ms, sticky_s=60.0,
                                  rng=lab.rng(f"ryw-{mode}"))
        session_keys = [f"ryw:{mode}:{j}" for j in range(burst)]
        ryw_keys += session_keys
        for t in lab.track(range(1, ryw_trials + 1), f"read-your-writes ({mode})", ryw_trials):
            session.write((key, versioned_page(j, t, filler))
                          for j, key in enumerate(session_keys))
            outcome.record(session.read(session_keys[-1]), version=t)
        outcome.take_waits(session.stats)
        runs.append(outcome)
    async_run, wait_run, primary_run = runs

    # Convergence: offsets equal, then every key equal on every node.
    converge_s = wait_converged(primary, copies, timeout_s=CONVERGE_TIMEOUT_S)
    head, offsets = replication_offsets(primary, copies)
    compared_keys = page_keys + import_keys + ryw_keys
    differ = replica_mismatches(primary, copies, compared_keys)
    sizes = [c.dbsize() for c in clients]

    all_lags = [lag for samples in lags for lag in samples]
    max_lag = max(all_lags, default=0)
    mean_lag = ratio(sum(all_lags), len(all_lags))
    read_ms = overall.summary_ms()

    result.table("Topology", ["role", "name", "address"],
                 [[row["role"], row["name"], row["address"]] for row in topology.describe()])
    result.table(f"Reads per node ({policy}, {reads} reads)",
                 ["node", "serves reads", "balancer", "INFO cmdstat_get", "share",
                  "p50 ms", "p99 ms"],
                 [[name, name in serving, counted[k], served[k], ratio(served[k], reads),
                   latency[name].percentile_ms(50), latency[name].percentile_ms(99)]
                  for k, name in enumerate(names)])
    result.chart("Reads per node: the balancer's count and the node's own",
                 "node", names, {"balancer": [float(c) for c in counted],
                                 "INFO commandstats": [float(s) for s in served]})
    result.table(f"Replication lag, sampled during {lag_bursts} bursts of {import_pages} × "
                 f"{value_bytes} B (primary at offset {head} at the end)",
                 ["replica", "samples", "behind", "max lag bytes", "mean lag bytes",
                  "offset at the end"],
                 [[names[k + 1], len(samples), sum(lag > 0 for lag in samples),
                   max(samples, default=0), ratio(sum(samples), len(samples)), offsets[k]]
                  for k, samples in enumerate(lags)])
    result.table("Read-your-writes: read the burst's last page right after writing it",
                 ["mode", "trials", "stale", "stale share", "replica reads",
                  "primary reads", "WAITs", "WAITs short", "min acked"],
                 [[r.mode, r.trials, r.stale, ratio(r.stale, r.trials), r.from_replicas,
                   r.from_primary, r.waits, r.waits_short,
                   "" if r.min_acked is None else r.min_acked] for r in runs])
    result.chart("Stale reads right after one's own write", "mode", list(CONSISTENCIES),
                 {"stale reads": [float(r.stale) for r in runs]})

    result.add_metrics({
        "replicas": replicas, "reads": reads,
        "read_balance_max_over_mean": max_over_mean,
        "read_balance_min_over_mean": min_over_mean,
        "primary_reads": served[0], "read_p50_ms": read_ms["p50"],
        "read_p99_ms": read_ms["p99"], "ryw_trials": ryw_trials,
        "ryw_violations_async": async_run.stale, "ryw_violations_wait": wait_run.stale,
        "ryw_violations_primary": primary_run.stale,
        "wait_min_acked": wait_run.min_acked if wait_run.min_acked is not None else -1,
        "waits_short": wait_run.waits_short,
        "max_replication_lag_bytes": max_lag, "mean_replication_lag_bytes": mean_lag,
        "lag_samples": len(all_lags),
        "converge_ms": converge_s * 1000 if converge_s is not None else -1.0,
    })

    result.check("reads per serving node are within 15% of an even split", balanced,
                 f"{', '.join(f'{n} {c}' for n, c in zip(serving, serving_counts, strict=True))}"
                 f" GETs by INFO commandstats over {len(serving)} serving nodes: max/mean "
                 f"{max_over_mean:.3f}, min/mean {min_over_mean:.3f} (allowed "
                 f"{1 - BALANCE_TOLERANCE:.2f}-{1 + BALANCE_TOLERANCE:.2f})")
    result.check("the balancer's counts match each node's INFO commandstats",
                 counted == served and sum(served) == reads,
                 f"balancer {counted}, INFO {served} (nodes {', '.join(names)})")
    result.check("read-your-writes after WAIT: no stale reads",
                 wait_run.stale == 0 and wait_run.from_replicas > 0,
                 f"{wait_run.stale}/{wait_run.trials} stale; {wait_run.from_replicas} read from "
                 f"a replica after WAIT {replicas} acknowledged, {wait_run.from_primary} from the "
                 f"primary after a short WAIT (without WAIT: {async_run.stale}/"
                 f"{async_run.trials} stale)")
    result.check("read-your-writes from the primary: no stale reads",
                 primary_run.stale == 0 and primary_run.from_primary == primary_run.trials,
                 f"{primary_run.stale}/{primary_run.trials} stale, all {primary_run.from_primary}"
                 " of one's own recent writes read from the primary")
    result.check("the replication offsets converge",
                 converge_s is not None and loaded_s is not None
                 and all(o == head for o in offsets),
                 f"every replica at offset {head} "
                 f"{(converge_s or 0) * 1000:.1f} ms after the last write (lag up to "
                 f"{max_lag} bytes during the bursts; after loading: "
                 f"{'in sync' if loaded_s is not None else 'never in sync'})"
                 if converge_s is not None else
                 f"replicas at {offsets}, primary at {head} after {CONVERGE_TIMEOUT_S:g}s")
    result.check("every replica holds the primary's values",
                 wrong == 0 and not any(differ) and len(set(sizes)) == 1,
                 f"{len(compared_keys)} keys compared on {len(copies)} replicas: "
                 f"{sum(differ)} differ; "
                 f"DBSIZE {sizes}; {wrong}/{reads} balanced reads differed from the page "
                 "loaded")

    result.note(f"Without WAIT, {async_run.stale} of {async_run.trials} reads of a page "
                "just written came back old from a replica, although on loopback the largest "
                f"lag sampled was {max_lag} bytes (the count depends on how busy the machine "
                "is). WAIT holds the writer until every replica has its "
                "writes; reading one's own writes from the primary needs no WAIT but puts "
                "those reads back on the primary.")
    result.note("Try --policy random (even only on average), --include-primary, --replicas 4, "
                "or --value-bytes 65536 --import-pages 500 for more lag.")
    return result
