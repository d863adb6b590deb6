"""``--backend docker``: exercises on containers, and no labelled container left after any end.

The image is built here, with ``docker import``, from the redis-server cachelab finds and
the libraries ``ldd`` names: no registry is needed. Without an engine (or without the
Docker SDK) the tests that need one skip and say why.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cachelab.cli import app
from cachelab.errors import CachelabError
from cachelab.lab import Lab, LabSettings
from cachelab.servers.leftovers import alive
from cachelab.servers.redis_binary import RedisBinary

runner = CliRunner()


def invoke(args: list[str]) -> Any:
    return runner.invoke(app, args, prog_name="cachelab")


def _rootfs(binary: Path) -> bytes:
    """A tar of redis-server at /usr/local/bin and every library it loads, at its path."""
    ldd = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, timeout=10,
                         check=False).stdout
    libraries = sorted(set(re.findall(r"(/\S+)", ldd)))
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w", dereference=True) as tar:
        for folder in ("tmp", "data"):
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777
            tar.addfile(info)
        tar.add(binary, arcname="usr/local/bin/redis-server")
        for library in libraries:
            tar.add(library, arcname=library.lstrip("/"))
    return data.getvalue()


@pytest.fixture(scope="session")
def engine() -> Iterator[Any]:
    """A client of a Docker engine that answers, or a skip that says why not."""
    from cachelab.servers import docker_backend

    try:
        client = docker_backend.connect(timeout_s=10)
    except CachelabError as exc:
        pytest.skip(f"no Docker engine for the docker backend: {exc}")
    yield client
    client.close()


@pytest.fixture(scope="session")
def image(engine: Any, redis_binary: RedisBinary) -> str:
    """cachelab's test image: the found redis-server and its libraries, imported once per
    binary (its digest is the tag, so a changed binary gets a new image)."""
    import docker

    digest = hashlib.sha256(redis_binary.path.read_bytes()).hexdigest()[:12]
    tag = f"cachelab-redis:test-{digest}"
    try:
        engine.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    try:
        engine.api.import_image_from_data(_rootfs(redis_binary.path.resolve()),
                                          repository="cachelab-redis", tag=f"test-{digest}")
        engine.images.get(tag)
    except (docker.errors.DockerException, OSError) as exc:
        pytest.skip(f"could not docker-import a test image from {redis_binary.path}: {exc}")
    return tag


def _labelled(engine: Any, **labels: str) -> list[Any]:
    wanted = ["cachelab=1", *(f"cachelab.{k.replace('_', '-')}={v}" for k, v in labels.items())]
    return list(engine.containers.list(all=True, filters={"label": wanted}))


def _wait_for(condition: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def ours(engine: Any) -> Iterator[None]:
    """This test process leaves no labelled container behind."""
    yield
    left = _labelled(engine, owner_pid=str(os.getpid()))
    for container in left:
        container.remove(force=True)
    assert not left, [c.name for c in left]


def _docker(image: str) -> list[str]:
    return ["--backend", "docker", "--image", image]


@pytest.mark.slow
@pytest.mark.parametrize("exercise", ["exercise-1", "exercise-7", "exercise-17"])
def test_exercise_passes_on_containers(exercise: str, image: str, ours: None) -> None:
    result = invoke(["run", exercise, "--json", "--no-save", *_docker(image)])
    record = json.loads(result.stdout)
    assert result.exit_code == 0, (result.output, [c for c in record["checks"]
                                                    if not c["passed"]])
    assert record["verdict"] == "pass"
    env = record["environment"]
    assert (env["backend"], env["image"]) == ("docker", image)
    assert re.fullmatch(r"\d+\.\d+\.\d+", env["redis_version"])


def test_servers_live_in_labelled_containers_with_their_folder(
        engine: Any, image: str, ours: None) -> None:
    with Lab(LabSettings(backend="docker", image=image)) as lab:
        server = lab.redis_server("cache", maxmemory="2mb")
        with server.client() as client:
            client.set("k", "v")
            assert client.config_get("maxmemory") == {"maxmemory": str(2 * 1024 * 1024)}
            assert client.config_get("dir")["dir"] == str(server.dir)
        (container,) = _labelled(engine, folder=str(lab.workdir))
        assert container.labels["cachelab.owner-pid"] == str(os.getpid())
        assert container.attrs["HostConfig"]["NetworkMode"] == "host"
        assert server.pid == container.attrs["State"]["Pid"]
        assert server.logfile.exists()  # written by the container into the mounted folder
        assert os.stat(server.logfile).st_uid == os.getuid()
        server.stop()
        assert not _labelled(engine, folder=str(lab.workdir))
        server.start()  # a restart is a new container in the same folder
        assert len(_labelled(engine, folder=str(lab.workdir))) == 1
    assert not _labelled(engine, folder=str(lab.workdir))
    assert not lab.workdir.exists()


def test_an_exception_in_the_lab_removes_every_container(engine: Any, image: str,
                                                         ours: None) -> None:
    with pytest.raises(RuntimeError, match="boom"), \
            Lab(LabSettings(backend="docker", image=image)) as lab:
        replicas = lab.replica_set(replicas=1)
        assert len(_labelled(engine, folder=str(lab.workdir))) == 2
        replicas.primary.kill()  # docker kill: removed at once, not left exited
        assert len(_labelled(engine, folder=str(lab.workdir))) == 1
        raise RuntimeError("boom")
    assert not _labelled(engine, folder=str(lab.workdir))


def _run_in_background(tmp_path: Path, image: str) -> subprocess.Popen[str]:
    """exercise-7 on containers, sized to outlive the wait for its three servers."""
    return subprocess.Popen(
        [sys.executable, "-m", "cachelab", "run", "7", "--no-save", *_docker(image)],
        text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={**os.environ, "TMPDIR": str(tmp_path)})


def _three_running(engine: Any, pid: int) -> bool:
    return len([c for c in _labelled(engine, owner_pid=str(pid))
                if c.status == "running"]) >= 3


def test_a_killed_run_leaves_containers_that_doctor_clean_removes(
        engine: Any, image: str, tmp_path: Path) -> None:
    run = _run_in_background(tmp_path, image)
    try:
        assert _wait_for(lambda: _three_running(engine, run.pid), 60), run.stderr
    finally:
        run.send_signal(signal.SIGKILL)
        run.communicate(timeout=10)
    # Not children: the parent-death signal cannot reach them, so they are still there.
    left = _labelled(engine, owner_pid=str(run.pid))
    assert len(left) >= 3
    listed = invoke(["doctor"])
    assert all(c.name in listed.output for c in left), listed.output
    cleaned = invoke(["doctor", "--clean"])
    assert cleaned.exit_code == 0, cleaned.output
    assert "container(s) of killed runs removed" in cleaned.output
    assert not _labelled(engine, owner_pid=str(run.pid))
    assert not list(tmp_path.glob("cachelab-run-*"))


def test_a_run_stopped_by_sigterm_removes_its_own_containers(
        engine: Any, image: str, tmp_path: Path) -> None:
    run = _run_in_background(tmp_path, image)
    try:
        assert _wait_for(lambda: _three_running(engine, run.pid), 60), run.stderr
    finally:
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=60)
    assert run.returncode == 143, err
    assert not _labelled(engine, owner_pid=str(run.pid))


def test_lab_up_and_down_on_containers(engine: Any, image: str) -> None:
    started = invoke(["lab", "up", "standalone", "--json", *_docker(image)])
    assert started.exit_code == 0, started.output
    state = json.loads(started.stdout)
    holder = str(state["pid"])
    try:
        assert state["backend"] == "docker"
        assert state["redis_server"]["image"] == image
        assert len(_labelled(engine, owner_pid=holder)) == 1
        assert "yes" in invoke(["lab", "status"]).output  # it answers
    finally:
        stopped = invoke(["lab", "down"])
    assert stopped.exit_code == 0, stopped.output
    assert not _labelled(engine, owner_pid=holder)


def test_a_killed_lab_holder_is_cleaned_by_status(engine: Any, image: str) -> None:
    started = invoke(["lab", "up", "standalone", "--json", *_docker(image)])
    assert started.exit_code == 0, started.output
    holder = json.loads(started.stdout)["pid"]
    try:
        os.kill(holder, signal.SIGKILL)
        assert _wait_for(lambda: not alive(holder), 10)
        assert len(_labelled(engine, owner_pid=str(holder))) == 1  # outlived its holder
        assert "No lab is up" in invoke(["lab", "status"]).output
        assert not _labelled(engine, owner_pid=str(holder))
    finally:
        invoke(["lab", "down"])


def test_doctor_shows_the_engine_and_the_test_image(image: str) -> None:
    result = invoke(["doctor"])
    assert "an engine answers" in result.output
    assert image in result.output


def test_no_engine_is_one_line_and_exit_3(monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/none.sock")
    result = invoke(["run", "1", "--no-save", "--backend", "docker"])
    assert result.exit_code == 3
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "--backend local" in lines[0]
    assert "no engine answers at" in invoke(["doctor"]).output


def test_a_missing_image_that_cannot_be_pulled_is_an_environment_error(
        engine: Any, ours: None) -> None:
    result = invoke(["run", "1", "--no-save", *_docker("cachelab-missing:none")])
    assert result.exit_code == 3
    assert "cachelab-missing:none is not present and could not be pulled" in result.output


def test_the_local_backend_never_imports_the_docker_sdk() -> None:
    code = ("import sys; from cachelab.lab import Lab\n"
            "with Lab() as lab: lab.redis_server()\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'docker'"
            " or m.endswith('docker_backend')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip() == "[]"
