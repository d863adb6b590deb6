"""Pub/sub invalidation between services, and what a disconnected subscriber misses.

Several service processes each keep user profiles in an in-process cache in front of
the shared Redis. The shared data lives in Redis itself (the shop's profiles, loaded
once), because Redis's client-side tracking can only watch Redis keys: so all four
strategies work on the same data, each on its own copy of it. A service that updates a
profile drops its own copy and announces the write; the others drop theirs. The same
seeded stream of updates and reads is played without any bus, with pub/sub, with a
Redis Stream and with ``CLIENT TRACKING``, and every read is compared with Redis.

Propagation runs from the writer's wall clock just before it sent the write and its
message to the subscriber's wall clock right after it dropped the entry
(``time.time_ns`` on the same machine). The propagation window of an update closes
when every other service has dropped it (at most ``--window-s``); reads come after it.
Then one service disconnects for real (it closes its connection to the bus) while
the others keep writing, reconnects, and is read again.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

from cachelab.caching.invalidation import BUSES, STREAM_MAXLEN, TRACKING_CHANNEL, Bus
from cachelab.children.fleet import (
    InvalidationDriver,
    play_stream,
    seeded_stream,
    start_services,
)
from cachelab.children.service import data_key
from cachelab.exercise import ExerciseInfo, Opt, Result
from cachelab.workload.measure import LATENCY_COLUMNS, latency_row

if TYPE_CHECKING:
    from cachelab.lab import Lab

INFO = ExerciseInfo(
    id="exercise-12",
    slug="pubsub-invalidation",
    title="Pub/sub invalidation between services",
    concept="Cache invalidation in distributed systems",
    scenario=(
        "Several services each cache user profiles in their own memory, in front of one "
        "shared Redis. When one service updates a profile, every other service must drop "
        "its copy, or it keeps serving the old one. The updater publishes an invalidation "
        "on a Redis pub/sub channel that every service subscribes to. Pub/sub delivers at "
        "most once, though: a service that is disconnected at that moment never hears of "
        "it. A Redis Stream read from a remembered offset, and Redis's own client-side "
        "tracking, are the two remedies compared side by side."
    ),
    walkthrough=(
        "Start a Redis and load the shop's user profiles into it, one copy per strategy "
        "(no bus, pub/sub, stream, tracking); start the service processes, each with an "
        "in-process cache per strategy and a subscriber on each bus.",
        "Warm every service's cache, then play one seeded stream of updates: a random "
        "service writes a profile and announces it (PUBLISH or XADD in the same MULTI as "
        "the write; with tracking, Redis itself sends the key name to each service's "
        "redirect connection).",
        "After each update, wait until every other service has dropped the entry, "
        "measuring the propagation from publish to drop, then read the profile and a "
        "few others from every service and compare each with Redis.",
        "Play the same stream with no bus at all: the other services keep serving the "
        "old profiles.",
        "On each bus, disconnect one service for real while the others keep updating, "
        "reconnect it, and count the invalidations it missed and the stale profiles it "
        "serves: pub/sub loses them, the stream replays them from the reader's last id, "
        "and tracking flushes the whole local cache on reconnect.",
    ),
    fixtures=("redis", "shop-db", "service-processes"),
    checks=(
        "no stale reads with the pub/sub bus after the propagation window",
        "stale reads without the bus",
        "a disconnected pub/sub subscriber misses invalidations, then serves stale data",
        "a stream reader resuming from its offset misses no invalidation",
        "client-side tracking serves no stale data, reconnect included",
        "every disconnect was real: the connection left Redis and came back",
    ),
    metrics=(
        "services", "keys", "updates", "updates_while_disconnected", "reads_checked",
        "propagation_p50_ms", "propagation_p99_ms", "stream_propagation_p50_ms",
        "tracking_propagation_p50_ms", "stale_reads_with_bus", "stale_reads_without_bus",
        "missed_invalidations_pubsub", "missed_invalidations_stream",
        "missed_invalidations_tracking", "stale_reads_after_reconnect_pubsub",
        "stale_reads_after_reconnect_stream", "stale_reads_tracking", "tracking_flushed_entries",
    ),
    headline="stale_reads_without_bus",
)

WITH_SUBSCRIBERS: tuple[Bus, ...] = ("pubsub", "stream", "tracking")


def run(
    lab: Lab,
    *,
    services: Annotated[int, Opt("Service processes, each with its own caches.", min=3,
                                 max=8)] = 3,
    keys: Annotated[int, Opt("User profiles shared by the services.", min=10, max=1000)] = 200,
    updates: Annotated[int, Opt("Updates in the stream each strategy plays.", min=5,
                                max=5000)] = 40,
    disconnected_updates: Annotated[int, Opt("Updates while one service is disconnected.",
                                             min=1, max=1000)] = 10,
    reads_per_update: Annotated[int, Opt("Other profiles read from every service after "
                                         "each update.", min=0, max=50)] = 3,
    window_s: Annotated[float, Opt("Longest propagation window: how long an update may take "
                                   "to reach every service.", min=0.1, max=30)] = 2.0,
) -> Result:
    result = Result(INFO)
    server = lab.redis_server()
    client = lab.closing(server.client())
    db = lab.shop()
    profiles = db.rows("SELECT user_id AS id, bio, version FROM profiles ORDER BY user_id "
                       "LIMIT ?", [keys])
    n_keys = len(profiles)
    pipe = client.pipeline(transaction=False)
    for bus in BUSES:
        for profile in profiles:
            pipe.set(data_key(bus, profile["id"], server.keys.prefix), json.dumps(profile))
    pipe.execute()

    fleet = start_services(lab, client, server, services)
    driver = InvalidationDriver(client, fleet, window_s, server.keys.prefix)
    steps, away_steps = seeded_stream(lab, n_keys, services, updates, disconnected_updates,
                                      reads_per_update)
    runs = {bus: play_stream(lab, driver, bus, steps, away_steps, n_keys) for bus in BUSES}
    none, pubsub, stream, tracking = (runs[b] for b in BUSES)
    away = fleet[-1].name
    stats: list[dict[str, Any]] = [service.request("stats")["caches"] for service in fleet]

    result.table("Strategies (every service connected)",
                 ["strategy", "reads", "stale reads", "invalidations dropped",
                  "late (window missed)", "local hits"],
                 [[bus, o.reads, o.stale_reads, o.propagation.count, o.late,
                   sum(s[bus]["hits"] for s in stats)] for bus, o in runs.items()])
    result.table("Propagation, publish to drop (ms)", LATENCY_COLUMNS,
                 [latency_row(bus, runs[bus].propagation) for bus in WITH_SUBSCRIBERS])
    result.table(f"{away} disconnected for {disconnected_updates} updates",
                 ["bus", "its connection gone", "invalidations missed",
                  "reads after reconnect", "stale after reconnect", "entries flushed"],
                 [[bus, o.gone_while_disconnected, o.missed, o.reads_after_reconnect,
                   o.stale_after_reconnect, o.flushed]
                  for bus, o in runs.items() if bus != "none"])
    result.chart("Stale reads", "strategy", list(BUSES),
                 {"while connected": [runs[b].stale_reads for b in BUSES],
                  "after a reconnect": [runs[b].stale_after_reconnect for b in BUSES]})

    stale_tracking = tracking.stale_reads + tracking.stale_after_reconnect
    result.add_metrics({
        "services": services, "keys": n_keys, "updates": updates,
        "updates_while_disconnected": disconnected_updates,
        "reads_checked": sum(o.reads + o.reads_after_reconnect for o in runs.values()),
        "propagation_p50_ms": pubsub.propagation.percentile_ms(50),
        "propagation_p99_ms": pubsub.propagation.percentile_ms(99),
        "stream_propagation_p50_ms": stream.propagation.percentile_ms(50),
        "tracking_propagation_p50_ms": tracking.propagation.percentile_ms(50),
        "stale_reads_with_bus": pubsub.stale_reads,
        "stale_reads_without_bus": none.stale_reads,
        "missed_invalidations_pubsub": pubsub.missed,
        "missed_invalidations_stream": stream.missed,
        "missed_invalidations_tracking": tracking.missed,
        "stale_reads_after_reconnect_pubsub": pubsub.stale_after_reconnect,
        "stale_reads_after_reconnect_stream": stream.stale_after_reconnect,
        "stale_reads_tracking": stale_tracking,
        "tracking_flushed_entries": tracking.flushed,
    })

    expected = (updates + disconnected_updates) * (services - 1) - disconnected_updates
    result.check("no stale reads with the pub/sub bus after the propagation window",
                 pubsub.reads > 0 and pubsub.stale_reads == 0 and pubsub.late == 0
                 and pubsub.propagation.count == expected,
                 f"{pubsub.stale_reads} of {pubsub.reads} reads stale; "
                 f"{pubsub.propagation.count}/{expected} invalidations dropped within "
                 f"{window_s:g}s (p99 {pubsub.propagation.percentile_ms(99):.2f} ms), "
                 f"{pubsub.late} late")
    result.check("stale reads without the bus", none.stale_reads > 0,
                 f"{none.stale_reads} of {none.reads} reads served an older version than "
                 "Redis held")
    result.check("a disconnected pub/sub subscriber misses invalidations, then serves stale data",
                 pubsub.missed > 0 and pubsub.stale_after_reconnect > 0,
                 f"{away} missed {pubsub.missed} of {disconnected_updates} invalidations and "
                 f"served {pubsub.stale_after_reconnect} of {pubsub.reads_after_reconnect} "
                 "changed profiles stale after it reconnected")
    result.check("a stream reader resuming from its offset misses no invalidation",
                 stream.missed == 0 and stream.stale_after_reconnect == 0
                 and stream.stale_reads == 0 and stream.late == 0,
                 f"{away} missed {stream.missed} of {disconnected_updates} and served "
                 f"{stream.stale_after_reconnect} of {stream.reads_after_reconnect} stale after "
                 f"reconnecting; {stream.stale_reads} stale reads, {stream.late} late, overall")
    result.check("client-side tracking serves no stale data, reconnect included",
                 tracking.reads > 0 and stale_tracking == 0 and tracking.late == 0
                 and tracking.flushed > 0,
                 f"{stale_tracking} of {tracking.reads + tracking.reads_after_reconnect} reads "
                 f"stale; Redis dropped {tracking.missed} invalidations while {away} was "
                 f"away, and it flushed {tracking.flushed} entries on reconnect")
    real = [runs[b].gone_while_disconnected and runs[b].back_after_reconnect
            for b in WITH_SUBSCRIBERS]
    result.check("every disconnect was real: the connection left Redis and came back", all(real),
                 ", ".join(f"{bus}: {'yes' if ok else 'no'}"
                           for bus, ok in zip(WITH_SUBSCRIBERS, real, strict=True))
                 + " (CLIENT LIST, by connection name)")

    result.note("Pub/sub is fire-and-forget: Redis keeps no message for a subscriber that is "
                "not there. Its stale profiles stay until their entries are dropped some "
                "other way (a TTL on local entries bounds that).")
    result.note("The stream remedy holds only while the reader's offset is still in the "
                f"stream (trimmed to about {STREAM_MAXLEN} entries here): a reader away for longer "
                "must flush, like tracking does.")
    result.note("Tracking here uses RESP2 with REDIRECT to a subscribed connection. With RESP3 "
                "(redis-py protocol=3) invalidations arrive as push messages on the data "
                "connection itself, and a broken redirect is reported as tracking-redir-broken.")
    if lab.shared:
        result.note(f"On this shared Redis every key, channel, stream and connection name "
                    f"starts with {server.keys.prefix!r}, except {TRACKING_CHANNEL}, the channel "
                    "Redis sends a redirect connection its invalidations on. Other clients' "
                    "traffic adds to the propagation times.")
    return result
