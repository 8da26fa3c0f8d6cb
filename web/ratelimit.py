"""Rate limiting: a token bucket per client, decided in the API process and settled with Redis
in the background, so that a request pays no Redis round trip for it.

The client is the user when the request carries a valid access token, else the connection's
address. A shop's checkout behind one IP therefore doesn't share one bucket among its
customers: each sends their own token. A token that fails to verify counts for the address
(the endpoint then refuses it), so forged `sub` claims can neither dodge the limit nor spend
another user's bucket. Behind a proxy, run uvicorn with `--proxy-headers` and
`--forwarded-allow-ips`, or every anonymous caller is the proxy.

Over the limit: 429 `rate_limited` with `Retry-After` (whole seconds, rounded up) in the
envelope; the refused request takes nothing from the bucket. The operations endpoints are not
limited: a load balancer or a scraper polls them from one address.

Where the count lives. The bucket of record is in Redis, shared by every API process
(lua/lib.lua read_bucket: one string with a TTL). Each process keeps a copy of the buckets it
has seen and decides alone, from its copy: a request pays no Redis call for the limit. A client
the process does not know starts from a full bucket (`burst`); every SETTLE_S the process
settles what it admitted (lua/rate_limit_settle.lua: one call for every bucket that admitted
anything, off every request's path) and adopts what the Redis bucket says is left, which
counts the other processes' requests too. So:

- one process (or one client's requests all reaching one process) is exact: its copy is the
  bucket, a settle never gives back what the process spent, and a bucket is forgotten only once
  it would be full again (idle for IDLE_S, or burst / rate if longer);
- across N processes a client is admitted, in any window, at most (N - 1) x (burst + rate x
  SETTLE_S) more than one exact bucket would admit: each process may spend what it last knew
  (a full bucket, for a client new to it) before it hears of the others' spending. A process
  that restarts counts as one more, and so does one that had to forget a bucket early for room
  (more than MAX_BUCKETS clients). What was overdrawn is a debt in the Redis bucket that the
  refill pays back first, so over time the rate holds exactly.

If Redis does not answer, each process goes on deciding from its copies (exact per process; the
processes just stop hearing of each other's spending), settles again every RETRY_S, and one
warning every WARN_EVERY_S says so; what it admitted meanwhile is counted once Redis is back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import lru_cache

import redis.exceptions
from starlette.types import ASGIApp, Receive, Scope, Send

from engine.keys import hash_tag, rate_limit_bucket
from engine.scripts import Scripts
from engine.specs import RATE_LIMIT, RATE_LIMIT_SETTLE
from web.auth import Keys, bearer_token
from web.errors import ApiError
from web.middleware import scope_state
from web.responses import error

log = logging.getLogger("inventory.ratelimit")

EXEMPT = frozenset({"/healthz", "/readyz", "/metrics"})
WARN_EVERY_S = 10.0
SETTLE_S = 0.05  # how often a process settles its buckets with Redis
RETRY_S = 1.0  # with Redis not answering, how often a process tries to settle again
IDLE_S = 60.0  # a bucket unused this long is forgotten by the process
MAX_BUCKETS = 100_000  # per process; the least recently used go first
SETTLE_BATCH = 500  # buckets per settling call


def refused(retry_after: int, per_second: float, burst: int) -> ApiError:
    return ApiError(
        429,
        "rate_limited",
        f"too many requests; try again in {retry_after} s",
        {"retry_after": retry_after, "per_second": per_second, "burst": burst},
        {"Retry-After": str(retry_after)},
    )


async def take(scripts: Scripts, bucket: str, per_second: float, burst: int) -> int:
    """Take one request from the Redis `bucket` itself; returns the whole requests left, or
    raises the 429. (The middleware decides from its process's copy instead, see `settle`.)"""
    reply = await scripts.run(RATE_LIMIT, bucket=bucket, rate=repr(float(per_second)), burst=burst)
    if reply.get("ok"):
        return int(reply["remaining"])
    if reply.get("err") != "rate_limited":
        raise RuntimeError(f"rate_limit.lua replied {reply!r}")
    raise refused(max(1, math.ceil(int(reply["retry_after_ms"]) / 1000)), per_second, burst)


async def settle(
    scripts: Scripts, per_second: float, burst: int, settles: list[tuple[str, int, int]]
) -> list[float]:
    """Count against each Redis bucket the requests admitted elsewhere — (bucket, spent, ms
    since the first of them) — whatever it holds (it may go below 0); returns the tokens each
    has left (0 spent: reads it). One call for them all on one server; on a Redis Cluster one
    call per group of buckets in one slot (engine/keys.py rate_limit_bucket), at once."""
    if not scripts.cluster:
        return await _settle_call(scripts, per_second, burst, settles)
    groups: dict[str, list[int]] = {}
    for i, (bucket, _, _) in enumerate(settles):
        groups.setdefault(hash_tag(bucket), []).append(i)
    replies = await asyncio.gather(
        *(
            _settle_call(scripts, per_second, burst, [settles[i] for i in members])
            for members in groups.values()
        )
    )
    left = [0.0] * len(settles)
    for members, tokens in zip(groups.values(), replies, strict=True):
        for i, t in zip(members, tokens, strict=True):
            left[i] = t
    return left


async def _settle_call(
    scripts: Scripts, per_second: float, burst: int, settles: list[tuple[str, int, int]]
) -> list[float]:
    reply = await scripts.run(
        RATE_LIMIT_SETTLE,
        *(bucket for bucket, _, _ in settles),
        rate=repr(float(per_second)),
        burst=burst,
        settles=json.dumps([n for _, spent, age in settles for n in (spent, age)]),
    )
    if not reply.get("ok"):
        raise RuntimeError(f"rate_limit_settle.lua replied {reply!r}")
    return [float(t) for t in reply["tokens"]]


@dataclass(slots=True)
class _Copy:
    """A process's copy of one bucket."""

    tokens: float
    at: float  # when `tokens` was counted (the process's clock, s)
    spent: int = 0  # admitted since the last settle was sent
    first: float = 0.0  # when the first of those was admitted


class Limiter:
    """The buckets one API process has seen. Used from one event loop."""

    def __init__(
        self, per_second: float, burst: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.per_second = per_second
        self.burst = burst
        self._clock = clock
        # Forgotten only once full again, so a client seen anew starts from the right count.
        self._idle_s = max(IDLE_S, burst / per_second) if per_second > 0 else IDLE_S
        self._copies: dict[str, _Copy] = {}  # in order of last use
        self._dirty: set[str] = set()
        self._settler: asyncio.Task[None] | None = None
        self._scripts: Scripts | None = None
        self._failing = False
        self._warned_at = -math.inf

    async def check(self, scripts: Scripts, bucket: str) -> None:
        """Admit one request of `bucket` or raise the 429, from this process's copy (a full
        bucket for a client it does not know): no Redis call on the request's path."""
        self._scripts = scripts
        now = self._clock()
        copy = self._copies.pop(bucket, None)
        if copy is None:
            if len(self._copies) >= MAX_BUCKETS:
                del self._copies[next(iter(self._copies))]
            copy = _Copy(float(self.burst), now)
        self._copies[bucket] = copy  # the most recently used last
        tokens = min(self.burst, copy.tokens + (now - copy.at) * self.per_second)
        copy.at = now
        if tokens < 1:
            copy.tokens = tokens
            wait = math.ceil((1 - tokens) / self.per_second)
            raise refused(max(1, wait), self.per_second, self.burst)
        copy.tokens = tokens - 1
        if not copy.spent:
            copy.first = now
        copy.spent += 1
        self._dirty.add(bucket)
        if self._settler is None:
            self._settler = asyncio.create_task(self._settle_soon())

    async def _settle_soon(self) -> None:
        try:
            while self._dirty:
                await asyncio.sleep(RETRY_S if self._failing else SETTLE_S)
                buckets, self._dirty = list(self._dirty), set()
                for i in range(0, len(buckets), SETTLE_BATCH):
                    await self._settle(buckets[i : i + SETTLE_BATCH])
                self._forget_idle()
        finally:
            self._settler = None

    async def _settle(self, buckets: list[str]) -> None:
        copies = [(b, c) for b in buckets if (c := self._copies.get(b)) is not None and c.spent]
        if not copies or self._scripts is None:
            return
        sent = self._clock()
        settles = [(b, c.spent, max(0, round((sent - c.first) * 1000))) for b, c in copies]
        spent = [c.spent for _, c in copies]
        for _, copy in copies:
            copy.spent = 0
        try:
            left = await settle(self._scripts, self.per_second, self.burst, settles)
        except Exception as exc:
            # Not counted in Redis: count it again with the next settle (from its first).
            for (bucket, copy), (_, _, age), n in zip(copies, settles, spent, strict=True):
                copy.spent += n
                copy.first = min(copy.first, sent - age / 1000)
                self._dirty.add(bucket)
            if isinstance(exc, redis.exceptions.RedisError):
                self._failed(exc)
            else:
                log.exception("rate limits not settled")
            return
        if self._failing:
            self._failing = False
            log.info("rate limits settled with Redis again")
        now = self._clock()
        for (_, copy), tokens in zip(copies, left, strict=True):
            mine = min(self.burst, copy.tokens + (now - copy.at) * self.per_second)
            # What Redis has left, refilled since, less what this process admitted meanwhile.
            theirs = min(self.burst, tokens + (now - sent) * self.per_second) - copy.spent
            copy.tokens, copy.at = min(mine, theirs), now

    def _forget_idle(self) -> None:
        horizon = self._clock() - self._idle_s
        while self._copies:
            bucket, copy = next(iter(self._copies.items()))
            if copy.at >= horizon or copy.spent:
                return
            del self._copies[bucket]

    def _failed(self, exc: Exception) -> None:
        self._failing = True
        if time.monotonic() - self._warned_at >= WARN_EVERY_S:
            self._warned_at = time.monotonic()
            log.warning(
                "rate limits not settled with Redis (each process limits alone meanwhile): %s",
                exc,
            )

    def close(self) -> None:
        if self._settler is not None:
            self._settler.cancel()


@lru_cache(maxsize=MAX_BUCKETS)
def _user_bucket(sub: str) -> str:
    return rate_limit_bucket("user", sub)


def client_bucket(keys: Keys, scope: Scope, token: str | None) -> str:
    """The caller's bucket: the verified user of `token`, else the client address."""
    if token is not None:
        try:
            claims = keys.verify(token, "access")  # remembered for the endpoint
            return _user_bucket(str(claims["sub"]))
        except ApiError:
            pass
    client = scope.get("client")
    return rate_limit_bucket("ip", str(client[0]) if client else "unknown")


def limit_check(keys: Keys, limiter: Limiter) -> Callable[[Scope, str | None], Awaitable[None]]:
    """The check web.middleware.ApiMiddleware makes before the endpoint: raises the 429."""

    async def limit(scope: Scope, token: str | None) -> None:
        scripts: Scripts = scope["app"].state.services.engine.scripts
        await limiter.check(scripts, client_bucket(keys, scope, token))

    return limit


class RateLimitMiddleware:
    """The limit as a middleware of its own, for an app that is not the API (which has it in
    web.middleware.ApiMiddleware)."""

    def __init__(self, app: ASGIApp, *, keys: Keys, per_second: float, burst: int) -> None:
        self.app = app
        self.check = limit_check(keys, Limiter(per_second, burst))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT:
            await self.app(scope, receive, send)
            return
        try:
            await self.check(scope, _bearer(scope))
        except ApiError as exc:
            state = scope_state(scope)
            state["error_code"] = exc.code
            rid = str(state.get("request_id", ""))
            response = error(rid, exc.status, exc.code, exc.message, exc.details, exc.headers)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _bearer(scope: Scope) -> str | None:
    for key, value in scope.get("headers", []):
        if key == b"authorization":
            return bearer_token(value.decode("latin-1"))
    return None
