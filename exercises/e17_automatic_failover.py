"""Automatic failover: the primary is SIGKILLed while a client writes a numbered sequence.

A primary with two replicas is watched by three Sentinels (quorum 2). A client that
asks Sentinel where the primary is writes ``seq:1``, ``seq:2``, ... and records which
writes were acknowledged. The primary is killed with SIGKILL; the run times when
Sentinel saw it down and when the client's writes succeed again on the promoted replica,
then reads the new primary back and counts the acknowledged writes that did not survive.
The same happens with ``WAIT`` after every write, and with a hand-made health check
(PING with a timeout, promote the most up-to-date replica) in place of Sentinel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from cachelab.exercise import ExerciseInfo, Opt, Result

if TYPE_CHECKING:
    from cachelab.lab import Lab

INFO = ExerciseInfo(
    id="exercise-17",
    slug="automatic-failover",
    title="Automatic failover of the cache's primary",
    concept="Cache reliability and high availability",
    scenario=(
        "The cache runs as a primary with two replicas, and the application keeps "
        "writing to it. Then the primary's machine dies without a word. Something must "
        "notice, pick a replica, promote it and send the application there: Redis "
        "Sentinel, or a health check written by hand. How long are writes refused, and "
        "were writes the application was told had succeeded lost on the way?"
    ),
    walkthrough=(
        "Start a primary with two replicas and three Sentinels (quorum 2) with a short "
        "down-after-milliseconds; wait until they know the replicas and each other.",
        "Write a numbered sequence through redis-py's Sentinel-aware client, recording "
        "every write as acknowledged or failed, and listen to every Sentinel's "
        "+sdown, +odown and +switch-master announcements.",
        "SIGKILL the primary; time detection, the switch, and the first acknowledged "
        "write on the new primary; then read the new primary back and count the "
        "acknowledged writes missing from it.",
        "Repeat on a fresh replica set with WAIT after every write, a write counting as "
        "acknowledged only when WAIT says a replica has it.",
        "Repeat once more without Sentinel: PING the primary with a timeout, and after N "
        "failures in a row promote the replica with the highest replication offset "
        "(REPLICAOF NO ONE), send the writer there, and repoint the other replica.",
    ),
    fixtures=("redis-primary", "redis-replicas", "redis-sentinels"),
    checks=(
        "writes succeed on a new primary after the kill",
        "failover completes within down_after_ms plus 5 seconds",
        "lost acknowledged writes are counted, and zero with WAIT",
        "the health check promotes the most up-to-date replica and repoints the other",
    ),
    metrics=(
        "down_after_ms", "detection_s", "sdown_s", "switch_master_s", "failover_s", "write_errors",
        "acked_writes", "lost_acked_writes", "detection_s_wait", "failover_s_wait",
        "write_errors_wait", "acked_writes_wait", "unconfirmed_writes_wait",
        "lost_acked_writes_wait", "detection_s_healthcheck", "failover_s_healthcheck",
        "write_errors_healthcheck", "acked_writes_healthcheck", "lost_acked_writes_healthcheck",
    ),
    headline="failover_s",
    own_servers="kills the primary of a Sentinel group it starts",
)

SERVICE = "mymaster"
FAILOVER_MARGIN_S = 5.0  # the bound: down-after-milliseconds plus five seconds
WINDOW_S = 0.5           # the chart's bucket of acknowledged writes


def run(
    lab: Lab,
    *,
    down_after_ms: Annotated[int, Opt("Sentinel's down-after-milliseconds: silence before "
                                      "a Sentinel calls the primary down.",
                                      min=100, max=60000)] = 1000,
    before_kill_s: Annotated[float, Opt("Seconds of writing before the kill.",
                                        min=0.1, max=60)] = 0.4,
    after_failover_s: Annotated[float, Opt("Seconds of writing after the first write "
                                           "that succeeds on the new primary.",
                                           min=0.05, max=60)] = 0.25,
    max_rate: Annotated[int, Opt("The writer's most writes a second.",
                                 min=10, max=50000)] = 2000,
    wait_replicas: Annotated[int, Opt("Replicas WAIT must report in the WAIT scenario "
                                      "(which gets one replica more than that).",
                                      min=1, max=4)] = 1,
    wait_timeout_ms: Annotated[int, Opt("How long WAIT may block after each write.",
                                        min=1, max=5000)] = 100,
    hc_interval_ms: Annotated[int, Opt("Health check: milliseconds between two PINGs.",
                                       min=10, max=10000)] = 100,
    hc_timeout_ms: Annotated[int, Opt("Health check: a PING's timeout in milliseconds.",
                                      min=10, max=10000)] = 100,
    hc_failures: Annotated[int, Opt("Health check: failed PINGs in a row that trigger "
                                    "the failover.", min=1, max=50)] = 3,
) -> Result:
    from cachelab.caching.failover import (
        UNCONFIRMED,
        first_of_each,
        healthcheck_failover,
        sentinel_failover,
    )

    def seconds(value: float | None) -> str | float:
        return "—" if value is None else round(value, 3)

    result = Result(INFO)
    common: dict[str, Any] = {"max_rate": max_rate, "before_kill_s": before_kill_s,
                              "after_s": after_failover_s, "live": lab.live}

    # 1. Sentinel over async replication: SIGKILL the primary while the client writes.
    replica_set = lab.replica_set(replicas=2, name="sentinel-async")
    plain = sentinel_failover(
        replica_set, lab.sentinels(replica_set, count=3, quorum=2,
                                   down_after_ms=down_after_ms, service=SERVICE),
        name="sentinel-async", title=f"{INFO.id}: sentinel-async", service=SERVICE,
        down_after_ms=down_after_ms, wait_replicas=0, wait_timeout_ms=wait_timeout_ms,
        **common)
    # 2. The same with WAIT after every write, on one replica more than WAIT asks for,
    #    so that WAIT can still be satisfied once the primary is gone.
    replica_set = lab.replica_set(replicas=max(2, wait_replicas + 1), name="sentinel-wait")
    waited = sentinel_failover(
        replica_set, lab.sentinels(replica_set, count=3, quorum=2,
                                   down_after_ms=down_after_ms, service=SERVICE),
        name="sentinel-wait", title=f"{INFO.id}: sentinel-wait", service=SERVICE,
        down_after_ms=down_after_ms, wait_replicas=wait_replicas,
        wait_timeout_ms=wait_timeout_ms, **common)
    # 3. No Sentinel: a hand-made health check PINGs and promotes.
    hand, health, followed, how = healthcheck_failover(
        lab.replica_set(replicas=2, name="healthcheck"), title=f"{INFO.id}: health check",
        interval_ms=hc_interval_ms, timeout_ms=hc_timeout_ms, failures=hc_failures,
        **common)
    scenarios = (plain, waited, hand)

    # 4. Measure: the numbers each run produced, read back from each new primary.
    bound_s = down_after_ms / 1000 + FAILOVER_MARGIN_S
    result.add_metrics({
        "down_after_ms": down_after_ms,
        "detection_s": plain.agreed_s if plain.agreed_s is not None else -1.0,
        "sdown_s": plain.detected_s if plain.detected_s is not None else -1.0,
        "switch_master_s": plain.switched_s if plain.switched_s is not None else -1.0,
        "failover_s": plain.first_ack_after if plain.first_ack_after is not None else -1.0,
        "write_errors": plain.errors,
        "acked_writes": len(plain.acked),
        "lost_acked_writes": len(plain.lost),
        "detection_s_wait": waited.agreed_s if waited.agreed_s is not None else -1.0,
        "failover_s_wait": (waited.first_ack_after if waited.first_ack_after is not None
                            else -1.0),
        "write_errors_wait": waited.errors,
        "acked_writes_wait": len(waited.acked),
        "unconfirmed_writes_wait": waited.writer.counts[UNCONFIRMED],
        "lost_acked_writes_wait": len(waited.lost),
        "detection_s_healthcheck": hand.detected_s if hand.detected_s is not None else -1.0,
        "failover_s_healthcheck": (hand.first_ack_after if hand.first_ack_after is not None
                                   else -1.0),
        "write_errors_healthcheck": hand.errors,
        "acked_writes_healthcheck": len(hand.acked),
        "lost_acked_writes_healthcheck": len(hand.lost),
    })

    labels = ["Sentinel", f"Sentinel + WAIT {wait_replicas}", "health check"]
    result.table(
        "The primary SIGKILLed: seconds after the kill, and the writes around it",
        ["", *labels],
        [["seen down (+sdown / failed PINGs)",
          *(seconds(s.detected_s) for s in scenarios)],
         ["agreed down (+odown)",
          seconds(plain.agreed_s), seconds(waited.agreed_s), "no quorum"],
         ["new primary (+switch-master / promoted)",
          *(seconds(s.switched_s) for s in scenarios)],
         ["first acknowledged write on it",
          *(seconds(s.first_ack_after) for s in scenarios)],
         ["promoted", *(s.new_primary.name if s.new_primary else "none"
                           for s in scenarios)],
         ["writes sent", *(len(s.writer.writes) for s in scenarios)],
         ["write errors", *(s.errors for s in scenarios)],
         ["WAIT fell short (not acknowledged)", "—",
          waited.writer.counts[UNCONFIRMED], "—"],
         ["acknowledged writes", *(len(s.acked) for s in scenarios)],
         ["… of them before the kill", *(s.acked_before_kill for s in scenarios)],
         ["acknowledged writes lost", *(len(s.lost) for s in scenarios)],
         ["keys on the new primary", *(s.keys_on_new_primary for s in scenarios)]])

    kinds = [s.error_kinds() for s in scenarios]
    result.table(
        "Write errors by kind (no retries: each is a write the application saw fail)",
        ["error", *labels],
        [[kind, *(k[kind] for k in kinds)]
         for kind in sorted(set().union(*kinds), key=lambda k: -sum(c[k] for c in kinds))]
        or [["none", 0, 0, 0]])

    result.table(
        "What the Sentinels announced (Sentinel run, first of each event)",
        ["event", "announced by", "s after kill", "message"],
        [[event.channel, who, round(event.at_s - plain.kill_s, 3), event.data]
         for who, event in first_of_each(plain.events)])

    promotion = hand.promotion
    if promotion is not None:
        result.table(
            f"The health check's choice (PING every {hc_interval_ms} ms, timeout "
            f"{hc_timeout_ms} ms, {hc_failures} failures)",
            ["replica", "replication offset", "became"],
            [[hand.name_of(address), "no answer" if offset is None else offset,
              "primary" if address == promotion.promoted else
              ("replica of the new primary" if address in promotion.repointed
               else "left alone")]
             for address, offset in promotion.offsets.items()])

    start = -before_kill_s
    end = max((w.done_s - s.kill_s for s in scenarios for w in s.writer.writes[-1:]),
              default=0.0)
    edges = [start + i * WINDOW_S for i in range(int((end - start) / WINDOW_S) + 1)]
    result.chart(f"Acknowledged writes per {WINDOW_S * 1000:.0f} ms around the kill",
                 "s after kill", [round(x, 2) for x in edges],
                 {label: s.acks_per_window(edges, WINDOW_S) for label, s in
                  zip(labels, scenarios, strict=True)})

    # 5. Checks, decided from this run's writes, events and read-backs.
    moved = [s for s in scenarios if s.new_primary is not None and s.acked_after_kill
             and set(s.acked_after_kill) <= s.found]
    result.check("writes succeed on a new primary after the kill", len(moved) == 3,
                 "; ".join(f"{label}: " + (
                     f"{len(s.acked_after_kill)} writes sent after the kill acknowledged, "
                     f"{len(set(s.acked_after_kill) & s.found)} of them read back on "
                     f"{s.new_primary.name}" if s.new_primary is not None
                     else "no replica was promoted")
                     for label, s in zip(labels, scenarios, strict=True)))
    sentinel_runs = (plain, waited)
    result.check(
        "failover completes within down_after_ms plus 5 seconds",
        all(s.first_ack_after is not None and s.first_ack_after <= bound_s
            for s in sentinel_runs),
        f"first acknowledged write on the new primary {seconds(plain.first_ack_after)} s "
        f"after the kill with Sentinel, {seconds(waited.first_ack_after)} s with WAIT "
        f"(bound {bound_s:g} s: down-after {down_after_ms} ms + {FAILOVER_MARGIN_S:g} s); "
        f"the health check took {seconds(hand.first_ack_after)} s")
    counted = all(s.new_primary is not None and s.phantoms == 0 for s in scenarios)
    result.check(
        "lost acknowledged writes are counted, and zero with WAIT",
        counted and waited.acked_before_kill > 0 and not waited.lost,
        f"read back from each new primary: {len(plain.lost)} of {len(plain.acked)} "
        f"acknowledged writes lost with async replication, {len(waited.lost)} of "
        f"{len(waited.acked)} with WAIT {wait_replicas} ({waited.acked_before_kill} "
        f"acknowledged before the kill), {len(hand.lost)} of {len(hand.acked)} with the "
        "health check; every key on the new primaries is a write of this run"
        if counted else "a new primary to read back was missing, or it held keys no "
        "write of this run explains: "
        + ", ".join(f"{s.name}: {s.phantoms} unexplained" for s in scenarios))
    offsets = promotion.offsets if promotion else {}
    best = max((o for o in offsets.values() if o is not None), default=None)
    result.check(
        "the health check promotes the most up-to-date replica and repoints the other",
        promotion is not None and best is not None
        and offsets[promotion.promoted] == best and followed,
        ("promoted " + hand.name_of(promotion.promoted)
         + f" at offset {offsets[promotion.promoted]} (highest: {best}) after "
         f"{health.checks} health checks; " + how) if promotion else
        f"no promotion after {health.checks} health checks")

    result.note(
        "Detection is not the outage: Sentinel needs down-after-milliseconds of silence, "
        "then a quorum (+odown), a leader election and a promotion before it announces "
        "the new primary, and the client only finds it when its next connection asks. "
        "Write errors in between are writes the application must retry or give up.")
    result.note(
        f"Async replication lost {len(plain.lost)} acknowledged writes in this run. The "
        "primary sends a write to its replicas in the same event-loop turn as the reply, "
        "so on one machine a kill rarely falls in between; with a replica that lags "
        "(across a network, or busy), the writes acknowledged just before the crash "
        "are the ones lost. WAIT counts a write only once a replica has it, and the "
        "promoted replica is the one with the highest offset, hence "
        f"{len(waited.lost)} lost with WAIT.")
    result.note(
        "The hand-made health check was faster here because it decides alone, after "
        f"{hc_failures} failed PINGs: no quorum, no election. That is also its risk: an "
        "observer cut off from a healthy primary promotes a second primary (split brain). "
        "Try --down-after-ms 3000, --hc-failures 10, or --wait-replicas 2.")
    return result

