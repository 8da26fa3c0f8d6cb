"""Who is calling: JWT access tokens (PyJWT, HS256 only, required claims, key ids so keys can
rotate), and the checks endpoints call: `require_user`, `require_staff`.

Tokens follow their account: each carries the account's token version (`ver`), and a request's
access token counts only while its account exists, is active and still has that version. The
account's state is looked up before the endpoint runs (web/accounts.py, from a short
per-process cache) and judged here, so that the checks stay synchronous.

Keys come from JWT_KEYS ("kid:secret,..."; the first signs, all verify; each secret at least
32 bytes). Without it, a development key is used only on the embedded stack (SQLite), with a
warning; with Postgres configured the app refuses to start without real keys.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
import orjson
from starlette.requests import Request

from engine.keys import uuid4_hex
from engine.models import CallContext
from engine.settings import Settings
from persistence.users import TokenState
from web.errors import ApiError
from web.middleware import header, scope_state

log = logging.getLogger("inventory.auth")

ALGORITHM = "HS256"
ISSUER = "inventory"
REQUIRED_CLAIMS = ["exp", "iat", "sub", "typ", "jti", "iss", "staff", "ver"]
DEV_KEY = ("dev", "inventory-development-key-not-for-production-use")
VERIFIED_CACHE_SIZE = 10_000
# a token as this API issues it: three base64url segments, unpadded
_SEGMENTS = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)")
_CLAIM_TYPES: dict[str, type] = {
    "exp": int, "iat": int, "sub": str, "typ": str, "jti": str, "iss": str, "staff": bool,
    "ver": int,
}  # fmt: skip


def _b64(segment: str) -> bytes:
    """A segment's bytes, only if the segment is their one canonical base64url (PyJWT refuses
    another: a last character whose unused bits are set decodes to the same bytes)."""
    decoded = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    if _b64e(decoded) != segment:
        raise ValueError("not canonical base64url")
    return decoded


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller: a user id (the database's, as text), a name, and whether staff."""

    user_id: str
    username: str
    staff: bool

    def context(self, request: Request) -> CallContext:
        """The engine call context: actor, request id, idempotency key, staff scope."""
        key = header(request, b"idempotency-key")
        return CallContext(
            actor=self.user_id,
            request_id=str(request.scope.get("state", {}).get("request_id", "")),
            idempotency_key=key if key else None,
            staff=self.staff,
        )


@dataclass(frozen=True, slots=True)
class AccountLookup:
    """What the account check found for a request's access token (web/accounts.py): the
    account's state (None: there is no such account), or the error that kept it from being
    read, raised when an endpoint asks who is calling."""

    token: str
    state: TokenState | None
    error: Exception | None = None


