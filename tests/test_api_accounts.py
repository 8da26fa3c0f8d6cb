"""Tokens follow their account: after an account change (by the `inventory user` CLI) the
account's access tokens stop working within the account cache's window and its refresh tokens
at once; the cache reads an account once per window however many requests ask; with the
database down, the accounts a process knows go on for a bounded time."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine as DatabaseEngine
from sqlalchemy import event
from starlette.applications import Starlette

from engine.settings import Settings
from persistence import schema, users
from persistence.db_async import SerialReader
from scripts.pg_server import PostgresServer
from tests.api import bearer, data, err, running
from tests.support import run_cli
from tests.test_api_auth import auth_header, login, make_user, whoami_app
from web.accounts import AccountCache
from web.auth import Principal
from web.services.container import Services

NEW_PASSWORD = "a new and better passphrase"


class Clock:
    """The account cache's clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def quick(app_settings: Settings) -> Settings:
    """The app's settings with a short account cache window, watched in real time."""
    return dataclasses.replace(app_settings, account_cache_ttl_ms=200)


@pytest.fixture
async def api(quick: Settings, clean_redis: None) -> AsyncIterator[httpx.AsyncClient]:
    async with running(whoami_app(quick)) as c:
        yield c


def services(app: Starlette) -> Services:
    found: Services = app.state.services
    return found


def clocked(app: Starlette, settings: Settings) -> Clock:
    """Gives the running app an account cache on a clock the test moves."""
    clock = Clock()
    svc = services(app)
    reader = app.state.accounts.reader  # (closed with the app's own cache)
    app.state.accounts = AccountCache(svc.db, settings, reader=reader, clock=clock)
    return clock


