"""Hostile tokens and bodies: each gets a clear 401 / 4xx with a stable code in the envelope,
and nothing changes. Keys that can't be trusted stop the app from starting."""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import redis
from sqlalchemy import Engine as DatabaseEngine
from sqlalchemy import func, select

from engine.settings import Settings
from persistence import users
from persistence.schema import users as users_table
from tests.api import data, err, running
from tests.test_api_auth import PASSWORD, make_user, whoami_app
from web.app import create_app
from web.auth import Keys, Principal

# The keys of the `app_settings` fixture: "test" signs, "old" still verifies.
KID, SECRET = "test", "k" * 40
OLD_KID, OLD_SECRET = "old", "o" * 40
DROP = object()


@pytest.fixture
async def api(app_settings: Settings, clean_redis: None) -> AsyncIterator[httpx.AsyncClient]:
    async with running(whoami_app(app_settings)) as c:
        yield c


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": "42",
        "name": "mallory",
        "staff": False,
        "typ": "access",
        "iat": now,
        "exp": now + 600,
        "iss": "inventory",
        "jti": uuid.uuid4().hex,
        "ver": 0,
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not DROP}


def sign(
    payload: dict[str, Any], secret: str = SECRET, kid: str | None = KID, alg: str = "HS256"
) -> str:
    return jwt.encode(payload, secret, algorithm=alg, headers={"kid": kid} if kid else None)


def b64(part: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()


def unsigned() -> str:
    return f"{b64({'alg': 'none', 'typ': 'JWT', 'kid': KID})}.{b64(claims(staff=True))}."


def tampered() -> str:
    original = claims()
    header, _, signature = sign(original).split(".")
    return f"{header}.{b64({**original, 'sub': '1', 'staff': True})}.{signature}"


def other_algorithm() -> str:
    with warnings.catch_warnings():  # PyJWT frowns at a 40-byte key for HS512: so do we
        warnings.simplefilter("ignore")
        return sign(claims(), alg="HS512")


def expired() -> str:
    now = int(time.time())
    return sign(claims(iat=now - 700, exp=now - 100))


def without(claim: str) -> Callable[[], str]:
    return lambda: sign(claims(**{claim: DROP}))


FORGED: dict[str, tuple[Callable[[], str], str]] = {
    "alg none": (unsigned, "invalid_token"),
    "tampered payload": (tampered, "invalid_token"),
    "expired": (expired, "token_expired"),
    "refresh used as access": (lambda: sign(claims(typ="refresh")), "invalid_token"),
    "unknown type": (lambda: sign(claims(typ="admin")), "invalid_token"),
    "unknown kid": (lambda: sign(claims(), kid="nope"), "invalid_token"),
    "no kid": (lambda: sign(claims(), kid=None), "invalid_token"),
    "right kid, wrong key": (lambda: sign(claims(), secret="x" * 40), "invalid_token"),
    "right kid, the other kid's key": (lambda: sign(claims(), secret=OLD_SECRET), "invalid_token"),
    "HS512, not on the allow-list": (other_algorithm, "invalid_token"),
    "wrong issuer": (lambda: sign(claims(iss="someone-else")), "invalid_token"),
    "issued in the future": (
        lambda: sign(claims(iat=int(time.time()) + 3600, exp=int(time.time()) + 7200)),
        "invalid_token",
    ),
    "sub not a string": (lambda: sign(claims(sub=42)), "invalid_token"),
    "empty sub": (lambda: sign(claims(sub="")), "invalid_token"),
    "staff not a boolean": (lambda: sign(claims(staff="true")), "invalid_token"),
    "exp not a number": (lambda: sign(claims(exp="tomorrow")), "invalid_token"),
    "ver not an integer": (lambda: sign(claims(ver="0")), "invalid_token"),
    "ver a boolean": (lambda: sign(claims(ver=False)), "invalid_token"),
    "ver negative": (lambda: sign(claims(ver=-1)), "invalid_token"),
    **{
        f"missing {claim}": (without(claim), "invalid_token")
        for claim in ("exp", "iat", "sub", "typ", "jti", "iss", "staff", "ver")
    },
}


@pytest.mark.parametrize("case", list(FORGED))
async def test_forged_tokens_are_refused(api: httpx.AsyncClient, case: str) -> None:
    make, code = FORGED[case]

    response = await api.get("/me", headers={"Authorization": f"Bearer {make()}"})

    assert response.status_code == 401
    assert response.headers["content-type"] == "application/json"
    assert err(response)["code"] == code


@pytest.mark.parametrize(
    "header",
    [
        "Bearer",
        "Bearer    ",
        "Token " + "a" * 20,
        "Basic dXNlcjpwYXNz",
        "Bearer not-a-token",
        "Bearer a.b.c",
        "Bearer ...",
        "Bearer two words",
        "Bearer eyJhbGciOiJIUzI1NiJ9",
        "Bearer " + b64([1, 2]) + "." + b64({}) + ".x",
        "Bearer " + "x" * 4000,
        "Bearer \u00e9\u00e9.\u00e9\u00e9.\u00e9\u00e9",
    ],
)
async def test_malformed_authorization_headers_are_refused(
    api: httpx.AsyncClient, header: str
) -> None:
    response = await api.get("/me", headers={b"authorization": header.encode("latin-1")})

    assert response.status_code == 401
    assert err(response)["code"] == "invalid_token"


async def test_a_token_signed_with_an_older_key_still_verifies(
    api: httpx.AsyncClient, app_settings: Settings, db: DatabaseEngine
) -> None:
    users.ensure_synthetic(db, {42: "mallory"})  # a token counts while its account exists
    old = sign(claims(), secret=OLD_SECRET, kid=OLD_KID)

    response = await api.get("/me", headers={"Authorization": f"Bearer {old}"})

    assert data(response) == {"user_id": "42", "username": "mallory", "staff": False}
    new = Keys(app_settings).issue(Principal("42", "mallory", False), "access")
    assert jwt.get_unverified_header(new)["kid"] == KID

    # Once the old key is dropped from JWT_KEYS, its tokens stop working.
    rotated = whoami_app(dataclasses.replace(app_settings, jwt_keys=f"{KID}:{SECRET}"))
    async with running(rotated) as c:
        refused = await c.get("/me", headers={"Authorization": f"Bearer {old}"})
    assert refused.status_code == 401
    assert err(refused)["code"] == "invalid_token"


# -- keys that can't be trusted ---------------------------------------------------------------


@pytest.mark.parametrize(
    "jwt_keys",
    [
        "test:short",
        f"test:{'k' * 31}",
        f":{'k' * 40}",
        "k" * 40,
        f"test:{'k' * 40},test:{'o' * 40}",
        f"test:{'k' * 40},old:short",
    ],
)
def test_untrustworthy_keys_stop_the_app(jwt_keys: str, tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'x.db'}", jwt_keys=jwt_keys)

    with pytest.raises(ValueError, match="JWT_KEYS"):
        create_app(settings)


def test_postgres_without_keys_refuses_to_start() -> None:
    settings = Settings(database_url="postgresql://inventory@127.0.0.1:1/inventory", jwt_keys="")

    with pytest.raises(ValueError, match="JWT_KEYS must be set"):
        create_app(settings)


def test_the_embedded_stack_uses_a_dev_key_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'x.db'}", jwt_keys="")

    with caplog.at_level(logging.WARNING, logger="inventory.auth"):
        app = create_app(settings)

    assert app.state.keys.signing[0] == "dev"
    assert "using the development key" in caplog.text


