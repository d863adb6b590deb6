"""The results store: saved runs survive a round trip, and failures are StoreErrors."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from cachelab.errors import StoreError
from cachelab.store import SCHEMA_VERSION, ResultsStore, default_store_path


def _record(run_id: str, exercise: str, started_at: str, verdict: str = "pass") -> dict[str, Any]:
    return {"run_id": run_id, "exercise": exercise, "started_at": started_at,
            "verdict": verdict, "duration_s": 1.25,
            "metrics": {"hit_ratio": 0.9, "p99_ms": [0.4, 1.2]},
            "environment": {"backend": "local", "redis_version": "6.2.14"}}


def test_saved_runs_come_back_whole_oldest_first(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "results.db")
    later = _record("r2", "exercise-02", "2025-06-01T10:00:00+00:00", verdict="fail")
    earlier = _record("r1", "exercise-01", "2025-06-01T09:00:00+00:00")

    store.save(later)
    store.save(earlier)

    assert store.runs() == [earlier, later]
    assert ResultsStore(tmp_path / "results.db").runs() == [earlier, later]  # on disk


def test_runs_filter_by_exercise(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "results.db")
    records = [_record(f"r{i}", f"exercise-0{i % 2 + 1}", f"2025-06-01T0{i}:00:00+00:00")
               for i in range(4)]
    for record in records:
        store.save(record)

    assert [r["run_id"] for r in store.runs("exercise-01")] == ["r0", "r2"]
    assert [r["run_id"] for r in store.runs("exercise-02")] == ["r1", "r3"]
    assert store.runs("exercise-99") == []


def test_a_new_store_has_no_runs(tmp_path: Path) -> None:
    assert ResultsStore(tmp_path / "new" / "results.db").runs() == []


def test_default_path_honours_cachelab_home(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "elsewhere"
    monkeypatch.setenv("CACHELAB_HOME", str(home))
    assert default_store_path() == home / "results.db"

    store = ResultsStore()
    store.save(_record("r1", "exercise-01", "2025-06-01T09:00:00+00:00"))
    assert store.path == home / "results.db"
    assert (home / "results.db").is_file()


def test_default_path_without_cachelab_home_is_a_user_data_folder(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CACHELAB_HOME")
    path = default_store_path()
    assert path.name == "results.db"
    assert "cachelab" in path.parts


def test_unwritable_path_raises_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    path = blocker / "results.db"
    store = ResultsStore(path)

    with pytest.raises(StoreError, match="cannot open the results store") as failure:
        store.save(_record("r1", "exercise-01", "2025-06-01T09:00:00+00:00"))
    assert str(path) in str(failure.value)
    assert store.runs() == []  # nothing was ever saved there; reading creates nothing


def test_corrupt_store_raises_store_error(tmp_path: Path) -> None:
    path = tmp_path / "results.db"
    path.write_bytes(b"this is not sqlite \x00\xff" * 200)
    store = ResultsStore(path)

    with pytest.raises(StoreError) as failure:
        store.save(_record("r1", "exercise-01", "2025-06-01T09:00:00+00:00"))
    assert str(path) in str(failure.value)
    with pytest.raises(StoreError):
        store.runs()
    assert path.read_bytes().startswith(b"this is not sqlite")  # left as it was



def test_an_unversioned_store_is_migrated_and_keeps_its_runs(tmp_path: Path) -> None:
    path = tmp_path / "results.db"
    with sqlite3.connect(path) as conn:  # the layout before it carried a version
        conn.execute("CREATE TABLE runs (run_id TEXT PRIMARY KEY, exercise TEXT, "
                     "started_at TEXT, verdict TEXT, duration_s FLOAT, record TEXT)")
        conn.execute("INSERT INTO runs VALUES ('old', 'exercise-1', 't', 'pass', 1.0, ?)",
                     [json.dumps({"run_id": "old", "exercise": "exercise-1"})])
    conn.close()
    store = ResultsStore(path)
    assert [r["run_id"] for r in store.runs()] == ["old"]
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    conn.close()


def test_a_store_from_a_newer_cachelab_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "results.db"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="written by a newer cachelab"):
        ResultsStore(path).runs()


def test_a_foreign_runs_table_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "results.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE runs (id INTEGER, what TEXT)")
    conn.close()
    with pytest.raises(StoreError, match="not a cachelab store"):
        ResultsStore(path).runs()


SAVE_ONE = """
import sys, uuid
from pathlib import Path
from cachelab.store import ResultsStore
ResultsStore(Path(sys.argv[1])).save({"run_id": uuid.uuid4().hex, "exercise": "exercise-1",
                                      "started_at": "t", "verdict": "pass", "duration_s": 1.0})
"""


def test_processes_saving_into_a_new_store_at_once_lose_nothing(tmp_path: Path) -> None:
    """The first writers race to create the layout: one creates it, the others wait."""
    import subprocess
    import sys

    for trial in range(5):
        path = tmp_path / f"store-{trial}" / "results.db"
        writers = [subprocess.Popen([sys.executable, "-c", SAVE_ONE, str(path)],
                                    stderr=subprocess.PIPE, text=True) for _ in range(4)]
        errors = [writer.communicate()[1] for writer in writers]
        assert all(writer.returncode == 0 for writer in writers), errors
        assert len(ResultsStore(path).runs()) == 4
