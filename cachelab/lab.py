"""The Lab owns every fixture of one run and tears all of it down, whatever happens."""

from __future__ import annotations

import random
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

import redis

from cachelab.servers.leftovers import FOLDER_PREFIX, mark
from cachelab.servers.redis_binary import RedisBinary, find_redis_server
from cachelab.servers.redis_server import RedisServer
from cachelab.servers.topology import Cluster, ReplicaSet, SentinelGroup
from cachelab.shop.database import ShopDatabase, build_shop

if TYPE_CHECKING:
    from cachelab.deployment.deployment import ExistingDeployment
    from cachelab.deployment.target import Target
    from cachelab.servers.docker_backend import DockerBackend
    from cachelab.servers.node import RedisNode
    from cachelab.shop.app import Caching
    from cachelab.shop.server import ApiServer

T = TypeVar("T")
TopologyT = TypeVar("TopologyT", ReplicaSet, SentinelGroup, Cluster)


class _Closable(Protocol):
    def close(self) -> Any: ...


C = TypeVar("C", bound=_Closable)

#: ``progress(description, total)`` gives a context whose value advances a bar by one.
ProgressFactory = Callable[[str, "int | None"], AbstractContextManager[Callable[[], None]]]
#: ``live(title, snapshot)`` shows ``snapshot()``, refreshed, while its context is open.
LiveFactory = Callable[[str, Callable[[], Mapping[str, Any]]], AbstractContextManager[None]]


@dataclass(frozen=True)
class LabSettings:
    """Settings shared by every exercise of a run (the CLI's common options)."""

    seed: int = 42
    db_latency_ms: float = 1.0
    scale: float = 1.0
    redis_server: str | None = None
    #: ``local``: redis-server processes; ``docker``: containers of ``image``.
    backend: Literal["local", "docker"] = "local"
    image: str = "redis:7"
    #: An existing deployment to run on instead of servers the lab starts (see
    #: cachelab.deployment.deployment): keys under a per-run prefix, no server changes.
    target: Target | None = None


