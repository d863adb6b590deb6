"""Programs that run out of the lab's process (the API server, the outbox listener,
services, rate-limit clients, the background lab holder), each beside the parent-side
handle that starts and stops it, all started by ``python -m cachelab.children NAME``."""

from cachelab.servers.process import stop_all

__all__ = ["stop_all"]
