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

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

from cachelab.errors import ServerStartError
from cachelab.exercise import ExerciseInfo, Opt, Result

if TYPE_CHECKING:
    from cachelab.caching.failover import Event, HealthCheckFailover, Promotion, SequenceWriter
    from cachelab.lab import Lab
    from cachelab.servers.redis_server import RedisServer
    from cachelab.servers.topology import ReplicaSet

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
GIVE_UP_AFTER_S = 15.0   # past the bound, stop waiting for a failover that is not coming
WINDOW_S = 0.5           # the chart's bucket of acknowledged writes


@dataclass
class Scenario:
    """One kill of one primary, and what the writer and the failover did around it."""

    name: str
    writer: SequenceWriter
    replica_set: ReplicaSet
    kill_s: float = 0.0       # the clock just before SIGKILL
    dead_s: float = 0.0       # the clock once the process was reaped
    detected_s: float | None = None  # seconds after the kill
    agreed_s: float | None = None
    switched_s: float | None = None
    new_primary: RedisServer | None = None
    found: set[int] = field(default_factory=set)  # numbers read back on the new primary
    keys_on_new_primary: int = 0
    events: list[tuple[str, Event]] = field(default_factory=list)  # (sentinel, event)
    promotion: Promotion | None = None
    names: dict[tuple[str, int], str] = field(default_factory=dict)  # kept past the stop

    def __post_init__(self) -> None:
        self.names = {_address(s): s.name for s in self.replica_set.servers}

    def name_of(self, address: tuple[str, int]) -> str:
        return self.names.get(address, f"{address[0]}:{address[1]}")

    def since_kill(self, at_s: float | None) -> float | None:
        return None if at_s is None else at_s - self.kill_s

    @property
    def first_ack_after(self) -> float | None:
        """Kill to the reply of the first acknowledged write sent after the kill."""
        write = self.writer.first_acked_since(self.dead_s)
        return None if write is None else write.done_s - self.kill_s

    @property
    def acked(self) -> list[int]:
        from cachelab.caching.failover import ACKED

        return self.writer.numbers(ACKED)

    @property
    def acked_after_kill(self) -> list[int]:
        from cachelab.caching.failover import ACKED

        return [w.n for w in self.writer.writes
                if w.outcome == ACKED and w.sent_s >= self.dead_s]

    @property
    def acked_before_kill(self) -> int:
        from cachelab.caching.failover import ACKED

        return sum(w.outcome == ACKED and w.done_s <= self.kill_s for w in self.writer.writes)

    @property
    def lost(self) -> list[int]:
        return [n for n in self.acked if n not in self.found]

    @property
    def errors(self) -> int:
        from cachelab.caching.failover import FAILED

        return self.writer.counts[FAILED]

    @property
    def phantoms(self) -> int:
        """Keys on the new primary that no write of this run explains (should be none)."""
        return self.keys_on_new_primary - len(self.found)

    def error_kinds(self) -> Counter[str]:
        """Failed writes by the exception redis-py raised."""
        from cachelab.caching.failover import FAILED

        return Counter(w.error.split(":")[0] for w in self.writer.writes
                       if w.outcome == FAILED)


def _address(server: RedisServer) -> tuple[str, int]:
    return server.host, server.port


def _replica_set(lab: Lab, replicas: int, name: str) -> ReplicaSet:
    """A replica set whose primary really streams every write to every replica.

    Equal offsets right after start-up prove little (both are 0): after a diskless sync
    the primary holds a replica's stream until that replica's first REPLCONF ACK, up to
    a second later, and a kill in between would find it empty. A write that WAIT
    confirms on every replica proves the streams flow (the key is deleted again).
    """
    replica_set = lab.replica_set(replicas=replicas, name=name)
    with replica_set.primary.client(socket_timeout=15) as client:
        client.set("failover:ready", 1)
        client.delete("failover:ready")
        confirmed = int(client.execute_command("WAIT", replicas, 10_000))
    if confirmed < replicas:
        raise ServerStartError(f"only {confirmed} of the {replicas} replicas of {name} "
                               "confirmed a write within 10s")
    return replica_set


