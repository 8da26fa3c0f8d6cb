"""Getting a token: `POST /api/token/` (username and password → access and refresh tokens) and
`POST /api/token/refresh/` (refresh token → a new access token).

Failed logins are limited per username and per client address with Redis counters that
expire. An attempt counts before its password is checked (so a burst of parallel guesses
can't slip past the limit) and is taken back when it succeeds; a success also clears the
username's counter. The client address is the connection's: behind a proxy, run uvicorn with
`--proxy-headers` and `--forwarded-allow-ips` so that it is the caller's.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, field_validator
from redis.asyncio import Redis
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engine.keys import login_attempts
from persistence import users
from web import passwords
from web.app import services
from web.auth import Principal, request_keys
from web.bodies import parse_body
from web.errors import ApiError
from web.responses import ok


class LoginBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=150)
    password: str = Field(min_length=1, max_length=passwords.MAX_LENGTH)

    @field_validator("username")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        # No stored name has one, and Postgres can't even compare text that does.
        if "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value


class RefreshBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    refresh: str = Field(min_length=1, max_length=4096)


@dataclass(frozen=True, slots=True)
class LoginLimit:
    """At most `attempts` failed logins per `window_s` seconds for one value of `kind`."""

    kind: str
    attempts: int
    window_s: int


USERNAME_LIMIT = LoginLimit("user", attempts=5, window_s=300)
CLIENT_LIMIT = LoginLimit("ip", attempts=20, window_s=300)


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def _count_attempt(redis: Redis, username: str, client: str) -> None:
    """Counts one login attempt, or refuses it with 429 when a limit is already used up."""
    counters = [
        (USERNAME_LIMIT, login_attempts(USERNAME_LIMIT.kind, username)),
        (CLIENT_LIMIT, login_attempts(CLIENT_LIMIT.kind, client)),
    ]
    async with redis.pipeline(transaction=False) as pipe:
        for limit, key in counters:
            pipe.incr(key)
            # NX: the window runs from the first failure and does not slide with each attempt.
            pipe.expire(key, limit.window_s, nx=True)
        replies = await pipe.execute()
    over = [
        (limit, key)
        for (limit, key), count in zip(counters, replies[0::2], strict=True)
        if int(count) > limit.attempts
    ]
    if not over:
        return
    retry_after = max([max(int(await redis.ttl(key)), 1) for _, key in over])
    by = "username" if over[0][0] is USERNAME_LIMIT else "client"
    raise ApiError(
        429,
        "too_many_attempts",
        f"too many failed logins for this {by}; try again in {retry_after} s",
        {"limit": by, "retry_after": retry_after},
        {"Retry-After": str(retry_after)},
    )


async def _forget_attempt(redis: Redis, username: str, client: str) -> None:
    """A success: the username starts afresh, and the client's attempt is taken back."""
    key = login_attempts(CLIENT_LIMIT.kind, client)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(login_attempts(USERNAME_LIMIT.kind, username))
        pipe.decr(key)
        # Should the counter have expired meanwhile, DECR made it anew: let it expire too.
        pipe.expire(key, CLIENT_LIMIT.window_s, nx=True)
        await pipe.execute()


async def token(request: Request) -> Response:
    """Username and password → an access token and a refresh token."""
    body = await parse_body(request, LoginBody)
    svc = services(request)
    client = _client(request)
    await _count_attempt(svc.engine.redis, body.username, client)
    user = await asyncio.to_thread(users.find_by_username, svc.db, body.username)
    # An unknown user costs the same hash check as a wrong password: the time tells nothing.
    matches = await asyncio.to_thread(
        passwords.verify_password, user.password_hash if user else None, body.password
    )
    if user is None or not matches:
        raise ApiError(401, "invalid_credentials", "the username or the password is wrong")
    if not user.active:
        raise ApiError(401, "account_disabled", "this account is disabled")
    await _forget_attempt(svc.engine.redis, body.username, client)
    if passwords.needs_rehash(user.password_hash):
        rehashed = await asyncio.to_thread(passwords.hash_password, body.password)
        await asyncio.to_thread(users.set_password_hash, svc.db, user.id, rehashed)
    principal = Principal(str(user.id), user.username, user.staff)
    keys = request_keys(request)
    return ok(
        request,
        {
            "access": keys.issue(principal, "access"),
            "refresh": keys.issue(principal, "refresh"),
            "token_type": "Bearer",
            "expires_in": svc.settings.jwt_access_ttl_ms // 1000,
        },
    )


async def refresh(request: Request) -> Response:
    """A refresh token → a new access token. The refresh token stays valid until it expires;
    the user must still exist and be active, and the new token carries their current role."""
    body = await parse_body(request, RefreshBody)
    svc = services(request)
    keys = request_keys(request)
    claims = keys.verify(body.refresh, "refresh")
    sub = str(claims["sub"])
    user = (
        await asyncio.to_thread(users.find_by_id, svc.db, int(sub))
        if sub.isascii() and sub.isdigit() and len(sub) <= 19
        else None
    )
    if user is None or not user.active:
        raise ApiError(401, "invalid_token", "the token's user no longer exists or is disabled")
    principal = Principal(str(user.id), user.username, user.staff)
    return ok(
        request,
        {
            "access": keys.issue(principal, "access"),
            "token_type": "Bearer",
            "expires_in": svc.settings.jwt_access_ttl_ms // 1000,
        },
    )


routes = [
    Route("/api/token/", token, methods=["POST"]),
    Route("/api/token/refresh/", refresh, methods=["POST"]),
]
