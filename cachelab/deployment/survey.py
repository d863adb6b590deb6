"""What ``cachelab doctor`` sees of runs on a deployment: each run's keys by the owner
record it wrote first, and the removal of a killed run's keys (and nothing else)."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass

from cachelab.deployment.deployment import (
    OWNER,
    RUNS_PREFIX,
    Address,
    cluster_slots,
    glob_escape,
    reaching,
    resolve,
    unlink_under,
)
from cachelab.deployment.guard import KeyGuard, as_text
from cachelab.deployment.target import Target, with_credentials

_RUN = re.compile(r"^(cachelab:\{[0-9a-f]+\}:)")



@dataclass
class RunKeys:
    """The keys one cachelab run has on a deployment, and which process wrote them."""

    prefix: str
    keys: int
    owner: dict[str, str]
    address: Address

    @property
    def state(self) -> str:
        """``running``, ``killed`` (its process is gone), ``unowned`` (no record left),
        or ``elsewhere`` (another machine's: cachelab cannot tell)."""
        if not self.owner:
            return "unowned"
        if self.owner.get("host") != socket.gethostname():
            return "elsewhere"
        from cachelab.servers.leftovers import alive

        return "running" if alive(int(self.owner.get("pid", 0))) else "killed"

    @property
    def orphaned(self) -> bool:
        return self.state in ("killed", "unowned")

    def describe(self) -> str:
        who = (f"run pid {self.owner.get('pid')} on {self.owner.get('host')} since "
               f"{self.owner.get('started')}" if self.owner else "no owner record")
        return f"{self.prefix}  {self.keys} key(s), {who}: {self.state}"


def _masters(target: Target) -> list[Address]:
    """Every master that can hold a run's keys: one, or each master of a cluster."""
    if target.kind != "cluster-url":
        return [resolve(target, RUNS_PREFIX)]
    masters = {master for _, _, master in cluster_slots(with_credentials(target.url))}
    return sorted(masters, key=lambda a: (a.host, a.port))


def survey(target: Target) -> tuple[str, list[RunKeys]]:
    """The server's version and the keys cachelab runs have on ``target``, run by run."""
    runs: list[RunKeys] = []
    version = "?"
    with reaching(target):
        for address in _masters(target):
            with address.client(socket_timeout=30) as probe:
                version = as_text(probe.info("server").get("redis_version", "?"))
                guard = KeyGuard.load(probe, RUNS_PREFIX, address.db)
            with address.client(guard, socket_timeout=30) as client:
                counts: dict[str, int] = {}
                for key in client.scan_iter(match=glob_escape(RUNS_PREFIX) + "*", count=1000):
                    found = _RUN.match(as_text(key))
                    if found:
                        counts[found[1]] = counts.get(found[1], 0) + 1
                for prefix, keys in sorted(counts.items()):
                    owner = {as_text(k): as_text(v)
                             for k, v in client.hgetall(f"{prefix}{OWNER}").items()}
                    runs.append(RunKeys(prefix, keys, owner, address))
    return version, runs


def remove(target: Target, run: RunKeys) -> int:
    """Delete the keys of ``run`` (and only those); returns how many."""
    with reaching(target), run.address.client(socket_timeout=30) as probe:
        guard = KeyGuard.load(probe, run.prefix, run.address.db)
    return unlink_under(run.address, guard, run.prefix)