def _drive(lab: Lab, scenario: Scenario, *, before_kill_s: float, after_s: float,
           give_up_s: float) -> None:
    """Write, kill the primary, write until a write succeeds after it, then a little more."""
    from cachelab.caching.failover import ACKED, FAILED

    writer = scenario.writer

    def snapshot() -> dict[str, Any]:
        return {"scenario": scenario.name, "acknowledged": writer.counts[ACKED],
                "errors": writer.counts[FAILED],
                "since kill s": round(time.monotonic() - scenario.kill_s, 2)
                if scenario.kill_s else "—"}

    with lab.live(f"{INFO.id}: {scenario.name}", snapshot), writer:
        time.sleep(before_kill_s)
        scenario.kill_s = time.monotonic()
        scenario.replica_set.primary.kill()
        scenario.dead_s = time.monotonic()
        give_up_at = scenario.kill_s + give_up_s
        while writer.first_acked_since(scenario.dead_s) is None:
            if time.monotonic() > give_up_at or writer.error is not None:
                break
            time.sleep(0.01)
        else:
            time.sleep(after_s)


def _read_back(scenario: Scenario) -> None:
    """What the new primary holds of the sequence, and how many keys it holds in all."""
    from cachelab.caching.failover import present

    if scenario.new_primary is None:
        return
    with scenario.new_primary.client(socket_timeout=5) as client:
        attempted = [w.n for w in scenario.writer.writes]
        scenario.found = present(client, scenario.writer.prefix, attempted)
        scenario.keys_on_new_primary = int(client.dbsize())


def _server_at(replica_set: ReplicaSet, address: tuple[str, int] | None) -> RedisServer | None:
    return next((r for r in replica_set.replicas if _address(r) == address), None)


def sentinel_failover(lab: Lab, name: str, *, down_after_ms: int, wait_replicas: int,
                      wait_timeout_ms: int, max_rate: float, before_kill_s: float,
                      after_s: float) -> Scenario:
    """Kill the primary of a fresh replica set watched by three Sentinels.

    The set has two replicas, or one more than WAIT asks for, so that WAIT can still be
    satisfied once the primary is gone.
    """
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from cachelab.caching.failover import SentinelEvents, SequenceWriter, switched_to

    replica_set = _replica_set(lab, max(2, wait_replicas + 1), name)
    sentinels = lab.sentinels(replica_set, count=3, quorum=2, down_after_ms=down_after_ms,
                              service=SERVICE)
    sentinel = lab.closing(sentinels.client())
    # No retries inside redis-py: every failed write is seen and counted by the writer.
    primary = sentinel.master_for(SERVICE, socket_timeout=0.5, socket_connect_timeout=0.5,
                                  retry=Retry(NoBackoff(), 0))
    lab.callback(primary.close)
    writer = SequenceWriter(lambda: primary, max_rate=max_rate, wait_replicas=wait_replicas,
                            wait_timeout_ms=wait_timeout_ms)
    scenario = Scenario(name, writer, replica_set)
    recorders = {s.name.rsplit("-", 1)[1]: SentinelEvents(s.client(socket_timeout=5))
                 for s in sentinels.servers}
    try:
        for recorder in recorders.values():
            recorder.start()
        _drive(lab, scenario, before_kill_s=before_kill_s, after_s=after_s,
               give_up_s=down_after_ms / 1000 + GIVE_UP_AFTER_S)
    finally:
        for recorder in recorders.values():
            recorder.stop()
            recorder.client.close()
    scenario.events = sorted(((f"sentinel-{i}", e) for i, r in recorders.items()
                              for e in r.events), key=lambda pair: pair[1].at_s)

    def first(channel: str, about: str = "master") -> Event | None:
        return next((e for _, e in scenario.events
                     if e.channel == channel and e.data.startswith(about)), None)

    sdown, odown, switch = first("+sdown"), first("+odown"), first("+switch-master", SERVICE)
    scenario.detected_s = scenario.since_kill(sdown.at_s if sdown else None)
    scenario.agreed_s = scenario.since_kill(odown.at_s if odown else None)
    scenario.switched_s = scenario.since_kill(switch.at_s if switch else None)
    scenario.new_primary = _server_at(replica_set, switched_to(switch) if switch else None)
    _read_back(scenario)
    sentinels.stop()  # the next scenario runs on a quiet machine
    replica_set.stop()
    return scenario


def healthcheck_failover(lab: Lab, *, interval_ms: int, timeout_ms: int, failures: int,
                         max_rate: float, before_kill_s: float, after_s: float
                         ) -> tuple[Scenario, HealthCheckFailover, bool, str]:
    """Kill the primary of a fresh replica set watched by the hand-made health check.

    Returns the scenario, the health check, and whether (with a description) the other
    replica follows the promoted one afterwards.
    """
    from cachelab.caching.failover import HealthCheckFailover, SequenceWriter

    replica_set = _replica_set(lab, 2, "healthcheck")
    health = HealthCheckFailover(_address(replica_set.primary),
                                 [_address(r) for r in replica_set.replicas],
                                 interval_s=interval_ms / 1000, timeout_s=timeout_ms / 1000,
                                 failures=failures)
    writer = SequenceWriter(health.client, max_rate=max_rate)
    scenario = Scenario("health check", writer, replica_set)
    with health:
        _drive(lab, scenario, before_kill_s=before_kill_s, after_s=after_s,
               give_up_s=failures * (interval_ms + timeout_ms) / 1000 + GIVE_UP_AFTER_S)
    if health.promotions:
        promotion = scenario.promotion = health.promotions[0]
        scenario.detected_s = scenario.since_kill(promotion.down_at_s)
        scenario.switched_s = scenario.since_kill(promotion.promoted_at_s)
        scenario.new_primary = _server_at(replica_set, promotion.promoted)
    _read_back(scenario)
    followed, how = _followers_attached(scenario)
    replica_set.stop()
    return scenario, health, followed, how


