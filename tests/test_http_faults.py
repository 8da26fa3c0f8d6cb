"""The failure model over HTTP: the real app (its lifespan, real Redis, a real Postgres) while a
dependency is down. /readyz answers 503 naming what fails; a write with Redis down is 503 and
changes nothing; with Postgres down reservations and orders go on, and a burst worker drains
the backlog once it is back, each event once."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from redis.asyncio import Redis as AsyncRedis
from sqlalchemy import Engine as DatabaseEngine
from starlette.applications import Starlette

from engine import outbox
from engine.keys import partition_keys, rate_limit_bucket
from engine.models import SYSTEM, LineRequest
from engine.settings import Settings
from persistence import schema
from scripts.pg_server import PostgresServer
from scripts.redis_server import RedisServer
from tests.api import bearer, data, err, running
from tests.durable import (
    BUYER,
    assert_applied_once,
    count,
    events_added,
    projection,
    redis_counters,
)
from tests.helpers import snapshot
from tests.support import run_cli
from web.app import create_app
from web.services.container import Services

JWT_KEYS = "test:" + "k" * 40


def svc(app: Starlette) -> Services:
    found: Services = app.state.services
    return found


def assert_not_ready(response: httpx.Response, failing: list[str]) -> dict[str, Any]:
    """The /readyz refusal: 503 `not_ready` naming exactly the failing components, with
    Retry-After; the details an anonymous caller gets are the names and nothing else."""
    assert response.status_code == 503, response.text
    error = err(response)
    assert error["code"] == "not_ready"
    assert error["details"]["failing"] == failing
    assert int(response.headers["retry-after"]) >= 1
    return error


def assert_unavailable(response: httpx.Response, dependency: str) -> None:
    assert response.status_code == 503, response.text
    error = err(response)
    assert error["code"] == "service_unavailable"
    assert error["details"] == {"dependency": dependency}
    assert dependency in error["message"]
    assert int(response.headers["retry-after"]) >= 1


async def until_not_ready(
    client: httpx.AsyncClient, headers: dict[str, str] | None = None, patience_s: float = 20
) -> httpx.Response:
    """/readyz until it answers 503: each component's finding is kept for a second
    (web/readiness.py), so a fault shows within about that."""
    deadline = time.monotonic() + patience_s
    while (response := await client.get("/readyz", headers=headers)).status_code != 503:
        assert time.monotonic() < deadline, response.text
        await asyncio.sleep(0.1)
    return response


async def until_ready(
    client: httpx.AsyncClient, headers: dict[str, str] | None = None, patience_s: float = 20
) -> httpx.Response:
    """/readyz until it answers 200 (a client's first call after its server came back may
    still find a connection the server closed)."""
    deadline = time.monotonic() + patience_s
    while (response := await client.get("/readyz", headers=headers)).status_code != 200:
        assert time.monotonic() < deadline, response.text
        await asyncio.sleep(0.1)
    return response


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis server of this test's own, to stop and start again (AOF on)."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def on_own_redis(
    own_redis: RedisServer, settings: Settings, pg_url: str
) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient]]:
    app = create_app(
        dataclasses.replace(
            settings, redis_url=own_redis.url, database_url=pg_url, jwt_keys=JWT_KEYS
        )
    )
    async with running(app) as client:
        yield app, client


# -- /readyz ------------------------------------------------------------------------------------


async def test_readyz_is_503_with_redis_down(
    on_own_redis: tuple[Starlette, httpx.AsyncClient], own_redis: RedisServer
) -> None:
    app, client = on_own_redis
    assert (await client.get("/readyz")).status_code == 200

    own_redis.stop()
    try:
        anonymous = await until_not_ready(client)
        staff = await client.get("/readyz", headers=bearer(app, "1", staff=True))
    finally:
        own_redis.start()

    # the backlog can't be read either: "outbox" can't be judged, so it fails too
    failing = ["redis", "outbox"]
    assert assert_not_ready(anonymous, failing)["details"] == {"failing": failing}
    details = assert_not_ready(staff, failing)["details"]
    assert set(details["problems"]) == set(failing)
    assert details["problems"]["redis"]
    assert data(await until_ready(client))["status"] == "ready"


async def test_readyz_is_503_with_the_database_down(
    settings: Settings, pg_url: str, pg_server: PostgresServer, clean_redis: None
) -> None:
    app = create_app(dataclasses.replace(settings, database_url=pg_url, jwt_keys=JWT_KEYS))
    async with running(app) as client:
        assert (await client.get("/readyz")).status_code == 200
        staff_token = bearer(app, "1", staff=True)  # its account is made in the database

        pg_server.stop()
        try:
            anonymous = await until_not_ready(client)
            staff = await client.get("/readyz", headers=staff_token)
        finally:
            pg_server.start()

        assert assert_not_ready(anonymous, ["database"])["details"] == {"failing": ["database"]}
        details = assert_not_ready(staff, ["database"])["details"]
        assert set(details["problems"]) == {"database"}
        assert details["outbox_backlog"] == 0
        assert data(await until_ready(client))["status"] == "ready"


async def test_readyz_is_503_with_a_backlog_over_the_limit(
    app_settings: Settings, clean_redis: None
) -> None:
    app = create_app(dataclasses.replace(app_settings, outbox_backlog_limit=5))
    async with running(app) as client:
        engine = svc(app).engine
        await engine.setup_product("1", SYSTEM, price=100, stock={"main": 10})  # 2 events
        for _ in range(3):
            await engine.reserve([LineRequest("1", 1)], BUYER)
        staff = bearer(app, "1", staff=True)
        at_limit = await client.get("/readyz", headers=staff)
        await engine.reserve([LineRequest("1", 1)], BUYER)
        over = await until_not_ready(client)
        over_staff = await client.get("/readyz", headers=staff)
        drained = run_cli(
            "drain",
            env={"REDIS_URL": app_settings.redis_url, "DATABASE_URL": app_settings.database_url},
        )
        after = await until_ready(client, staff)

    assert at_limit.status_code == 200, at_limit.text  # 5 waiting: at the limit, not over
    assert data(at_limit)["outbox_backlog"] == 5
    assert assert_not_ready(over, ["outbox"])["details"] == {"failing": ["outbox"]}
    details = assert_not_ready(over_staff, ["outbox"])["details"]
    assert details["outbox_backlog"] == 6
    assert "6" in details["problems"]["outbox"]
    assert drained.returncode == 0, drained.stderr
    assert after.status_code == 200
    assert data(after) == {"status": "ready", "outbox_backlog": 0}


# The buckets' keys, whatever their group's tag (`inv:{rl<g>}:ratelimit:…`)
RATE_LIMIT_INFIX = ":" + rate_limit_bucket("user", "").split(":")[2] + ":"


# -- writes with Redis down ---------------------------------------------------------------------


async def _snapshot(server: RedisServer) -> dict[str, Any]:
    """Every key and value, the rate limit's buckets aside: the API process counts a request
    whatever its answer (a 503 included), and settles that count once Redis is back."""
    client = AsyncRedis.from_url(server.url, decode_responses=True)
    try:
        found = await snapshot(client)
    finally:
        await client.aclose()
    return {k: v for k, v in found.items() if RATE_LIMIT_INFIX not in k}


async def test_a_reservation_with_redis_down_is_503_and_changes_nothing(
    on_own_redis: tuple[Starlette, httpx.AsyncClient], own_redis: RedisServer
) -> None:
    app, client = on_own_redis
    await svc(app).engine.setup_product("1", SYSTEM, price=100, stock={"main": 10})
    buyer = {**bearer(app, "7"), "Idempotency-Key": "cart-1"}
    before = await _snapshot(own_redis)

    own_redis.stop()
    try:
        refused = await client.post(
            "/api/reservations/", json={"product": 1, "quantity": 2}, headers=buyer
        )
    finally:
        own_redis.start()
    after = await _snapshot(own_redis)

    assert_unavailable(refused, "redis")
    assert after == before  # back from its AOF, exactly as it was: no hold, no event

    # The refusal recorded nothing under the idempotency key: the retry reserves, once.
    deadline = time.monotonic() + 20
    while (retried := await client.post(
        "/api/reservations/", json={"product": 1, "quantity": 2}, headers=buyer
    )).status_code == 503:  # fmt: skip
        assert time.monotonic() < deadline, retried.text
        await asyncio.sleep(0.1)
    assert retried.status_code == 201, retried.text
    assert "idempotent-replayed" not in retried.headers
    stock = await svc(app).engine.get_stock("1")
    assert [(lv.available, lv.reserved) for lv in stock.levels] == [(8, 2)]


# -- Postgres down ------------------------------------------------------------------------------


async def test_with_postgres_down_reservations_and_orders_go_on_over_http(
    settings: Settings,
    pg_url: str,
    pg: DatabaseEngine,
    pg_server: PostgresServer,
    clean_redis: None,
    sync_redis: redis.Redis,
) -> None:
    app = create_app(dataclasses.replace(settings, database_url=pg_url, jwt_keys=JWT_KEYS))
    outbox_key = partition_keys(0).outbox
    async with running(app) as client:
        staff, buyer = bearer(app, "1", staff=True), bearer(app, "7")
        made = await client.post(
            "/api/products/",
            json={"name": "Drop", "sku": "DROP-1", "price": "10.00", "total_stock": 50},
            headers=staff,
        )
        assert made.status_code == 201, made.text
        product = data(made)["id"]
        backlog_before = sync_redis.xlen(outbox_key)

        pg_server.stop()
        try:
            reserved = []
            for _ in range(6):
                r = await client.post(
                    "/api/reservations/", json={"product": product, "quantity": 2}, headers=buyer
                )
                assert r.status_code == 201, r.text
                reserved.append(data(r)["id"])
            committed = await client.post(f"/api/reservations/{reserved[0]}/commit/", headers=buyer)
            released = await client.delete(f"/api/reservations/{reserved[1]}/", headers=buyer)
            extended = await client.post(
                f"/api/reservations/{reserved[2]}/extend/",
                json={"ttl_seconds": 1200},
                headers=buyer,
            )
            direct = await client.post(
                "/api/orders/", json={"product": product, "quantity": 3}, headers=buyer
            )
            order = data(direct)["id"]
            confirmed = await client.patch(
                f"/api/orders/{order}/", json={"status": "confirmed"}, headers=staff
            )
            one_reservation = await client.get(f"/api/reservations/{reserved[3]}/", headers=buyer)
            one_order = await client.get(f"/api/orders/{order}/", headers=buyer)
            listed = await client.get("/api/reservations/", headers=buyer)
            ready = await client.get("/readyz")
            backlog_down = sync_redis.xlen(outbox_key)
        finally:
            pg_server.start()

        assert (committed.status_code, released.status_code) == (201, 200)
        assert (extended.status_code, direct.status_code, confirmed.status_code) == (200, 201, 200)
        assert data(confirmed)["status"] == "confirmed"
        assert data(one_reservation)["status"] == "active"
        assert data(one_order)["status"] == "confirmed"
        assert_unavailable(listed, "database")  # lists are read from the database
        assert_not_ready(ready, ["database"])
        # 6 reservations, a commit, a release, an extension, a direct order, a transition
        assert backlog_down == backlog_before + 11
        waiting = await outbox.read(svc(app).engine.redis, 0)
        assert len(waiting) == backlog_down  # nothing drained yet: every event is here

        worker = run_cli(
            "worker",
            "--burst",
            env={"REDIS_URL": settings.redis_url, "DATABASE_URL": pg_url},
            timeout=120,
        )
        assert worker.returncode == 0, worker.stderr[-2000:]

        assert sync_redis.xlen(outbox_key) == 0
        assert_applied_once(pg, waiting)
        assert count(pg, schema.audit_log) == len(waiting) == events_added(sync_redis)
        assert projection(pg) == await redis_counters(svc(app).engine)
        reservations = {
            r["id"]: r["status"]
            for r in data(await client.get("/api/reservations/?limit=100", headers=buyer))
        }
        orders = {
            o["id"]: o["status"] for o in data(await client.get("/api/orders/", headers=buyer))
        }
        assert data(await until_ready(client, staff))["outbox_backlog"] == 0

    assert reservations == {
        reserved[0]: "committed",
        reserved[1]: "released",
        **dict.fromkeys(reserved[2:], "active"),
    }
    assert orders == {data(committed)["id"]: "pending", order: "confirmed"}
