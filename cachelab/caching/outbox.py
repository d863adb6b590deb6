"""A transactional outbox that keeps cached comments in step with the database.

A SQLite trigger writes every new comment into ``comment_outbox`` inside the inserting
transaction, so a comment and its outbox entry commit together or not at all, whoever
inserts it. A listener, its own OS process (:mod:`cachelab.children.outbox`),
polls the outbox and applies each entry to Redis: the post's latest comments (a
bounded list) and its comment count. Its progress, the last applied outbox id, is
stored by the same Lua script that applies an entry, so a listener killed at any
moment resumes exactly where it stopped, and an entry delivered twice is skipped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:  # redis and sqlite3 are imported where used
    import sqlite3

    import redis

PROGRESS_KEY = "outbox:last_id"
APPLIED_LOG_KEY = "outbox:applied"  # "<comment id> <applied at, unix us>" per application
SKIPPED_KEY = "outbox:skipped"
LISTENER_KEY = "outbox:listener"  # the pid of the listener that is up and polling

SCHEMA = """
CREATE TABLE IF NOT EXISTS comment_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    comment_id INTEGER NOT NULL,
    post_id INTEGER NOT NULL,
    user_id INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS comment_outbox_on_insert AFTER INSERT ON comments
BEGIN
    INSERT INTO comment_outbox (comment_id, post_id, user_id, body)
    VALUES (NEW.id, NEW.post_id, NEW.user_id, NEW.body);
