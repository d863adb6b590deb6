"""The results store: every run saved as one row of a SQLite database (sqlite-utils)."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import sqlite_utils

from cachelab.errors import StoreError

ENV_HOME = "CACHELAB_HOME"


def default_store_path() -> Path:
    """``$CACHELAB_HOME/results.db``, else the user's data folder (platformdirs)."""
    home = os.environ.get(ENV_HOME)
    if home:
        return Path(home) / "results.db"
    import platformdirs

    return platformdirs.user_data_path("cachelab") / "results.db"


class ResultsStore:
    """Saved runs, newest last. Errors surface as :class:`StoreError` with the path."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_store_path()

    def _open(self) -> sqlite_utils.Database:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=10)
            conn.execute("PRAGMA journal_mode=WAL")
            return sqlite_utils.Database(conn)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the results store {self.path}: {exc}") from exc

    def save(self, record: dict[str, Any]) -> None:
        """Save one run (a Result dict as ``--json`` prints it) in a single transaction."""
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

    def runs(self, exercise: str | None = None) -> list[dict[str, Any]]:
        """Saved runs as dicts, oldest first, optionally of one exercise."""
        db = self._open()
        try:
            if "runs" not in db.table_names():
                return []
            where, args = ("exercise = ?", [exercise]) if exercise else (None, None)
            rows = db["runs"].rows_where(where, args, order_by="started_at, rowid")
            return [json.loads(row["record"]) for row in rows]
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the results store {self.path}: {exc}") from exc
        finally:
            db.close()
