"""`cachelab lab up|status|down`: a topology kept in the background, and nothing left after."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import psutil
import pytest
from typer.testing import CliRunner

from cachelab.cli import app
from cachelab.servers.redis_server import answers_ping

runner = CliRunner()


def _gone(state: dict[str, Any], timeout_s: float = 10.0) -> bool:
    """The holder and every server it started have exited, and the folder is removed."""
    pids = [state["pid"], *(node["pid"] for node in state["nodes"])]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any(psutil.pid_exists(pid) and psutil.Process(pid).status()
                   != psutil.STATUS_ZOMBIE for pid in pids):
            break
        time.sleep(0.05)
    else:
        return False
    return not os.path.exists(state["folder"]) and not any(
        answers_ping(*_host_port(node)) for node in state["nodes"])


def _host_port(node: dict[str, Any]) -> tuple[str, int]:
    host, port = node["address"].rsplit(":", 1)
    return host, int(port)


@pytest.mark.parametrize(("topology", "roles"), [
    ("standalone", {"standalone": 1}),
    ("replicas", {"primary": 1, "replica": 2}),
    ("sentinel", {"primary": 1, "replica": 2, "sentinel": 3}),
    ("cluster", {"master": 3, "replica": 3}),
])
def test_up_status_down_runs_the_topology_and_leaves_nothing(
        topology: str, roles: dict[str, int]) -> None:
    started = runner.invoke(app, ["lab", "up", topology, "--json"])
    assert started.exit_code == 0, started.output
    state = json.loads(started.stdout)
    try:
        seen: dict[str, int] = {}
        for node in state["nodes"]:
            seen[node["role"]] = seen.get(node["role"], 0) + 1
        assert seen == roles
        assert all(node["address"].startswith("127.0.0.1:") for node in state["nodes"])

        again = runner.invoke(app, ["lab", "up", "standalone"])
        assert again.exit_code == 2
        assert "already up" in again.stderr and "cachelab lab down" in again.stderr

        status = json.loads(runner.invoke(app, ["lab", "status", "--json"]).stdout)
        assert status["pid"] == state["pid"]
        assert all(node["answers"] for node in status["nodes"])
    finally:
        stopped = runner.invoke(app, ["lab", "down"])
    assert stopped.exit_code == 0
    assert f"Stopped the {topology} lab" in stopped.stdout
    assert _gone(state)


def test_down_and_status_with_nothing_up_say_so_and_succeed() -> None:
    down = runner.invoke(app, ["lab", "down"])
    assert down.exit_code == 0 and "No lab is up" in down.stdout
    status = runner.invoke(app, ["lab", "status"])
    assert status.exit_code == 0 and "No lab is up" in status.stdout


def test_an_unknown_topology_is_a_usage_error() -> None:
    result = runner.invoke(app, ["lab", "up", "galaxy"])
    assert result.exit_code == 2
    assert "galaxy" in result.stderr


def test_a_killed_holder_takes_its_servers_with_it_and_is_forgotten() -> None:
    """As a real subprocess: `up` returns, the holder is SIGKILLed, nothing survives."""
    up = subprocess.run([sys.executable, "-m", "cachelab", "lab", "up", "replicas", "--json"],
                        capture_output=True, text=True, timeout=60, check=False)
    assert up.returncode == 0, up.stderr
    state = json.loads(up.stdout)
    os.kill(state["pid"], signal.SIGKILL)

    status = runner.invoke(app, ["lab", "status"])  # notices the holder is gone
    assert "No lab is up" in status.stdout
    assert _gone(state)


def test_a_lab_that_cannot_start_reports_why_and_leaves_nothing(tmp_path: Any) -> None:
    result = runner.invoke(app, ["lab", "up", "standalone", "--redis-server",
                                 str(tmp_path / "no-such-redis-server")])
    assert result.exit_code == 3
    assert "no-such-redis-server" in result.stderr
    assert "No lab is up" in runner.invoke(app, ["lab", "status"]).stdout


def _running_under(folder: Any) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        try:
            if process.status() != psutil.STATUS_ZOMBIE and process.cwd().startswith(str(folder)):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def test_ctrl_c_during_up_stops_the_half_started_lab(tmp_path: Any) -> None:
    command = subprocess.Popen([sys.executable, "-m", "cachelab", "lab", "up", "cluster"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while not _running_under(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.02)  # wait until the holder has started servers
    command.send_signal(signal.SIGINT)
    _, stderr = command.communicate(timeout=60)

    assert command.returncode == 130, stderr
    assert "Interrupted" in stderr
    assert not _running_under(tmp_path)
    assert "No lab is up" in runner.invoke(app, ["lab", "status"]).stdout
