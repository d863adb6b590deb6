"""Cache and database in sync as comments are posted: a transactional outbox and its listener.

Writers post comments through the application's unchanged ``post_comment``. A SQLite
trigger records each one in ``comment_outbox`` inside the same transaction, and a
listener process applies the outbox to Redis right after the commit: each post's
latest comments and its comment count, eagerly, with its progress stored atomically
with every update. The listener is killed with SIGKILL while comments keep coming,
and restarted; it resumes from the outbox.

The sync lag runs from the moment ``post_comment`` returned to its writer to the moment
the listener's script ran in Redis (Redis's clock, the same wall clock). ``sync_lag_*``
covers the comments that reached the cache while the listener was up and caught up;
those whose way crossed an outage, from a kill until the restarted listener had applied
the backlog, are counted apart (``outage_*``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

from cachelab.caching.outbox import CommentCache, count_key, install_outbox
from cachelab.children.outbox import ListenerProcess
from cachelab.exercise import ExerciseInfo, Opt, Result
from cachelab.shop.database import WORDS
from cachelab.workload.live import StreamWriters
from cachelab.workload.measure import LATENCY_COLUMNS, LatencyHistogram, key_sampler, latency_row
from cachelab.workload.poll import poll_until

if TYPE_CHECKING:
    from cachelab.lab import Lab

INFO = ExerciseInfo(
    id="exercise-5",
    slug="cache-db-sync",
    title="Cache and database in sync as comments are posted",
    concept="Eager population through a transactional outbox",
    scenario=(
        "Readers see each post's latest comments and comment count from Redis, so a new "
        "comment must reach the cache as soon as it is in the database, and never twice. "
        "The database itself records every new comment in an outbox, in the same "
        "transaction, and a listener process carries the outbox to the cache. It is "
        "killed mid-stream and must resume without losing or repeating a comment."
    ),
    walkthrough=(
        "Build the shop database, add the comment_outbox table and an AFTER INSERT trigger "
        "on comments that fills it, and load every post's latest comments and count into "
        "Redis from one snapshot, with the outbox position it corresponds to.",
        "Start the listener process: it polls the outbox and applies new entries with a "
        "Lua script that pushes the comment, trims the list, increments the count and "
        "records the last applied outbox id, all at once.",
        "Let several writer threads post a seeded stream of comments onto a few hot posts.",
        "Kill the listener with SIGKILL partway, let the outbox pile up, then restart it a "
        "few entries back, as a redelivering source would: it resumes from the outbox and "
        "skips what it had applied.",
        "When the writers are done and the outbox is drained, compare every post's cached "
        "comments and count with the database, account for every comment, and measure the "
        "lag from each commit to its cache update.",
    ),
    fixtures=("redis", "shop-db", "listener-process"),
    checks=(
        "every comment committed with its outbox entry",
        "the killed listener resumed from the outbox",
        "redelivered entries were skipped, not applied again",
        "no comment lost or duplicated, restart included",
        "every post's cached comments and count equal the database",
        "sync lag from commit to cache measured for every comment",
    ),
    metrics=(
        "writers", "comments_posted", "posts", "outbox_entries", "divergent_posts", "lost_comments",
        "duplicate_comments", "listener_restarts", "resumed_backlog", "redelivered_skipped",
        "sync_lag_p50_ms", "sync_lag_p99_ms", "sync_lag_max_ms", "outage_comments",
        "outage_lag_max_ms",
    ),
    headline="sync_lag_p50_ms",
    own_servers="kills and restarts its Redis server to show what the sync survives",
)


def run(
    lab: Lab,
    *,
    writers: Annotated[int, Opt("Writer threads posting comments at once.", min=1,
                                max=32)] = 4,
    comments: Annotated[int, Opt("Comments posted in all.", min=50)] = 2000,
    posts: Annotated[int, Opt("Hot posts the comments go to (Zipf).", min=1, max=1000)] = 20,
    list_size: Annotated[int, Opt("Latest comments cached per post.", min=1, max=100)] = 10,
    kills: Annotated[int, Opt("Times the listener is killed (SIGKILL) and restarted.",
                              min=1, max=5)] = 1,
    rewind: Annotated[int, Opt("Entries a restarted listener is delivered again.", min=1,
                               max=1000)] = 25,
    batch: Annotated[int, Opt("Outbox entries applied per script call.", min=1,
                              max=1000)] = 100,
    poll_ms: Annotated[float, Opt("Listener's pause when the outbox is empty, in ms.",
                                  min=0.1, max=1000)] = 1.0,
    timeout_s: Annotated[float, Opt("Longest wait for the writers, and for the outbox "
                                    "to drain, in seconds.", min=5, max=600)] = 60.0,
) -> Result:
    result = Result(INFO)
    server = lab.redis_server()
    client = lab.closing(server.client())
    db = lab.shop()

    # Set up: the outbox, then the cache loaded from one snapshot of the database.
    install_outbox(db.path)
    cache = CommentCache(client, list_size=list_size)
    primed_posts = cache.prime(db.path)
    cached_before = sum(int(n) for n in client.mget(
        [count_key(p) for p in range(1, db.size.posts + 1)]) if n is not None)

    # The seeded stream: a few hot posts, the hottest taking most of the comments.
    hot = sorted(lab.rng("posts").sample(range(1, db.size.posts + 1), min(posts, db.size.posts)))
    next_post = key_sampler(len(hot), "zipf", rng=lab.rng("post choice"))
    rng = lab.rng("comments")
    stream = [(hot[next_post() - 1], rng.randint(1, db.size.users),
               f"{' '.join(rng.choices(WORDS, k=6))} #{i}") for i in range(comments)]

    def outbox_last_id() -> int:
        return int(db.rows("SELECT COALESCE(MAX(id), 0) AS n FROM comment_outbox")[0]["n"])

    listeners: list[ListenerProcess] = []

    def start_listener(rewind_entries: int) -> ListenerProcess:
        listener = ListenerProcess(
            client, redis_port=server.port, db_path=db.path,
            log_path=lab.workdir / f"listener-{len(listeners)}.log", list_size=list_size,
            batch=batch, poll_ms=poll_ms, rewind=rewind_entries, max_seconds=3 * timeout_s)
        lab.enter_context(listener)  # started here, stopped with the lab
        listeners.append(listener)
        return listener

    timeline: list[list[Any]] = []
    writer_pool: StreamWriters | None = None

    def mark(event: str) -> None:
        timeline.append([event, writer_pool.posted if writer_pool else 0, cache.progress(),
                         outbox_last_id()])

    # Act: the listener up, the writers posting, the listener killed and restarted.
    listener = start_listener(0)
    mark(f"listener started (pid {listener.pid})")
    writer_pool = lab.enter_context(StreamWriters(db.post_comment, stream, writers))
    pool = writer_pool
    segments = 2 * kills + 1  # the listener is up in even segments of the stream

    def posted_through(segment: int) -> Callable[[], bool]:
        return lambda: pool.posted >= comments * segment // segments or pool.done

    def applied_past(outbox_id: int) -> Callable[[], bool]:
        return lambda: cache.progress() > outbox_id or pool.done

    kill_codes, posted_at_kill, backlogs, outages = [], [], [], []
    applied_before_kill = []  # each killed listener was applying entries, not idle at start
    redelivered_expected, started_at = 0, cache.progress()
    backlog_entries: set[int] = set()  # outbox ids waiting at a restart
    for k in range(kills):
        poll_until(posted_through(2 * k + 1), timeout_s=timeout_s, interval_s=0.001,
                   what="the listener's share of the stream posted", error=None)
        poll_until(applied_past(started_at), timeout_s=timeout_s, interval_s=0.001,
                   what="the listener applying entries", error=None)
        applied_before_kill.append(cache.progress() - started_at)
        killed_ns = time.time_ns()
        kill_codes.append(listener.kill())
        posted_at_kill.append(pool.posted)
        mark(f"listener killed (exit {kill_codes[-1]})")
        poll_until(posted_through(2 * k + 2), timeout_s=timeout_s, interval_s=0.001,
                   what="the outage's share of the stream posted", error=None)
        progress, backlog_end = cache.progress(), outbox_last_id()
        backlogs.append(backlog_end - progress)
        backlog_entries.update(range(progress + 1, backlog_end + 1))
        redelivered_expected += min(rewind, progress)
        listener = start_listener(rewind)
        started_at = progress
        outages.append((killed_ns, backlog_end))  # over once that entry is applied
        mark(f"listener restarted (pid {listener.pid}, {backlogs[-1]} waiting)")
    all_posted = pool.join(timeout_s)
    mark("writers finished" if all_posted else f"writers stopped after {timeout_s:g}s")
    last_id = outbox_last_id()
    drained = bool(poll_until(lambda: cache.progress() >= last_id, timeout_s=timeout_s,
                              interval_s=0.001, what="the outbox drained", error=None))
    mark("outbox drained" if drained else f"outbox not drained after {timeout_s:g}s")
    listener.stop()

    # Measure: the outbox, the applied log, and every post against the database.
    posted_ids = set(pool.committed_ns)
    comment_of_entry = {r["id"]: r["comment_id"]
                        for r in db.rows("SELECT id, comment_id FROM comment_outbox")}
    outbox_ids = Counter(comment_of_entry.values())
    new_comments = int(db.rows("SELECT COUNT(*) AS n FROM comments")[0]["n"]) - db.size.comments
    log = cache.applied_log()
    applications = Counter(comment_id for comment_id, _ in log)
    lost = len(posted_ids - set(applications))
    duplicates = sum(n - 1 for n in applications.values())
    skipped = cache.skipped()

    divergent: list[int] = []
    post_rows: list[list[Any]] = []
    cached_after = 0
    posted_per_post = Counter(r["post_id"] for r in db.rows(
        "SELECT post_id FROM comments WHERE id > ?", [db.size.comments]))
    for post_id in range(1, db.size.posts + 1):
        truth = db.rows("SELECT id, user_id, body FROM comments WHERE post_id = ? "
                        "ORDER BY id DESC LIMIT ?", [post_id, list_size])
        count = int(db.rows("SELECT COUNT(*) AS n FROM comments WHERE post_id = ?",
                            [post_id])[0]["n"])
        cached, cached_count = cache.comments(post_id), cache.count(post_id)
        cached_after += cached_count or 0
        same = cached == truth and cached_count == count
        if not same:
            divergent.append(post_id)
        if post_id in hot:
            post_rows.append([post_id, posted_per_post[post_id], count, cached_count,
                              "yes" if cached == truth else "no"])
    post_rows.sort(key=lambda row: -row[1])

    applied_at_us: dict[int, int] = {}
    for comment_id, applied_us in log:
        applied_at_us.setdefault(comment_id, applied_us)
    # An outage lasts from the kill until the restarted listener has applied the backlog.
    outage_windows = [(killed_ns, applied_at_us.get(comment_of_entry.get(end, 0), 2**62) * 1000)
                      for killed_ns, end in outages]
    lag_all, lag_up, lag_outage = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    already_cached, outage_ids = 0, set()
    for comment_id, committed_ns in pool.committed_ns.items():
        if comment_id not in applied_at_us:
            continue
        applied_ns = applied_at_us[comment_id] * 1000
        lag_ns = applied_ns - committed_ns
        # The lag is counted from when post_comment returned to its writer. A writer
        # that waited for the GIL after its commit may find its comment already cached:
        # for that writer, and any reader after it, the lag was zero.
        already_cached += lag_ns < 0
        crossed_outage = any(committed_ns <= over and applied_ns >= killed
                             for killed, over in outage_windows)
        for hist in (lag_all, lag_outage if crossed_outage else lag_up):
            hist.record_ns(max(0, lag_ns))
        if crossed_outage:
            outage_ids.add(comment_id)
    lag, outage = lag_up.summary_ms(), lag_outage.summary_ms()

    result.table("Timeline", ["event", "comments posted", "listener progress (outbox id)",
                              "outbox last id"], timeline)
    result.table("Sync lag, commit to cache", LATENCY_COLUMNS, [
        latency_row("listener up all the way", lag_up),
        latency_row("caught by an outage", lag_outage),
        latency_row("all comments", lag_all)])
    result.table("Hot posts (first five by comments posted)",
                 ["post", "posted in this run", "database count", "cached count",
                  "cached latest equal database"], post_rows[:5])

    result.add_metrics({
        "writers": writers, "comments_posted": pool.posted, "posts": len(hot),
        "outbox_entries": sum(outbox_ids.values()), "divergent_posts": len(divergent),
        "lost_comments": lost, "duplicate_comments": duplicates,
        "listener_restarts": len(listeners) - 1, "resumed_backlog": len(backlog_entries),
        "redelivered_skipped": skipped, "sync_lag_p50_ms": lag["p50"],
        "sync_lag_p99_ms": lag["p99"], "sync_lag_max_ms": lag["max"],
        "outage_comments": lag_outage.count, "outage_lag_max_ms": outage["max"],
    })

    result.check("every comment committed with its outbox entry",
                 pool.posted > 0 and set(outbox_ids) == posted_ids
                 and max(outbox_ids.values()) == 1 and new_comments == pool.posted,
                 f"{pool.posted} comments posted, {new_comments} new in the comments table, "
                 f"{sum(outbox_ids.values())} outbox entries for {len(outbox_ids)} comments")
    result.check("the killed listener resumed from the outbox",
                 all(code == -9 for code in kill_codes) and len(listeners) == kills + 1
                 and all(n < comments for n in posted_at_kill)
                 and all(n > 0 for n in applied_before_kill)
                 and all(b > 0 for b in backlogs) and drained,
                 f"exit codes {kill_codes} (SIGKILL is -9) after {posted_at_kill} of {comments} "
                 f"comments, having applied {applied_before_kill}; {backlogs} entries waiting "
                 f"at restart; progress "
                 f"{cache.progress()} of {last_id} outbox entries")
    result.check("redelivered entries were skipped, not applied again",
                 redelivered_expected > 0 and skipped == redelivered_expected,
                 f"{skipped} skipped of {redelivered_expected} delivered again "
                 f"(--rewind {rewind} per restart)")
    result.check("no comment lost or duplicated, restart included",
                 lost == 0 and duplicates == 0 and len(log) == pool.posted
                 and cached_after - cached_before == pool.posted,
                 f"{lost} lost, {duplicates} applied twice; {len(log)} applications for "
                 f"{pool.posted} comments; cached counts grew by {cached_after - cached_before}")
    result.check("every post's cached comments and count equal the database",
                 primed_posts > 0 and not divergent,
                 f"{len(divergent)} of {primed_posts} posts differ"
                 + (f" (first: {divergent[:5]})" if divergent else ""))
    result.check("sync lag from commit to cache measured for every comment",
                 # Entries waiting at a restart (by outbox id) crossed an outage (by clock).
                 pool.posted > 0 and lag_all.count == pool.posted
                 and all(comment_of_entry.get(e) in outage_ids for e in backlog_entries),
                 f"{lag_all.count} of {pool.posted} comments; listener up: p50 "
                 f"{lag['p50']:.2f} ms, p99 {lag['p99']:.2f} ms; across an outage "
                 f"({lag_outage.count}): max {outage['max']:.0f} ms"
                 + (f"; {already_cached} already cached when their writer got control back "
                    "(lag 0)" if already_cached else ""))

    result.note(f"With the listener up, a comment reached the cache {lag['p50']:.2f} ms after "
                f"its commit at p50 (it polls every {poll_ms:g} ms when idle). The "
                f"{lag_outage.count} comments caught by a kill waited up to "
                f"{outage['max']:.0f} ms, but none was lost: the outbox held them.")
    if any(n >= comments for n in posted_at_kill):
        result.note("The writers had finished before a kill: the listener could not be "
                    "killed mid-stream. Give each kill more --comments.")
    result.note("The outbox is kept for the checks; in production, entries below the "
                "listener's progress are deleted. Try --kills 3, --writers 8, or --poll-ms 20 "
                "to trade lag for fewer polls.")
    return result
