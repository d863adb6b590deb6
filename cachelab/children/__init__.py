"""Programs that run out of the lab's process (outbox listener, services, rate-limit
clients, the background lab), with the parent-side handles that start and stop them."""

from cachelab.servers.process import ChildProcess, stop_all

__all__ = ["ChildProcess", "stop_all"]
