"""The reaper: what a process started and never stopped is stopped when it exits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil

from cachelab.servers import reaper

# Started with plain Popen (no parent-death signal): only the reaper can stop the sleeper.
EXITS_WITHOUT_STOPPING = """
import subprocess, sys
from cachelab.servers import reaper
log = open(sys.argv[1], "a")
sleeper = subprocess.Popen(["sleep", "60"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
reaper.register(lambda: log.write("first started, stopped last\\n") and log.flush())
reaper.register(sleeper)
reaper.register(lambda: log.write("last started, stopped first\\n") and log.flush())
stopped = lambda: log.write("stopped already: never called\\n")
reaper.register(stopped)
reaper.unregister(stopped)
print(sleeper.pid, flush=True)
"""


def test_at_exit_everything_still_registered_is_stopped_last_first(tmp_path: Path) -> None:
    log = tmp_path / "stopped.log"
    done = subprocess.run([sys.executable, "-c", EXITS_WITHOUT_STOPPING, str(log)],
                          capture_output=True, text=True, timeout=30, check=True)
    sleeper = int(done.stdout)
    try:
        assert not psutil.pid_exists(sleeper)
    finally:
        if psutil.pid_exists(sleeper):
            psutil.Process(sleeper).kill()
    assert log.read_text().splitlines() == ["last started, stopped first",
                                            "first started, stopped last"]


def test_reap_stops_every_one_even_when_one_fails_and_says_what_it_stopped() -> None:
    stopped: list[str] = []

    def broken() -> None:
        raise RuntimeError("the engine is gone")

    sleeper = subprocess.Popen(["sleep", "60"])
    reaper.register(lambda: stopped.append("a"))
    reaper.register(broken)
    reaper.register(sleeper)
    left = reaper.reap()
    assert sleeper.poll() is not None
    assert stopped == ["a"]
    assert len(left) == 3 and "sleep" in left[2]
    assert reaper.reap() == []  # reaped once: nothing is left registered
