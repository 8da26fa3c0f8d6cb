"""Signing in and refreshing tokens.

Refresh tokens rotate (persistence/refresh_tokens.py): each works once, and a spent one used
again revokes its family. Both tokens carry the account's token version (web/auth.py).

Failed logins are limited with Redis counters that expire, strictly per username from one
client address and per client address (429 with Retry-After), but per username alone only by
a growing delay: an attacker who knows a username can slow its owner's login down, by a few
seconds at most, never lock the owner out. An attempt counts before its password is checked
(so a burst of parallel guesses can't slip past the limits) and is taken back when it
succeeds.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from engine import Engine
from engine.keys import uuid4_hex
from engine.settings import Settings
from persistence import refresh_tokens, users
from persistence.refresh_tokens import Issue, Refusal
from persistence.users import TokenState
from web import passwords
from web.accounts import AccountCache
from web.auth import Keys, Principal
from web.errors import ApiError
from web.services.container import Services


@dataclass(frozen=True, slots=True)
class LoginLimit:
    """At most `attempts` failed logins per `window_s` seconds, per username and address
    (the pair) or per address (the engine keeps the counters)."""

    name: str  # as the 429 names it
    attempts: int
    window_s: int


PAIR_LIMIT = LoginLimit("username_and_client", attempts=5, window_s=300)
CLIENT_LIMIT = LoginLimit("client", attempts=20, window_s=300)
# Per username alone: no limit, a delay (`login_delay_s`), counted over this window.
USERNAME_WINDOW_S = 300


def login_delay_s(failures: int, settings: Settings) -> float:
    """How long an attempt for a username waits after `failures` recent failed attempts for
    it, from any address: nothing at first, then doubling up to LOGIN_DELAY_MAX."""
    if failures <= 0:
        return 0.0
    base_s = settings.login_delay_base_ms / 1000
    return float(min(base_s * 2 ** min(failures - 1, 32), settings.login_delay_max_ms / 1000))


async def _count_attempt(engine: Engine, username: str, client: str) -> int:
    """Counts one login attempt; refuses it with 429 when a strict limit is already used up,
    else returns how many attempts for the username came before it (for the delay)."""
    counts = await engine.count_login_attempt(
        username,
        client,
        pair_window_s=PAIR_LIMIT.window_s,
        client_window_s=CLIENT_LIMIT.window_s,
        user_window_s=USERNAME_WINDOW_S,
    )
    over = [
        limit
        for limit, count in ((PAIR_LIMIT, counts.pair), (CLIENT_LIMIT, counts.client))
        if count > limit.attempts
    ]
    if not over:
        return counts.user - 1
    retry_after = max(
        [
            max(await engine.login_attempts_ttl_s(username, client, pair=limit is PAIR_LIMIT), 1)
            for limit in over
        ]
    )
    limit = over[0]
    whom = "this username from this address" if limit is PAIR_LIMIT else "this address"
    raise ApiError(
        429,
        "too_many_attempts",
        f"too many failed logins for {whom}; try again in {retry_after} s",
        {"limit": limit.name, "retry_after": retry_after},
        {"Retry-After": str(retry_after)},
    )


async def _forget_attempt(engine: Engine, username: str, client: str) -> None:
    """A success: the username starts afresh, from everywhere and from this address, and the
    client's attempt is taken back."""
    await engine.forget_login_attempts(username, client, client_window_s=CLIENT_LIMIT.window_s)


def _next_refresh(settings: Settings) -> Issue:
    """The id and times of a refresh token about to be issued, to record before it is minted."""
    now = int(time.time())
    expires = now + settings.jwt_refresh_ttl_ms // 1000
    return Issue(
        uuid4_hex(), datetime.fromtimestamp(now, UTC), datetime.fromtimestamp(expires, UTC)
    )


def _tokens(
    svc: Services, keys: Keys, accounts: AccountCache, user: users.User, refresh: Issue
) -> dict[str, object]:
    """An access token and the refresh token `refresh` for `user`, under the account's token
    version and with its role as it is now."""
    principal = Principal(str(user.id), user.username, user.staff)
    version = user.token_version
    issued_at = int(refresh.issued_at.timestamp())
    accounts.remember(TokenState(user.id, user.active, user.staff, version))  # just read
    return {
        "access": keys.issue(principal, "access", version=version),
        "refresh": keys.issue(
            principal, "refresh", version=version, jti=refresh.jti, now=issued_at
        ),
        "token_type": "Bearer",
        "expires_in": svc.settings.jwt_access_ttl_ms // 1000,
    }


async def login(
    svc: Services,
    keys: Keys,
    accounts: AccountCache,
    username: str,
    password: str,
    client: str,
) -> dict[str, object]:
    """Username and password (from address `client`) → an access token and a refresh token
    (a new family)."""
    before = await _count_attempt(svc.engine, username, client)
    # Before the password is checked, whatever its outcome: a fast "no" would tell the
    # guesser not to wait for the answer.
    await asyncio.sleep(login_delay_s(before, svc.settings))
    user = await asyncio.to_thread(users.find_by_username, svc.db, username)
    # An unknown user costs the same hash check as a wrong password: the time tells nothing.
    matches = await asyncio.to_thread(
        passwords.verify_password, user.password_hash if user else None, password
    )
    if user is None or not matches:
        raise ApiError(401, "invalid_credentials", "the username or the password is wrong")
    if not user.active:
        raise ApiError(401, "account_disabled", "this account is disabled")
    await _forget_attempt(svc.engine, username, client)
    if passwords.needs_rehash(user.password_hash):
        rehashed = await asyncio.to_thread(passwords.hash_password, password)
        await asyncio.to_thread(users.set_password_hash, svc.db, user.id, rehashed)
    first = _next_refresh(svc.settings)
    await asyncio.to_thread(refresh_tokens.start_family, svc.db, user.id, first)
    return _tokens(svc, keys, accounts, user, first)


# The answer to each refusal of a refresh token.
REFUSED: dict[Refusal, tuple[str, str]] = {
    "unknown": ("invalid_token", "the refresh token is not known here; sign in again"),
    "revoked": ("token_revoked", "the refresh token was revoked; sign in again"),
    "reused": (
        "token_reused",
        "the refresh token was used already; every token of its sign-in is revoked now",
    ),
    "account": ("invalid_token", "the token's user no longer exists or is disabled"),
    "version": ("token_revoked", "the token was revoked: its account changed; sign in again"),
}


async def refresh(
    svc: Services, keys: Keys, accounts: AccountCache, token: str
) -> dict[str, object]:
    """A refresh token → a new access token and a new refresh token; the one sent is spent.
    The account must still exist, be active and have the token's version, and the new tokens
    carry its current role."""
    claims = keys.verify(token, "refresh")
    # Spending the token, reading its account and recording its successor are one
    # transaction; the successor is minted after it, from the account it read.
    following = _next_refresh(svc.settings)
    rotation = await asyncio.to_thread(
        refresh_tokens.rotate, svc.db, str(claims["jti"]), int(claims["ver"]), following
    )
    if rotation.refused is not None:
        code, message = REFUSED[rotation.refused]
        raise ApiError(401, code, message)
    assert rotation.user is not None
    return _tokens(svc, keys, accounts, rotation.user, following)
