"""RedisServer and the other nodes, port claims and find_redis_server, all on real
redis-server processes."""

from __future__ import annotations

import itertools
import random
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from cachelab.deployment.target import CHILD_ENV, TargetRefused, parse_target
from cachelab.errors import RedisServerNotFound, ServerStartError
from cachelab.lab import Lab, LabSettings
from cachelab.servers import ports as _ports
from cachelab.servers.node import RedisNode
from cachelab.servers.ports import PORT_RANGE, claim_port
from cachelab.servers.redis_binary import ENV_VAR, INSTALL_HINT, RedisBinary, find_redis_server
from cachelab.servers.redis_server import RedisServer


def _running_redis() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True)
            if "redis-server" in p.name() and p.status() != psutil.STATUS_ZOMBIE]


def _free_port() -> int:
    """A port in PORT_RANGE that was free a moment ago (claimed, then released)."""
    claim = claim_port()
    port = claim.port
    claim.release()
    return port


def _draw_first(monkeypatch: pytest.MonkeyPatch, *ports: int) -> list[int]:
    """Make claim_port draw ``ports`` first, then random ones; returns every draw made."""
    queue: Iterator[int] = iter(ports)
    drawn: list[int] = []

    def randint(low: int, high: int) -> int:
        port = next(queue, None) or random.randint(low, high)
        drawn.append(port)
        return port

    monkeypatch.setattr(_ports, "random", SimpleNamespace(randint=randint))
    return drawn


def _always_draw(monkeypatch: pytest.MonkeyPatch, port: int) -> None:
    monkeypatch.setattr(_ports, "random", SimpleNamespace(randint=lambda low, high: port))


def test_server_listens_on_loopback_in_port_range(redis_binary: RedisBinary,
                                                  tmp_path: Path) -> None:
    with RedisServer(redis_binary, tmp_path) as server:
        low, high = PORT_RANGE
        assert low <= server.port <= high
        argv = server.command(server.port)
        pairs = set(itertools.pairwise(argv))
        assert {("--save", ""), ("--bind", "127.0.0.1"), ("--port", str(server.port)),
                ("--daemonize", "no")} <= pairs
        with server.client() as client:
            assert client.ping()
            assert client.config_get("save") == {"save": ""}
            assert client.config_get("bind") == {"bind": "127.0.0.1"}
        listening = {(c.laddr.ip, c.laddr.port)
                     for c in psutil.Process(server.pid).net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN}
        assert listening == {("127.0.0.1", server.port)}


