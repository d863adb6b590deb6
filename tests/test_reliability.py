"""Nothing survives cachelab, parallel runs never collide, and the store never loses a run."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from cachelab.servers.redis_binary import RedisBinary
from cachelab.servers.spawn import DIES_WITH_PARENT
from cachelab.store import ResultsStore


def _cachelab(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "cachelab", *args], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, **(env or {})})


def _alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            pass
    return alive


@pytest.mark.skipif(not DIES_WITH_PARENT, reason="no parent-death signal on this platform")
def test_sigkill_of_cachelab_takes_every_child_with_it(tmp_path: Path) -> None:
    """exercise-5 runs redis-server and a listener process: both must die with cachelab."""
    run = _cachelab("run", "5", "--comments", "1000000", "--no-save",
                    env={"TMPDIR": str(tmp_path)})
    deadline = time.monotonic() + 60
    children: list[psutil.Process] = []
    while time.monotonic() < deadline and run.poll() is None:
        children = psutil.Process(run.pid).children(recursive=True)
        names = {c.name() for c in _alive(children)}
        if any("redis-server" in n for n in names) and any("python" in n for n in names):
            break
        time.sleep(0.05)
    assert {"redis-server", "listener"} <= {
        "redis-server" if "redis-server" in c.name() else "listener" for c in _alive(children)}
    run.send_signal(signal.SIGKILL)
    run.communicate(timeout=10)
    time.sleep(2)
    assert not _alive(children), [c.cmdline() for c in _alive(children)]


def _failures(out: str) -> str:
    """Which exercise, check and measured detail failed, from a run's --json output."""
    try:
        records = json.loads(out)
    except ValueError:
        return out[-2000:]
    return "; ".join(f"{r['exercise']} {c['name']!r}: {c['detail']}" for r in records
                     for c in r["checks"] if not c["passed"])


def test_two_run_alls_in_parallel_both_pass_and_both_are_saved(tmp_path: Path) -> None:
    env = {"CACHELAB_HOME": str(tmp_path / "home")}
    runs = [_cachelab("run", "all", "--json", env=env) for _ in range(2)]
    outputs = [run.communicate(timeout=600) for run in runs]
    for run, (out, err) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, _failures(out) or err
        assert "not saved" not in err
        assert all(record["verdict"] == "pass" for record in json.loads(out)), _failures(out)
    ids = [{r["run_id"] for r in json.loads(out)} for out, _ in outputs]
    saved = {r["run_id"] for r in ResultsStore(tmp_path / "home" / "results.db").runs()}
    assert ids[0] | ids[1] == saved and not ids[0] & ids[1]


WRITER = """
import sys, uuid
from pathlib import Path
from cachelab.store import ResultsStore
store = ResultsStore(Path(sys.argv[1]))
blob = "x" * 2_000_000  # a big record makes the kill land inside a write
while True:
    store.save({"run_id": uuid.uuid4().hex, "exercise": "exercise-1", "started_at": "now",
                "verdict": "pass", "duration_s": 1.0, "blob": blob})
    print("saved", flush=True)
"""


def test_sigkill_during_a_save_leaves_whole_runs_only(tmp_path: Path) -> None:
    path = tmp_path / "results.db"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], text=True,
                              stdout=subprocess.PIPE)
    assert writer.stdout is not None
    for _ in range(3):
        assert writer.stdout.readline() == "saved\n"
    time.sleep(0.07)  # somewhere in the middle of the next writes
    writer.kill()
    writer.communicate()

    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()
    runs = ResultsStore(path).runs()
    assert len(runs) >= 3
    assert all(len(r["blob"]) == 2_000_000 and r["verdict"] == "pass" for r in runs)


def _redis_in(binary: Path, folder: Path, port: int) -> subprocess.Popen[bytes]:
    """A redis-server running in ``folder``, as a run would have started it."""
    folder.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--daemonize", "no",
         "--dir", str(folder), "--pidfile", str(folder / "redis.pid"), "--save", ""],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 10
    while not (folder / "redis.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return process


def test_doctor_lists_and_cleans_only_what_killed_runs_left(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_binary: RedisBinary) -> None:
    from typer.testing import CliRunner

    from cachelab.cli import app
    from cachelab.servers.ports import claim_port

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    killed = tmp_path / "cachelab-run-killed"
    ports = [claim_port(), claim_port()]
    orphan = _redis_in(redis_binary.path, killed / "redis", ports[0].port)
    (killed / "owner.pid").write_text(dead.stdout.strip())
    # A stranger's server whose pid a pidfile in the killed folder happens to name.
    stranger = _redis_in(redis_binary.path, tmp_path / "elsewhere", ports[1].port)
    (killed / "stranger").mkdir()
    (killed / "stranger" / "x.pid").write_text(str(stranger.pid))
    live = tmp_path / "cachelab-run-live"
    live.mkdir()
    (live / "owner.pid").write_text(str(os.getpid()))
    try:
        listed = CliRunner().invoke(app, ["doctor"], prog_name="cachelab")
        assert "1 folder(s) of killed runs, 1 server(s) still running" in listed.stdout
        assert f"servers {orphan.pid})" in listed.stdout

        cleaned = CliRunner().invoke(app, ["doctor", "--clean"], prog_name="cachelab")
        assert "1 folder(s) removed" in cleaned.stdout
        assert orphan.wait(timeout=5) is not None
        assert not killed.exists() and live.exists()
        assert stranger.poll() is None  # not started by cachelab: untouched
    finally:
        for process in (orphan, stranger):
            process.kill()
            process.wait()
        for claim in ports:
            claim.release()


def test_a_run_notes_what_killed_runs_left(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cachelab.cli import app

    killed = tmp_path / "cachelab-run-killed"
    killed.mkdir()
    (killed / "owner.pid").write_text(str(2**22 + 1))  # above pid_max: never alive
    result = CliRunner().invoke(app, ["run", "1", "--requests", "50", "--expiry-ttl-s", "0.2",
                                      "--no-save"], prog_name="cachelab")
    assert result.exit_code == 0
    assert result.stderr == ("Note: 1 folder(s) of killed cachelab runs are left (0 server(s) "
                             "running); 'cachelab doctor --clean' removes them.\n")