async def refused_within(
    api: httpx.AsyncClient, headers: dict[str, str], seconds: float
) -> httpx.Response:
    """GET /me until it is refused; fails if that takes longer than `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        response = await api.get("/me", headers=headers)
        if response.status_code != 200:
            return response
        assert time.monotonic() < deadline, "the token still works"
        await asyncio.sleep(0.05)


CHANGES = {
    "disable": ("invalid_token", "the token's user no longer exists or is disabled"),
    "unset-staff": ("token_revoked", "the token was revoked: its account changed; sign in again"),
    "set-password": ("token_revoked", "the token was revoked: its account changed; sign in again"),
}


@pytest.mark.parametrize("action", list(CHANGES))
async def test_an_account_change_ends_its_tokens(
    api: httpx.AsyncClient, db: DatabaseEngine, db_url: str, action: str
) -> None:
    make_user(db, "alice", staff=True)
    tokens = data(await login(api, "alice"))
    access = auth_header(tokens["access"])
    assert (await api.get("/staff", headers=access)).status_code == 200  # now in the cache
    extra = ["--password", NEW_PASSWORD] if action == "set-password" else []

    changed = run_cli("user", action, "alice", "--database-url", db_url, *extra)
    refresh = await api.post("/api/token/refresh/", json={"refresh": tokens["refresh"]})
    refused = await refused_within(api, access, seconds=10)  # the window is 0.2 s

    assert changed.returncode == 0, changed.stderr
    code, message = CHANGES[action]
    assert refused.status_code == 401
    assert err(refused) == {"code": code, "message": message, "details": {}}
    assert refresh.status_code == 401  # at once, not after a window
    assert err(refresh)["code"] == code
    assert (await api.get("/me", headers=access)).status_code == 401  # and it stays refused
    if action == "disable":
        assert err(await login(api, "alice"))["code"] == "account_disabled"
    elif action == "unset-staff":
        again = auth_header(data(await login(api, "alice"))["access"])
        assert data(await api.get("/me", headers=again))["staff"] is False
        assert err(await api.get("/staff", headers=again))["code"] == "forbidden"
    else:
        assert err(await login(api, "alice"))["code"] == "invalid_credentials"
        again = auth_header(data(await login(api, "alice", NEW_PASSWORD))["access"])
        assert (await api.get("/staff", headers=again)).status_code == 200


async def test_within_the_window_the_state_read_serves_and_after_it_the_change_counts(
    app_settings: Settings, clean_redis: None, db: DatabaseEngine
) -> None:
    app = whoami_app(app_settings)  # a 5 s window, on a clock moved by hand
    make_user(db, "alice")
    async with running(app) as api:
        clock = clocked(app, app_settings)
        access = auth_header(data(await login(api, "alice"))["access"])
        users.disable(db, "alice", actor="test")
        clock.now += 4.9
        within = await api.get("/me", headers=access)
        clock.now += 0.1
        after = await api.get("/me", headers=access)

    assert within.status_code == 200  # what the login read is trusted for the window
    assert after.status_code == 401
    assert err(after)["code"] == "invalid_token"


async def test_an_account_is_read_once_per_window_however_many_ask(
    app_settings: Settings, clean_redis: None
) -> None:
    settings = dataclasses.replace(app_settings, account_cache_ttl_ms=60_000)
    app = whoami_app(settings)
    async with running(app) as api:
        me = bearer(app, "5")
        with counting_account_reads(app) as reads:
            at_once = await asyncio.gather(*(api.get("/me", headers=me) for _ in range(30)))
            read_at_once = reads()
            one_by_one = [await api.get("/me", headers=me) for _ in range(30)]

    assert [r.status_code for r in at_once + one_by_one] == [200] * 60
    assert read_at_once == 1  # the 30 waited for one query
    assert reads() == 1  # and the next 30 needed none


async def test_granting_staff_counts_from_the_next_refresh(
    api: httpx.AsyncClient, db: DatabaseEngine
) -> None:
    make_user(db, "alice")
    tokens = data(await login(api, "alice"))
    access = auth_header(tokens["access"])

    users.set_staff(db, "alice", True, actor="test")
    await asyncio.sleep(0.3)  # past the 0.2 s window
    customer = await api.get("/staff", headers=access)
    refreshed = data(await api.post("/api/token/refresh/", json={"refresh": tokens["refresh"]}))
    staff = await api.get("/staff", headers=auth_header(refreshed["access"]))

    assert (await api.get("/me", headers=access)).status_code == 200  # not revoked
    assert err(customer)["code"] == "forbidden"  # the token claims no staff
    assert staff.status_code == 200


async def test_enabling_again_does_not_bring_back_the_ended_tokens(
    api: httpx.AsyncClient, db: DatabaseEngine
) -> None:
    make_user(db, "alice")
    tokens = data(await login(api, "alice"))
    access = auth_header(tokens["access"])
    users.disable(db, "alice", actor="test")
    users.enable(db, "alice", actor="test")

    refused = await refused_within(api, access, seconds=10)
    refresh = await api.post("/api/token/refresh/", json={"refresh": tokens["refresh"]})

    assert err(refused)["code"] == "token_revoked"
    assert err(refresh)["code"] == "token_revoked"
    assert (await login(api, "alice")).status_code == 200


@pytest.mark.parametrize("sub", ["999999", "alice", "0", str(2**63)])
async def test_a_token_of_no_account_is_refused(
    quick: Settings, clean_redis: None, db: DatabaseEngine, sub: str
) -> None:
    app = whoami_app(quick)
    async with running(app) as api:
        token = app.state.keys.issue(Principal(sub, "ghost", True), "access")
        response = await api.get("/me", headers=auth_header(token))

    assert response.status_code == 401
    assert err(response) == {
        "code": "invalid_token",
        "message": "the token's user no longer exists or is disabled",
        "details": {},
    }


async def test_with_the_database_down_tokens_go_on_counting(
    app_settings: Settings, pg_url: str, pg_server: PostgresServer, clean_redis: None
) -> None:
    """Reservations go on with Postgres down (DESIGN.md): an account read before the outage is
    judged on what was read, however long ago; one never read on its token's own claims. A
    disabled account the process had read stays refused."""
    settings = dataclasses.replace(app_settings, database_url=pg_url, account_cache_ttl_ms=5_000)
    app = whoami_app(settings)
    async with running(app) as api:
        clock = clocked(app, settings)
        known = bearer(app, "1")
        unknown = bearer(app, "2")
        gone = bearer(app, "3")
        with services(app).db.begin() as conn:
            conn.execute(
                schema.users.update().where(schema.users.c.id == 3).values(is_active=False)
            )
        assert (await api.get("/me", headers=known)).status_code == 200  # read now
        assert (await api.get("/me", headers=gone)).status_code == 401  # read: disabled
        pg_server.stop()
        try:
            clock.now += 6  # past the window: the states are read again, and that fails
            stale = await api.get("/me", headers=known)
            never_read = await api.get("/me", headers=unknown)
            still_gone = await api.get("/me", headers=gone)
            clock.now += 3600  # however long the outage lasts
            later = await api.get("/me", headers=known)
        finally:
            pg_server.start()
        clock.now += 1  # a new try is due
        back = await api.get("/me", headers=known)

    for served in (stale, never_read, later, back):
        assert served.status_code == 200, served.text
    assert still_gone.status_code == 401


async def test_the_async_read_of_token_states_is_the_threads(
    db: DatabaseEngine, db_url: str, settings: Settings
) -> None:
    """The API reads accounts on a connection of its own on PostgreSQL (SQLite in a thread):
    the same states, the missing and the invalid ids left out, any batch size."""
    made = [make_user(db, f"u{i}", staff=i == 1) for i in range(3)]
    users.disable(db, "u2", actor="test")
    reader = SerialReader.of(dataclasses.replace(settings, database_url=db_url))
    assert (reader is None) == db_url.startswith("sqlite")
    try:
        for ids in ([made[0].id], [u.id for u in made] + [10**12, -1, 0], []):
            assert await users.read_token_states(db, reader, ids) == users.token_states(db, ids)
        got = await users.read_token_states(db, reader, [u.id for u in made])
    finally:
        if reader is not None:
            await reader.aclose()
    flags = [(got[u.id].active, got[u.id].staff) for u in made]
    assert flags == [(True, False), (True, True), (False, False)]
    assert got[made[2].id].token_version == 1


# -- helpers ------------------------------------------------------------------------------------


@contextmanager
def counting_account_reads(app: Starlette) -> Iterator[Callable[[], int]]:
    """How many queries the account cache has made since the block began: on PostgreSQL the
    statements its reader ran, on SQLite those that read `token_version` on the sync engine."""
    reader: SerialReader | None = app.state.accounts.reader
    if reader is not None:
        start = reader.statements
        yield lambda: reader.statements - start
        return
    reads: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "token_version" in statement:
            reads.append(statement)

    db = services(app).db
    event.listen(db, "before_cursor_execute", seen)
    try:
        yield lambda: len(reads)
    finally:
        event.remove(db, "before_cursor_execute", seen)
