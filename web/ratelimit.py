"""Rate limiting: a token bucket per client in Redis, one script call (lua/rate_limit.lua) and
so one round trip per request.

The client is the user when the request carries a valid access token, else the connection's
address. A shop's checkout behind one IP therefore doesn't share one bucket among its
customers: each sends their own token. A token that fails to verify counts for the address
(the endpoint then refuses it), so forged `sub` claims can neither dodge the limit nor spend
another user's bucket. Behind a proxy, run uvicorn with `--proxy-headers` and
`--forwarded-allow-ips`, or every anonymous caller is the proxy.

Over the limit: 429 `rate_limited` with `Retry-After` (whole seconds, rounded up) in the
envelope; the refused request takes nothing from the bucket. The operations endpoints are not
limited: a load balancer or a scraper polls them from one address. If Redis does not answer,
the request goes through: the endpoints that need Redis answer 503 on their own, and reads
that don't should not fail because the limiter can't count.
"""

from __future__ import annotations

import logging
import math
import time

import redis.exceptions
from starlette.types import ASGIApp, Receive, Scope, Send

from engine.keys import rate_limit_bucket
from engine.scripts import Scripts
from engine.specs import RATE_LIMIT
from web.auth import Keys
from web.errors import ApiError
from web.middleware import scope_state
from web.responses import error

log = logging.getLogger("inventory.ratelimit")

EXEMPT = frozenset({"/healthz", "/readyz", "/metrics"})
WARN_EVERY_S = 10.0


async def take(scripts: Scripts, bucket: str, per_second: float, burst: int) -> int:
    """Take one request from `bucket`; returns the whole requests left, or raises the 429."""
    reply = await scripts.run(RATE_LIMIT, bucket=bucket, rate=repr(float(per_second)), burst=burst)
    if reply.get("ok"):
        return int(reply["remaining"])
    if reply.get("err") != "rate_limited":
        raise RuntimeError(f"rate_limit.lua replied {reply!r}")
    retry_after = max(1, math.ceil(int(reply["retry_after_ms"]) / 1000))
    raise ApiError(
        429,
        "rate_limited",
        f"too many requests; try again in {retry_after} s",
        {"retry_after": retry_after, "per_second": per_second, "burst": burst},
        {"Retry-After": str(retry_after)},
    )


def _bearer(scope: Scope) -> str | None:
    for key, value in scope.get("headers", []):
        if key == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp, *, keys: Keys, per_second: float, burst: int) -> None:
        self.app = app
        self.keys = keys
        self.per_second = per_second
        self.burst = burst
        self._warned_at = -math.inf

    def bucket(self, scope: Scope) -> str:
        """The caller's bucket: the verified user, else the client address."""
        token = _bearer(scope)
        if token is not None:
            try:
                claims = self.keys.verify(token, "access")  # remembered for the endpoint
                return rate_limit_bucket("user", str(claims["sub"]))
            except ApiError:
                pass
        client = scope.get("client")
        return rate_limit_bucket("ip", str(client[0]) if client else "unknown")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT:
            await self.app(scope, receive, send)
            return
        scripts: Scripts = scope["app"].state.services.engine.scripts
        try:
            await take(scripts, self.bucket(scope), self.per_second, self.burst)
        except ApiError as exc:
            state = scope_state(scope)
            state["error_code"] = exc.code
            rid = str(state.get("request_id", ""))
            response = error(rid, exc.status, exc.code, exc.message, exc.details, exc.headers)
            await response(scope, receive, send)
            return
        except redis.exceptions.RedisError as exc:
            if time.monotonic() - self._warned_at >= WARN_EVERY_S:
                self._warned_at = time.monotonic()
                log.warning("rate limit not checked (requests pass meanwhile): %s", exc)
        await self.app(scope, receive, send)
