"""`GET /readyz`: ready, or 503 naming the failing components. Only a staff token learns why
(exception text names hosts, ports and users); and however many call at once, each component
is checked at most once per second. Faults are real: a Redis stopped, a database port where
nothing listens, a backlog the worker has not drained."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import redis
from sqlalchemy import event
from starlette.applications import Starlette

from engine.models import SYSTEM
from engine.settings import Settings
from persistence.drain import drain_partition
from scripts.redis_server import RedisServer, free_port
from tests.api import bearer, data, err, running
from tests.catalog_support import svc
from web.app import create_app
from web.auth import Principal
from web.readiness import Readiness

KEYS = "t:" + "k" * 40


def problem_free(response: httpx.Response) -> str:
    """The error part of an answer, as text: what an anonymous caller may read."""
    return json.dumps(response.json()["error"])


async def test_redis_down_names_it_and_only_staff_learn_why(
    settings: Settings, sqlite_url: str, tmp_path: Path
) -> None:
    own = RedisServer(tmp_path / "redis")
    own.start()
    app = create_app(
        dataclasses.replace(settings, redis_url=own.url, database_url=sqlite_url, jwt_keys=KEYS)
    )
    try:
        async with running(app) as client:
            own.stop()
            anonymous = await client.get("/readyz")
            customer = await client.get("/readyz", headers=bearer(app, "2"))
            forged = await client.get("/readyz", headers={"Authorization": "Bearer forged"})
            staff = await client.get("/readyz", headers=bearer(app, "1", staff=True))
    finally:
        own.stop()

    for short in (anonymous, customer, forged):
        assert short.status_code == 503
        assert short.headers["retry-after"] == "5"
        assert short.json() == {
            "request_id": short.headers["x-request-id"],
            "error": {
                "code": "not_ready",
                "message": "not ready: redis, outbox",
                "details": {"failing": ["redis", "outbox"]},
            },
        }
        text = problem_free(short)
        for secret in ("127.0.0.1", str(own.port), "Error", "refused", "redis://"):
            assert secret not in text
    assert staff.status_code == 503
    assert staff.headers["retry-after"] == "5"
    details = err(staff)["details"]
    assert details["failing"] == ["redis", "outbox"]
    assert details["outbox_backlog"] is None  # could not be read
    assert set(details["problems"]) == {"redis", "outbox"}
    assert details["problems"]["redis"].startswith("ConnectionError: ")
    assert details["problems"]["outbox"].startswith("could not read the backlog: ConnectionError: ")


async def test_database_down_hides_its_address_and_user(
    settings: Settings, clean_redis: None
) -> None:
    port = free_port()  # nothing listens there
    url = f"postgresql://shopowner:hunter2secret@127.0.0.1:{port}/inventory"
    app = create_app(dataclasses.replace(settings, database_url=url, jwt_keys=KEYS))
    async with running(app) as client:
        anonymous = await client.get("/readyz")
        # no database to make its account in: the token counts on its own claims meanwhile
        token = app.state.keys.issue(Principal("1", "ops", True), "access")
        staff = await client.get("/readyz", headers={"Authorization": f"Bearer {token}"})

    assert anonymous.status_code == 503
    assert "retry-after" in anonymous.headers
    assert err(anonymous) == {
        "code": "not_ready",
        "message": "not ready: database",
        "details": {"failing": ["database"]},
    }
    text = problem_free(anonymous)
    for secret in ("shopowner", "hunter2secret", "127.0.0.1", str(port), "Error", "connection"):
        assert secret not in text
    details = err(staff)["details"]
    assert (details["failing"], details["outbox_backlog"]) == (["database"], 0)
    assert list(details["problems"]) == ["database"]
    assert details["problems"]["database"].startswith("OperationalError")
    assert "hunter2secret" not in details["problems"]["database"]  # the driver hides it too


async def test_a_backlog_over_the_limit_is_not_ready_until_drained(
    app_settings: Settings, clean_redis: None, sync_redis: redis.Redis
) -> None:
    app = create_app(dataclasses.replace(app_settings, outbox_backlog_limit=2))
    staff = bearer(app, "1", staff=True)
    async with running(app) as client:
        for product in ("1", "2", "3"):
            await svc(app).engine.setup_product(product, SYSTEM, price=100, stock={"main": 1})
        backlog = sync_redis.xlen(svc(app).engine.keys(0).outbox)
        anonymous = await client.get("/readyz")
        behind = await client.get("/readyz", headers=staff)
        await asyncio.to_thread(drain_partition, sync_redis, svc(app).db, svc(app).settings, 0)
        await asyncio.sleep(1.1)  # past the cached finding
        drained_anonymous = await client.get("/readyz")
        drained_staff = await client.get("/readyz", headers=staff)

    assert backlog >= 3
    assert anonymous.status_code == 503
    assert err(anonymous)["details"] == {"failing": ["outbox"]}
    assert err(anonymous)["message"] == "not ready: outbox"
    assert err(behind)["details"] == {
        "failing": ["outbox"],
        "problems": {"outbox": f"backlog {backlog} over the limit 2: is the worker running?"},
        "outbox_backlog": backlog,
    }
    assert (drained_anonymous.status_code, data(drained_anonymous)) == (200, {"status": "ready"})
    assert data(drained_staff) == {"status": "ready", "outbox_backlog": 0}


def _calls(client: redis.Redis) -> Counter[str]:
    stats: dict[str, Any] = client.info("commandstats")
    return Counter(
        {name: int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("ping", "xlen")}
    )


async def test_concurrent_callers_share_one_check_per_component_per_second(
    app: Starlette, sync_redis: redis.Redis
) -> None:
    now = [1000.0]
    app.state.readiness = Readiness(clock=lambda: now[0])  # the clock alone is faked
    staff = bearer(app, "1", staff=True)
    async with running(app) as client:
        queries: list[str] = []

        def seen(*args: Any) -> None:
            queries.append(args[2])  # (conn, cursor, statement, ...)

        event.listen(svc(app).db, "before_cursor_execute", seen)

        async def burst(n: int) -> list[httpx.Response]:
            calls = [client.get("/readyz", headers=staff if i % 2 else {}) for i in range(n)]
            return await asyncio.gather(*calls)

        await client.get("/readyz")  # the pool's connections made (each PINGed when new)
        now[0] += 1.0
        queries.clear()
        before = _calls(sync_redis)
        # Redis holds every command for a moment, so the first check is still running while
        # the other callers arrive: they must wait for it, not start their own
        sync_redis.client_pause(500, all=True)
        first = await burst(200)
        after_first = _calls(sync_redis) - before
        checks_first = queries.count("SELECT 1")
        now[0] += 0.99  # still fresh
        second = await burst(100)
        after_second = _calls(sync_redis) - before
        now[0] += 0.02  # a second after the first check came back: checked again, once
        third = await burst(100)
        after_third = _calls(sync_redis) - before
        event.remove(svc(app).db, "before_cursor_execute", seen)

    assert [r.status_code for r in first + second + third] == [200] * 400
    assert data(first[1]) == {"status": "ready", "outbox_backlog": 0}
    assert data(first[0]) == {"status": "ready"}
    assert (after_first, checks_first) == (Counter(ping=1, xlen=1), 1)
    assert after_second == Counter(ping=1, xlen=1)
    assert after_third == Counter(ping=2, xlen=2)
    assert queries.count("SELECT 1") == 2
