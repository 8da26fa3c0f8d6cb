"""Getting and using tokens end to end: users in the real database, attempts counted in the
real Redis, the real app (the token routes plus two guarded test routes), and the CLI."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import jwt
import pytest
import redis
from argon2 import PasswordHasher
from sqlalchemy import Engine as DatabaseEngine
from sqlalchemy import delete, select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engine.keys import login_attempts
from engine.settings import Settings
from persistence import users
from persistence.schema import refresh_tokens
from persistence.schema import users as users_table
from tests.api import data, err, running
from tests.support import last_json, run_cli
from web import passwords
from web.app import create_app
from web.auth import Principal, require_staff, require_user
from web.responses import ok
from web.routes import auth
from web.services.auth import login_delay_s

PASSWORD = "correct horse battery staple"


# -- an app with the token routes and two guarded routes --------------------------------------


async def _me(request: Request) -> Response:
    p = require_user(request)
    return ok(request, {"user_id": p.user_id, "username": p.username, "staff": p.staff})


async def _staff(request: Request) -> Response:
    p = require_staff(request)
    return ok(request, {"user_id": p.user_id})


def whoami_app(settings: Settings) -> Starlette:
    """The token routes, `GET /me` (any user) and `GET /staff` (staff only)."""
    return create_app(
        settings,
        routes=[
            *auth.routes,
            Route("/me", _me, methods=["GET"]),
            Route("/staff", _staff, methods=["GET"]),
        ],
    )


@pytest.fixture
def whoami(app_settings: Settings, clean_redis: None) -> Starlette:
    return whoami_app(app_settings)


@pytest.fixture
async def api(whoami: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with running(whoami) as c:
        yield c


@asynccontextmanager
async def from_address(app: Starlette, host: str) -> AsyncIterator[httpx.AsyncClient]:
    """Another client of an app already running (`api`), connecting from address `host`."""
    transport = httpx.ASGITransport(app=app, client=(host, 50_000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


def make_user(
    db: DatabaseEngine, name: str, password: str = PASSWORD, *, staff: bool = False
) -> users.User:
    return users.create_user(db, name, passwords.hash_password(password), staff=staff)


async def login(api: httpx.AsyncClient, name: str, password: str = PASSWORD) -> httpx.Response:
    return await api.post("/api/token/", json={"username": name, "password": password})


def auth_header(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- the token flow ---------------------------------------------------------------------------


async def test_login_gives_tokens_that_identify_the_user(
    api: httpx.AsyncClient, db: DatabaseEngine
) -> None:
    alice = make_user(db, "alice")

    response = await login(api, "alice")

    assert response.status_code == 200
    tokens = data(response)
    assert set(tokens) == {"access", "refresh", "token_type", "expires_in"}
    assert tokens["token_type"] == "Bearer"
    assert tokens["expires_in"] == 900
    assert jwt.get_unverified_header(tokens["access"])["kid"] == "test"  # the first key signs
    me = await api.get("/me", headers=auth_header(tokens["access"]))
    assert data(me) == {"user_id": str(alice.id), "username": "alice", "staff": False}
    staff_only = await api.get("/staff", headers=auth_header(tokens["access"]))
    assert staff_only.status_code == 403
    assert err(staff_only)["code"] == "forbidden"


async def test_staff_tokens_pass_the_staff_check(
    api: httpx.AsyncClient, db: DatabaseEngine
) -> None:
    boss = make_user(db, "boss", staff=True)

    access = data(await login(api, "boss"))["access"]

    response = await api.get("/staff", headers=auth_header(access))
    assert data(response) == {"user_id": str(boss.id)}


async def test_no_token_asks_for_one(api: httpx.AsyncClient) -> None:
    response = await api.get("/me")

    assert response.status_code == 401
    assert err(response)["code"] == "not_authenticated"
    assert response.headers["www-authenticate"] == "Bearer"


async def test_the_app_serves_the_token_routes(
    client: httpx.AsyncClient, db: DatabaseEngine
) -> None:
    make_user(db, "alice")

    tokens = data(
        await client.post("/api/token/", json={"username": "alice", "password": PASSWORD})
    )
    refreshed = await client.post("/api/token/refresh/", json={"refresh": tokens["refresh"]})

    assert refreshed.status_code == 200
    assert (await client.get("/api/token/")).status_code == 405


async def test_refresh_rotates_the_refresh_token(
    api: httpx.AsyncClient, db: DatabaseEngine
) -> None:
    alice = make_user(db, "alice")
    tokens = data(await login(api, "alice"))

    first = await api.post("/api/token/refresh/", json={"refresh": tokens["refresh"]})
    body = data(first)
    second = await api.post("/api/token/refresh/", json={"refresh": body["refresh"]})

    assert first.status_code == second.status_code == 200
    assert set(body) == {"access", "refresh", "token_type", "expires_in"}
    assert body["refresh"] != tokens["refresh"]
    assert body["access"] != tokens["access"]
    me = await api.get("/me", headers=auth_header(body["access"]))
    assert data(me)["user_id"] == str(alice.id)
    assert data(second)["refresh"] not in (tokens["refresh"], body["refresh"])


async def test_a_spent_refresh_token_is_refused(api: httpx.AsyncClient, db: DatabaseEngine) -> None:
    make_user(db, "alice")
    spent = data(await login(api, "alice"))["refresh"]
    await api.post("/api/token/refresh/", json={"refresh": spent})

    again = await api.post("/api/token/refresh/", json={"refresh": spent})

    assert again.status_code == 401
    assert err(again) == {
        "code": "token_reused",
        "message": "the refresh token was used already; every token of its sign-in is revoked now",
        "details": {},
    }


async def test_reusing_a_spent_refresh_token_revokes_its_family(
    api: httpx.AsyncClient, db: DatabaseEngine
) -> None:
    make_user(db, "alice")
    first = data(await login(api, "alice"))["refresh"]
    other_session = data(await login(api, "alice"))["refresh"]
    second = data(await api.post("/api/token/refresh/", json={"refresh": first}))["refresh"]
    newest = data(await api.post("/api/token/refresh/", json={"refresh": second}))["refresh"]

    reused = await api.post("/api/token/refresh/", json={"refresh": first})  # a stolen copy
    thief_or_owner = await api.post("/api/token/refresh/", json={"refresh": newest})
    elsewhere = await api.post("/api/token/refresh/", json={"refresh": other_session})

    assert err(reused)["code"] == "token_reused"
    again = await api.post("/api/token/refresh/", json={"refresh": first})  # and again
    assert (again.status_code, err(again)["code"]) == (401, "token_reused")
    assert thief_or_owner.status_code == 401
    assert err(thief_or_owner) == {
        "code": "token_revoked",
        "message": "the refresh token was revoked; sign in again",
        "details": {},
    }
    assert elsewhere.status_code == 200  # another sign-in is another family
    with db.connect() as conn:
        rows = conn.execute(
            select(refresh_tokens.c.family, refresh_tokens.c.revoked_at.is_not(None))
        ).all()
    families = {family for family, _ in rows}
    assert len(families) == 2
    revoked = {family for family, is_revoked in rows if is_revoked}
    assert len(revoked) == 1
    assert sum(1 for family, _ in rows if family in revoked) == 3  # the family's three tokens


async def test_one_refresh_token_used_twice_at_once_is_spent_once(
    api: httpx.AsyncClient, db: DatabaseEngine
) -> None:
    make_user(db, "alice")
    token = data(await login(api, "alice"))["refresh"]

    answers = await asyncio.gather(
        *(api.post("/api/token/refresh/", json={"refresh": token}) for _ in range(5))
    )

    codes = sorted(
        "ok" if r.status_code == 200 else err(r)["code"] for r in answers if r.status_code != 503
    )
    # Exactly one use spends it; the next finds it spent and revokes the family, including
    # the token that one use was given; any after that find it revoked. (SQLite may answer a
    # loser 503 "database is locked".)
    assert codes.count("ok") == 1
    assert "token_reused" in codes
    assert set(codes) <= {"ok", "token_reused", "token_revoked"}
    newest = next(data(r)["refresh"] for r in answers if r.status_code == 200)
    refused = await api.post("/api/token/refresh/", json={"refresh": newest})
    assert err(refused)["code"] == "token_revoked"


async def test_tokens_only_serve_their_own_purpose(
    api: httpx.AsyncClient, db: DatabaseEngine
) -> None:
    make_user(db, "alice")
    tokens = data(await login(api, "alice"))

    access_as_refresh = await api.post("/api/token/refresh/", json={"refresh": tokens["access"]})
    refresh_as_access = await api.get("/me", headers=auth_header(tokens["refresh"]))

    assert access_as_refresh.status_code == refresh_as_access.status_code == 401
    assert err(access_as_refresh) == {
        "code": "invalid_token",
        "message": "this is not a refresh token",
        "details": {},
    }
    assert err(refresh_as_access)["message"] == "this is not an access token"


async def test_refresh_is_refused_once_the_user_is_disabled_or_gone(
    api: httpx.AsyncClient, db: DatabaseEngine
) -> None:
    make_user(db, "alice")
    bob = make_user(db, "bob")
    alice_refresh = data(await login(api, "alice"))["refresh"]
    bob_refresh = data(await login(api, "bob"))["refresh"]
    users.disable(db, "alice", actor="test")
    with db.begin() as conn:
        conn.execute(delete(users_table).where(users_table.c.id == bob.id))

    for refresh in (alice_refresh, bob_refresh):
        response = await api.post("/api/token/refresh/", json={"refresh": refresh})
        assert response.status_code == 401
        assert err(response) == {
            "code": "invalid_token",
            "message": "the token's user no longer exists or is disabled",
            "details": {},
        }


async def test_a_refresh_token_not_issued_here_is_refused(
    whoami: Starlette, api: httpx.AsyncClient, db: DatabaseEngine
) -> None:
    alice = make_user(db, "alice")
    # Signed with the right key, but never recorded: as a token issued before rotation was.
    unrecorded = whoami.state.keys.issue(Principal(str(alice.id), "alice", False), "refresh")

    response = await api.post("/api/token/refresh/", json={"refresh": unrecorded})

    assert response.status_code == 401
    assert err(response) == {
        "code": "invalid_token",
        "message": "the refresh token is not known here; sign in again",
        "details": {},
    }


async def test_wrong_password_and_unknown_user_get_the_same_answer(
    api: httpx.AsyncClient, db: DatabaseEngine
) -> None:
    make_user(db, "alice")

    wrong_password = await login(api, "alice", "not the password")
    unknown_user = await login(api, "nobody")

    assert wrong_password.status_code == unknown_user.status_code == 401
    assert err(wrong_password) == err(unknown_user)
    assert err(unknown_user) == {
        "code": "invalid_credentials",
        "message": "the username or the password is wrong",
        "details": {},
    }


def test_the_dummy_hash_costs_what_a_real_one_does() -> None:
    # Unknown users are checked against it: made with other parameters, it would take
    # another time (or be made at the first unknown login, which would take longer).
    assert not passwords.needs_rehash(passwords._DUMMY_HASH)
    assert passwords.verify_password(None, PASSWORD) is False


async def test_a_disabled_user_cannot_log_in(api: httpx.AsyncClient, db: DatabaseEngine) -> None:
    make_user(db, "alice")
    users.disable(db, "alice", actor="test")

    right = await login(api, "alice")
    wrong = await login(api, "alice", "not the password")

    assert right.status_code == wrong.status_code == 401
    assert err(right)["code"] == "account_disabled"
    assert err(wrong)["code"] == "invalid_credentials"  # the state is told only to the owner


async def test_login_rehashes_a_hash_made_with_old_parameters(
    api: httpx.AsyncClient, db: DatabaseEngine
) -> None:
    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(PASSWORD)
    alice = users.create_user(db, "alice", weak)

    assert (await login(api, "alice")).status_code == 200

    stored = users.find_by_id(db, alice.id)
    assert stored is not None
    assert stored.password_hash != weak
    assert stored.password_hash.startswith("$argon2id$")
    assert not passwords.needs_rehash(stored.password_hash)
    assert (await login(api, "alice")).status_code == 200


def test_usernames_are_unique(db: DatabaseEngine) -> None:
    make_user(db, "alice")

    with pytest.raises(users.UsernameTaken, match="'alice' is taken"):
        make_user(db, "alice", "another password")

    found = users.find_by_username(db, "alice")
    assert found is not None
    assert passwords.verify_password(found.password_hash, PASSWORD)
    assert users.find_by_username(db, "Alice") is None
    assert users.find_by_id(db, 2**63) is None


# -- failed logins are limited ----------------------------------------------------------------


async def test_failed_logins_are_limited_per_username_from_one_address(
    api: httpx.AsyncClient, db: DatabaseEngine, sync_redis: redis.Redis
) -> None:
    make_user(db, "alice")
    make_user(db, "bob")
    for _ in range(4):
        assert (await login(api, "alice", "guess")).status_code == 401
    assert (await login(api, "alice")).status_code == 200  # resets alice's counters
    for _ in range(5):
        assert (await login(api, "alice", "guess")).status_code == 401

    blocked = await login(api, "alice")  # even the right password, from this address

    assert blocked.status_code == 429
    error = err(blocked)
    assert error["code"] == "too_many_attempts"
    assert error["message"].startswith(
        "too many failed logins for this username from this address; try again in "
    )
    assert error["details"]["limit"] == "username_and_client"
    retry_after = int(blocked.headers["retry-after"])
    assert 1 <= retry_after <= 300
    assert error["details"]["retry_after"] == retry_after
    assert (await login(api, "bob")).status_code == 200  # other users are not affected

    # The window ends: the counter expires, and the right password gets in again.
    sync_redis.pexpire(login_attempts("user-ip", "alice", "127.0.0.1"), 1)
    await asyncio.sleep(0.01)
    assert (await login(api, "alice")).status_code == 200
    assert (await login(api, "alice", "guess")).status_code == 401


async def test_an_attacker_cannot_lock_the_owner_out(
    app_settings: Settings, clean_redis: None, db: DatabaseEngine, sync_redis: redis.Redis
) -> None:
    # A small delay cap, so the test can wait it out: the delay grows, but never refuses.
    settings = dataclasses.replace(app_settings, login_delay_base_ms=10, login_delay_max_ms=400)
    app = whoami_app(settings)
    make_user(db, "alice")
    async with running(app), from_address(app, "203.0.113.7") as attacker:
        guesses = [await login(attacker, "alice", f"guess-{i}") for i in range(12)]
        async with from_address(app, "198.51.100.2") as owner:
            started = time.monotonic()
            signed_in = await login(owner, "alice")
            waited = time.monotonic() - started
        still_refused = await login(attacker, "alice")  # the right password, wrong address

    statuses = [g.status_code for g in guesses]
    assert statuses == [401] * 5 + [429] * 7  # the attacker's address is limited for alice
    assert {err(g)["details"]["limit"] for g in guesses[5:]} == {"username_and_client"}
    assert signed_in.status_code == 200  # the owner, from another address, gets in
    assert waited >= 0.4  # slowed down by the attacker's failures, up to the cap
    assert still_refused.status_code == 429
    # The owner's success cleared the username's count (1: the attempt after it); the
    # attacker's address stays limited.
    assert sync_redis.get(login_attempts("user", "alice")) == "1"
    assert sync_redis.get(login_attempts("user-ip", "alice", "203.0.113.7")) == "13"


def test_the_delay_doubles_from_nothing_up_to_its_cap() -> None:
    settings = Settings(login_delay_base_ms=100, login_delay_max_ms=3000)

    delays = [login_delay_s(n, settings) for n in range(8)]

    assert delays == [0.0, 0.1, 0.2, 0.4, 0.8, 1.6, 3.0, 3.0]
    assert login_delay_s(10**6, settings) == 3.0


async def test_failed_logins_are_limited_per_client(
    api: httpx.AsyncClient, db: DatabaseEngine
) -> None:
    make_user(db, "alice")
    for i in range(20):  # four names, five each: no single name reaches its own limit
        assert (await login(api, f"ghost-{i % 4}", "guess")).status_code == 401

    blocked = await login(api, "alice")

    assert blocked.status_code == 429
    assert err(blocked)["details"]["limit"] == "client"
    assert 1 <= int(blocked.headers["retry-after"]) <= 300


async def test_a_success_is_not_counted_against_the_client(
    api: httpx.AsyncClient, db: DatabaseEngine, sync_redis: redis.Redis
) -> None:
    make_user(db, "alice")
    await login(api, "alice", "guess")
    await login(api, "bob", "guess")

    await login(api, "alice")

    client_key = login_attempts("ip", "127.0.0.1")
    assert sync_redis.get(client_key) == "2"
    assert 0 < sync_redis.ttl(client_key) <= 300
    assert not sync_redis.exists(login_attempts("user", "alice"))
    assert not sync_redis.exists(login_attempts("user-ip", "alice", "127.0.0.1"))
    assert sync_redis.get(login_attempts("user", "bob")) == "1"
    assert sync_redis.get(login_attempts("user-ip", "bob", "127.0.0.1")) == "1"


# -- inventory createuser ---------------------------------------------------------------------


def inventory(
    *args: str, stdin: str | None = None, new_session: bool = False
) -> subprocess.CompletedProcess[str]:
    # No controlling terminal: getpass reads the prompted password from stdin.
    return run_cli(*args, input=stdin, start_new_session=new_session)


async def test_createuser_makes_a_user_who_can_log_in(
    api: httpx.AsyncClient, db: DatabaseEngine, db_url: str
) -> None:
    made = inventory(
        "createuser", "carol", "--staff", "--password", PASSWORD, "--database-url", db_url
    )

    assert made.returncode == 0, made.stderr
    created = last_json(made)
    assert isinstance(created["id"], int)
    assert created == {"id": created["id"], "username": "carol", "staff": True}
    access = data(await login(api, "carol"))["access"]
    me = data(await api.get("/me", headers=auth_header(access)))
    assert me == {"user_id": str(created["id"]), "username": "carol", "staff": True}


def test_createuser_refuses_a_taken_name_and_a_short_password(
    db: DatabaseEngine, db_url: str
) -> None:
    make_user(db, "carol")

    taken = inventory(
        "createuser", "carol", "--password", "another password", "--database-url", db_url
    )
    short = inventory("createuser", "dave", "--password", "seven77", "--database-url", db_url)

    assert taken.returncode == short.returncode == 2
    assert "the username 'carol' is taken" in taken.stderr
    assert "at least 8 characters" in short.stderr
    assert taken.stdout == short.stdout == ""
    carol = users.find_by_username(db, "carol")
    assert carol is not None
    assert passwords.verify_password(carol.password_hash, PASSWORD)
    assert users.find_by_username(db, "dave") is None


def test_createuser_prompts_twice_for_the_password(db: DatabaseEngine, db_url: str) -> None:
    made = inventory(
        "createuser", "erin", "--database-url", db_url, stdin=f"{PASSWORD}\n{PASSWORD}\n",
        new_session=True,
    )  # fmt: skip
    differ = inventory(
        "createuser", "frank", "--database-url", db_url, stdin=f"{PASSWORD}\nsomething else\n",
        new_session=True,
    )  # fmt: skip

    assert made.returncode == 0, made.stderr
    assert last_json(made)["staff"] is False
    erin = users.find_by_username(db, "erin")
    assert erin is not None
    assert passwords.verify_password(erin.password_hash, PASSWORD)
    assert differ.returncode == 2
    assert "the two passwords differ" in differ.stderr
    assert users.find_by_username(db, "frank") is None