class Lab:
    """Starts fixtures on demand and stops them in reverse order on exit.

    Use it as a context manager; on success, failure, exception or interrupt every
    server it started is stopped and its temporary folder removed.
    """

    def __init__(self, settings: LabSettings | None = None, *,
                 progress: ProgressFactory | None = None,
                 live: LiveFactory | None = None) -> None:
        self.settings = settings or LabSettings()
        self._progress = progress
        self._live = live
        self._stack = ExitStack()
        self._binary: RedisBinary | None = None
        self._docker: DockerBackend | None = None
        self._existing: ExistingDeployment | None = None
        self._servers: list[RedisNode] = []
        self._topologies: list[ReplicaSet | SentinelGroup | Cluster] = []
        self._workdir: Path | None = None
        self._shops = 0

    def __enter__(self) -> Lab:
        self._stack.__enter__()
        try:
            self._open()
        except BaseException:  # an engine or a deployment that does not answer
            self._stack.close()
            raise
        return self

    def _open(self) -> None:
        workdir = Path(tempfile.mkdtemp(prefix=FOLDER_PREFIX))
        self._stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        mark(workdir)  # so that a later doctor can tell a killed run's folder
        self._workdir = workdir
        if self.settings.target is not None:
            from cachelab.deployment.deployment import ExistingDeployment

            # Entered first of the fixtures, left last: the run's keys are deleted after
            # every client and child process that could still write one has stopped.
            self._existing = self._stack.enter_context(
                ExistingDeployment(self.settings.target))
        elif self.settings.backend == "docker":
            from cachelab.servers.docker_backend import DockerBackend

            # Entered after the folder: its sweep of this lab's containers runs before
            # the folder they mount is removed.
            self._docker = self._stack.enter_context(
                DockerBackend(self.settings.image, workdir))

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stack.__exit__(exc_type, exc, tb)

    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            raise RuntimeError("use the Lab as a context manager: with Lab() as lab: ...")
        return self._workdir

    @property
    def binary(self) -> RedisBinary:
        """The redis-server this lab runs (found once, on first use)."""
        if self._binary is None:
            self._binary = find_redis_server(self.settings.redis_server)
        return self._binary

    @property
    def servers(self) -> list[RedisNode]:
        """Every server this lab started (or the parts of an existing deployment it uses),
        topologies' members (and added nodes) included."""
        return [*self._servers, *(s for t in self._topologies for s in t.servers)]

    def kept_file(self, *parts: str) -> Path:
        """A path in cachelab's data folder (beside the results store) for a file that
        outlives the run, such as an access log; its folder is made, the file is not."""
        from cachelab.store import default_store_path

        path = default_store_path().parent.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def rng(self, purpose: str) -> random.Random:
        """A random source seeded from the run's seed and a purpose, so streams differ."""
        return random.Random(f"{self.settings.seed}:{purpose}")

    def enter_context(self, fixture: AbstractContextManager[T]) -> T:
        """Own any other fixture (a process, a thread, a server): torn down with the lab."""
        return self._stack.enter_context(fixture)

    def callback(self, function: Callable[[], Any]) -> None:
        """Call ``function`` when the lab ends (before what was set up earlier is torn down)."""
        self._stack.callback(function)

    def new_server(self, name: str, config: dict[str, str], args: Sequence[str] = ()
                   ) -> RedisServer:
        """A server of this lab's backend, not started: a redis-server process, or a
        container of ``--image`` with ``--backend docker``. Topologies make theirs here."""
        self._own_servers_only(f"start a server {name!r}")
        if self._docker is not None:
            return self._docker.server(self.workdir, name=name, config=config, args=args)
        return RedisServer(self.binary, self.workdir, name=name, config=config, args=args)

    def redis_server(self, name: str = "redis", **config: str) -> RedisNode:
        """Start a redis-server (config as ``maxmemory="2mb"``) that lives as long as the lab;
        on an existing deployment, the part named ``name`` instead (no config allowed)."""
        if self._existing is None:
            return self.own_redis_server(name, **config)
        self._no_server_named(name)
        if config:
            self._own_servers_only(f"set {', '.join(sorted(config))} on {name!r}")
        part = self._existing.part(name)
        self._servers.append(part)
        return part

    def own_redis_server(self, name: str = "redis", **config: str) -> RedisServer:
        """Start a redis-server as :meth:`redis_server` does, for a lesson that stops,
        restarts or kills it: refused on an existing deployment, which is not the lab's."""
        self._no_server_named(name)
        server = self._stack.enter_context(self.new_server(name, self._config(config)))
        self._servers.append(server)
        return server

    def _no_server_named(self, name: str) -> None:
        if any(s.name == name for s in self.servers):
            raise ValueError(f"a server named {name!r} already runs in this lab")

    @property
    def shared(self) -> bool:
        """Whether the run's Redis is an existing deployment, which other clients use too:
        its server-wide counts (INFO, commandstats) then include theirs."""
        return self._existing is not None

    def _own_servers_only(self, what: str) -> None:
        """Refuse, on an existing deployment, what only servers the lab owns allow."""
        if self._existing is not None:
            from cachelab.deployment.target import TargetRefused

            flag = self._existing.target.flag
            raise TargetRefused(f"this exercise would {what}, which cachelab does only on "
                                f"servers it starts; run it without {flag}")

    def _unused(self, name: str) -> None:
        if any(s.name.startswith(f"{name}-") for s in self.servers):
            raise ValueError(f"a server or topology named {name!r} already runs in this lab")

    @staticmethod
    def _config(config: Mapping[str, str]) -> dict[str, str]:
        return {k.replace("_", "-"): v for k, v in config.items()}

    def replica_set(self, replicas: int = 2, name: str = "redis", **config: str) -> ReplicaSet:
        """A primary and ``replicas`` synced replicas, all with ``config``."""
        self._unused(name)
        self._own_servers_only("start replicas")
        return self._topology(ReplicaSet(None, self.workdir, replicas=replicas, name=name,
                                         config=self._config(config), servers=self.new_server))

    def sentinels(self, replica_set: ReplicaSet, count: int = 3, quorum: int = 2,
                  down_after_ms: int = 1000, service: str = "mymaster",
                  failover_timeout_ms: int = 10000) -> SentinelGroup:
        """``count`` Sentinels watching ``replica_set``, aware of it and of each other."""
        self._own_servers_only("start Sentinels")
        return self._topology(SentinelGroup(None, self.workdir, replica_set,
                                            count=count, quorum=quorum, service=service,
                                            down_after_ms=down_after_ms,
                                            failover_timeout_ms=failover_timeout_ms,
                                            servers=self.new_server))

    def cluster(self, masters: int = 3, replicas: int = 1, name: str = "cluster",
                node_timeout_ms: int = 2000, **config: str) -> Cluster:
        """A Redis Cluster with every slot assigned and ``cluster_state:ok`` on every node."""
        self._unused(name)
        self._own_servers_only("start a cluster")
        return self._topology(Cluster(None, self.workdir, masters=masters,
                                      replicas=replicas, name=name,
                                      node_timeout_ms=node_timeout_ms,
                                      config=self._config(config), servers=self.new_server))

    def _topology(self, topology: TopologyT) -> TopologyT:
        started = self._stack.enter_context(topology)
        self._topologies.append(started)
        return started

    def shop_api(self, caching: Caching = "lazy", *, name: str = "api",
                 redis_server: RedisNode | None = None, shop: ShopDatabase | None = None,
                 ttl_s: float = 300.0, page_cache_control: str | None = None,
                 rate_limit: str | None = None) -> ApiServer:
        """The shop API over HTTP, in its own process, with its own Redis and database
        unless given; ready when it returns, stopped when the lab ends. ``rate_limit``
        limits it per user or IP, e.g. ``token_bucket:20/1s``."""
        from cachelab.shop.server import ApiServer

        server = ApiServer(redis_server or self.redis_server(f"{name}-redis"),
                           shop or self.shop(f"{name}-shop"), caching=caching,
                           log_dir=self.workdir, name=name, ttl_s=ttl_s,
                           page_cache_control=page_cache_control, rate_limit=rate_limit)
        self._stack.enter_context(server)  # started here, stopped with the lab
        return server

    def shop_apis(self, shop: ShopDatabase,
                  servers: Sequence[tuple[Caching, str, RedisNode]]) -> list[ApiServer]:
        """:meth:`shop_api` for several ``(caching, name, redis_server)`` at once, over one
        database: each spends a second or two importing its framework, so they start side
        by side; ready when it returns, stopped when the lab ends."""
        from cachelab.shop.server import ApiServer

        started = []
        for caching, name, redis_server in servers:
            api = ApiServer(redis_server, shop, caching=caching, log_dir=self.workdir, name=name)
            self.callback(api.stop)  # registered first: stopped even if the launch fails
            started.append(api.launch())
        for api in started:
            api.wait_ready()
        return started

    def redis(self, name: str = "redis", **config: str) -> redis.Redis:
        """A client of a new redis-server, closed when the lab ends."""
        return self.closing(self.redis_server(name, **config).client())

    def closing(self, client: C) -> C:
        """``client`` (anything with ``close()``), closed when the lab ends."""
        self._stack.callback(client.close)
        return client

    def shop(self, name: str = "shop") -> ShopDatabase:
        """Build the seeded shop database and return it as the application sees it."""
        path = self.workdir / f"{name}.db"
        self._shops += 1
        size = build_shop(path, scale=self.settings.scale, seed=self.settings.seed)
        db = ShopDatabase(path, latency_ms=self.settings.db_latency_ms, size=size)
        self._stack.callback(db.close)
        return db

    def track(self, items: Iterable[T], description: str, total: int | None = None
              ) -> Iterator[T]:
        """Iterate ``items``, advancing a progress bar when the CLI asked for one."""
        if self._progress is None:
            yield from items
            return
        with self._progress(description, total) as advance:
            for item in items:
                yield item
                advance()

    def live(self, title: str, snapshot: Callable[[], Mapping[str, Any]]
             ) -> AbstractContextManager[None]:
        """While the block runs, show ``snapshot()`` live when the CLI asked for it.

        ``snapshot`` is called from another thread a few times a second: it must only
        read (counters, histograms), never block. Without a terminal this does nothing.
        """
        return nullcontext() if self._live is None else self._live(title, snapshot)

    def environment(self) -> dict[str, Any]:
        """What the run ran on, for the result's ``environment``."""
        env: dict[str, Any] = {"backend": self.settings.backend,
                               "shop_database": self._shops > 0}
        if self._existing is not None:
            env["backend"] = "existing"
            env.update(self._existing.environment())
        elif self._docker is not None:
            env.update(self._docker.environment())
        elif self._binary is not None:
            env["redis_version"] = self._binary.version
            env["redis_server"] = str(self._binary.path)
            env["redis_source"] = self._binary.source
        return env
