"""LRU eviction: a full Redis keeps the keys in use and drops the rest, by policy.

A Redis with a small ``maxmemory`` is loaded until it evicts. A hot set of keys is read
again and again while cold keys keep arriving, and the same stream is played against
one server per ``maxmemory-policy``: which keys are left shows what each policy keeps,
and noeviction refuses the writes instead. Then the Redis documentation's experiment
measures how close LRU by sampling (``maxmemory-samples`` 5 and 10) comes to exact LRU,
and one seeded key trace is replayed through Redis and through exact LRU, LFU, FIFO
and SIEVE in a simulator at the same capacity.
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Annotated

from cachelab.caching.eviction import (
    COLD_TTL_S,
    PolicyRun,
    SamplingTrial,
    build_stream,
    lru_sampling_trial,
    measure_capacity,
    parse_policies,
    replay_cache_aside,
    reply_batch,
)
from cachelab.caching.simulate import RandomEviction, miss_ratios, replay
from cachelab.errors import UsageError
from cachelab.exercise import ExerciseInfo, Opt, Result
from cachelab.workload.measure import key_sampler
from cachelab.workload.redis_info import counter_delta, keyspace_counters, stat

if TYPE_CHECKING:
    from cachelab.lab import Lab

INFO = ExerciseInfo(
    id="exercise-11",
    slug="lru-eviction",
    title="LRU eviction under maxmemory, policy by policy",
    concept="Cache eviction policies",
    scenario=(
        "The cache has a fixed amount of memory and more data than fits. When it is full, "
        "something must go: with LRU, the keys nobody read for the longest time, so the "
        "keys the application keeps using stay. Fill a small Redis past its maxmemory "
        "under each eviction policy, see which keys are left, and measure how close "
        "Redis's sampled LRU comes to the exact one and to other policies."
    ),
    walkthrough=(
        "Measure how many keys fit: write keys into a Redis with a small maxmemory until "
        "INFO counts the first eviction, and read the memory per key from INFO.",
        "Start one Redis per policy and play the same stream on each, one round a second "
        "(Redis's LRU clock ticks in seconds): cold keys with TTLs until nearly full, then "
        "a hot set without TTLs, then rounds that read every hot key and write a new "
        "batch of cold keys among more hot reads.",
        "Freeze each cache (lift maxmemory, so looking cannot evict) and count the hot "
        "and cold keys left, Redis's evicted_keys and the writes refused with OOM.",
        "Repeat Redis's LRU experiment with maxmemory-samples 5 and 10: N keys with "
        "ages in order, maxmemory set to what they use, N/2 new keys; compare what Redis "
        "evicted with what exact LRU evicts, over several seeded repetitions.",
        "Replay one seeded Zipf trace through Redis (allkeys-lru, GET and SET on a miss) "
        "and through exact LRU, LFU, FIFO and SIEVE at the number of keys Redis held.",
    ),
    fixtures=("redis",),
    checks=(
        "allkeys-lru evicts once the cache is full",
        "allkeys-lru keeps at least 95% of the hot set, allkeys-random fewer",
        "noeviction refuses writes with OOM and evicts nothing",
        "sampling 10 keys is at least as close to exact LRU as sampling 5",
        "Redis's LRU and exact LRU miss ratios measured on the same trace",
    ),
    metrics=(
        "maxmemory_bytes", "capacity_keys", "bytes_per_key", "hot_keys", "keys_written",
        "evicted_keys", "hot_survival_lru", "hot_survival_lfu", "hot_survival_random",
        "oom_errors_noeviction", "lru_accuracy_samples5", "lru_accuracy_samples10",
        "trace_requests", "trace_capacity_keys", "miss_ratio_redis_lru", "miss_ratio_exact_lru",
        "miss_ratio_lfu", "miss_ratio_fifo", "miss_ratio_sieve", "miss_ratio_random",
    ),
    headline="hot_survival_lru",
    own_servers="sets maxmemory and the eviction policy, which changes server configuration",
)

DEFAULT_POLICIES = ("allkeys-lru,allkeys-lfu,allkeys-random,volatile-lru,volatile-ttl,"
                    "noeviction")
REQUIRED = ("allkeys-lru", "allkeys-random", "noeviction")  # the checks compare these
HOT_SURVIVAL_NEEDED = 0.95


def run(
    lab: Lab,
    *,
    policies: Annotated[str, Opt("Comma-separated maxmemory-policies to compare; the "
                                 "checks need allkeys-lru, allkeys-random and "
                                 "noeviction.")] = DEFAULT_POLICIES,
    maxmemory_mb: Annotated[float, Opt("maxmemory of every Redis, in MB.", min=2,
                                       max=512)] = 4.0,
    value_bytes: Annotated[int, Opt("Size of every value, in bytes.", min=16,
                                    max=100_000)] = 1000,
    hot_share: Annotated[float, Opt("Hot keys, as a share of the keys that fit.", min=0.01,
                                    max=0.5)] = 0.1,
    turnover: Annotated[float, Opt("Cold keys written, as a multiple of the keys that fit.",
                                   min=1.2, max=50)] = 2.0,
    sampling_keys: Annotated[int, Opt("N, the keys of the LRU sampling experiment.",
                                      min=100, max=200_000)] = 1000,
    sampling_repeats: Annotated[int, Opt("Seeded repetitions of the sampling experiment.",
                                         min=1, max=50)] = 3,
    trace_length: Annotated[float, Opt("Requests in the trace replayed through Redis and "
                                       "the simulator, as a multiple of the keys that fit.",
                                       min=1, max=1000)] = 7.0,
    trace_keys: Annotated[float, Opt("Distinct keys in the trace, as a multiple of the keys "
                                     "that fit.", min=1.5, max=100)] = 3.0,
    zipf_s: Annotated[float, Opt("Zipf exponent of the trace: higher means hotter hot keys.",
                                 min=0.1, max=5)] = 0.9,
    trace_seconds: Annotated[float, Opt("Spread the trace's replay through Redis over this "
                                        "many seconds (0: as fast as it goes).", min=0,
                                        max=3600)] = 0.0,
) -> Result:
    try:
        chosen = parse_policies(policies)
    except ValueError as exc:
        raise UsageError(f"--policies: {exc}") from None
    missing = [p for p in REQUIRED if p not in chosen]
    if missing:
        raise UsageError(f"--policies must include {', '.join(missing)}: the checks compare "
                         f"{', '.join(REQUIRED)}")
    result = Result(INFO)
    maxmemory = int(maxmemory_mb * 1024 * 1024)
    value = "x" * value_bytes

    # 1. How many keys fit, measured: maxmemory also pays for metadata and buffers.
    calibration = lab.own_redis_server("calibrate", maxmemory=str(maxmemory),
                                   maxmemory_policy="allkeys-lru")
    with calibration.client() as client:
        capacity = measure_capacity(client, value, ttl_s=COLD_TTL_S[1])
    calibration.stop()  # done with it: fewer processes for the rest of the run
    result.table("Capacity under maxmemory", ["maxmemory B", "used_memory empty B",
                                              "bytes per key", "keys held", "keys written"],
                 [[capacity.maxmemory, capacity.used_memory_empty,
                   round(capacity.bytes_per_key), capacity.keys, capacity.written]])

    # 2. One stream, one server per policy.
    stream = build_stream(lab.rng("stream"), capacity=capacity.keys, hot_share=hot_share,
                          turnover=turnover)
    runs = [PolicyRun(policy, lab.redis(f"policy-{policy}", maxmemory=str(maxmemory),
                                        maxmemory_policy=policy))
            for policy in chosen]
    batch = reply_batch(len(value))
    progress: dict[str, object] = {"round": 0, "of": len(stream.rounds)}
    with lab.live("Eviction under maxmemory", lambda: dict(progress)):
        for number, ops in enumerate(lab.track(stream.rounds, "rounds, one LRU tick apart",
                                               len(stream.rounds))):
            for policy_run in runs:
                policy_run.play_round(ops, value, batch=batch, next_tick=number > 0)
                progress[f"evicted ({policy_run.policy})"] = stat(policy_run.client,
                                                                  "evicted_keys")
            progress["round"] = number + 1
    for policy_run in runs:
        policy_run.inspect(stream)
    by_policy = {r.policy: r for r in runs}
    hot_n = len(stream.hot)

    def survival(policy: str) -> float:
        return by_policy[policy].hot_kept / hot_n

    rows = []
    for r in runs:
        ttls = [stream.cold_ttl_s[key] for key in r.cold_kept]
        rows.append([r.policy, f"{r.hot_kept}/{hot_n}", len(r.cold_kept), r.evicted_keys,
                     r.counts.oom_errors, round(statistics.fmean(ttls)) if ttls else 0])
    mean_ttl = round(statistics.fmean(stream.cold_ttl_s.values()))
    result.table(f"Keys left after {len(stream.rounds)} rounds: {hot_n} hot and "
                 f"{len(stream.cold_ttl_s)} cold keys written (cold TTLs "
                 f"{COLD_TTL_S[0]}-{COLD_TTL_S[1]}s, mean {mean_ttl}s)",
                 ["policy", "hot kept", "cold kept", "evicted", "OOM refused",
                  "cold kept: mean TTL s"], rows)
    result.chart("Hot keys kept, by policy", "policy", [r.policy for r in runs],
                 {"hot keys kept": [round(100 * survival(r.policy), 1) for r in runs]}, unit="%")
    noeviction = by_policy["noeviction"]
    if noeviction.counts.first_error:
        result.table("What noeviction answers to a write when full",
                     ["error", "writes refused", "writes sent"],
                     [[noeviction.counts.first_error, noeviction.counts.oom_errors,
                       noeviction.counts.writes]])

    # 3. Sampled LRU against exact LRU: the same seeded names for both sample sizes.
    trials: dict[int, list[SamplingTrial]] = {}
    for samples in (5, 10):
        server = lab.own_redis_server(f"samples-{samples}")
        with server.client(decode_responses=False) as client:
            trials[samples] = [lru_sampling_trial(client, samples=samples,
                                                  keys=sampling_keys, value_bytes=value_bytes,
                                                  rng=lab.rng(f"sampling-{rep}"))
                               for rep in lab.track(range(sampling_repeats),
                                                    f"LRU experiment, {samples} samples",
                                                    sampling_repeats)]
        server.stop()
    accuracy = {s: statistics.fmean(t.accuracy for t in ts) for s, ts in trials.items()}
    every_trial = [t for ts in trials.values() for t in ts]

    def mean_by_age(rows: list[list[float]]) -> list[float]:
        return [statistics.fmean(column) for column in zip(*rows, strict=True)]

    result.table(f"LRU experiment: {sampling_keys} keys read in order, then "
                 f"{every_trial[0].added} new ones; share kept, oldest quarter first "
                 f"(mean of {sampling_repeats} run{'s' if sampling_repeats > 1 else ''}, "
                 f"{round(statistics.fmean(t.evicted for t in every_trial))} evicted)",
                 ["eviction", "accuracy", "1st ¼", "2nd ¼", "3rd ¼", "4th ¼", "new"],
                 [["exact LRU", 1.0, *mean_by_age([t.exact_kept_by_age() for t in every_trial])]]
                 + [[f"{s} samples", accuracy[s], *mean_by_age([t.kept_by_age() for t in ts])]
                    for s, ts in trials.items()])

    # 4. One trace through real Redis and through the exact policies, same capacity.
    universe = max(2, round(trace_keys * capacity.keys))
    next_key = key_sampler(universe, "zipf", zipf_s=zipf_s, rng=lab.rng("trace"))
    trace = [next_key() for _ in range(max(1, round(trace_length * capacity.keys)))]
    trace_client = lab.redis("trace-lru", maxmemory=str(maxmemory),
                             maxmemory_policy="allkeys-lru")
    before = keyspace_counters(trace_client)
    redis_replay = replay_cache_aside(trace_client, trace, value_bytes=value_bytes,
                                      spread_s=trace_seconds)
    seen = counter_delta(before, keyspace_counters(trace_client))
    # The simulator gets the capacity Redis had: the keys it held while evicting.
    trace_capacity = redis_replay.capacity_keys or capacity.keys
    simulated = {**miss_ratios(trace, trace_capacity),
                 # What LRU degrades to when every key looks equally old: a reference.
                 "random": replay(trace, RandomEviction(trace_capacity,
                                                        lab.rng("random-eviction")))}
    labels = {"lru": "exact LRU", "lfu": "LFU", "fifo": "FIFO", "sieve": "SIEVE",
              "random": "random"}
    result.table(f"Miss ratio on one trace ({len(trace)} requests over {universe} keys, "
                 f"Zipf s={zipf_s:g}, capacity {trace_capacity} keys)",
                 ["policy", "where", "misses", "miss ratio"],
                 [["allkeys-lru", "Redis", redis_replay.misses, redis_replay.miss_ratio]]
                 + [[labels[name], "simulator", r.misses, r.miss_ratio]
                    for name, r in simulated.items()])
    result.chart("Miss ratio on the same trace, by policy", "policy",
                 ["Redis allkeys-lru", *(labels[n] for n in simulated)],
                 {"miss ratio": [redis_replay.miss_ratio,
                                 *(r.miss_ratio for r in simulated.values())]})

    lru = by_policy["allkeys-lru"]
    result.add_metrics({
        "maxmemory_bytes": capacity.maxmemory, "capacity_keys": capacity.keys,
        "bytes_per_key": capacity.bytes_per_key, "hot_keys": hot_n,
        "keys_written": stream.keys_written, "evicted_keys": lru.evicted_keys,
        "hot_survival_lru": survival("allkeys-lru"),
        **({"hot_survival_lfu": survival("allkeys-lfu")} if "allkeys-lfu" in by_policy else {}),
        "hot_survival_random": survival("allkeys-random"),
        "oom_errors_noeviction": noeviction.counts.oom_errors,
        "lru_accuracy_samples5": accuracy[5], "lru_accuracy_samples10": accuracy[10],
        "trace_requests": redis_replay.requests, "trace_capacity_keys": trace_capacity,
        "miss_ratio_redis_lru": redis_replay.miss_ratio,
        "miss_ratio_exact_lru": simulated["lru"].miss_ratio,
        "miss_ratio_lfu": simulated["lfu"].miss_ratio,
        "miss_ratio_fifo": simulated["fifo"].miss_ratio,
        "miss_ratio_sieve": simulated["sieve"].miss_ratio,
        "miss_ratio_random": simulated["random"].miss_ratio,
    })

    held_now = len(lru.cold_kept) + lru.hot_kept
    result.check("allkeys-lru evicts once the cache is full",
                 lru.evicted_keys > 0
                 and lru.evicted_keys == stream.keys_written - held_now - lru.expired_keys,
                 f"INFO evicted_keys {lru.evicted_keys}; {stream.keys_written} keys written, "
                 f"{held_now} held, {lru.expired_keys} expired")
    result.check("allkeys-lru keeps at least 95% of the hot set, allkeys-random fewer",
                 survival("allkeys-lru") >= HOT_SURVIVAL_NEEDED
                 and survival("allkeys-random") < survival("allkeys-lru"),
                 f"hot keys kept: allkeys-lru {lru.hot_kept}/{hot_n}, allkeys-random "
                 f"{by_policy['allkeys-random'].hot_kept}/{hot_n}")
    result.check("noeviction refuses writes with OOM and evicts nothing",
                 noeviction.counts.oom_errors > 0 and noeviction.evicted_keys == 0,
                 f"{noeviction.counts.oom_errors} of {noeviction.counts.writes} writes refused "
                 f"({noeviction.counts.first_error or 'no error'}), evicted_keys "
                 f"{noeviction.evicted_keys}")
    runs_text = "; ".join(f"{s} samples: " + ", ".join(f"{t.accuracy:.3f}" for t in ts)
                          + f" (mean {accuracy[s]:.3f})" for s, ts in trials.items())
    result.check("sampling 10 keys is at least as close to exact LRU as sampling 5",
                 accuracy[10] >= accuracy[5],
                 f"share of Redis's evictions exact LRU makes too, {sampling_repeats} runs "
                 f"each: {runs_text}")
    same_trace = (redis_replay.requests == simulated["lru"].requests == len(trace)
                  and (redis_replay.hits, redis_replay.misses)
                  == (seen["keyspace_hits"], seen["keyspace_misses"])
                  and seen["evicted_keys"] > 0)
    result.check("Redis's LRU and exact LRU miss ratios measured on the same trace", same_trace,
                 f"Redis allkeys-lru {redis_replay.miss_ratio:.4f}, exact LRU "
                 f"{simulated['lru'].miss_ratio:.4f} over the same {len(trace)} requests at "
                 f"{trace_capacity} keys; Redis counted {seen['keyspace_misses']} misses "
                 f"(replay {redis_replay.misses}) and {seen['evicted_keys']} evictions"
                 + ("" if seen["evicted_keys"] else
                    " (the trace fits in the cache: raise --trace-keys)"))

    volatile = [by_policy[p] for p in chosen if p.startswith("volatile-")]
    if volatile:
        result.note("volatile-* policies evict only keys with a TTL. The hot keys have none: "
                    + ", ".join(f"{r.policy} kept {r.hot_kept}/{hot_n}" for r in volatile)
                    + ", and evicted cold keys only.")
    if "volatile-ttl" in by_policy:
        kept_ttl = rows[chosen.index("volatile-ttl")][-1]
        result.note(f"volatile-ttl evicts the keys closest to expiring: the cold keys it kept "
                    f"have a mean TTL of {kept_ttl}s, against {mean_ttl}s for all cold keys "
                    f"written.")
    result.note(f"Each key costs about {capacity.bytes_per_key:.0f} bytes of maxmemory for a "
                f"{value_bytes}-byte value; {capacity.keys} fit in "
                f"{maxmemory_mb:g} MB.")
    pace = (f"spread over {trace_seconds:g}s" if trace_seconds else
            "at thousands of requests a second (try --trace-seconds 10 to spread it)")
    result.note(f"Redis's LRU clock counts seconds: keys touched in the same second look "
                f"equally old to it. The trace ran {pace}: compare Redis's miss ratio "
                f"({redis_replay.miss_ratio:.3f}) with exact LRU's "
                f"({simulated['lru'].miss_ratio:.3f}) and random eviction's "
                f"({simulated['random'].miss_ratio:.3f}). The LRU experiment gives keys "
                f"distinct ages, to measure the sampling alone.")
    if simulated["lfu"].misses == simulated["sieve"].misses:
        result.note("LFU and SIEVE missed exactly as often here: both evict a key not read "
                    "since it was cached, oldest first, and the long tail of a Zipf trace "
                    "always leaves such keys in the cache. They part once SIEVE's hand has "
                    "swept the whole cache: try --trace-length 70 --trace-keys 1.5 "
                    "--zipf-s 0.6.")
    result.note("Try --hot-share 0.4 (a hot set nearly as large as the cache), "
                "--policies with volatile-lfu or volatile-random, or a flatter trace with "
                "--zipf-s 0.6.")
    return result
