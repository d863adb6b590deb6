"""The transactional outbox and its listener, on a real redis-server and the shop database."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis

from cachelab.caching.outbox import (
    LISTENER_KEY,
    CommentCache,
    OutboxListener,
    comments_key,
    count_key,
    install_outbox,
    last_outbox_id,
    read_outbox,
)
from cachelab.children.outbox import ListenerProcess
from cachelab.errors import ServerStartError
from cachelab.lab import Lab
from cachelab.shop.database import ShopDatabase

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def db(lab: Lab) -> ShopDatabase:
    shop = lab.shop()
    install_outbox(shop.path)
    return shop


@pytest.fixture
def server_client(lab: Lab) -> tuple[int, redis.Redis]:
    server = lab.redis_server()
    client = server.client()
    lab.callback(client.close)
    return server.port, client


@pytest.fixture
def conn(db: ShopDatabase) -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(db.path, timeout=10, isolation_level=None)
    yield connection
    connection.close()


def truth(db: ShopDatabase, post_id: int, list_size: int) -> tuple[list[dict[str, object]], int]:
    latest = db.rows("SELECT id, user_id, body FROM comments WHERE post_id = ? "
                     "ORDER BY id DESC LIMIT ?", [post_id, list_size])
    count = db.rows("SELECT COUNT(*) AS n FROM comments WHERE post_id = ?", [post_id])[0]["n"]
    return latest, int(count)


def divergent_posts(db: ShopDatabase, cache: CommentCache) -> list[int]:
    return [post_id for post_id in range(1, db.size.posts + 1)
            if truth(db, post_id, cache.list_size)
            != (cache.comments(post_id), cache.count(post_id))]


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_the_trigger_records_each_comment_in_its_own_transaction(
        db: ShopDatabase, conn: sqlite3.Connection) -> None:
    install_outbox(db.path)  # a second install changes nothing
    comment_id = db.post_comment(7, 3, "first!")

    conn.execute("BEGIN")
    conn.execute("INSERT INTO comments (post_id, user_id, body, posted_on) "
                 "VALUES (8, 4, 'never mind', date('now'))")
    assert len(read_outbox(conn, 0, 10)) == 2  # visible inside its transaction...
    conn.execute("ROLLBACK")

    entries = read_outbox(conn, 0, 10)  # ...and gone with it
    assert [(e.id, e.comment_id, e.post_id, e.user_id, e.body) for e in entries] == [
        (1, comment_id, 7, 3, "first!")]
    assert last_outbox_id(conn) == 1


def test_prime_loads_every_post_and_the_matching_outbox_position(
        db: ShopDatabase, server_client: tuple[int, redis.Redis]) -> None:
    for i in range(3):
        db.post_comment(5, 1, f"before priming {i}")
    cache = CommentCache(server_client[1], list_size=4)

    assert cache.prime(db.path) == db.size.posts
    assert cache.progress() == 3
    assert divergent_posts(db, cache) == []
    assert len(cache.comments(5)) == 4


def test_apply_pushes_trims_counts_and_applies_each_entry_once(
        db: ShopDatabase, server_client: tuple[int, redis.Redis],
        conn: sqlite3.Connection) -> None:
    cache = CommentCache(server_client[1], list_size=3)
    cache.prime(db.path)
    count_before = cache.count(11)
    ids = [db.post_comment(11, 2, f"c{i}") for i in range(5)]
    entries = read_outbox(conn, cache.progress(), 100)

    first = cache.apply(entries)
    assert (first.applied, first.skipped, first.uncached, first.last_id) == (5, 0, 0, 5)
    assert [c["id"] for c in cache.comments(11)] == ids[::-1][:3]
    assert cache.count(11) == (count_before or 0) + 5

    again = cache.apply(entries)  # a redelivery: nothing changes
    assert (again.applied, again.skipped) == (0, 5)
    assert [c["id"] for c in cache.comments(11)] == ids[::-1][:3]
    assert cache.count(11) == (count_before or 0) + 5
    assert [comment_id for comment_id, _ in cache.applied_log()] == ids
    assert cache.skipped() == 5
    assert divergent_posts(db, cache) == []


def test_apply_records_when_each_entry_reached_redis(
        db: ShopDatabase, server_client: tuple[int, redis.Redis],
        conn: sqlite3.Connection) -> None:
    cache = CommentCache(server_client[1])
    cache.prime(db.path)
    db.post_comment(2, 2, "timed")
    before_us = time.time_ns() // 1000
    cache.apply(read_outbox(conn, 0, 10))
    after_us = time.time_ns() // 1000
    [(_, applied_us)] = cache.applied_log()
    assert before_us - 1000 <= applied_us <= after_us + 1000  # Redis's clock, same host


def test_apply_leaves_a_post_nobody_cached_alone(
        db: ShopDatabase, server_client: tuple[int, redis.Redis],
        conn: sqlite3.Connection) -> None:
    client = server_client[1]
    cache = CommentCache(client)
    cache.prime(db.path)
    client.delete(comments_key(9), count_key(9))
    db.post_comment(9, 1, "to an uncached post")

    outcome = cache.apply(read_outbox(conn, 0, 10))
    assert (outcome.applied, outcome.uncached, outcome.last_id) == (0, 1, 1)
    assert client.exists(comments_key(9), count_key(9)) == 0  # not restarted from 1
    assert cache.progress() == 1


def test_the_listener_catches_up_and_a_rewound_restart_skips(
        db: ShopDatabase, server_client: tuple[int, redis.Redis]) -> None:
    cache = CommentCache(server_client[1], list_size=5)
    cache.prime(db.path)
    listener = OutboxListener(cache, db.path, batch=7, poll_s=0.001)

    def listen(rewind: int) -> None:
        stop = threading.Event()
        thread = threading.Thread(target=listener.run, args=(stop.is_set,),
                                  kwargs={"rewind": rewind})
        thread.start()
        try:
            for i in range(30):
                db.post_comment(1 + i % 4, 1, f"comment {i}")
            assert wait_until(lambda: cache.progress() == last_outbox_id_of(db))
        finally:
            stop.set()
            thread.join()

    listen(rewind=0)
    listen(rewind=10)
    assert cache.skipped() == 10
    assert max(Counter(c for c, _ in cache.applied_log()).values()) == 1
    assert len(cache.applied_log()) == 60
    assert divergent_posts(db, cache) == []


def last_outbox_id_of(db: ShopDatabase) -> int:
    return int(db.rows("SELECT COALESCE(MAX(id), 0) AS n FROM comment_outbox")[0]["n"])


def start_listener(lab: Lab, db: ShopDatabase, server_client: tuple[int, redis.Redis],
                   name: str, **options: Any) -> ListenerProcess:
    port, client = server_client
    return lab.enter_context(ListenerProcess(client, redis_port=port, db_path=db.path,
                                             log_path=lab.workdir / f"{name}.log",
                                             **options))


def test_a_killed_listener_process_resumes_without_loss_or_duplicates(
        lab: Lab, db: ShopDatabase, server_client: tuple[int, redis.Redis]) -> None:
    cache = CommentCache(server_client[1], list_size=5)
    cache.prime(db.path)
    first = start_listener(lab, db, server_client, "first", list_size=5, batch=5)
    posted = [db.post_comment(1 + i % 6, 2, f"before the kill {i}") for i in range(60)]
    assert wait_until(lambda: cache.progress() > 0)

    assert first.kill() == -signal.SIGKILL
    progress_at_kill = cache.progress()
    posted += [db.post_comment(1 + i % 6, 2, f"while down {i}") for i in range(40)]
    assert cache.progress() == progress_at_kill  # nobody applies while it is down

    second = start_listener(lab, db, server_client, "second", list_size=5, rewind=4)
    assert wait_until(lambda: cache.progress() == last_outbox_id_of(db))
    second.stop()

    assert second.returncode == 0  # SIGTERM: it finished its batch and left
    applied = Counter(comment_id for comment_id, _ in cache.applied_log())
    assert sorted(applied) == sorted(posted) and max(applied.values()) == 1
    assert cache.skipped() == min(4, progress_at_kill)
    assert divergent_posts(db, cache) == []


def test_the_listener_stops_by_itself_after_its_time(
        lab: Lab, db: ShopDatabase, server_client: tuple[int, redis.Redis]) -> None:
    listener = start_listener(lab, db, server_client, "brief", max_seconds=0.5)
    assert wait_until(lambda: listener.returncode is not None, timeout_s=15)
    assert listener.returncode == 0


def test_a_listener_that_cannot_start_says_why(
        lab: Lab, server_client: tuple[int, redis.Redis]) -> None:
    port, client = server_client
    with pytest.raises(ServerStartError, match="no database at"):
        ListenerProcess(client, redis_port=port, db_path=lab.workdir / "missing.db",
                        log_path=lab.workdir / "missing.log").start()


def test_an_orphaned_listener_exits(
        lab: Lab, db: ShopDatabase, server_client: tuple[int, redis.Redis]) -> None:
    """A lab killed outright cannot stop its listener: the listener notices and leaves."""
    port, client = server_client
    parent_code = (
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-m', 'cachelab.children', "
        f"'outbox-listener', '--db', {str(db.path)!r}, '--redis-port', '{port}', "
        "'--parent-pid', str(os.getpid())])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE,
                              env=env)
    orphan: psutil.Process | None = None
    try:
        assert parent.stdout is not None
        orphan = psutil.Process(int(parent.stdout.readline()))
        assert wait_until(lambda: client.get(LISTENER_KEY) == str(orphan.pid), timeout_s=20)
        parent.kill()
        parent.wait()

        def gone() -> bool:
            try:
                return orphan.status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return True

        assert wait_until(gone, timeout_s=10)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
        if orphan is not None and orphan.is_running():
            orphan.kill()
