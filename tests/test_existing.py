"""Existing deployments (``--redis-url``, ``--sentinel``, ``--cluster-url``).

The deployment is a redis-server this test starts itself, with ``requirepass``, and then
treats as someone else's: keys written before the run by "another team" must be exactly
as they were afterwards, no key of the run may be left, the server's configuration must
not change, and the password must appear nowhere cachelab prints or saves.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
from typer.testing import CliRunner

from cachelab.cli import app
from cachelab.deployment.deployment import ExistingDeployment
from cachelab.deployment.guard import KeyGuard
from cachelab.deployment.target import TargetRefused, mask, parse_target
from cachelab.errors import UsageError
from cachelab.lab import Lab, LabSettings
from cachelab.registry import exercises
from cachelab.servers.ports import claim_port
from cachelab.servers.redis_binary import find_redis_server
from cachelab.workload.keyspace import Keyspace

PASSWORD = "Tr0ub4dor&3-not-in-any-output"
runner = CliRunner()
RUNS_ON_EXISTING = [e.info.number for e in exercises() if not e.info.own_servers]
OWN_SERVERS = [e.info.number for e in exercises() if e.info.own_servers]


@dataclass
class Deployment:
    """A redis-server someone else runs: we only know its URL and password."""

    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://:{PASSWORD}@127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, password=PASSWORD)


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"-NOAUTH")  # up, and wants the password
    except OSError:
        return False


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    claim = claim_port()
    port = claim.port
    claim.release()
    process = subprocess.Popen(
        [str(find_redis_server().path), "--port", str(port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no", "--requirepass", PASSWORD,
         "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not _answers(port):
            assert process.poll() is None and time.monotonic() < deadline, "no server"
            time.sleep(0.01)
        yield Deployment(port, process)
    finally:
        process.kill()
        process.wait()


def write_foreign_keys(client: redis.Redis) -> None:
    """Another team's data, named as cachelab's own keys are named, and another run's."""
    client.set("user:1", "someone else's user")
    client.set("product:1", "theirs", ex=3600)
    client.hset("api:page:1", mapping={"html": "<p>theirs</p>"})
    client.rpush("posts", "a", "b")
    client.xadd("inval:stream", {"k": "v"})
    client.sadd("deps:changes:last_id", "x")
    client.set("ratelimit:api:token_bucket:{1.2.3.4}", 7)
    client.set("cachelab:{0badc0de}:redis:user:1", "a killed run's key, not ours")
    for i in range(200):
        client.set(f"bulk:{i}", i)


def snapshot(client: redis.Redis) -> dict[str, Any]:
    """Every key with its type, value (DUMP) and whether it expires; and the config."""
    keys = {}
    for key in client.scan_iter(count=1000):
        keys[key] = (client.type(key), client.dump(key), client.ttl(key) > 0)
    return {"keys": keys, "config": client.config_get("*")}


def run_cli(*args: str) -> Any:
    return runner.invoke(app, [*args], catch_exceptions=False)


# --- every exercise that can, runs on the deployment and leaves it as it was ----------

@pytest.mark.parametrize("number", RUNS_ON_EXISTING)
def test_exercise_runs_on_an_existing_deployment(number: int, deployment: Deployment,
                                                 tmp_path: Path) -> None:
    other = deployment.client()
    write_foreign_keys(other)
    before = snapshot(other)
    store = tmp_path / "runs.db"

    result = run_cli("run", str(number), "--redis-url", deployment.url, "--json",
                     "--results", str(store))

    assert PASSWORD not in result.stdout + result.stderr
    assert result.exit_code == 0, result.stdout + result.stderr
    record = json.loads(result.stdout)
    assert record["verdict"] == "pass", record["checks"]
    env = record["environment"]
    assert env["backend"] == "existing"
    assert env["target"] == f"redis://:***@127.0.0.1:{deployment.port}/0"
    assert env["keys_deleted"] > 0  # it did write, under its prefix, and cleaned up
    assert snapshot(other) == before  # nothing else changed, nothing of ours is left
    assert PASSWORD.encode() not in store.read_bytes()
    other.close()


