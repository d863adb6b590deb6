"""Rate limiting as ASGI middleware: the shop API limited per user or client IP."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from cachelab.caching.rate_limit import LimitSpec

# ---------------------------------------------------------------- HTTP

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

USER_HEADER = "x-user-id"
#: Where on Redis's clock the limiter admitted a request: lets a test line up admissions
#: from many clients on one clock.
DECIDED_HEADER = "X-RateLimit-Decided-Us"
_USER_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class RateLimitMiddleware:
    """ASGI middleware: limit each user (``X-User-Id``), else each client IP.

    Refused requests get ``429`` with ``Retry-After``; every limited answer carries
    ``RateLimit-Limit``, ``RateLimit-Remaining`` and ``RateLimit-Reset``, and
    :data:`DECIDED_HEADER`, the decision's time on Redis's clock. Paths under
    ``exempt`` (health checks, the lab's counters) pass unlimited. It owns a
    ``redis.asyncio`` client, so a decision never blocks the event loop, and closes it
    when the app shuts down.

    Args:
        app: the ASGI app.
        spec: the limit.
        redis_url: the Redis that keeps the counters.
        prefix: the limiter's key prefix.
        exempt: path prefixes that are not limited.
    """

    def __init__(self, app: ASGIApp, *, spec: LimitSpec, redis_url: str,
                 prefix: str = "ratelimit:api",
                 exempt: tuple[str, ...] = ("/health", "/_lab/")) -> None:
        from cachelab.deployment.deployment import client_from_env

        self.app = app
        self.spec = spec
        self.exempt = exempt
        self.client = client_from_env(redis_url, asyncio=True)
        self.limiter = spec.limiter(self.client, prefix=prefix)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._closing(send))
            return
        if scope["type"] != "http" or scope["path"].startswith(self.exempt):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        user = headers.get(USER_HEADER.encode())
        if user is not None and not _USER_ID.fullmatch(user.decode("latin-1")):
            await _answer(send, 400, {"detail": "X-User-Id must be 1 to 64 letters, digits, "
                                                "'.', '_' or '-'"}, {})
            return
        client = scope.get("client")
        identity = (f"user:{user.decode()}" if user is not None
                    else f"ip:{client[0] if client else 'unknown'}")
        decision = await self.limiter.hit_async(identity)
        extra = {**decision.headers(), DECIDED_HEADER: str(decision.at_us)}
        if not decision.allowed:
            await _answer(send, 429, {"detail": f"rate limit {self.spec} exceeded; retry in "
                                                f"{extra['Retry-After']}s"}, extra)
            return
        added = [(k.lower().encode(), v.encode()) for k, v in extra.items()]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *added]}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _closing(self, send: Send) -> Send:
        async def send_then_close(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                await self.client.aclose()
            await send(message)

        return send_then_close


async def _answer(send: Send, status: int, body: dict[str, Any], headers: dict[str, str]
                  ) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode()),
                            *((k.lower().encode(), v.encode()) for k, v in headers.items())]})
    await send({"type": "http.response.body", "body": payload})


