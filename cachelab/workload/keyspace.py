"""The names a run gives its keys on one server, handed out by the server itself.

On a server the lab owns a key is named as written; on an existing deployment every
name starts with the run's prefix (``cachelab:{token}:name:``), so that the run touches
only its own keys (see cachelab.deployment). Exercises ask ``server.keys("user")`` for a
name and never write the prefix by hand.
"""

from __future__ import annotations

from dataclasses import dataclass


def glob_escape(text: str) -> str:
    """``text`` as a literal inside a Redis glob (SCAN MATCH, PSUBSCRIBE)."""
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


@dataclass(frozen=True)
class Keyspace:
    """Where one server's users put their keys (and channels, streams, namespaces)."""

    #: What every name starts with: "" on a server the lab owns. The raw string is for
    #: what crosses a process or script boundary (a child's arguments, a Lua ARGV).
    prefix: str = ""

    def __call__(self, name: str) -> str:
        """The full name of ``name``: a key, or a strategy's namespace."""
        return f"{self.prefix}{name}"

    def pattern(self, glob: str) -> str:
        """A SCAN MATCH pattern: ``glob`` under the prefix, the prefix matched literally."""
        return glob_escape(self.prefix) + glob