def test_stop_ends_the_process_and_releases_the_port(redis_binary: RedisBinary,
                                                     tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    server = RedisServer(redis_binary, tmp_path).start()
    process = psutil.Process(server.pid)
    port = server.port

    server.stop()

    assert not process.is_running()
    assert server.pid is None
    with pytest.raises(RuntimeError, match="not running"):
        server.port  # noqa: B018
    _always_draw(monkeypatch, port)
    claim_port(attempts=1).release()  # raises OSError if the claim were still held
    server.stop()  # a second stop is harmless


@pytest.mark.parametrize("interrupt", [RuntimeError, KeyboardInterrupt])
def test_server_is_stopped_when_its_block_raises(redis_binary: RedisBinary, tmp_path: Path,
                                                 interrupt: type[BaseException]) -> None:
    with pytest.raises(interrupt):
        with RedisServer(redis_binary, tmp_path) as server:
            process = psutil.Process(server.pid)
            raise interrupt("inside the block")
    assert not process.is_running()
    assert repr(server) == "RedisServer('redis', stopped)"


@pytest.mark.parametrize("interrupt", [RuntimeError, KeyboardInterrupt])
def test_lab_stops_servers_and_removes_workdir_when_its_block_raises(
        interrupt: type[BaseException]) -> None:
    with pytest.raises(interrupt):
        with Lab() as lab:
            processes = [psutil.Process(lab.redis_server(name).pid) for name in ("a", "b")]
            workdir = lab.workdir
            assert (workdir / "a" / "redis.log").exists()
            raise interrupt("inside the lab")
    assert not any(p.is_running() for p in processes)
    assert not workdir.exists()


def test_kill_ends_the_server_at_once(redis_binary: RedisBinary, tmp_path: Path) -> None:
    server = RedisServer(redis_binary, tmp_path).start()
    process = psutil.Process(server.pid)
    with server.client() as client:
        assert client.ping()

    server.kill()

    assert not process.is_running()
    assert repr(server) == "RedisServer('redis', stopped)"
    server.kill()  # killing a stopped server is harmless


def test_bad_config_raises_and_leaves_nothing_running(redis_binary: RedisBinary,
                                                      tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    server = RedisServer(redis_binary, tmp_path, config={"maxmemory-policy": "not-a-policy"})

    with pytest.raises(ServerStartError) as failure:
        with server:
            pytest.fail("the block must not run when the server did not start")

    message = str(failure.value)
    assert "exited during start" in message
    assert str(redis_binary.path) in message
    assert "not-a-policy" in message  # what redis said on stderr reaches the user
    [kept] = tmp_path.glob("cachelab-redis-*-failed.log")
    assert f"log kept at {kept}" in message
    assert "not-a-policy" in kept.read_text()
    assert repr(server) == "RedisServer('redis', stopped)"
    assert not _running_redis()


def test_unrunnable_binary_releases_its_port(tmp_path: Path) -> None:
    missing = RedisBinary(tmp_path / "no-such-redis-server", "7.2.0", "test")
    server = RedisServer(missing, tmp_path)
    with pytest.raises(ServerStartError, match="cannot run"):
        server.start()
    assert repr(server) == "RedisServer('redis', stopped)"


def test_port_bound_by_a_stranger_is_skipped(redis_binary: RedisBinary, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    busy = _free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as stranger:
        stranger.bind(("127.0.0.1", busy))
        stranger.listen()
        drawn = _draw_first(monkeypatch, busy)

        with RedisServer(redis_binary, tmp_path) as server, server.client() as client:
            assert drawn[0] == busy
            assert server.port != busy
            assert client.ping()


def test_server_retries_when_a_stranger_binds_its_port_after_the_claim(
        redis_binary: RedisBinary, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The race claim_port cannot see: free when checked, taken before redis binds."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    busy = _free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as stranger:
        stranger.bind(("127.0.0.1", busy))
        stranger.listen()
        drawn = _draw_first(monkeypatch, busy)
        monkeypatch.setattr(_ports, "_bindable", lambda port: True)

        with RedisServer(redis_binary, tmp_path) as server, server.client() as client:
            assert drawn[0] == busy
            assert server.port != busy
            assert client.ping()
    [kept] = tmp_path.glob(f"cachelab-redis-{busy}-failed.log")
    assert "Address already in use" in kept.read_text()


def test_claims_in_one_process_never_share_a_port(monkeypatch: pytest.MonkeyPatch) -> None:
    claims = [claim_port() for _ in range(30)]
    try:
        assert len({c.port for c in claims}) == len(claims)
    finally:
        for claim in claims:
            claim.release()

    held = claims[0].port
    _always_draw(monkeypatch, held)
    first = claim_port(attempts=1)
    with pytest.raises(OSError, match="no free port"):
        claim_port(attempts=5)
    first.release()
    claim_port(attempts=1).release()


def test_claim_in_another_process_excludes_its_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lock belongs to the other process and dies with it."""
    script = ("import sys\nfrom cachelab.servers.ports import claim_port\n"
              "claim = claim_port()\nprint(claim.port, flush=True)\nsys.stdin.read()\n")
    other = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None
        port = int(other.stdout.readline())
        _always_draw(monkeypatch, port)
        with pytest.raises(OSError, match="no free port"):
            claim_port(attempts=5)
    finally:
        other.kill()
        other.communicate()
    claim_port(attempts=1).release()


def test_explicit_path_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "bin" / "redis-server"
    with pytest.raises(RedisServerNotFound) as failure:
        find_redis_server(missing)
    message = str(failure.value)
    assert str(missing) in message
    assert "--redis-server" in message
    assert INSTALL_HINT in message
    assert "apt-get install redis-server" in message


def _junk_script(tmp_path: Path) -> str:
    script = tmp_path / "fake-redis-server"
    script.write_text("#!/bin/sh\necho 'hello, I am not redis'\n")
    script.chmod(0o755)
    return str(script)


@pytest.mark.parametrize("executable", [lambda tmp: "/bin/true", _junk_script],
                         ids=["true", "junk-script"])
def test_env_var_pointing_at_a_non_redis_executable(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    executable) -> None:
    path = executable(tmp_path)
    monkeypatch.setenv(ENV_VAR, path)
    with pytest.raises(RedisServerNotFound) as failure:
        find_redis_server()
    message = str(failure.value)
    assert f"{path} is not a redis-server" in message
    assert INSTALL_HINT in message


def test_found_binary_runs(redis_binary: RedisBinary, tmp_path: Path) -> None:
    """Whatever find_redis_server picked is a redis-server that reports its version."""
    with RedisServer(redis_binary, tmp_path) as server, server.client() as client:
        assert client.info("server")["redis_version"] == redis_binary.version


def test_a_deployments_part_is_a_node_but_not_a_server_the_lab_can_stop() -> None:
    with Lab() as outer:
        theirs = outer.own_redis_server("theirs")
        settings = LabSettings(target=parse_target(redis_url=theirs.url))
        with Lab(settings) as lab:
            part = lab.redis_server("cache")
            assert isinstance(part, RedisNode) and not isinstance(part, RedisServer)
            assert (part.name, part.host, part.port, part.pid) == ("cache", "127.0.0.1",
                                                                  theirs.port, None)
            prefix = part.keys.prefix
            assert prefix.startswith("cachelab:{") and prefix.endswith(":cache:")
            assert CHILD_ENV in part.child_env()
            with part.client() as client:
                client.set(f"{part.keys.prefix}k", 1)
            assert lab.servers == [part]
            with pytest.raises(TargetRefused, match="servers it starts"):
                lab.own_redis_server("mine")
            with pytest.raises(TargetRefused, match="maxmemory"):
                lab.redis_server("small", maxmemory="1mb")
            part.clear()
            assert theirs.client().keys(f"{part.keys.prefix}*") == []
        assert [s.name for s in outer.servers] == ["theirs"]