@pytest.mark.parametrize("number", OWN_SERVERS)
def test_exercise_that_controls_servers_refuses_and_touches_nothing(
        number: int, deployment: Deployment) -> None:
    other = deployment.client()
    write_foreign_keys(other)
    before = snapshot(other)

    result = run_cli("run", str(number), "--redis-url", deployment.url, "--no-save")

    assert result.exit_code == 2
    assert "run it without --redis-url" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert snapshot(other) == before
    other.close()


def test_show_says_where_an_exercise_can_run() -> None:
    result = run_cli("show", "15")
    assert "Existing deployments: no" in result.stdout
    result = run_cli("show", "1")
    assert "per-run prefix" in result.stdout and "never FLUSHALL" in result.stdout


def test_password_from_the_environment(deployment: Deployment,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHELAB_REDIS_PASSWORD", PASSWORD)
    result = run_cli("run", "1", "--redis-url", f"redis://127.0.0.1:{deployment.port}",
                     "--json", "--no-save")
    assert result.exit_code == 0, result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    assert deployment.client().dbsize() == 0


def test_a_wrong_password_is_a_one_line_environment_error(deployment: Deployment,
                                                          tmp_path: Path) -> None:
    url = f"redis://:wrong-{PASSWORD}@127.0.0.1:{deployment.port}"
    result = run_cli("run", "1", "--redis-url", url, "--no-save")
    assert result.exit_code == 3
    assert result.stderr.startswith("Error: redis://:***@127.0.0.1:")
    assert "refused the password" in result.stderr and PASSWORD not in result.stderr
    assert not list(tmp_path.glob("cachelab-*")), "a lab folder was left behind"


@pytest.mark.parametrize("args, message", [
    (["--redis-url", "http://example"], "is not a Redis address"),
    (["--redis-url", "redis://h:port"], "the port is not a number"),
    (["--sentinel", "127.0.0.1:26379"], "add --service NAME"),
    (["--service", "mymaster"], "give --sentinel HOST:PORT too"),
    (["--redis-url", "redis://a", "--cluster-url", "redis://b"], "give only one"),
    (["--redis-url", "redis://a", "--backend", "docker"], "leave out --backend"),
])
def test_bad_target_options_are_usage_errors(args: list[str], message: str) -> None:
    result = run_cli("run", "1", *args, "--no-save")
    assert result.exit_code == 2
    assert message in result.stderr


# --- the guard, the mask, the parsing -------------------------------------------------

def test_mask_hides_the_password_only() -> None:
    assert mask("rediss://app:s3cret@h.example:6380/2") == "rediss://app:***@h.example:6380/2"
    assert mask("redis://h:6379") == "redis://h:6379"
    target = parse_target(sentinel="10.0.0.1:26379", service="mymaster")
    assert target is not None and target.display == "redis://10.0.0.1:26379 (service mymaster)"
    with pytest.raises(UsageError):
        parse_target(redis_url="redis://a/x")


def test_a_keyspace_matches_its_prefix_literally(lab: Lab) -> None:
    keys = Keyspace("run[1]*:")
    client = lab.redis()
    client.set(keys("user:1"), 1)
    client.set("run1X:user:2", 1)  # what the prefix read as a glob would match instead
    assert keys("user:1") == "run[1]*:user:1"
    assert list(client.scan_iter(keys.pattern("user:*"))) == ["run[1]*:user:1"]


def test_the_guard_refuses_what_could_touch_others(deployment: Deployment) -> None:
    target = parse_target(redis_url=deployment.url)
    assert target is not None
    other = deployment.client()
    write_foreign_keys(other)
    before = snapshot(other)
    with ExistingDeployment(target) as existing:
        part = existing.part("redis")
        client = part.client()
        key = part.keys("k")
        client.set(key, 1)
        client.eval("return redis.call('incr', KEYS[1])", 1, key)
        client.pipeline().set(f"{key}2", 2).mget(key, f"{key}2").execute()
        assert client.info("stats")["keyspace_hits"] >= 0  # reading the server is fine
        tracking = client.pubsub()  # a redirect connection listens on Redis's own channel
        tracking.subscribe("__redis__:invalidate")
        tracking.close()
        refused = [
            lambda: client.get("user:1"), lambda: client.flushall(),
            lambda: client.publish("__redis__:invalidate", "user:1"),
            lambda: client.flushdb(), lambda: client.config_set("maxmemory", "1mb"),
            lambda: client.config_resetstat(), lambda: client.keys("*"),
            lambda: client.scan(match="user:*"), lambda: client.publish("inval", "x"),
            lambda: client.eval("return 1", 1, "user:1"), lambda: client.randomkey(),
            lambda: client.pipeline().set(key, 1).delete("user:1").execute(),
            lambda: client.execute_command("SELECT", "3"), lambda: client.move(key, 3),
            lambda: client.client_kill_filter(_type="normal"),
            lambda: client.execute_command("DEBUG", "SLEEP", "0"),
            lambda: client.sort(key, by="user:*"), lambda: client.bgsave(),
        ]
        for attempt in refused:
            with pytest.raises(TargetRefused):
                attempt()
        client.close()
    assert existing.deleted == 3  # and the run's owner record
    assert snapshot(other) == before


def test_guard_reads_key_positions_from_the_server() -> None:
    with Lab() as lab:
        guard = KeyGuard.load(lab.redis(), "p:", 0)
    assert guard.keys(["MSET", "p:a", "1", "p:b", "2"]) == ["p:a", "p:b"]
    assert guard.keys(["XREAD", "COUNT", "1", "STREAMS", "p:s", "p:t", "0", "0"]) == [
        "p:s", "p:t"]
    assert guard.keys(["EVALSHA", "abc", "2", "p:a", "p:b", "arg"]) == ["p:a", "p:b"]
    assert guard.keys(["OBJECT", "ENCODING", "p:a"]) == ["p:a"]
    assert guard.keys(["PING"]) is None


# --- Sentinel and Cluster: resolved to the master that holds the run's keys -----------

def test_sentinel_resolves_the_master_and_leaves_nothing() -> None:
    with Lab() as lab:
        replicas = lab.replica_set(replicas=1, name="theirs")
        sentinels = lab.sentinels(replicas, count=1, quorum=1, service="theirs")
        primary = replicas.primary.client()
        primary.set("user:1", "theirs")
        settings = LabSettings(target=parse_target(
            sentinel=f"127.0.0.1:{sentinels.servers[0].port}", service="theirs"))
        with Lab(settings) as inner:
            server = inner.redis_server()
            assert server.port == replicas.primary.port
            client = inner.closing(server.client())
            client.set(server.keys("x"), 1)
            assert primary.get(server.keys("x")) == "1"
        assert primary.keys("*") == ["user:1"]
        assert inner.environment()["keys_deleted"] == 2  # x and the owner record


def test_cluster_keeps_a_run_in_one_slot_of_one_master() -> None:
    with Lab() as lab:
        cluster = lab.cluster(masters=3, replicas=0, name="theirs")
        seed = cluster.servers[0]
        settings = LabSettings(target=parse_target(cluster_url=f"redis://127.0.0.1:{seed.port}"))
        with Lab(settings) as inner:
            server = inner.redis_server()
            client = inner.closing(server.client())
            keys = [server.keys(str(i)) for i in range(50)]
            client.mset(dict.fromkeys(keys, 1))  # one slot: a multi-key command works
            slots = {client.execute_command("CLUSTER KEYSLOT", k) for k in keys}
            assert len(slots) == 1
        assert inner.environment()["keys_deleted"] == 51  # and the owner record
        for node in cluster.servers:
            assert node.client().dbsize() == 0


# --- TLS: rediss:// to a redis-server that speaks only TLS -----------------------------

def _tls_server_or_skip(tmp_path: Path) -> tuple[Path, Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: no certificate for a TLS server")
    ca_key, ca, key, csr, cert = (tmp_path / n for n in (
        "ca.key", "ca.crt", "server.key", "server.csr", "server.crt"))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=cachelab test CA", "-keyout", ca_key, "-out", ca],
                   check=True, capture_output=True)
    subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
                    "-keyout", key, "-out", csr], check=True, capture_output=True)
    ext = tmp_path / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key,
                    "-CAcreateserial", "-days", "1", "-extfile", ext, "-out", cert],
                   check=True, capture_output=True)
    return ca, cert, key


