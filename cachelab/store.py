"""The results store: every run saved as one row of a SQLite database (sqlite-utils)."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlite_utils

from cachelab.errors import StoreError, UsageError
from cachelab.record import RunRecord

ENV_HOME = "CACHELAB_HOME"
#: The layout of the store, kept in SQLite's ``user_version``. Version 0 is a store
#: written before the layout was versioned (same table, no version mark).
SCHEMA_VERSION = 1
_COLUMNS = {"run_id": str, "exercise": str, "started_at": str, "verdict": str,
            "duration_s": float, "record": str}


def cachelab_home() -> Path:
    """``$CACHELAB_HOME``, else the user's data folder (platformdirs)."""
    home = os.environ.get(ENV_HOME)
    if home:
        return Path(home)
    import platformdirs

    return platformdirs.user_data_path("cachelab")


def default_store_path() -> Path:
    """``results.db`` in :func:`cachelab_home`."""
    return cachelab_home() / "results.db"


def _use_wal(conn: sqlite3.Connection, attempts: int = 300) -> None:
    """Switch a store to WAL. Two runs that open a new store at once both ask; SQLite
    answers the loser "database is locked" at once, without waiting out the timeout, so
    ask again until the winner's switch is done (then it is a no-op)."""
    for attempt in range(attempts):
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.01)


class ResultsStore:
    """Saved runs, newest last. Errors surface as :class:`StoreError` with the path."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_store_path()

    def _open(self) -> sqlite_utils.Database:
        """Open, and bring an older layout up to date; a newer one is refused, never misread."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # WAL lets readers and several writers (parallel runs) share the file; the
            # timeout makes a writer wait for another's transaction instead of failing.
            conn = sqlite3.connect(self.path, timeout=30)
            _use_wal(conn)
            db = sqlite_utils.Database(conn)
            try:
                self._migrate(db)
            except BaseException:
                db.close()
                raise
            return db
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the results store {self.path}: {exc}") from exc

    def _migrate(self, db: sqlite_utils.Database) -> None:
        if db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
            return
        # Two runs may open a new store at once: take the write lock, then look again.
        db.execute("BEGIN IMMEDIATE")
        try:
            self._upgrade(db, db.execute("PRAGMA user_version").fetchone()[0])
            db.conn.commit()
        except BaseException:
            db.conn.rollback()
            raise

    def _upgrade(self, db: sqlite_utils.Database, version: int) -> None:
        if version == SCHEMA_VERSION:
            return  # another process upgraded it while we waited for the lock
        if version > SCHEMA_VERSION:
            raise StoreError(f"the results store {self.path} was written by a newer cachelab "
                             f"(layout {version}, this one reads {SCHEMA_VERSION}); upgrade "
                             "cachelab or use --results PATH")
        runs = db["runs"]  # 0 -> 1: create the table, or check the unversioned one
        if runs.exists():
            missing = set(_COLUMNS) - set(runs.columns_dict)
            if missing:
                raise StoreError(f"the results store {self.path} has a runs table without "
                                 f"{', '.join(sorted(missing))}; it is not a cachelab "
                                 "store: use --results PATH")
        else:
            runs.create(_COLUMNS, pk="run_id")  # type: ignore[union-attr]
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def save(self, record: RunRecord) -> None:
        """Save one run (the record as ``--json`` prints it) in a single transaction."""
        db = self._open()
        try:
            with db.conn:
                db["runs"].insert({  # type: ignore[union-attr]
                    "run_id": record["run_id"], "exercise": record["exercise"],
                    "started_at": record["started_at"], "verdict": record["verdict"],
                    "duration_s": record["duration_s"], "record": json.dumps(record),
                }, pk="run_id")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write to the results store {self.path}: {exc}") from exc
        finally:
            db.close()

    @contextmanager
    def _reading(self) -> Iterator[sqlite_utils.Database | None]:
        """The store for reading, or None when nothing was ever saved (nothing is created)."""
        if not self.path.exists():
            yield None
            return
        db = self._open()
        try:
            yield db
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the results store {self.path}: {exc}") from exc
        finally:
            db.close()

    def runs(self, exercise: str | None = None) -> list[RunRecord]:
        """Saved runs, oldest first, optionally of one exercise."""
        with self._reading() as db:
            if db is None:
                return []
            where, args = ("exercise = ?", [exercise]) if exercise else (None, None)
            rows = db["runs"].rows_where(where, args, order_by="started_at, rowid")
            return [json.loads(row["record"]) for row in rows]

    def get(self, run_ref: str) -> RunRecord:
        """The run whose id is ``run_ref`` or starts with it; a usage error otherwise."""
        with self._reading() as db:
            rows = [] if db is None else list(db["runs"].rows_where(
                "run_id LIKE ? ESCAPE '\\'", [_like_prefix(run_ref)], limit=2))
        if not rows:
            raise UnknownRun(run_ref)
        if len(rows) > 1:
            raise UsageError(f"Run id {run_ref!r} matches more than one run; give more of it "
                             "(see 'cachelab runs')")
        record: RunRecord = json.loads(rows[0]["record"])
        return record

    def delete(self, run_ref: str) -> str:
        """Delete one run; returns its full id."""
        run_id = str(self.get(run_ref)["run_id"])
        db = self._open()
        try:
            with db.conn:
                db["runs"].delete(run_id)  # type: ignore[union-attr]
        finally:
            db.close()
        return run_id

    def prune(self, keep: int) -> int:
        """Keep the ``keep`` newest runs of each exercise; returns how many were deleted."""
        with self._reading() as db:
            if db is None:
                return 0
            with db.conn:
                return db.execute(
                    "DELETE FROM runs WHERE rowid IN (SELECT rowid FROM (SELECT rowid, "
                    "ROW_NUMBER() OVER (PARTITION BY exercise ORDER BY started_at DESC, "
                    "rowid DESC) AS age FROM runs) WHERE age > ?)", [keep]).rowcount

    def latest_per_exercise(self) -> list[RunRecord]:
        """The newest run of every exercise, in exercise order."""
        latest: dict[str, RunRecord] = {}
        for record in self.runs():
            latest[record["exercise"]] = record
        return sorted(latest.values(), key=lambda r: int(r["exercise"].rsplit("-", 1)[1]))


def _like_prefix(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


class UnknownRun(UsageError):
    """No saved run has that id."""

    def __init__(self, run_ref: str) -> None:
        super().__init__(f"No saved run {run_ref!r}. See 'cachelab runs' for the saved ones.")
