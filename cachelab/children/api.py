"""The API server program: the shop API under uvicorn until SIGTERM or its parent's death.

Its parent-side handle is :class:`cachelab.shop.server.ApiServer`, which lives below the
children because the Lab starts it.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections.abc import Sequence


def main(argv: Sequence[str]) -> None:
    """Serve the shop API on 127.0.0.1; SET ``--ready-key`` to its pid once it listens."""
    import uvicorn

    from cachelab.deployment.deployment import client_from_env
    from cachelab.shop.app import CACHINGS, ApiSettings, create_app

    parser = argparse.ArgumentParser(prog="python -m cachelab.children api-server",
                                     description=main.__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--key-prefix", default="")
    parser.add_argument("--caching", choices=CACHINGS, default="lazy")
    parser.add_argument("--ttl-s", type=float, default=300.0)
    parser.add_argument("--db-latency-ms", type=float, default=1.0)
    parser.add_argument("--rate-limit", help="e.g. token_bucket:20/1s")
    parser.add_argument("--ready-key", required=True)
    parser.add_argument("--page-cache-control", default=None)
    parser.add_argument("--parent-pid", type=int, required=True)
    args = parser.parse_args(argv)

    app = create_app(ApiSettings(db_path=args.db, redis_url=args.redis_url,
                                 key_prefix=args.key_prefix,
                                 caching=args.caching, ttl_s=args.ttl_s,
                                 db_latency_ms=args.db_latency_ms,
                                 page_cache_control=args.page_cache_control,
                                 rate_limit=args.rate_limit))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=args.port,
                                           log_level="warning", access_log=False,
                                           date_header=False))

    def announce_and_watch() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.005)
        with client_from_env(args.redis_url) as client:
            client.set(args.ready_key, os.getpid())
        while not server.should_exit:  # an orphan (its lab is gone) stops itself
            if os.getppid() != args.parent_pid:
                server.should_exit = True
            time.sleep(0.2)

    threading.Thread(target=announce_and_watch, daemon=True).start()
    server.run()
