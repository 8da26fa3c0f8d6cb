"""`GET /api/ops/dashboard/` (staff) and the `/dashboard` page's files, through HTTP against the
real app, Redis and database: who may read it, and each number right after operations whose
effect is known; RQ's registries through a real in-process worker; the database stopped."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import redis
from rq import Queue, Worker
from rq_scheduler import Scheduler
from starlette.applications import Starlette

from engine.keys import partition_keys
from engine.models import SYSTEM, LineRequest
from engine.settings import Settings
from persistence import jobs, periodic
from scripts.pg_server import PostgresServer
from tests.api import bearer, data, err, running
from tests.catalog_support import create, svc
from web.app import create_app
from web.auth import Principal

URL = "/api/ops/dashboard/"


async def board(client: httpx.AsyncClient, app: Starlette) -> dict[str, Any]:
    response = await client.get(URL, headers=bearer(app, "1", staff=True))
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    found: dict[str, Any] = data(response)
    return found


async def test_without_a_staff_token_it_is_refused_and_tells_nothing(
    client: httpx.AsyncClient, app: Starlette
) -> None:
    refresh = app.state.keys.issue(Principal("1", "staff", True), "refresh")
    anonymous = await client.get(URL)
    forged = await client.get(URL, headers={"Authorization": "Bearer not-a-token"})
    wrong_kind = await client.get(URL, headers={"Authorization": f"Bearer {refresh}"})
    basic = await client.get(URL, headers={"Authorization": "Basic YWxpY2U6cHc="})
    customer = await client.get(URL, headers=bearer(app, "2"))

    assert anonymous.status_code == 401
    assert err(anonymous)["code"] == "not_authenticated"
    assert anonymous.headers["www-authenticate"] == "Bearer"
    for response in (forged, wrong_kind, basic):
        assert response.status_code == 401
        assert err(response)["code"] == "invalid_token"
    assert customer.status_code == 403
    assert err(customer) == {"code": "forbidden", "message": "staff only", "details": {}}
    for response in (anonymous, forged, wrong_kind, basic, customer):
        assert "partitions" not in response.text


async def test_an_empty_shop_reads_as_zeros(client: httpx.AsyncClient, app: Starlette) -> None:
    d = await board(client, app)

    assert d["reservations"] == {
        "live": 0,
        "due": 0,
        "expired_last_minute": 0,
        "committed_last_minute": 0,
        "expired_by_sweep_total": 0,
    }
    assert d["partitions"] == [
        {
            "partition": 0,
            "backlog": 0,
            "oldest_event_age_ms": 0,
            "dead_letter_stream": 0,
            "live_reservations": 0,
            "due_reservations": 0,
            "events_applied": 0,
            "last_drain": None,
            "redis_behind": None,
        }
    ]
    assert d["dead_letters"] == {"unresolved": 0, "latest": []}
    assert d["queues"]["workers"] == []
    assert d["queues"]["queues"] == [
        {
            "name": jobs.QUEUE,
            "queued": 0,
            "started": 0,
            "scheduled": 0,
            "deferred": 0,
            "failed": 0,
            "finished": 0,
        }
    ]
    assert [p["next_run_at"] for p in d["queues"]["periodic"]] == [None] * len(periodic.PERIODIC)
    assert d["queues"]["failed_jobs"] == []
    assert d["low_stock"] == []
    assert d["reconcile"] is None
    assert d["problems"] == {"database": None, "queues": None}


async def test_the_numbers_follow_known_operations(
    client: httpx.AsyncClient, app: Starlette, sync_redis: redis.Redis, job_env: None
) -> None:
    staff, buyer = bearer(app, "1", staff=True), bearer(app, "2")
    plenty = (await create(client, staff, "PLENTY", total_stock=10))["id"]
    scarce = (await create(client, staff, "SCARCE", total_stock=3))["id"]
    gone = (await create(client, staff, "GONE", total_stock=1))["id"]
    assert (await client.delete(f"/api/products/{gone}/", headers=staff)).status_code == 200

    async def reserve(product: int, quantity: int, **extra: Any) -> str:
        body = {"product": product, "quantity": quantity, **extra}
        response = await client.post("/api/reservations/", json=body, headers=buyer)
        assert response.status_code == 201, response.text
        rid: str = data(response)["id"]
        return rid

    await reserve(plenty, 2)
    bought = await reserve(scarce, 1)
    assert (await client.post(f"/api/reservations/{bought}/commit/", headers=buyer)).is_success
    await reserve(plenty, 1, ttl_seconds=0.05)
    await asyncio.sleep(0.1)
    due = await board(client, app)
    assert await asyncio.to_thread(jobs.expire) == {
        "expired": 1,
        "still_due": 0,
        "carts": 0,
        "timed_out": 0,
        "waitlist_left": 0,
        "redis_behind": [],
    }

    before = await board(client, app)
    assert await asyncio.to_thread(jobs.drain, 0)
    after = await board(client, app)

    assert (due["reservations"]["live"], due["reservations"]["due"]) == (2, 1)
    assert sync_redis.xlen(partition_keys(0).outbox) == 0
    assert before["reservations"] == {
        "live": 1,
        "due": 0,
        "expired_last_minute": 0,  # the database has not seen them yet
        "committed_last_minute": 0,
        "expired_by_sweep_total": 1,
    }
    assert before["partitions"][0]["backlog"] > 0
    assert before["partitions"][0]["oldest_event_age_ms"] >= 100
    assert before["queues"]["queues"][0]["queued"] == 1  # the drain the sweep asked for
    assert after["reservations"]["expired_last_minute"] == 1
    assert after["reservations"]["committed_last_minute"] == 1
    partition = after["partitions"][0]
    assert partition["backlog"] == 0
    assert partition["events_applied"] == before["partitions"][0]["backlog"]
    assert partition["last_drain"]["applied"] == partition["events_applied"]
    assert partition["last_drain"]["lag_max_ms"] >= partition["last_drain"]["lag_p50_ms"] >= 0
    # sold-out and deleted GONE is left out; SCARCE has 2 left, PLENTY 8 + 2 held
    assert after["low_stock"] == [
        {
            "product": scarce,
            "name": "Product SCARCE",
            "sku": "SCARCE",
            "available": 2,
            "reserved": 0,
            "total": 2,
            "waiting": 0,
            "handed_off_last_minute": 0,
            "limits_refused_last_minute": 0,
        },
        {
            "product": plenty,
            "name": "Product PLENTY",
            "sku": "PLENTY",
            "available": 8,
            "reserved": 2,
            "total": 10,
            "waiting": 0,
            "handed_off_last_minute": 0,
            "limits_refused_last_minute": 0,
        },
    ]
    # the drain's events are in the trends: 90 points of 10 s, the newest last
    trend = after["trends"]["points"]
    assert (after["trends"]["bucket_seconds"], len(trend)) == (10, 90)
    assert sum(p["events_per_second"] for p in trend[-2:]) > 0


async def test_sold_out_comes_first_and_the_reconcile_result_is_shown(
    client: httpx.AsyncClient, app: Starlette, job_env: None
) -> None:
    staff, buyer = bearer(app, "1", staff=True), bearer(app, "2")
    many = (await create(client, staff, "MANY", total_stock=100))["id"]
    one = (await create(client, staff, "ONE", total_stock=1))["id"]
    body = {"product": one, "quantity": 1}
    assert (await client.post("/api/reservations/", json=body, headers=buyer)).is_success
    await asyncio.to_thread(jobs.drain, 0)
    assert (await board(client, app))["reconcile"] is None

    assert await asyncio.to_thread(jobs.reconcile_check) == {"ok": True, "drift": 0}
    d = await board(client, app)

    assert [(p["product"], p["available"]) for p in d["low_stock"]] == [(one, 0), (many, 100)]
    reconcile = d["reconcile"]
    assert reconcile["ok"] is True
    assert (reconcile["drift"], reconcile["kinds"], reconcile["backlog"]) == (0, {}, 0)
    assert reconcile["stock_rows"] == 2
    assert reconcile["checked_at"] <= d["at"]
    assert (await board(client, app))["reconcile"] == reconcile  # the same until a new check


async def test_workers_queues_periodic_jobs_and_failures_come_from_rq(
    client: httpx.AsyncClient, app: Starlette, app_settings: Settings
) -> None:
    conn = redis.Redis.from_url(app_settings.redis_url)
    queue = Queue(jobs.QUEUE, connection=conn)
    registered_from = datetime.now(UTC)
    periodic.register(Scheduler(queue_name=jobs.QUEUE, connection=conn))
    registered_to = datetime.now(UTC)
    # (its id used again by a run that succeeds, as a periodic job's is: the board shows the
    # failed run's error, not the newest run's lack of one)
    failing = queue.enqueue("json.loads", "{not json", result_ttl=60, job_id="again")
    worker = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "scripts.cli", "worker", "--log-level", "WARNING"],
        env={
            **os.environ,
            "REDIS_URL": app_settings.redis_url,
            "DATABASE_URL": app_settings.database_url,
        },
    )
    try:
        deadline = time.monotonic() + 30
        while not (Worker.all(connection=conn) and queue.failed_job_registry.count):
            assert worker.returncode is None, "the worker exited"
            assert time.monotonic() < deadline, "the worker did not run the job"
            await asyncio.sleep(0.05)
        queue.enqueue("json.loads", "[]", result_ttl=60, job_id="again")
        while not queue.finished_job_registry.count:
            assert time.monotonic() < deadline, "the worker did not run the job again"
            await asyncio.sleep(0.05)
        d = await board(client, app)
        read_by = datetime.now(UTC)
    finally:
        worker.terminate()
        await asyncio.wait_for(worker.wait(), timeout=30)
        conn.close()

    q = d["queues"]
    assert [(w["state"], w["queues"], w["failed_jobs"]) for w in q["workers"]] == [
        ("idle", [jobs.QUEUE], 1)
    ]
    # (the worker may beat again while the board is read, after its `at`)
    assert datetime.fromisoformat(q["workers"][0]["last_heartbeat"]) <= read_by
    assert q["queues"] == [
        {
            "name": jobs.QUEUE,
            "queued": 0,
            "started": 0,
            "scheduled": 0,
            "deferred": 0,
            "failed": 1,
            "finished": 1,
        }
    ]
    assert [f["id"] for f in q["failed_jobs"]] == [failing.id]
    assert q["failed_jobs"][0]["function"] == "json.loads"
    assert q["failed_jobs"][0]["error"].startswith("json.decoder.JSONDecodeError: Expecting")
    assert [p["id"] for p in q["periodic"]] == sorted(p.id for p in periodic.PERIODIC)
    at = datetime.fromisoformat(d["at"])
    for p in q["periodic"]:
        # registered just now and no scheduler runs them: each is due from the moment it was
        # registered (rq-scheduler keeps whole seconds), and overdue by however long ago that
        # was when the board was read
        next_run = datetime.fromisoformat(p["next_run_at"])
        assert registered_from - timedelta(seconds=1) < next_run <= registered_to
        assert p["overdue_s"] == pytest.approx((at - next_run).total_seconds(), abs=0.1)


async def test_with_the_database_down_the_redis_panels_still_answer(
    settings: Settings, pg_url: str, pg_server: PostgresServer, clean_redis: None
) -> None:
    app = create_app(dataclasses.replace(settings, database_url=pg_url, jwt_keys="t:" + "k" * 40))
    async with running(app) as client:
        staff = bearer(app, "1", staff=True)
        made = await create(client, staff, "DOWN", total_stock=4)
        await svc(app).engine.reserve([LineRequest(str(made["id"]), 1)], SYSTEM)
        pg_server.stop()
        try:
            response = await client.get(URL, headers=staff)
        finally:
            pg_server.start()
        d = data(response)

    assert response.status_code == 200
    assert d["problems"]["database"].startswith("OperationalError")
    assert d["problems"]["queues"] is None
    assert d["reservations"]["live"] == 1
    assert (d["reservations"]["expired_last_minute"], d["dead_letters"]) == (None, None)
    assert d["partitions"][0]["backlog"] >= 2
    assert d["partitions"][0]["events_applied"] is None
    assert d["low_stock"] == []


# -- the page -----------------------------------------------------------------------------------


async def test_the_page_and_its_files_come_from_the_app_alone(client: httpx.AsyncClient) -> None:
    page = await client.get("/dashboard")

    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "script-src 'self'" in csp
    assert page.headers["x-frame-options"] == "DENY"
    html = page.text
    assert not re.search(r"https?://|//[a-z]", html), "the page names another host"
    assert "<script>" not in html  # no inline script: the policy forbids it
    loaded = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sorted(loaded) == ["/dashboard/static/dashboard.css", "/dashboard/static/dashboard.js"]
    kinds = {".js": "text/javascript", ".css": "text/css"}
    for url in loaded:
        asset = await client.get(url)
        assert asset.status_code == 200, url
        assert asset.headers["content-type"].startswith(kinds[url[url.rindex(".") :]])
        assert not re.search(r"https?://", asset.text), url
        assert "@import" not in asset.text
        assert "url(" not in asset.text
    script = (await client.get("/dashboard/static/dashboard.js")).text
    assert "innerHTML" not in script  # values go in as text
    assert URL in script


@pytest.mark.parametrize(
    "path", ["/dashboard/static/other.js", "/dashboard/static/../pyproject.toml", "/dashboard/x"]
)
async def test_no_other_file_is_served(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)

    assert response.status_code == 404
    assert err(response)["code"] == "not_found"
