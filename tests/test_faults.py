"""The failure model of DESIGN.md, with real processes and a real Postgres stopped and killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import redis
from sqlalchemy import Engine as DatabaseEngine
from sqlalchemy.exc import OperationalError

from engine.engine import Engine
from engine.keys import partition_keys
from engine.models import SYSTEM, LineRequest
from engine.settings import Settings
from persistence import jobs, schema
from persistence.drain import drain_partition
from scripts.pg_server import PostgresServer
from tests.durable import BUYER, count, duplicates, events_added, projection, redis_counters
from tests.durable import workload as make_workload


async def reserve_many(engine: Engine, n: int) -> None:
    for _ in range(n):
        r = await engine.reserve([LineRequest("sku-1", 1)], BUYER)
        await engine.release(r.id, BUYER)


async def test_postgres_down_reservations_go_on_and_the_backlog_drains_after(
    engine: Engine,
    pg: DatabaseEngine,
    pg_server: PostgresServer,
    sync_redis: redis.Redis,
    settings: Settings,
) -> None:
    await make_workload(engine, rounds=4)
    drain_partition(sync_redis, pg, settings, 0)
    applied_before = count(pg, schema.audit_log)

    pg_server.stop()
    try:
        await reserve_many(engine, 150)  # the API side keeps answering
        backlog = await engine.redis.xlen(partition_keys(0).outbox)
        assert backlog == 300
        with pytest.raises(OperationalError):
            drain_partition(sync_redis, pg, settings, 0)
        # a failed drain trims nothing
        assert await engine.redis.xlen(partition_keys(0).outbox) == backlog
        await reserve_many(engine, 50)
    finally:
        pg_server.start()

    result = drain_partition(sync_redis, pg, settings, 0)

    assert result.applied == 400
    assert await engine.redis.xlen(partition_keys(0).outbox) == 0
    assert count(pg, schema.audit_log) == applied_before + 400 == events_added(sync_redis)
    assert duplicates(pg) == {"audit": 0, "ledger": 0}
    assert projection(pg) == await redis_counters(engine)


def _worker(settings: Settings, pg_url: str, *extra: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "REDIS_URL": settings.redis_url,
        "DATABASE_URL": pg_url,
        "DRAIN_BATCH": "25",
        "DRAIN_LEASE": "2",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "scripts.cli", "worker", "--log-level", "WARNING", *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # so the kill takes the work horse down too
    )


async def test_worker_killed_mid_batch_under_load_then_every_event_once(
    engine: Engine, pg: DatabaseEngine, pg_url: str, sync_redis: redis.Redis, settings: Settings
) -> None:
    await engine.setup_product("sku-1", SYSTEM, price=100, stock={"main": 100_000})
    await reserve_many(engine, 1000)
    queue = jobs.queue(redis.Redis.from_url(settings.redis_url))
    jobs.request_drain(queue, sync_redis, 0)
    worker = _worker(settings, pg_url)
    try:
        # keep writing while the worker drains; kill it once it is well into the backlog
        deadline = time.monotonic() + 60
        while count(pg, schema.audit_log) < 300:
            assert time.monotonic() < deadline, "the worker never started draining"
            await reserve_many(engine, 20)
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
    partial = count(pg, schema.audit_log)
    assert 0 < partial < events_added(sync_redis)
    await reserve_many(engine, 100)
    # the killed drainer's lease (2 s here) lapses; the restarted worker waits it out

    restarted = _worker(settings, pg_url, "--burst")
    out, err = restarted.communicate(timeout=120)

    assert restarted.returncode == 0, err.decode()[-2000:]
    assert await engine.redis.xlen(partition_keys(0).outbox) == 0
    assert count(pg, schema.audit_log) == events_added(sync_redis)
    assert duplicates(pg) == {"audit": 0, "ledger": 0}
    assert projection(pg) == await redis_counters(engine)
    assert b"drained" in out  # the burst worker reports what it drained
