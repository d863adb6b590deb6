"""Rate-limit client processes: each hammers limiters (and optionally the API) for a set
time and reports what it was admitted.

It reaches an existing deployment through the environment its parent gives it, its keys
prefixed.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from cachelab.caching.rate_limit import LimitSpec, parse_limit
from cachelab.servers.process import ChildProcess, stop_condition
from cachelab.shop.middleware import DECIDED_HEADER
from cachelab.workload.redis_info import redis_clock_us

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    import redis

def _client_key(name: str, what: str, key_prefix: str = "") -> str:
    # outside the limiters' prefix: these never expire
    return f"{key_prefix}rlclient:{name}:{what}"


RESULTS_KEY = "rlclient:results"


def results_key(key_prefix: str = "") -> str:
    """Where the client processes push their reports: :data:`RESULTS_KEY`, prefixed."""
    return f"{key_prefix}{RESULTS_KEY}"


class HammerProcess(ChildProcess):
    """A client process that, once told when, hits limiters as fast as it can.

    Between ``start_us`` and ``end_us`` on Redis's clock it hits each limiter of
    ``specs`` in turn for ``identity`` and, given ``api_url``, sends one API request as
    ``user_id`` after each round; then it pushes what it was admitted (Redis times) to
    :func:`results_key` and exits.

    Args:
        client: a client of the Redis the limiters live on.
        name: the process's name, unique in a run.
        redis_port: that Redis's port on 127.0.0.1.
        specs: the limits to hit, each a limiter under ``prefix``.
        identity: whose limit the direct hits count against.
        api_url: the rate-limited API, or None.
        user_id: the ``X-User-Id`` of the API requests.
        log_path: where its output goes.
        max_seconds: it exits by itself after this long.
        key_prefix: the server's ``prefix``, which starts its own keys (ready, go,
            results); the child reads it from ``env``.
        env: ``RedisNode.child_env()``: another Redis than ``redis_port``, if any.
    """

    def __init__(self, client: redis.Redis, *, name: str, redis_port: int,
                 specs: Sequence[LimitSpec], prefix: str, identity: str, log_path: Path,
                 api_url: str | None = None, user_id: str = "hammer",
                 max_seconds: float = 120.0, key_prefix: str = "",
                 env: Mapping[str, str] | None = None) -> None:
        args = ["--name", name, "--redis-port", str(redis_port), "--prefix", prefix,
                "--identity", identity, "--user-id", user_id, "--max-seconds", str(max_seconds),
                *(a for spec in specs for a in ("--spec", str(spec)))]
        if api_url:
            args += ["--api-url", api_url]
        super().__init__(client, program="rate-limit-client", args=args,
                         label=f"client {name}",
                         ready_key=_client_key(name, "ready", key_prefix), log_path=log_path,
                         env=env)
        self.name = name
        self.key_prefix = key_prefix

    def go(self, start_us: int, end_us: int) -> None:
        self.client.rpush(_client_key(self.name, "go", self.key_prefix),
                          json.dumps({"start_us": start_us, "end_us": end_us}))


def _hammer(client: redis.Redis, args: argparse.Namespace,
            should_stop: Callable[[], bool], key_prefix: str = "") -> dict[str, Any]:
    limiters = [parse_limit(s).limiter(client, prefix=args.prefix) for s in args.spec]
    client.set(_client_key(args.name, "ready", key_prefix), os.getpid())
    go = None
    while go is None and not should_stop():
        go = client.blpop([_client_key(args.name, "go", key_prefix)], timeout=0.1)
    if go is None:
        return {}
    window = json.loads(go[1])
    offset_us = redis_clock_us(client) - time.time_ns() // 1000
    time.sleep(max(0.0, (window["start_us"] - offset_us) / 1e6 - time.time()))
    direct: dict[str, dict[str, Any]] = {
        lim.algorithm: {"allowed": [], "denied": 0} for lim in limiters}
    http: dict[str, Any] = {"allowed": [], "denied": 0, "errors": 0}
    session = None
    if args.api_url:
        import httpx

        session = httpx.Client(base_url=args.api_url, timeout=10,
                               headers={"X-User-Id": args.user_id})
    try:
        # One API request per round of direct hits: on a busy machine the API process
        # gets its share of the CPU, rather than losing it to the tighter direct loop.
        while not should_stop() and time.time_ns() // 1000 + offset_us < window["end_us"]:
            for limiter in limiters:
                decision = limiter.hit(args.identity)
                record = direct[limiter.algorithm]
                if decision.allowed:
                    record["allowed"].append(decision.at_us)
                else:
                    record["denied"] += 1
            if session is not None:
                _hit_api(session, http)
    finally:
        if session is not None:
            session.close()
    return {"name": args.name, "direct": direct, "http": http if session else None}


def _hit_api(session: Any, out: dict[str, Any]) -> None:
    import httpx

    try:
        answer = session.get("/products/1")
    except httpx.HTTPError:
        out["errors"] += 1
        return
    if answer.status_code == 200:
        out["allowed"].append(int(answer.headers[DECIDED_HEADER]))
    elif answer.status_code == 429:
        out["denied"] += 1
    else:
        out["errors"] += 1


def main(argv: Sequence[str]) -> int:
    """A client process: hammer limiters (and the API) when told, report, exit."""
    from cachelab.deployment.deployment import child_prefix, client_from_env

    parser = argparse.ArgumentParser(prog="python -m cachelab.children rate-limit-client",
                                     description=main.__doc__)
    parser.add_argument("--name", required=True)
    parser.add_argument("--redis-port", type=int, required=True)
    parser.add_argument("--spec", action="append", default=[])
    parser.add_argument("--prefix", default="ratelimit")
    parser.add_argument("--identity", required=True)
    parser.add_argument("--api-url")
    parser.add_argument("--user-id", default="hammer")
    parser.add_argument("--max-seconds", type=float, default=120.0)
    parser.add_argument("--parent-pid", type=int, default=os.getppid())
    args = parser.parse_args(argv)

    should_stop = stop_condition(args.parent_pid, args.max_seconds)
    # The parent's target, if it passed one in the environment (never on the command line).
    client: redis.Redis = client_from_env(f"redis://127.0.0.1:{args.redis_port}",
                                          decode_responses=True)
    key_prefix = child_prefix()
    try:
        report = _hammer(client, args, should_stop, key_prefix)
        if report:
            client.rpush(results_key(key_prefix), json.dumps(report))
    finally:
        client.close()
    return 0
