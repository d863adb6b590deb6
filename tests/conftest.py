"""Shared fixtures: real redis-server processes, an isolated results store, and a leak check."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from cachelab.lab import Lab, LabSettings
from cachelab.servers import reaper
from cachelab.servers.redis_binary import RedisBinary, find_redis_server


def redis_children() -> list[psutil.Process]:
    """redis-server processes started by this test process and still alive."""
    alive = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "redis-server" in child.name() and child.status() != psutil.STATUS_ZOMBIE:
                alive.append(child)
        except psutil.NoSuchProcess:
            pass
    return alive


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Every test gets its own results store, plain output, and must leave no server behind."""
    monkeypatch.setenv("CACHELAB_HOME", str(tmp_path / "home"))
    # Lab folders go to the test's own tmp (and a child's too), so that leftovers of other
    # runs on this machine never show up in a test's output.
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    for name in ("NO_COLOR", "FORCE_COLOR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COLUMNS", "120")
    yield
    # What was started and never stopped (servers, containers, child processes), stopped
    # now; a server started by hand is caught by the process check below.
    unstopped = reaper.reap()
    assert not unstopped, f"started and never stopped: {unstopped}"
    leaked = redis_children()
    for process in leaked:
        process.kill()
    assert not leaked, f"redis-server left running: {[p.pid for p in leaked]}"


@pytest.fixture(scope="session")
def redis_binary() -> RedisBinary:
    return find_redis_server()


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A Lab with a small modelled database latency, torn down after the test."""
    with Lab(LabSettings(seed=7, db_latency_ms=0.2, scale=0.3)) as lab:
        yield lab
