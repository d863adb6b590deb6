"""Cache dependencies: which cached results depend on which data, and dropping them on change.

Three pieces:

* Change capture: SQLite triggers on insert, update and delete of each watched table
  write the row's old and new images (JSON) into ``cache_changes`` inside the writing
  transaction, so a change is recorded if and only if it commits, whoever writes.
* A dependency index in Redis: a cached entry is registered under *tags* (a table,
  ``table:orders``, or something finer such as ``city:Oslo``); each tag is a Redis set
  of the entry keys that depend on it, and each entry has a set of its own tags.
* A notifier that reads new changes, turns each into tags with a rule per policy, and
  drops every entry registered under them, returning what each dropped entry held so
  that a caller can tell a needed invalidation from an unnecessary one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cachelab.caching.query_cache import QueryCache

if TYPE_CHECKING:  # redis and sqlite3 are imported where used
    import sqlite3

    import redis

CHANGES_TABLE = "cache_changes"

CHANGES_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {CHANGES_TABLE} (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    table_name TEXT NOT NULL,
    op TEXT NOT NULL,
    old TEXT,
    new TEXT
);
"""

#: ``{table: {name: SQL expression}}``: extra values captured with a row image, where
#: ``{row}`` stands for ``OLD`` or ``NEW`` (e.g. the city of an order's user), so that a
#: rule can decide without querying the database again.
Context = Mapping[str, Mapping[str, str]]


def _image(columns: Sequence[str], extra: Mapping[str, str], row: str) -> str:
    pairs = [f"'{c}', {row}.\"{c}\"" for c in columns]
    pairs += [f"'{name}', ({expr.format(row=row)})" for name, expr in extra.items()]
    return f"json_object({', '.join(pairs)})"


