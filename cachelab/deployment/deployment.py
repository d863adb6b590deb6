"""An existing Redis deployment as a lab's target: ``--redis-url``, ``--sentinel``,
``--cluster-url``.

cachelab did not start such a server and does not own it, so a run there keeps three
promises, enforced here rather than hoped for:

- Every key it touches (and every pub/sub channel it uses) starts with the run's prefix,
  ``cachelab:{<token>}:<name>:``. A client's connections check each command against the
  server's own ``COMMAND`` table before it is sent, and refuse, with a
  :class:`TargetRefused`, a key outside the prefix and any command that could change or
  reach beyond the run's keys (``FLUSHALL``, ``CONFIG SET``, ``KEYS *``, ``SELECT``...).
  A Lua script is checked by the keys it is given: cachelab's scripts derive every other
  name they touch from those, or from a prefix given in ARGV, so they stay under it too
  (tests/test_existing.py compares every other key on the server before and after).
- At the end it deletes exactly the keys under the run's prefix (``SCAN MATCH``, then
  ``UNLINK``): never ``FLUSHALL``, never a key it did not write. Its first key is an
  owner record (host, pid), by which ``cachelab doctor`` (:func:`survey`, :func:`remove`)
  tells the keys of a run killed with SIGKILL from those of a running one.
- Credentials come from the URL or from ``CACHELAB_REDIS_PASSWORD`` (and
  ``CACHELAB_REDIS_USERNAME``); everything shown or stored uses :func:`mask`.

Sentinel and Cluster are resolved to one master when the run starts: the Sentinel's
current master for ``--service``, or the cluster master that owns the prefix's hash slot.
The prefix is a hash tag, so all of a run's keys live in that one slot, and multi-key
commands and scripts work on a cluster as on a single server (a run does not spread load
over the cluster; the sharding exercises need their own servers anyway).
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio
from redis.cluster import key_slot

from cachelab.deployment.guard import KeyGuard, as_text, guarded
from cachelab.deployment.target import (
    CHILD_ENV,
    PASSWORD_ENV,
    DeploymentUnreachable,
    Target,
    mask,
    with_credentials,
)
from cachelab.errors import EnvironmentProblem
from cachelab.servers.node import RedisNode
from cachelab.workload.keyspace import Keyspace, glob_escape


@dataclass(frozen=True)
class Address:
    """The master a run talks to: host, port, TLS and credentials (from URL or env)."""

    url: str  # with credentials: never shown, never stored

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "localhost"

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 6379

    @property
    def db(self) -> int:
        return int(urlsplit(self.url).path.strip("/") or 0)

    def client(self, guard: KeyGuard | None = None, *, asyncio: bool = False,
               **kwargs: Any) -> Any:
        """A redis-py client (asyncio with ``asyncio=True``) whose connections obey
        ``guard``."""
        module: Any = redis.asyncio if asyncio else redis
        if guard is not None:
            tls = urlsplit(self.url).scheme == "rediss"
            base = module.SSLConnection if tls else module.Connection
            kwargs["connection_class"] = guarded(base, guard)
        return module.Redis.from_url(self.url, **kwargs)


def resolve(target: Target, prefix: str) -> Address:
    """The master of ``target`` that this run's keys live on."""
    url = with_credentials(target.url)
    if target.kind == "redis-url":
        return Address(url)
    if target.kind == "sentinel":
        # A password in --sentinel's URL, like CACHELAB_REDIS_PASSWORD, is the master's.
        parts = urlsplit(target.url)
        sentinel = redis.Sentinel(
            [(parts.hostname, parts.port or 26379)], socket_timeout=5,
            sentinel_kwargs={"password": os.environ.get("CACHELAB_SENTINEL_PASSWORD"),
                             "ssl": parts.scheme == "rediss", "socket_timeout": 5})
        try:
            sentinel.sentinels[0].ping()  # unreachable is not the same as "no such master"
            host, port = sentinel.discover_master(target.service)
        except redis.sentinel.MasterNotFoundError:
            raise EnvironmentProblem(f"the Sentinel at {target.display} knows no master "
                                     f"named {target.service!r}; check --service") from None
        finally:
            for s in sentinel.sentinels:
                s.close()
        return Address(_at(url, host, port))
    slot = key_slot(prefix.encode())
    for first, last, master in cluster_slots(url):
        if first <= slot <= last:
            return master
    raise EnvironmentProblem(f"no master of {target.display} owns slot {slot}; is every "
                             "slot of the cluster assigned?")