def _followers_attached(scenario: Scenario, timeout_s: float = 5.0) -> tuple[bool, str]:
    """Every other replica replicates from the promoted one, link up (polled)."""
    from cachelab.workload.poll import poll_until
    from cachelab.workload.redis_info import info

    new = scenario.new_primary
    if new is None or scenario.promotion is None:
        return False, "nothing was promoted"
    others = [r for r in scenario.replica_set.replicas if r is not new]
    states: list[dict[str, Any]] = []  # the last answers, attached or not
    role = ""

    def attached() -> bool:
        nonlocal states, role
        states = [info(r, "replication") for r in others]
        role = info(new, "replication")["role"]
        return role == "master" and all(
            s["role"] == "slave" and int(s["master_port"]) == new.port
            and s["master_link_status"] == "up" for s in states)

    ok = bool(poll_until(attached, timeout_s=timeout_s, interval_s=0.05, error=None,
                         what="every other replica attached to the promoted one"))
    return ok, (f"{new.name} is {role}; " + "; ".join(
        f"{r.name} is {s['role']} of port {s.get('master_port', '—')}, link "
        f"{s.get('master_link_status', '—')}" for r, s in zip(others, states, strict=True)))


def _seconds(value: float | None) -> str | float:
    return "—" if value is None else round(value, 3)


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
    result = Result(INFO)
    common: dict[str, Any] = {"max_rate": max_rate, "before_kill_s": before_kill_s,
                              "after_s": after_failover_s}
    plain = sentinel_failover(lab, "sentinel-async", down_after_ms=down_after_ms,
                              wait_replicas=0, wait_timeout_ms=wait_timeout_ms, **common)
    waited = sentinel_failover(lab, "sentinel-wait", down_after_ms=down_after_ms,
                               wait_replicas=wait_replicas, wait_timeout_ms=wait_timeout_ms,
                               **common)
    hand, health, followed, how = healthcheck_failover(
        lab, interval_ms=hc_interval_ms, timeout_ms=hc_timeout_ms, failures=hc_failures,
        **common)
    scenarios = (plain, waited, hand)

    from cachelab.caching.failover import UNCONFIRMED

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
          *(_seconds(s.detected_s) for s in scenarios)],
         ["agreed down (+odown)",
          _seconds(plain.agreed_s), _seconds(waited.agreed_s), "no quorum"],
         ["new primary (+switch-master / promoted)",
          *(_seconds(s.switched_s) for s in scenarios)],
         ["first acknowledged write on it",
          *(_seconds(s.first_ack_after) for s in scenarios)],
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
         for who, event in _firsts(plain.events)])

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
                 {label: _acks_per_window(s, edges) for label, s in
                  zip(labels, scenarios, strict=True)})

    # Checks, decided from this run's writes, events and read-backs.
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
        f"first acknowledged write on the new primary {_seconds(plain.first_ack_after)} s "
        f"after the kill with Sentinel, {_seconds(waited.first_ack_after)} s with WAIT "
        f"(bound {bound_s:g} s: down-after {down_after_ms} ms + {FAILOVER_MARGIN_S:g} s); "
        f"the health check took {_seconds(hand.first_ack_after)} s")
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


def _firsts(events: list[tuple[str, Event]]) -> list[tuple[str, Event]]:
    """The first announcement of each event, in time order."""
    seen: set[str] = set()
    firsts = []
    for who, event in events:
        if event.channel not in seen:
            seen.add(event.channel)
            firsts.append((who, event))
    return firsts


def _acks_per_window(scenario: Scenario, edges: list[float]) -> list[int]:
    from cachelab.caching.failover import ACKED

    counts = [0] * len(edges)
    for write in scenario.writer.writes:
        if write.outcome == ACKED:
            i = int((write.done_s - scenario.kill_s - edges[0]) // WINDOW_S)
            if 0 <= i < len(counts):
                counts[i] += 1
    return counts
