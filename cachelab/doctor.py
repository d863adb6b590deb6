"""What ``cachelab doctor`` looks at, as small checks (Django's ``check`` framework): each
looks at one thing a run needs or a killed run left behind and returns findings; with
``clean`` the cleaning checks also remove what killed runs left. The CLI prints them."""

from __future__ import annotations

import os
import platform
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cachelab import __version__
from cachelab.errors import CachelabError, ExitCode

if TYPE_CHECKING:
    from cachelab.deployment.target import Target


@dataclass(frozen=True)
class DoctorRequest:
    """What to examine: the redis-server and results store a run would use, and an
    existing deployment if one is named; ``clean`` removes what killed runs left."""

    redis_server: str | None = None
    results: Path | None = None
    target: Target | None = None
    clean: bool = False


@dataclass(frozen=True)
class Finding:
    """One line of the report, with lines of detail under it; ``problem`` when what was
    found stops runs (doctor then exits with its code)."""

    name: str
    value: str
    details: tuple[str, ...] = ()
    problem: CachelabError | None = None


Check = Callable[[DoctorRequest], list[Finding]]
#: The checks, in the order they run and print (registered by :func:`check`).
CHECKS: list[Check] = []


def check(function: Check) -> Check:
    """Register a check; checks run in the order they are defined."""
    CHECKS.append(function)
    return function


@dataclass
class DoctorReport:
    """Every finding of one examination."""

    findings: list[Finding] = field(default_factory=list)

    @property
    def problem(self) -> CachelabError | None:
        """The first problem found, which decides the exit code."""
        return next((f.problem for f in self.findings if f.problem is not None), None)

    def rows(self) -> list[tuple[str, str]]:
        """``(name, value)`` rows, each detail a row of its own with no name."""
        return [row for f in self.findings
                for row in [(f.name, f.value), *(("", detail) for detail in f.details)]]

    def to_dict(self) -> dict[str, Any]:
        """The report as ``doctor --json`` prints it."""
        problem = self.problem
        return {"findings": [{"name": f.name, "value": f.value, "details": list(f.details)}
                             for f in self.findings],
                "error": None if problem is None else str(problem),
                "exit_code": int(ExitCode.OK if problem is None else problem.exit_code)}


def examine(request: DoctorRequest) -> DoctorReport:
    """Run every check, in order."""
    return DoctorReport([finding for run_check in CHECKS for finding in run_check(request)])


@check
def versions(request: DoctorRequest) -> list[Finding]:
    return [Finding("cachelab", __version__),
            Finding("python", f"{platform.python_version()} ({sys.executable})")]


@check
def redis_server(request: DoctorRequest) -> list[Finding]:
    """The redis-server a run would start, found as a run finds it."""
    from cachelab.servers.redis_binary import find_redis_server

    try:
        binary = find_redis_server(request.redis_server)
    except CachelabError as exc:
        return [Finding("redis-server", "none usable", problem=exc)]
    return [Finding("redis-server", f"{binary.version} at {binary.path} ({binary.source})")]


@check
def results_store(request: DoctorRequest) -> list[Finding]:
    from cachelab.store import default_store_path

    return [Finding("results store", str(request.results or default_store_path()))]


def engine_answers() -> str:
    """Ping the Docker engine's socket, without the Docker SDK; a one-line answer."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        return f"not checked ({host} is not a local socket)"
    path = host.removeprefix("unix://")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            sock.connect(path)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            reply = sock.recv(256).decode(errors="replace")
    except OSError:
        return f"no engine answers at {path}"
    return "an engine answers" if " 200 " in reply.split("\r\n", 1)[0] else f"odd reply at {path}"


@check  # before the leftovers: a killed run's container may still mount its folder
def docker(request: DoctorRequest) -> list[Finding]:
    """The engine, its Redis and Valkey images, and cachelab's containers."""
    answer = engine_answers()
    if answer.startswith("no engine"):
        return [Finding("docker", answer)]
    from cachelab.servers import docker_backend

    try:
        client = docker_backend.connect(timeout_s=5)
    except CachelabError as exc:
        return [Finding("docker", str(exc))]
    try:
        findings = [Finding("docker", answer),
                    Finding("docker images", ", ".join(docker_backend.images(client))
                            or "none with redis or valkey in its name (--image pulls one)")]
        found = docker_backend.cachelab_containers(client)
        orphans = [c for c in found if c.orphaned]
        findings.append(Finding(
            "docker containers",
            f"{len(found) - len(orphans)} of running cachelab processes, "
            f"{len(orphans)} of killed ones"
            + (" (cachelab doctor --clean removes them)" if orphans and not request.clean
               else ""),
            details=tuple(f"{c.name} ({c.status}, run pid {c.owner_pid}, folder {c.folder})"
                          for c in orphans)))
        if request.clean and orphans:
            removed = docker_backend.remove_containers(client, orphans)
            findings.append(Finding("cleaned", f"{removed} container(s) of killed runs removed"))
    finally:
        client.close()
    return findings


@check
def background_lab(request: DoctorRequest) -> list[Finding]:
    from cachelab.children import background

    up = background.status()
    return [Finding("background lab", "none" if up is None else
                    f"{up['kind']} up since {up['started_at']} (cachelab lab down stops it)")]


@check
def leftovers(request: DoctorRequest) -> list[Finding]:
    """Folders of killed runs and the servers still running in them."""
    from cachelab.servers import leftovers
    from cachelab.servers.spawn import DIES_WITH_PARENT

    findings = [Finding("killed runs", ("their servers die with them (parent-death signal)"
                                        if DIES_WITH_PARENT else "their servers may outlive "
                                        "them: see leftovers")
                        + "; docker containers outlive them")]
    found = leftovers.find_leftovers()
    findings.append(Finding(
        "leftovers", f"{len(found)} folder(s) of killed runs, "
        f"{sum(len(f.pids) for f in found)} server(s) still running"
        + (" (cachelab doctor --clean removes them)" if found and not request.clean else ""),
        details=tuple(f"{f.folder} (run pid {f.owner_pid}, servers "
                      f"{', '.join(map(str, f.pids)) or 'none'})" for f in found)))
    if request.clean and found:
        for leftover in found:
            leftovers.clean(leftover)
        findings.append(Finding("cleaned", f"{len(found)} folder(s) removed"))
    return findings


@check
def deployment(request: DoctorRequest) -> list[Finding]:
    """An existing deployment: does it answer, and the keys cachelab runs have there (a
    killed run cannot delete its own; clean deletes those, and only those)."""
    target = request.target
    if target is None:
        return []
    from cachelab.deployment.survey import remove, survey

    try:
        version, runs = survey(target)
        orphans = [run for run in runs if run.orphaned]
        findings = [Finding("deployment", f"Redis {version} at {target.display}"),
                    Finding("runs' keys",
                            f"{len(runs)} run(s), {sum(r.keys for r in runs)} key(s); "
                            f"{len(orphans)} run(s) killed"
                            + (" (cachelab doctor --clean deletes their keys)"
                               if orphans and not request.clean else ""),
                            details=tuple(run.describe() for run in runs))]
        if request.clean and orphans:
            deleted = sum(remove(target, run) for run in orphans)
            findings.append(Finding(
                "cleaned", f"{deleted} key(s) of {len(orphans)} killed run(s) deleted"))
    except CachelabError as exc:  # it does not answer, or stopped answering
        return [Finding("deployment", f"none usable at {target.display}", problem=exc)]
    return findings