def cluster_slots(url: str) -> list[tuple[int, int, Address]]:
    """The cluster's slot ranges, each with its master, as the node at ``url`` sees them."""
    with redis.Redis.from_url(url, socket_timeout=5) as seed:
        ranges = seed.execute_command("CLUSTER SLOTS")
    return [(int(first), int(last),
             Address(_at(url, as_text(owner[0]) or urlsplit(url).hostname or "", int(owner[1]))))
            for first, last, owner, *_ in ranges]


def _at(url: str, host: str, port: int) -> str:
    """``url`` (credentials, TLS, database and all) pointed at ``host:port``."""
    parts = urlsplit(url)
    auth = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=f"{auth}{host}:{port}"))


class ExistingRedis(RedisNode):
    """A named part of an existing deployment, in the place of a server the lab would
    start: its keys live under the run's prefix and its name (``keys``), and its clients
    obey the guard. It has no start, stop or kill: cachelab does not own it (exercises
    that need those start their own servers, and the runner refuses them a deployment)."""

    def __init__(self, deployment: ExistingDeployment, name: str) -> None:
        super().__init__(name, host=deployment.address.host,
                         keys=Keyspace(f"{deployment.prefix}{name}:"))
        self.deployment = deployment

    @property
    def port(self) -> int:
        return self.deployment.address.port

    @property
    def pid(self) -> int | None:
        return None

    @property
    def url(self) -> str:
        """The master's address, masked: for showing only (children use child_env)."""
        return mask(self.deployment.address.url)

    def client(self, **kwargs: Any) -> redis.Redis:
        kwargs.setdefault("decode_responses", True)
        client: redis.Redis = self.deployment.address.client(
            self.deployment.guard(self.keys.prefix), **kwargs)
        return client

    def clear(self) -> None:
        """Drop this part's keys, and no others (there is no FLUSHALL here)."""
        self.deployment.delete_keys(self.keys.prefix)

    def child_env(self) -> dict[str, str]:
        """How a child process reaches this part: see :func:`client_from_env`."""
        return {CHILD_ENV: json.dumps({"url": self.deployment.address.url,
                                       "prefix": self.keys.prefix})}

    def __repr__(self) -> str:
        return f"ExistingRedis({self.name!r}, {self.url})"


class ExistingDeployment:
    """The lab's connection to an existing deployment, for the length of one run.

    Entering it finds the master, checks that it answers (and that the credentials
    work), and reads its command table; leaving it deletes every key under the run's
    prefix. ``deleted`` says how many.
    """

    def __init__(self, target: Target, token: str | None = None) -> None:
        self.target = target
        self.prefix = f"cachelab:{{{token or secrets.token_hex(4)}}}:"
        self.deleted = 0
        self._address: Address | None = None
        self._guard: KeyGuard | None = None

    @property
    def address(self) -> Address:
        if self._address is None:
            raise RuntimeError("enter the deployment first")
        return self._address

    def guard(self, prefix: str) -> KeyGuard:
        assert self._guard is not None
        return KeyGuard(prefix, self._guard.db, self._guard.table)

    def __enter__(self) -> ExistingDeployment:
        with reaching(self.target):
            self._address = resolve(self.target, self.prefix)
            probe = self._address.client(socket_timeout=10, socket_connect_timeout=10)
            try:
                probe.ping()
                self._guard = KeyGuard.load(probe, self.prefix, self._address.db)
                self.version = as_text(probe.info("server").get("redis_version", "?"))
            finally:
                probe.close()
            # Who wrote the keys under this prefix: `cachelab doctor --redis-url` tells a
            # killed run's keys (pid gone) from a running one's by it.
            with self.address.client(self.guard(self.prefix)) as client:
                client.hset(f"{self.prefix}{OWNER}", mapping=_owner())
        return self

    def part(self, name: str) -> ExistingRedis:
        return ExistingRedis(self, name)

    def delete_keys(self, prefix: str) -> int:
        """UNLINK every key under ``prefix`` (the run's, or a part's); returns how many."""
        return unlink_under(self.address, self.guard(prefix), prefix)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._address is None or self._guard is None:
            return
        try:
            self.deleted += self.delete_keys(self.prefix)
        except (redis.RedisError, OSError) as error:
            if exc is None:  # else the run's own failure is the one to report
                raise EnvironmentProblem(
                    f"could not delete this run's keys from {self.target.display} ({error}); "
                    f"find them with: redis-cli --scan --pattern '{self.prefix}*'") from None

    def environment(self) -> dict[str, Any]:
        return {"target": self.target.display, "target_kind": self.target.kind,
                "redis_version": getattr(self, "version", "?"),
                "key_prefix": self.prefix, "keys_deleted": self.deleted}