class Keys:
    """Issues and verifies tokens. A token whose signature and claims were verified is
    remembered (the newest VERIFIED_CACHE_SIZE, per process): a client sends the same token
    with every request for its lifetime, and PyJWT's decoding costs more than the rest of a
    reservation's Python. A remembered token is still refused once its `exp` has passed, and
    what is remembered never changes (the signature and claims): whether its account still
    lets it count is looked up for every request, so remembering can't outlive an account
    change."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._verified: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()
        pairs: list[tuple[str, str]] = []
        for item in filter(None, (s.strip() for s in settings.jwt_keys.split(","))):
            kid, sep, secret = item.partition(":")
            if not sep or not kid or len(secret.encode()) < 32:
                raise ValueError("JWT_KEYS: each entry is kid:secret, the secret >= 32 bytes")
            pairs.append((kid, secret))
        if len({kid for kid, _ in pairs}) != len(pairs):
            raise ValueError("JWT_KEYS: each key id may appear once")
        if not pairs:
            if not settings.database_url_or_default.startswith("sqlite"):
                raise ValueError("JWT_KEYS must be set when the database is not the embedded one")
            log.warning("JWT_KEYS is not set: using the development key (embedded stack only)")
            pairs = [DEV_KEY]
        self.signing = pairs[0]
        self.by_kid = dict(pairs)
        self._hmac_keys = {kid: secret.encode() for kid, secret in pairs}
        self.settings = settings

    def issue(
        self,
        principal: Principal,
        kind: str,
        *,
        version: int = 0,
        jti: str | None = None,
        now: int | None = None,
    ) -> str:
        """A token of `kind` ("access" or "refresh") for `principal`, issued under their
        account's token `version` (0: an account never changed); its id and issue time (epoch
        s) given or new."""
        now = int(time.time()) if now is None else now
        ttl_ms = (
            self.settings.jwt_access_ttl_ms
            if kind == "access"
            else self.settings.jwt_refresh_ttl_ms
        )
        jti = jti or uuid4_hex()
        claims = {
            "sub": principal.user_id,
            "name": principal.username,
            "staff": principal.staff,
            "typ": kind,
            "iat": now,
            "exp": now + ttl_ms // 1000,
            "iss": ISSUER,
            "jti": jti,
            "ver": version,
        }
        kid, secret = self.signing
        return jwt.encode(claims, secret, algorithm=ALGORITHM, headers={"kid": kid})

    def verify(self, token: str, kind: str) -> dict[str, Any]:
        known = self._verified.get((token, kind))
        if known is not None:
            if known["exp"] <= self._clock():
                del self._verified[(token, kind)]
                raise ApiError(401, "token_expired", "the token has expired")
            self._verified.move_to_end((token, kind))
            return known
        claims = self._issued(token) or self._verify(token)
        self._check(claims, kind)
        self._verified[(token, kind)] = claims
        if len(self._verified) > VERIFIED_CACHE_SIZE:
            self._verified.popitem(last=False)
        return claims

    def _issued(self, token: str) -> dict[str, Any] | None:
        """The claims of a token exactly as `issue` makes them, if its signature and claims
        are good: what PyJWT's decode would accept (HS256, a known key id, the required claims
        of the types issued, `iss`, `exp` not passed, `iat` not ahead, no `nbf` or `aud`),
        decided in a few µs where PyJWT takes ~80 (the first request of each of a sale's new
        buyers pays it). Anything else — a bad signature, another header, an expired token — is
        None here, and `_verify` (PyJWT) decides it, with its own words."""
        parts = _SEGMENTS.fullmatch(token)
        if parts is None:
            return None
        head, body, signature = parts.groups()
        try:
            header = orjson.loads(_b64(head))
            if type(header) is not dict or header.keys() != {"alg", "typ", "kid"}:
                return None
            kid = header["kid"]
            key = self._hmac_keys.get(kid) if type(kid) is str else None
            if key is None or header["alg"] != ALGORITHM or header["typ"] != "JWT":
                return None
            signed = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
            if not hmac.compare_digest(_b64e(signed), signature):  # (canonical: as PyJWT)
                return None
            claims = orjson.loads(_b64(body))
        except (binascii.Error, orjson.JSONDecodeError, ValueError):
            return None
        if type(claims) is not dict or "nbf" in claims or "aud" in claims:
            return None
        for name, kind in _CLAIM_TYPES.items():
            if type(claims.get(name)) is not kind:
                return None
        now = time.time()  # (PyJWT's clock: the same answer)
        if claims["exp"] <= now or claims["iat"] > now or claims["iss"] != ISSUER:
            return None
        return claims

    def _verify(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
            kid = header.get("kid")
            secret = self.by_kid.get(kid) if isinstance(kid, str) else None
            if secret is None:
                raise jwt.InvalidTokenError("unknown key id")
            claims: dict[str, Any] = jwt.decode(
                token,
                secret,
                algorithms=[ALGORITHM],
                issuer=ISSUER,
                options={"require": REQUIRED_CLAIMS},
            )
        except jwt.ExpiredSignatureError:
            raise ApiError(401, "token_expired", "the token has expired") from None
        except jwt.InvalidTokenError as exc:
            raise ApiError(401, "invalid_token", f"the token is not valid: {exc}") from None
        return claims

    @staticmethod
    def _check(claims: dict[str, Any], kind: str) -> None:
        """The claims this API adds to a JWT's: the token's kind, and well-formed values."""
        if claims.get("typ") != kind:
            article = "an" if kind == "access" else "a"
            raise ApiError(401, "invalid_token", f"this is not {article} {kind} token")
        valid_version = type(claims["ver"]) is int and claims["ver"] >= 0
        if not claims["sub"] or not isinstance(claims["staff"], bool) or not valid_version:
            raise ApiError(401, "invalid_token", "the token's claims are not valid")


def request_keys(request: Request) -> Keys:
    """The app's keys, made by `create_app`."""
    keys: Keys = request.app.state.keys
    return keys


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header; None for no header or another
    scheme (which `authenticate` refuses)."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def authenticate(request: Request) -> Principal | None:
    """The caller from `Authorization: Bearer <access token>`, or None if there is none."""
    given = header(request, b"authorization")
    if not given:
        return None
    token = bearer_token(given)
    if token is None:
        raise ApiError(401, "invalid_token", "use Authorization: Bearer <access token>")
    claims = request_keys(request).verify(token, "access")
    lookup = scope_state(request.scope).get("account")
    if not isinstance(lookup, AccountLookup) or lookup.token != token:
        raise RuntimeError("the account check (web.middleware.ApiMiddleware) did not run")
    if lookup.error is not None:
        raise lookup.error
    principal = account_principal(claims, lookup.state)
    request.scope.setdefault("state", {})["user_id"] = principal.user_id
    return principal


def account_principal(claims: dict[str, Any], account: TokenState | None) -> Principal:
    """The caller a verified access token names, if its account still lets it count: the
    account exists, is active and has the token's version. Staff only while the token and the
    account both say so."""
    if account is None or not account.active:
        raise ApiError(401, "invalid_token", "the token's user no longer exists or is disabled")
    if claims["ver"] != account.token_version:
        raise ApiError(
            401, "token_revoked", "the token was revoked: its account changed; sign in again"
        )
    staff = bool(claims["staff"]) and account.staff
    return Principal(str(claims["sub"]), str(claims.get("name", "")), staff)


def require_user(request: Request) -> Principal:
    principal = authenticate(request)
    if principal is None:
        raise ApiError(
            401,
            "not_authenticated",
            "this endpoint needs a token: POST /api/token/",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return principal


def require_staff(request: Request) -> Principal:
    principal = require_user(request)
    if not principal.staff:
        raise ApiError(403, "forbidden", "staff only")
    return principal
