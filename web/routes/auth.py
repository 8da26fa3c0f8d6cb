"""Getting a token: `POST /api/token/` (username and password → access and refresh tokens) and
`POST /api/token/refresh/` (a refresh token → new access and refresh tokens).

Refresh tokens rotate, and failed logins are limited and delayed (web/services/auth.py). The
client address is the connection's: behind a proxy, run uvicorn with `--proxy-headers` and
`--forwarded-allow-ips` so that it is the caller's.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from web.accounts import AccountCache
from web.auth import request_keys
from web.bodies import parse_body
from web.responses import ok
from web.schemas.auth import LoginBody, RefreshBody
from web.services import auth
from web.services.container import services


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _accounts(request: Request) -> AccountCache:
    accounts: AccountCache = request.app.state.accounts
    return accounts


async def token(request: Request) -> Response:
    """Username and password → an access token and a refresh token (a new family)."""
    body = await parse_body(request, LoginBody)
    tokens = await auth.login(
        services(request),
        request_keys(request),
        _accounts(request),
        body.username,
        body.password,
        _client(request),
    )
    return ok(request, tokens)


async def refresh(request: Request) -> Response:
    """A refresh token → a new access token and a new refresh token; the one sent is spent.
    The account must still exist, be active and have the token's version, and the new tokens
    carry its current role."""
    body = await parse_body(request, RefreshBody)
    keys = request_keys(request)
    tokens = await auth.refresh(services(request), keys, _accounts(request), body.refresh)
    return ok(request, tokens)


routes = [
    Route("/api/token/", token, methods=["POST"]),
    Route("/api/token/refresh/", refresh, methods=["POST"]),
]