@contextmanager
def reaching(target: Target) -> Iterator[None]:
    """Turn what redis-py raises on connecting into one line that says what to do."""
    try:
        yield
    except (redis.AuthenticationError, redis.ResponseError) as exc:
        if not isinstance(exc, redis.AuthenticationError) and "NOAUTH" not in str(exc):
            raise EnvironmentProblem(f"{target.display}: {exc}") from None
        given = urlsplit(with_credentials(target.url)).password
        raise DeploymentUnreachable(
            f"{target.display} " + ("refused the password" if given else "needs a password")
            + f"; give it in the URL or in {PASSWORD_ENV}") from None
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise DeploymentUnreachable(f"cannot reach {target.display} ({exc}); check "
                                    f"{target.flag}") from None


#: The hash under a run's prefix that says which process wrote it.
OWNER = "owner"
#: Every run's prefix starts so; the first key of one names the run.
RUNS_PREFIX = "cachelab:{"
def _owner() -> dict[str, str]:
    from cachelab import __version__

    return {"host": socket.gethostname(), "pid": str(os.getpid()),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "cachelab": __version__}


def unlink_under(address: Address, guard: KeyGuard, prefix: str) -> int:
    """UNLINK every key under ``prefix``, found with SCAN MATCH; returns how many."""
    deleted = 0
    with address.client(guard, socket_timeout=30) as client:
        batch: list[Any] = []
        for key in client.scan_iter(match=glob_escape(prefix) + "*", count=1000):
            batch.append(key)
            if len(batch) == 500:
                deleted += int(client.unlink(*batch))
                batch = []
        if batch:
            deleted += int(client.unlink(*batch))
    return deleted


def client_from_env(fallback_url: str | None = None, *, asyncio: bool = False,
                    **kwargs: Any) -> Any:
    """In a child process: a client of the parent's target (guarded by its prefix) when
    the parent passed one in :data:`CHILD_ENV`, else of ``fallback_url``.

    The URL with its credentials travels in the environment, which only the same user
    can read, never on the command line, which anyone can.
    """
    spec = os.environ.get(CHILD_ENV)
    if not spec:
        if fallback_url is None:
            raise RuntimeError(f"no {CHILD_ENV} and no URL to connect to")
        module: Any = redis.asyncio if asyncio else redis
        return module.Redis.from_url(fallback_url, **kwargs)
    address, guard = _child_target(spec)
    return address.client(guard, asyncio=asyncio, **kwargs)


@functools.cache
def _child_target(spec: str) -> tuple[Address, KeyGuard]:
    """The address and guard of :data:`CHILD_ENV`: the command table is read once a
    process, not once a connection (a service opens several, and reopens them)."""
    target = json.loads(spec)
    address = Address(target["url"])
    with redis.Redis.from_url(address.url) as probe:
        return address, KeyGuard.load(probe, target["prefix"], address.db)


def child_prefix() -> str:
    """In a child process: the key prefix the parent's target imposes ("" if none)."""
    spec = os.environ.get(CHILD_ENV)
    return str(json.loads(spec)["prefix"]) if spec else ""