END;
"""

# KEYS: progress, applied log, skipped counter, then a comments list and a count per entry.
# ARGV: list size, then outbox id, comment id and comment JSON per entry (in outbox order).
# One script, so applying an entry and recording the progress past it cannot be split.
APPLY_LUA = """
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
local size = tonumber(ARGV[1])
local now = redis.call('TIME')
local stamp = now[1] .. string.format('%06d', tonumber(now[2]))
local applied, skipped, uncached = 0, 0, 0
for i = 0, (#ARGV - 1) / 3 - 1 do
  local id = tonumber(ARGV[2 + 3 * i])
  if id <= last then
    skipped = skipped + 1
  else
    local list, count = KEYS[4 + 2 * i], KEYS[5 + 2 * i]
    -- A post nobody cached is left to whoever loads it; INCR would start it at 1.
    if redis.call('EXISTS', count) == 1 then
      redis.call('LPUSH', list, ARGV[4 + 3 * i])
      redis.call('LTRIM', list, 0, size - 1)
      redis.call('INCR', count)
      redis.call('RPUSH', KEYS[2], ARGV[3 + 3 * i] .. ' ' .. stamp)
      applied = applied + 1
    else
      uncached = uncached + 1
    end
    last = id
  end
end
redis.call('SET', KEYS[1], last)
if skipped > 0 then redis.call('INCRBY', KEYS[3], skipped) end
return {applied, skipped, uncached, last}
"""


def comments_key(post_id: int) -> str:
    return f"post:{post_id}:comments"


def count_key(post_id: int) -> str:
    return f"post:{post_id}:comment_count"


def comment_json(comment_id: int, user_id: int, body: str) -> str:
    """A cached comment, as the post page shows it; compare with ``json.loads``."""
    return json.dumps({"id": comment_id, "user_id": user_id, "body": body},
                      separators=(",", ":"))


def connect(db_path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode that waits for a busy database instead of failing."""
    import sqlite3

    return sqlite3.connect(db_path, timeout=10, isolation_level=None)


def install_outbox(db_path: Path) -> None:
    """Create the outbox table and the trigger that fills it (idempotent)."""
    conn = connect(db_path)
    try:
        conn.executescript(SCHEMA)
    finally:
        conn.close()


class OutboxEntry(NamedTuple):
    """One row of ``comment_outbox``: a committed comment waiting to reach the cache."""

    id: int
    comment_id: int
    post_id: int
    user_id: int
    body: str


def read_outbox(conn: sqlite3.Connection, after_id: int, limit: int) -> list[OutboxEntry]:
    """Entries after ``after_id``, oldest first.

    SQLite serialises writers, and an outbox id is drawn inside the writing
    transaction, so a committed entry never appears behind an uncommitted smaller id:
    a cursor on the id misses nothing.
    """
    rows = conn.execute("SELECT id, comment_id, post_id, user_id, body FROM comment_outbox "
                        "WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)).fetchall()
    return [OutboxEntry(*row) for row in rows]


def last_outbox_id(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM comment_outbox").fetchone()[0])


@dataclass(frozen=True)
class ApplyOutcome:
    """What one apply did: entries applied, skipped as already applied, or for uncached posts."""

    applied: int
    skipped: int
    uncached: int
    last_id: int


class CommentCache:
    """The cached comments of every post: the latest ``list_size`` and the count.

    Args:
        client: a redis-py client with ``decode_responses=True``.
        list_size: how many of a post's latest comments are kept, newest first.
    """

    def __init__(self, client: redis.Redis, *, list_size: int = 10) -> None:
        if list_size < 1:
            raise ValueError("list_size must be at least 1")
        self.client = client
        self.list_size = list_size
        self._apply = client.register_script(APPLY_LUA)

    def prime(self, db_path: Path) -> int:
        """Load every post from one consistent snapshot; returns the posts cached.

        The snapshot and the outbox position it corresponds to are read in one read
        transaction, so entries committed meanwhile are neither lost nor applied twice.
        """
        conn = connect(db_path)
        try:
            conn.execute("BEGIN")
            last_id = last_outbox_id(conn)
            counts = dict(conn.execute(
                "SELECT p.id, COUNT(c.id) FROM posts p LEFT JOIN comments c ON c.post_id = p.id "
                "GROUP BY p.id").fetchall())
            latest = conn.execute(
                "SELECT post_id, id, user_id, body FROM (SELECT post_id, id, user_id, body, "
                "ROW_NUMBER() OVER (PARTITION BY post_id ORDER BY id DESC) AS n FROM comments) "
                "WHERE n <= ? ORDER BY post_id, id DESC", (self.list_size,)).fetchall()
            conn.execute("COMMIT")
        finally:
            conn.close()
        pipe = self.client.pipeline(transaction=True)
        for post_id, count in counts.items():
            pipe.delete(comments_key(post_id))
            pipe.set(count_key(post_id), count)
        for post_id, comment_id, user_id, body in latest:
            pipe.rpush(comments_key(post_id), comment_json(comment_id, user_id, body))
        pipe.set(PROGRESS_KEY, last_id)
        pipe.execute()
        return len(counts)

    def apply(self, entries: Sequence[OutboxEntry]) -> ApplyOutcome:
        """Apply entries (in outbox order) at most once each, atomically with the progress."""
        keys = [PROGRESS_KEY, APPLIED_LOG_KEY, SKIPPED_KEY]
        args: list[Any] = [self.list_size]
        for entry in entries:
            keys += [comments_key(entry.post_id), count_key(entry.post_id)]
            args += [entry.id, entry.comment_id,
                     comment_json(entry.comment_id, entry.user_id, entry.body)]
        applied, skipped, uncached, last_id = self._apply(keys=keys, args=args)
        return ApplyOutcome(int(applied), int(skipped), int(uncached), int(last_id))

    def progress(self) -> int:
        """The last outbox id applied."""
        return int(self.client.get(PROGRESS_KEY) or 0)

    def comments(self, post_id: int) -> list[dict[str, Any]]:
        return [json.loads(raw) for raw in self.client.lrange(comments_key(post_id), 0, -1)]

    def count(self, post_id: int) -> int | None:
        raw = self.client.get(count_key(post_id))
        return None if raw is None else int(raw)

    def applied_log(self) -> list[tuple[int, int]]:
        """``(comment id, applied at in unix microseconds)`` for every application, in order."""
        log = []
        for line in self.client.lrange(APPLIED_LOG_KEY, 0, -1):
            comment_id, applied_us = line.split()
            log.append((int(comment_id), int(applied_us)))
        return log

    def skipped(self) -> int:
        """Entries delivered again after they were applied, and skipped."""
        return int(self.client.get(SKIPPED_KEY) or 0)


@dataclass
class ListenerTotals:
    """What one listener did before it stopped."""

    applied: int = 0
    skipped: int = 0
    uncached: int = 0
    batches: int = 0


class OutboxListener:
    """Polls the outbox and applies new entries to a :class:`CommentCache`.

    Args:
        cache: the cache to keep in step.
        db_path: the SQLite file holding ``comment_outbox``.
        batch: entries read and applied at once (one script call).
        poll_s: pause when the outbox has nothing new.
    """

    def __init__(self, cache: CommentCache, db_path: Path, *, batch: int = 100,
                 poll_s: float = 0.001) -> None:
        self.cache = cache
        self.db_path = db_path
        self.batch = batch
        self.poll_s = poll_s

    def run(self, should_stop: Callable[[], bool], *, rewind: int = 0,
            on_ready: Callable[[], object] = lambda: None) -> ListenerTotals:
        """Apply entries until ``should_stop()``; returns what was done.

        ``rewind`` starts that many entries before the recorded progress, as a source
        that redelivers after a crash would: the apply script skips them.
        """
        totals = ListenerTotals()
        conn = connect(self.db_path)
        try:
            cursor = max(0, self.cache.progress() - rewind)
            on_ready()
            while not should_stop():
                entries = read_outbox(conn, cursor, self.batch)
                if not entries:
                    time.sleep(self.poll_s)
                    continue
                outcome = self.cache.apply(entries)
                cursor = entries[-1].id
                totals.applied += outcome.applied
                totals.skipped += outcome.skipped
                totals.uncached += outcome.uncached
                totals.batches += 1
        finally:
            conn.close()
        return totals
