"""The command guard: what a client may send to a server cachelab does not own.

Every command is checked against the server's own ``COMMAND`` table before it is sent:
a key outside the run's prefix, or a command that could change or reach beyond the run's
keys, is refused with a :class:`~cachelab.deployment.target.TargetRefused`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio

from cachelab.deployment.target import TargetRefused

#: Keyless commands a run may send; for the containers, which subcommands.
_ANY: frozenset[str] | None = None  # every subcommand
_ALLOWED: dict[str, frozenset[str] | None] = {
    name: _ANY for name in (
        "ping", "echo", "info", "time", "auth", "hello", "multi", "exec", "discard",
        "unwatch", "command", "wait", "role", "lastsave", "readonly", "readwrite", "quit",
        "reset", "dbsize", "unsubscribe", "punsubscribe", "sunsubscribe")
} | {
    "client": frozenset({"id", "setname", "getname", "list", "info", "tracking",
                         "trackinginfo", "getredir", "caching", "reply", "kill",
                         "setinfo", "no-touch", "maint_notifications"}),
    "config": frozenset({"get"}),
    "script": frozenset({"load", "exists"}),
    "memory": frozenset({"usage", "stats"}),
    "cluster": frozenset({"info", "slots", "shards", "nodes", "keyslot", "myid"}),
    "pubsub": frozenset({"channels", "numsub", "numpat", "shardchannels", "shardnumsub"}),
    "object": _ANY, "xinfo": _ANY, "latency": frozenset({"latest", "history"}),
    "slowlog": frozenset({"get", "len"}),
}
#: Commands whose first argument after the name(s) is a channel or pattern of ours.
_CHANNELS = {"publish": 1, "spublish": 1}
_SUBSCRIBE = {"subscribe", "psubscribe", "ssubscribe"}
_TRACKING = "__redis__:invalidate"
#: Key-taking commands that can reach other databases or servers.
_NEVER = {"move", "migrate", "swapdb", "flushall", "flushdb", "randomkey", "select"}


def as_text(arg: Any) -> str:
    if isinstance(arg, bytes | bytearray | memoryview):
        return bytes(arg).decode(errors="replace")
    return str(arg)


@dataclass
class KeyGuard:
    """Decides, from the server's own command table, whether a command stays within
    ``prefix``; raises :class:`TargetRefused` when it does not."""

    prefix: str
    db: int
    #: name or ``container|sub`` -> (first, last, step, movable) from ``COMMAND``.
    table: dict[str, tuple[int, int, int, bool]] = field(default_factory=dict)

    @classmethod
    def load(cls, client: redis.Redis, prefix: str, db: int) -> KeyGuard:
        table: dict[str, tuple[int, int, int, bool]] = {}
        for name, spec in client.command().items():
            table[name] = (spec["first_key_pos"], spec["last_key_pos"], spec["step_count"],
                           "movablekeys" in spec["flags"])
            for sub in spec.get("subcommands") or ():
                table[as_text(sub[0]).lower()] = (int(sub[3]), int(sub[4]), int(sub[5]), False)
        return cls(prefix, db, table)

    def check(self, args: Sequence[Any]) -> None:
        if not args:
            return
        words = [as_text(a) for a in args]
        name = words[0].lower()
        # redis-py sends "CLIENT SETNAME" and friends as one argument.
        if " " in name:
            words = name.split() + words[1:]
            name = words[0]
        sub = words[1].lower() if len(words) > 1 else ""
        if name == "select" and words[1:] == [str(self.db)]:
            return  # redis-py selects the URL's database on connect
        if name in _NEVER:
            self._refuse(words, "reaches beyond this run's keys")
        if name in _CHANNELS:
            self._prefixed(words, [words[_CHANNELS[name]]], "channel")
            return
        if name in _SUBSCRIBE:
            # Client-side caching's redirect connection (RESP2) must listen on Redis's own
            # channel, which carries only the invalidations of the keys its clients read.
            self._prefixed(words, [w for w in words[1:] if w != _TRACKING], "channel")
            return
        if name in ("scan", "keys"):
            pattern = words[1] if name == "keys" else _option(words, "match")
            self._prefixed(words, [pattern or "*"], "pattern")
            return
        if name == "client" and sub == "kill" and (len(words) != 4
                                                  or words[2].lower() != "id"):
            self._refuse(words, "may disconnect other clients (only CLIENT KILL ID n may)")
        if name == "copy" and _option(words, "db") is not None:
            self._refuse(words, "writes to another database")
        keys = self.keys(words)
        if keys is None:
            allowed = _ALLOWED.get(name, frozenset())
            if name not in _ALLOWED or (allowed is not None and sub not in allowed):
                self._refuse(words, "is not one cachelab sends to a server it does not own")
            return
        self._prefixed(words, keys, "key")

    def keys(self, words: list[str]) -> list[str] | None:
        """The key arguments of ``words``, or None for a command that takes no keys."""
        name = words[0].lower()
        spec = self.table.get(f"{name}|{words[1].lower()}" if len(words) > 1 else name)
        if spec is None:
            spec = self.table.get(name)
        if spec is None:
            return None
        first, last, step, movable = spec
        if movable:
            return _movable_keys(name, words)
        if first <= 0:
            return None
        last = len(words) + last if last < 0 else last
        return words[first:last + 1:step]

    def _prefixed(self, words: list[str], names: Iterable[str], what: str) -> None:
        for key in names:
            if not key.startswith(self.prefix):
                self._refuse(words, f"uses the {what} {key!r}, outside this run's prefix "
                                    f"{self.prefix!r}")

    @staticmethod
    def _refuse(words: list[str], why: str) -> None:
        name = words[0].upper()
        if words[0].lower() in _ALLOWED and len(words) > 1:  # a container: CONFIG SET
            name += f" {words[1].upper()}"
        raise TargetRefused(f"{name} {why}; cachelab does not send it to an existing "
                            "deployment")


def _option(words: list[str], keyword: str) -> str | None:
    lowered = [w.lower() for w in words]
    if keyword in lowered[1:]:
        i = lowered.index(keyword, 1)
        return words[i + 1] if i + 1 < len(words) else ""
    return None


def _movable_keys(name: str, words: list[str]) -> list[str]:
    """Keys of the commands whose key positions depend on their arguments."""
    if name in ("eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"):
        return words[3:3 + int(words[2])]
    if name in ("xread", "xreadgroup"):
        rest = words[[w.lower() for w in words].index("streams") + 1:]
        return rest[:len(rest) // 2]
    if name in ("zunionstore", "zinterstore", "zdiffstore"):
        return [words[1], *words[3:3 + int(words[2])]]
    if name in ("zunion", "zinter", "zdiff", "sintercard", "zintercard", "lmpop", "zmpop"):
        return words[2:2 + int(words[1])]
    if name in ("blmpop", "bzmpop"):
        return words[3:3 + int(words[2])]
    if name == "sort" or name == "sort_ro":
        if _option(words, "by") is not None or _option(words, "get") is not None:
            raise TargetRefused(f"{name.upper()} BY/GET reads keys named by patterns; "
                                "cachelab does not send it to an existing deployment")
        store = _option(words, "store")
        return [words[1], *([store] if store is not None else [])]
    raise TargetRefused(f"{name.upper()}: cachelab cannot tell which keys it touches, so it "
                        "does not send it to an existing deployment")


class _Guarded:
    """Mixin for a redis-py connection: every command passes the guard before it is sent."""

    guard: KeyGuard

    def send_command(self, *args: Any, **kwargs: Any) -> Any:
        # redis-py's sync send_command packs without pack_command; the asyncio one
        # returns a coroutine, which this passes on unawaited.
        self.guard.check(args)
        return super().send_command(*args, **kwargs)  # type: ignore[misc]

    def pack_command(self, *args: Any) -> Any:
        self.guard.check(args)
        return super().pack_command(*args)  # type: ignore[misc]

    def pack_commands(self, commands: Iterable[Sequence[Any]]) -> Any:
        commands = list(commands)
        for command in commands:
            self.guard.check(command)
        return super().pack_commands(commands)  # type: ignore[misc]


def guarded(base: type, guard: KeyGuard) -> type:
    return type(f"Guarded{base.__name__}", (_Guarded, base), {"guard": guard})
