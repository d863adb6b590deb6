"""``cachelab doctor``: its checks one by one, and the command's text and JSON."""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cachelab import doctor
from cachelab.cli import app
from cachelab.errors import ExitCode, RedisServerNotFound, UsageError
from cachelab.servers.ports import claim_port

runner = CliRunner()


def invoke(args: list[str]) -> Any:
    return runner.invoke(app, args, prog_name="cachelab")


@pytest.fixture
def engine_socket(tmp_path: Path) -> Iterator[tuple[Path, list[bytes]]]:
    """A Unix socket that answers each connection with the next of the replies put in."""
    path = tmp_path / "docker.sock"
    replies: list[bytes] = []
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()

    def answer() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return  # closed
            with connection:
                request = connection.recv(1024)
                if request.startswith(b"GET /_ping "):
                    connection.sendall(replies.pop(0))

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    yield path, replies
    server.shutdown(socket.SHUT_RDWR)
    server.close()
    thread.join(timeout=5)


def test_the_engine_ping_reads_the_status_line(engine_socket: tuple[Path, list[bytes]],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    path, replies = engine_socket
    monkeypatch.setenv("DOCKER_HOST", f"unix://{path}")
    replies += [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK",
                b"HTTP/1.1 500 Internal Server Error\r\n\r\n"]
    assert doctor.engine_answers() == "an engine answers"
    assert doctor.engine_answers() == f"odd reply at {path}"
    monkeypatch.setenv("DOCKER_HOST", f"unix://{path}.missing")
    assert doctor.engine_answers() == f"no engine answers at {path}.missing"
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.0.0.1:2375")
    assert doctor.engine_answers() == "not checked (tcp://10.0.0.1:2375 is not a local socket)"


def test_the_checks_run_in_order_and_every_one_reports() -> None:
    names = [check.__name__ for check in doctor.CHECKS]
    assert names == ["versions", "redis_server", "results_store", "docker", "background_lab",
                     "leftovers", "deployment"]
    request = doctor.DoctorRequest()
    assert all(check(request) for check in doctor.CHECKS if check is not doctor.deployment)
    assert doctor.deployment(request) == []  # no deployment named: nothing to look at


def test_the_first_problem_decides_the_exit_code() -> None:
    missing = RedisServerNotFound("no redis-server")
    report = doctor.DoctorReport([
        doctor.Finding("a", "fine", details=("one", "two")),
        doctor.Finding("b", "none usable", problem=missing),
        doctor.Finding("c", "refused", problem=UsageError("later")),
    ])
    assert report.problem is missing
    assert report.rows() == [("a", "fine"), ("", "one"), ("", "two"), ("b", "none usable"),
                             ("c", "refused")]
    assert report.to_dict() == {
        "findings": [{"name": "a", "value": "fine", "details": ["one", "two"]},
                     {"name": "b", "value": "none usable", "details": []},
                     {"name": "c", "value": "refused", "details": []}],
        "error": "no redis-server", "exit_code": ExitCode.ENVIRONMENT}


def test_doctor_json_is_one_object_of_every_finding() -> None:
    result = invoke(["doctor", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # the whole stdout
    names = [finding["name"] for finding in report["findings"]]
    assert names[:4] == ["cachelab", "python", "redis-server", "results store"]
    assert {"docker", "background lab", "killed runs", "leftovers"} <= set(names)
    assert report["error"] is None and report["exit_code"] == 0
    text = invoke(["doctor"]).stdout
    for finding in report["findings"]:
        assert f"{finding['name']}  " in text and finding["value"] in text


def test_doctor_json_without_redis_server_exits_3_with_the_error_on_stderr() -> None:
    result = invoke(["doctor", "--json", "--redis-server", "/nonexistent"])
    assert result.exit_code == 3
    report = json.loads(result.stdout)
    found = {f["name"]: f["value"] for f in report["findings"]}
    assert found["redis-server"] == "none usable"
    assert report["exit_code"] == 3
    assert report["error"].startswith("/nonexistent (from --redis-server) is not an")
    assert result.stderr == f"Error: {report['error']}\n"


def test_doctor_json_lists_and_cleans_a_killed_runs_folder(tmp_path: Path) -> None:
    killed = tmp_path / "cachelab-run-killed"
    killed.mkdir()
    (killed / "owner.pid").write_text(str(2**22 + 1))  # above pid_max: never alive

    listed = json.loads(invoke(["doctor", "--json"]).stdout)
    leftovers = next(f for f in listed["findings"] if f["name"] == "leftovers")
    assert leftovers["value"] == ("1 folder(s) of killed runs, 0 server(s) still running "
                                  "(cachelab doctor --clean removes them)")
    assert leftovers["details"] == [f"{killed} (run pid {2**22 + 1}, servers none)"]
    assert killed.exists()

    cleaned = json.loads(invoke(["doctor", "--clean", "--json"]).stdout)
    assert {"name": "cleaned", "value": "1 folder(s) removed", "details": []} in (
        cleaned["findings"])
    assert not killed.exists()


def test_a_deployment_that_does_not_answer_exits_3() -> None:
    claim = claim_port()  # a port nothing listens on
    port = claim.port
    claim.release()
    url = f"redis://127.0.0.1:{port}"
    result = invoke(["doctor", "--redis-url", url])
    assert result.exit_code == 3
    # The name column is as wide as the longest name (with an engine, Docker's rows are).
    assert re.search(rf"^deployment +none usable at {re.escape(url)}$", result.stdout, re.M)
    assert result.stderr == (f"Error: cannot reach {url} (Error 111 connecting to "
                             f"127.0.0.1:{port}. Connection refused.); check --redis-url\n")


def test_a_bad_deployment_option_is_a_usage_error_before_any_check() -> None:
    result = invoke(["doctor", "--service", "mymaster"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == ("Error: --service names a Sentinel service; give --sentinel "
                             "HOST:PORT too\n")