# -- hostile bodies on the token endpoints ----------------------------------------------------

TOKEN_PATHS = ["/api/token/", "/api/token/refresh/"]
LONG = "x" * 1025


@pytest.mark.parametrize("path", TOKEN_PATHS)
@pytest.mark.parametrize(
    ("content", "content_type", "status", "code"),
    [
        (b'{"username": "a"}', "text/plain", 415, "unsupported_media_type"),
        (b'{"username": "a"}', None, 415, "unsupported_media_type"),
        (b"username=a&password=b", "application/x-www-form-urlencoded", 415,
         "unsupported_media_type"),
        (b'{"username": "a",', "application/json", 400, "malformed_json"),
        (b"\xff\xfe", "application/json", 400, "malformed_json"),
        (b"", "application/json", 400, "malformed_json"),
        (b"[1, 2]", "application/json", 400, "invalid_input"),
        (b"null", "application/json", 400, "invalid_input"),
        (b'{"refresh": "x", "username": "a", "password": "b", "admin": true}',
         "application/json", 400, "invalid_input"),
        (b"[" * 60_000, "application/json", 400, "malformed_json"),
        (json.dumps({"username": "a", "password": "b" * 70_000}).encode(), "application/json",
         413, "payload_too_large"),
    ],
)  # fmt: skip
async def test_bad_bodies_are_refused(
    api: httpx.AsyncClient,
    sync_redis: redis.Redis,
    path: str,
    content: bytes,
    content_type: str | None,
    status: int,
    code: str,
) -> None:
    headers = {"content-type": content_type} if content_type else {}

    response = await api.post(path, content=content, headers=headers)

    assert response.status_code == status
    assert err(response)["code"] == code
    assert sync_redis.keys("inv:auth:*") == []  # not even counted as a login attempt


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"username": "alice", "password": PASSWORD, "is_staff": True}, "is_staff"),
        ({"username": "alice"}, "password"),
        ({"password": PASSWORD}, "username"),
        ({"username": "", "password": PASSWORD}, "username"),
        ({"username": "a" * 151, "password": PASSWORD}, "username"),
        ({"username": "alice", "password": ""}, "password"),
        ({"username": "alice", "password": LONG}, "password"),
        ({"username": 7, "password": PASSWORD}, "username"),
        ({"username": ["alice"], "password": PASSWORD}, "username"),
        ({"username": "alice", "password": None}, "password"),
        ({"username": "alice\x00", "password": PASSWORD}, "username"),
        ({"username": "\ud800", "password": PASSWORD}, "username"),
    ],
)
async def test_invalid_logins_name_the_field(
    api: httpx.AsyncClient, db: DatabaseEngine, body: dict[str, Any], field: str
) -> None:
    make_user(db, "alice")

    # json.dumps escapes what httpx would refuse to encode (a lone surrogate)
    response = await api.post(
        "/api/token/", content=json.dumps(body), headers={"content-type": "application/json"}
    )

    assert response.status_code == 400
    error = err(response)
    assert error["code"] == "invalid_input"
    assert field in [problem["field"] for problem in error["details"]["errors"]]


@pytest.mark.parametrize(
    "username", ["' OR '1'='1", "alice'; DROP TABLE users; --", "alice%", "ALICE", " alice"]
)
async def test_sql_ish_usernames_are_just_wrong_credentials(
    api: httpx.AsyncClient, db: DatabaseEngine, username: str
) -> None:
    make_user(db, "alice")

    response = await api.post("/api/token/", json={"username": username, "password": PASSWORD})

    assert response.status_code == 401
    assert err(response)["code"] == "invalid_credentials"
    with db.connect() as conn:
        assert conn.execute(select(func.count()).select_from(users_table)).scalar_one() == 1
