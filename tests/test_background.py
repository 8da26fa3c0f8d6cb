"""The background commands end to end: migrate, scheduler, worker --burst, drain."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
from typing import Any

import redis
from rq_scheduler import Scheduler
from sqlalchemy import select

from engine.engine import Engine
from engine.keys import partition_keys
from engine.models import SYSTEM, LineRequest
from engine.settings import Settings
from persistence import jobs, migrate, periodic, schema
from persistence.db import database_engine
from persistence.trigger import DrainTrigger
from tests.durable import BUYER
from tests.support import last_json, run_cli


def inventory(
    settings: Settings, database_url: str, *args: str
) -> subprocess.CompletedProcess[str]:
    env = {"REDIS_URL": settings.redis_url, "DATABASE_URL": database_url}
    return run_cli(*args, env=env, timeout=120)


def test_migrate_brings_an_empty_database_to_head_and_is_idempotent(
    settings: Settings, tmp_path: Any
) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    first = inventory(settings, url, "migrate")
    second = inventory(settings, url, "migrate")

    assert first.returncode == 0, first.stderr
    assert last_json(first) == {"from": None, "to": migrate.head(), "head": migrate.head()}
    assert last_json(second)["from"] == migrate.head()
    assert migrate.diff(url) == []


async def test_scheduler_and_burst_worker_expire_and_drain(
    engine: Engine, settings: Settings, db_url: str
) -> None:
    await engine.setup_product("sku-1", SYSTEM, price=100, stock={"main": 5})
    held = await engine.reserve([LineRequest("sku-1", 2)], BUYER, ttl_ms=50)
    await asyncio.sleep(0.1)

    scheduled = inventory(settings, db_url, "scheduler", "--burst", "--log-level", "WARNING")
    assert scheduled.returncode == 0, scheduled.stderr
    worked = inventory(settings, db_url, "worker", "--burst", "--log-level", "WARNING")
    assert worked.returncode == 0, worked.stderr

    # the periodic expire job released the due reservation; the drain made it durable
    stock = await engine.get_stock("sku-1")
    assert (stock.available, stock.reserved) == (5, 0)
    db = database_engine(dataclasses.replace(settings, database_url=db_url))
    with db.connect() as conn:
        status = conn.scalar(
            select(schema.reservations.c.status).where(schema.reservations.c.id == held.id)
        )
        actions = list(conn.scalars(select(schema.audit_log.c.action)))
    db.dispose()
    assert status == "expired"
    assert actions.count("reservation_expired") == 1
    assert last_json(worked)["drained"][0]["applied"] >= 0


def test_periodic_jobs_are_registered_once_with_a_result_ttl(
    settings: Settings, clean_redis: None
) -> None:
    connection = redis.Redis.from_url(settings.redis_url)
    scheduler = Scheduler(queue_name=jobs.QUEUE, connection=connection, interval=1)
    periodic.register(scheduler)
    periodic.register(scheduler)  # again: replaces, never duplicates

    registered = {job.id: job for job in scheduler.get_jobs()}
    assert set(registered) == {p.id for p in periodic.PERIODIC}
    for p in periodic.PERIODIC:
        job = registered[p.id]
        assert job.meta["interval"] == p.every_s
        assert job.result_ttl == jobs.JOB_RESULT_TTL  # results don't pile up forever
    connection.close()


def test_request_drain_enqueues_one_job_while_one_waits(
    settings: Settings, clean_redis: None
) -> None:
    raw = redis.Redis.from_url(settings.redis_url)
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    q = jobs.queue(raw)

    outcomes = [jobs.request_drain(q, client, 0) for _ in range(50)]

    assert outcomes.count(True) == 1
    assert q.count == 1
    raw.close()
    client.close()


async def test_a_burst_of_writes_asks_for_one_drain(
    engine: Engine, settings: Settings, clean_redis: None, db_url: str
) -> None:
    raw = redis.Redis.from_url(settings.redis_url)
    trigger = DrainTrigger(engine, settings.redis_url)
    await engine.setup_product("sku-1", SYSTEM, price=100, stock={"main": 500})

    async def write() -> bool:
        await engine.reserve([LineRequest("sku-1", 1)], BUYER)
        return await trigger.request(0)

    asked = await asyncio.gather(*(write() for _ in range(200)))

    assert asked.count(True) == 1
    assert jobs.queue(raw).count == 1
    # the one job drains everything the burst wrote
    worked = inventory(settings, db_url, "worker", "--burst", "--log-level", "WARNING")
    assert worked.returncode == 0, worked.stderr
    assert await engine.redis.xlen(partition_keys(0).outbox) == 0
    # and once it ran, the next write may ask again
    assert await trigger.request(0) is True
    trigger.close()
    raw.close()