def change_capture_sql(conn: sqlite3.Connection, tables: Iterable[str],
                       context: Context | None = None) -> str:
    """The DDL of the changes table and of three triggers per table (idempotent)."""
    statements = [CHANGES_SCHEMA]
    for table in tables:
        columns = [row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')]
        if not columns:
            raise ValueError(f"no table {table!r} to capture changes of")
        extra = (context or {}).get(table, {})
        old, new = _image(columns, extra, "OLD"), _image(columns, extra, "NEW")
        for op, images in (("insert", f"NULL, {new}"), ("update", f"{old}, {new}"),
                           ("delete", f"{old}, NULL")):
            statements.append(
                f'CREATE TRIGGER IF NOT EXISTS "{CHANGES_TABLE}_{table}_{op}" '
                f'AFTER {op.upper()} ON "{table}" BEGIN '
                f"INSERT INTO {CHANGES_TABLE} (table_name, op, old, new) "
                f"VALUES ('{table}', '{op}', {images}); END;")
    return "\n".join(statements)


def connect(db_path: Path) -> sqlite3.Connection:
    """An autocommit connection that waits for a busy database instead of failing."""
    import sqlite3

    return sqlite3.connect(db_path, timeout=10, isolation_level=None)


def install_change_capture(db_path: Path, tables: Iterable[str],
                           context: Context | None = None) -> None:
    """Create ``cache_changes`` and the triggers that fill it for ``tables``."""
    conn = connect(db_path)
    try:
        conn.executescript(change_capture_sql(conn, tables, context))
    finally:
        conn.close()


@dataclass(frozen=True)
class Change:
    """One committed insert, update or delete: the row before and after (None if absent)."""

    id: int
    table: str
    op: str
    old: dict[str, Any] | None
    new: dict[str, Any] | None

    def images(self) -> list[dict[str, Any]]:
        """The row images that exist: old, new or both."""
        return [image for image in (self.old, self.new) if image is not None]

    def changed(self, columns: Iterable[str]) -> bool:
        """Whether any of ``columns`` differs between old and new (always, for insert/delete)."""
        if self.old is None or self.new is None:
            return True
        return any(self.old.get(c) != self.new.get(c) for c in columns)


def read_changes(conn: sqlite3.Connection, after_id: int, limit: int = 1000) -> list[Change]:
    """Changes after ``after_id``, oldest first.

    SQLite serialises writers and the id is drawn inside the writing transaction, so a
    committed change never appears behind an uncommitted smaller id.
    """
    rows = conn.execute(f"SELECT id, table_name, op, old, new FROM {CHANGES_TABLE} "
                        "WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)).fetchall()
    return [Change(id, table, op, json.loads(old) if old else None,
                   json.loads(new) if new else None) for id, table, op, old, new in rows]


# KEYS: the tag sets to invalidate. ARGV: the prefixes of per-entry and per-tag sets.
# Returns key, value pairs of the entries that existed and were dropped. One script, so
# that dropping an entry and forgetting all of its registrations cannot be split.
INVALIDATE_LUA = """
local seen, dropped = {}, {}
for _, tag_set in ipairs(KEYS) do
  for _, key in ipairs(redis.call('SMEMBERS', tag_set)) do
    if not seen[key] then
      seen[key] = true
      local value = redis.call('GET', key)
      redis.call('DEL', key)
      local own = ARGV[1] .. key
      for _, other in ipairs(redis.call('SMEMBERS', own)) do
        redis.call('SREM', ARGV[2] .. other, key)
      end
      redis.call('DEL', own)
      if value then
        table.insert(dropped, key)
        table.insert(dropped, value)
      end
    end
  end
end
return dropped
"""


class DependencyIndex:
    """Which cache keys depend on which tags, as Redis sets.

    ``<prefix>:tag:<tag>`` holds the keys registered under a tag and
    ``<prefix>:key:<key>`` the tags of one key, so that dropping a key also removes it
    from every other tag set (no set grows with dead keys).

    Args:
        client: a redis-py client with ``decode_responses=True``.
        prefix: the namespace of this index's sets.
    """

    def __init__(self, client: redis.Redis, *, prefix: str = "deps") -> None:
        self.client = client
        self.prefix = prefix
        self._invalidate = client.register_script(INVALIDATE_LUA)

    def tag_key(self, tag: str) -> str:
        return f"{self.prefix}:tag:{tag}"

    def own_key(self, key: str) -> str:
        return f"{self.prefix}:key:{key}"

    def register(self, pipe: Any, key: str, tags: Iterable[str]) -> None:
        """Queue, on ``pipe``, the registration of ``key`` under every tag."""
        tags = sorted(set(tags))
        if not tags:
            return
        for tag in tags:
            pipe.sadd(self.tag_key(tag), key)
        pipe.sadd(self.own_key(key), *tags)

    def dependents(self, tag: str) -> set[str]:
        return {str(key) for key in self.client.smembers(self.tag_key(tag))}

    def tags_of(self, key: str) -> set[str]:
        return {str(tag) for tag in self.client.smembers(self.own_key(key))}

    def invalidate(self, tags: Iterable[str]) -> dict[str, str]:
        """Drop every entry registered under any of ``tags``; returns ``{key: cached value}``."""
        tag_sets = [self.tag_key(tag) for tag in sorted(set(tags))]
        if not tag_sets:
            return {}
        flat = self._invalidate(keys=tag_sets, args=[self.own_key(""), self.tag_key("")])
        return dict(zip(flat[::2], flat[1::2], strict=True))


class DependentQueryCache(QueryCache):
    """A query cache that registers each stored result in a :class:`DependencyIndex`.

    Args:
        client, run_query, ttl_s, namespace: as for :class:`QueryCache`.
        index: where dependencies are recorded.
        tags: ``tags(params, rows)`` gives the tags a result depends on; it may look at
            the rows (e.g. the categories a report contains).
    """

    def __init__(self, client: redis.Redis,
                 run_query: Callable[[str, Sequence[Any]], list[dict[str, Any]]], *,
                 index: DependencyIndex,
                 tags: Callable[[tuple[Any, ...], list[dict[str, Any]]], Iterable[str]],
                 ttl_s: float, namespace: str = "query") -> None:
        super().__init__(client, run_query, ttl_s=ttl_s, namespace=namespace)
        self.index = index
        self.tags = tags

    def _store(self, key: str, item: tuple[str, tuple[Any, ...]], value: Any) -> None:
        # The value and its registrations are written together: an entry is never
        # cached without the dependencies that will drop it.
        pipe = self.client.pipeline(transaction=True)
        pipe.set(key, json.dumps(value), px=self._ttl_ms())
        self.index.register(pipe, key, self.tags(item[1], value))
        pipe.execute()


#: ``rule(change)`` gives the tags a change touches for one dependency policy.
Rule = Callable[[Change], Iterable[str]]


@dataclass
class Invalidation:
    """What one change did under one policy: the tags it touched, the entries it dropped."""

    change: Change
    policy: str
    tags: set[str]
    dropped: dict[str, str] = field(default_factory=dict)


class ChangeNotifier:
    """Turns captured changes into invalidations, for one or more dependency policies.

    Its cursor (the last change id handled) lives in Redis, so a restarted notifier
    resumes where it stopped; handling a change twice only drops entries twice, which
    is harmless. ``drain`` is synchronous: call it after a write, or from a thread.

    Args:
        db_path: the database holding ``cache_changes``.
        client: the Redis that holds the cursor.
        policies: ``{name: (index, rule)}``.
        cursor_key: where the cursor is kept.
    """

    def __init__(self, db_path: Path, client: redis.Redis,
                 policies: Mapping[str, tuple[DependencyIndex, Rule]], *,
                 cursor_key: str = "deps:changes:last_id") -> None:
        self.client = client
        self.policies = dict(policies)
        self.cursor_key = cursor_key
        self._conn = connect(db_path)

    @property
    def cursor(self) -> int:
        return int(self.client.get(self.cursor_key) or 0)

    def skip_to_end(self) -> int:
        """Start after every change recorded so far (e.g. after priming); returns the id."""
        last = int(self._conn.execute(
            f"SELECT COALESCE(MAX(id), 0) FROM {CHANGES_TABLE}").fetchone()[0])
        self.client.set(self.cursor_key, last)
        return last

    def drain(self, limit: int = 1000) -> list[Invalidation]:
        """Handle every change after the cursor, oldest first; returns one record per policy."""
        done: list[Invalidation] = []
        while True:
            changes = read_changes(self._conn, self.cursor, limit)
            if not changes:
                return done
            for change in changes:
                for name, (index, rule) in self.policies.items():
                    tags = set(rule(change))
                    done.append(Invalidation(change, name, tags, index.invalidate(tags)))
                # Advanced per change, after its invalidations: a crash re-handles it.
                self.client.set(self.cursor_key, change.id)

    def close(self) -> None:
        self._conn.close()


def table_rule(change: Change) -> set[str]:
    """Table-level dependencies: any change to a table touches ``table:<name>``."""
    return {f"table:{change.table}"}


def table_tags(tables: Iterable[str]) -> set[str]:
    """The tags an entry that reads ``tables`` registers under, table-level."""
    return {f"table:{table}" for table in tables}