def test_rediss_reaches_a_tls_only_server(tmp_path: Path) -> None:
    ca, cert, key = _tls_server_or_skip(tmp_path)
    claim = claim_port()
    port = claim.port
    claim.release()
    log = tmp_path / "tls-server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(find_redis_server().path), "--port", "0", "--tls-port", str(port),
         "--bind", "127.0.0.1", "--tls-cert-file", str(cert), "--tls-key-file", str(key),
             "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no", "--save", "",
             "--requirepass", PASSWORD, "--dir", str(tmp_path)],
            stdout=out, stderr=subprocess.STDOUT)
    url = f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?ssl_ca_certs={ca}"
    try:
        other = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while True:
            try:
                other.ping()
                break
            except redis.ConnectionError:
                if process.poll() is not None:
                    said = log.read_text(errors="replace")
                    if "tls" in said.lower():
                        pytest.skip(f"this redis-server has no TLS: {said.strip()[-120:]}")
                    raise
                assert time.monotonic() < deadline, "the TLS server did not answer"
                time.sleep(0.05)
        write_foreign_keys(other)
        before = snapshot(other)
        result = run_cli("run", "1", "--redis-url", url, "--json", "--no-save")
        assert result.exit_code == 0, result.stdout + result.stderr
        assert PASSWORD not in result.stdout + result.stderr
        assert json.loads(result.stdout)["environment"]["target"].startswith("rediss://:***@")
        assert snapshot(other) == before
        other.close()
    finally:
        process.kill()
        process.wait()


def test_run_all_runs_what_it_can_and_names_what_it_skips(
        deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> None:
    import cachelab.cli

    chosen = [e for e in exercises() if e.info.number in (1, 15)]
    monkeypatch.setattr(cachelab.cli, "exercises", lambda: chosen)  # two, for time's sake
    result = run_cli("run", "all", "--redis-url", deployment.url, "--json", "--no-save")
    assert result.exit_code == 0, result.stderr
    assert "skipping exercise-15" in result.stderr
    assert [r["exercise"] for r in json.loads(result.stdout)] == ["exercise-1"]
    assert deployment.client().dbsize() == 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_run_still_deletes_its_keys(sig: signal.Signals, deployment: Deployment,
                                                tmp_path: Path) -> None:
    """A real `cachelab` process stopped mid-workload (exercise 12: service processes,
    pub/sub, streams) exits 130 (Ctrl-C) or 143 (SIGTERM), leaves no child, and its keys go
    with it."""
    other = deployment.client()
    write_foreign_keys(other)
    before = snapshot(other)
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    process = subprocess.Popen(
        [sys.executable, "-m", "cachelab", "run", "12", "--redis-url", deployment.url,
         "--no-save"], text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 60
    while other.dbsize() <= len(before["keys"]) and time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)  # until the run has written keys of its own
    children = psutil.Process(process.pid).children(recursive=True)
    process.send_signal(sig)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 128 + sig, err
    assert PASSWORD not in out + err
    _, alive = psutil.wait_procs(children, timeout=5)
    assert not alive, "a child of the run is still running"
    assert snapshot(other) == before
    assert not list(tmp_path.glob("cachelab-run-*"))
    other.close()


@pytest.mark.parametrize("number, kind", [(12, "sentinel"), (19, "cluster")])
def test_exercise_through_sentinel_or_cluster(number: int, kind: str) -> None:
    """Child processes, pub/sub, streams and scripts, found through Sentinel or Cluster."""
    with Lab() as lab:
        if kind == "sentinel":
            replicas = lab.replica_set(replicas=1, name="theirs")
            sentinels = lab.sentinels(replicas, count=1, quorum=1, service="theirs")
            args = ["--sentinel", f"127.0.0.1:{sentinels.servers[0].port}",
                    "--service", "theirs"]
            nodes = [replicas.primary]
        else:
            cluster = lab.cluster(masters=3, replicas=0, name="theirs")
            nodes = cluster.servers
            args = ["--cluster-url", f"redis://127.0.0.1:{nodes[0].port}"]
        clients = [lab.closing(node.client()) for node in nodes]
        result = run_cli("run", str(number), *args, "--json", "--no-save")
        assert result.exit_code == 0, result.stdout + result.stderr
        record = json.loads(result.stdout)
        assert record["environment"]["target_kind"] == kind.replace("cluster", "cluster-url")
        assert record["environment"]["keys_deleted"] > 0
        assert all(c.dbsize() == 0 for c in clients)


def test_compare_varies_an_option_on_a_deployment(deployment: Deployment,
                                                  tmp_path: Path) -> None:
    other = deployment.client()
    write_foreign_keys(other)
    before = snapshot(other)
    store = tmp_path / "runs.db"
    result = run_cli("compare", "2", "--vary", "ttl_s=1,60", "--redis-url", deployment.url,
                     "--json", "--results", str(store))
    assert result.exit_code == 0, result.stdout + result.stderr
    assert len(json.loads(result.stdout)["rows"]) > 0
    assert PASSWORD not in result.stdout + result.stderr
    assert PASSWORD.encode() not in store.read_bytes()
    assert snapshot(other) == before
    refused = run_cli("compare", "15", "--vary", "top_k=1,2", "--redis-url", deployment.url)
    assert refused.exit_code == 2 and "run it without --redis-url" in refused.stderr


def test_doctor_finds_a_killed_runs_keys_and_deletes_only_those(
        deployment: Deployment, tmp_path: Path) -> None:
    """kill -9 leaves a run no chance to delete its keys: doctor finds them by the run's
    owner record (its pid is gone), and --clean deletes them; a running run's stay."""
    other = deployment.client()
    write_foreign_keys(other)
    before = snapshot(other)
    process = subprocess.Popen(
        [sys.executable, "-m", "cachelab", "run", "13", "--redis-url", deployment.url,
         "--no-save"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "TMPDIR": str(tmp_path)})
    deadline = time.monotonic() + 60
    while other.dbsize() <= len(before["keys"]) + 5 and time.monotonic() < deadline:
        assert process.poll() is None
        time.sleep(0.05)
    process.kill()
    process.wait()
    target = parse_target(redis_url=deployment.url)
    assert target is not None
    with ExistingDeployment(target) as live:  # a run in progress, in this very process
        live.part("redis").client().set(f"{live.prefix}redis:k", 1)

        report = run_cli("doctor", "--redis-url", deployment.url)
        assert PASSWORD not in report.stdout
        assert "2 run(s) killed" in report.stdout  # the SIGKILLed one and the unowned
        assert f"{live.prefix}  2 key(s)" in report.stdout and ": running" in report.stdout
        assert "cachelab:{0badc0de}:  1 key(s), no owner record: unowned" in report.stdout

        cleaned = run_cli("doctor", "--redis-url", deployment.url, "--clean")
        assert "of 2 killed run(s) deleted" in cleaned.stdout, cleaned.stdout
        left = snapshot(other)
        assert {k for k in left["keys"] if k.startswith(live.prefix.encode())} == {
            f"{live.prefix}owner".encode(), f"{live.prefix}redis:k".encode()}
    expected = {k: v for k, v in before["keys"].items() if not k.startswith(b"cachelab:{0bad")}
    assert snapshot(other)["keys"] == expected


def test_run_all_stops_at_once_when_the_deployment_does_not_answer() -> None:
    claim = claim_port()  # a port nothing listens on
    port = claim.port
    claim.release()
    result = run_cli("run", "all", "--redis-url", f"redis://127.0.0.1:{port}", "--no-save")
    assert result.exit_code == 3
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [f"Error: cannot reach redis://127.0.0.1:{port} (Error 111 connecting to "
                      f"127.0.0.1:{port}. Connection refused.); check --redis-url"]
