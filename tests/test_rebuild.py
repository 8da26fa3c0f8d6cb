"""`rebuild`: after Redis lost its data, the database restores it as the scripts had left it;
reconcile then finds no drift, and the restored reservations and orders work as before."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from typing import Any, cast

import pytest
import redis
from sqlalchemy import Engine as DatabaseEngine
from sqlalchemy import select

from engine.engine import Engine
from engine.keys import partition_keys
from engine.models import SYSTEM, LineRequest
from engine.settings import Settings
from engine.states import TERMINAL
from persistence import schema
from persistence.drain import drain_partition
from persistence.rebuild import RebuildRefused, rebuild
from persistence.reconcile import check, reconcile
from scripts.redis_server import RedisServer
from tests.durable import BUYER, workload
from tests.helpers import snapshot
from tests.support import last_json, redis_now_ms, run_cli, wait_until_due

pytestmark = pytest.mark.cluster  # on the redis-server and on a Redis Cluster

K = partition_keys(0)


def live_view(client: redis.Redis) -> dict[str, Any]:
    """What a rebuild restores, read back: products, counters, live reservations with their
    index and records, and the orders not yet terminal."""
    live = {r: json.loads(v) for r, v in client.hgetall(K.live).items()}
    orders = [client.hgetall(key) for key in client.scan_iter(match=K.order("*"))]
    return {
        "products": {p: json.loads(v) for p, v in client.hgetall(K.products).items()},
        "stock": client.hgetall(K.stock),
        "live": live,
        "expiry": client.zrange(K.expiry, 0, -1, withscores=True),
        "records": {r: client.hgetall(K.reservation(str(r))) for r in live},
        "orders": {o["id"]: o for o in orders if o["status"] not in TERMINAL},
    }


async def test_wiped_redis_is_rebuilt_and_works_on(
    engine: Engine, db: DatabaseEngine, sync_redis: redis.Redis, settings: Settings
) -> None:
    await workload(engine, rounds=4)  # leaves a live reservation, a pending and a confirmed order
    held = await engine.reserve([LineRequest("sku-1", 3, "main")], BUYER)
    await engine.extend(held.id, BUYER, ttl_ms=900_000)
    due = await engine.reserve([LineRequest("sku-1", 1, "east")], BUYER, ttl_ms=300)
    drain_partition(sync_redis, db, settings, 0)
    before = live_view(sync_redis)
    await wait_until_due(engine, due)
    sync_redis.flushall()

    result = rebuild(sync_redis, db, settings)

    assert result.problems == []
    assert result.dead_letters == 0
    assert result.partitions == [
        {
            "partition": 0,
            "products": 1,
            "stock_levels": 2,
            "reservations": 3,
            "reservations_due": 1,
            "orders": 2,
            # the ended records still within their retention: 4 reservations (released,
            # committed twice, expired) and the cancelled order
            "records": 5,
            "idempotency": 0,
        }
    ]
    assert live_view(sync_redis) == before
    report = check(sync_redis, db, settings)
    assert report.ok, report.drift
    with db.connect() as conn:
        a = schema.audit_log
        row = conn.execute(select(a).where(a.c.action == "redis_rebuilt")).one()
    assert (row.actor, row.object_id, row.new_value) == ("rebuild", "0", result.partitions[0])

    # everything restored works: commit, release, transitions, the sweep, a new reserve
    order = await engine.commit(held.id, BUYER)
    other = next(r for r in before["live"] if r not in (held.id, due.id))
    await engine.release(other, BUYER)
    pending = next(o for o in before["orders"].values() if o["status"] == "pending")
    await engine.transition(pending["id"], "confirmed", SYSTEM)
    assert (await engine.expire()).expired == 1
    fresh = await engine.reserve([LineRequest("sku-1", 5)], BUYER)
    drain_partition(sync_redis, db, settings, 0)
    after = check(sync_redis, db, settings)
    assert after.ok, after.drift
    with db.connect() as conn:
        rs, o = schema.reservations, schema.orders
        wanted = [held.id, other, due.id, fresh.id]
        statuses = dict(conn.execute(select(rs.c.id, rs.c.status)).all())
        orders = dict(conn.execute(select(o.c.id, o.c.status)).all())
    assert [statuses[r] for r in wanted] == ["committed", "released", "expired", "active"]
    assert (orders[order.id], orders[pending["id"]]) == ("pending", "confirmed")


async def test_reconcile_fix_after_a_loss_rebuilds_the_partition(
    engine: Engine, pg: DatabaseEngine, sync_redis: redis.Redis, settings: Settings
) -> None:
    """What /readyz, the sweep and the drain say to run after a loss (`reconcile --fix`)
    restores it, as `inventory rebuild` does: it answered 'use rebuild' and repaired nothing."""
    await workload(engine, rounds=4)
    drain_partition(sync_redis, pg, settings, 0)
    before = await snapshot(engine.redis, "inv:{p0}:stock")
    assert reconcile(sync_redis, pg, settings).ok  # (nothing lost yet: a clean check)
    sync_redis.flushall()

    found = reconcile(sync_redis, pg, settings)
    report = reconcile(sync_redis, pg, settings, fix=True)

    assert [(d.kind, d.right, d.repair) for d in found.drift] == [
        ("redis_lost_data", "database", "none")
    ]
    assert found.drift[0].database == {"stock_levels": 2, "active_reservations": 1}
    assert [d.kind for d in report.found or []] == ["redis_lost_data"]
    rebuilt = [r for r in report.repairs if r["kind"] == "redis_rebuilt"]
    assert [(r["partition"], r["stock_levels"], r["reservations"]) for r in rebuilt] == [(0, 2, 1)]
    assert report.ok, report.drift
    assert await snapshot(engine.redis, "inv:{p0}:stock") == before
    assert check(sync_redis, pg, settings).ok


async def test_a_partition_with_data_is_refused_unless_forced(
    engine: Engine, pg: DatabaseEngine, sync_redis: redis.Redis, settings: Settings
) -> None:
    await workload(engine, rounds=4)
    drain_partition(sync_redis, pg, settings, 0)
    untouched = await snapshot(engine.redis)

    with pytest.raises(RebuildRefused, match="already has data in Redis"):
        rebuild(sync_redis, pg, settings)
    assert await snapshot(engine.redis) == untouched

    await engine.redis.hset(K.live, "f" * 32, '{"owner":"x","lines":[]}')  # drift to replace
    result = rebuild(sync_redis, pg, settings, force=True)
    assert result.partitions[0]["reservations"] == 1
    assert check(sync_redis, pg, settings).ok

    await engine.reserve([LineRequest("sku-1", 1)], BUYER)  # not drained yet
    untouched = await snapshot(engine.redis)
    with pytest.raises(RebuildRefused, match="events the database has not applied"):
        rebuild(sync_redis, pg, settings, force=True)
    assert await snapshot(engine.redis) == untouched


async def test_new_events_sort_after_the_checkpoint_whatever_the_new_clock(
    engine: Engine, pg: DatabaseEngine, sync_redis: redis.Redis, settings: Settings
) -> None:
    # A replacement Redis whose clock is behind the old one's would hand out stream ids the
    # drain takes as already applied. The rebuild moves the stream's last id to the checkpoint.
    await workload(engine, rounds=2)
    drain_partition(sync_redis, pg, settings, 0)
    ahead = f"{await redis_now_ms(engine) + 3_600_000}-0"
    with pg.begin() as conn:
        conn.execute(schema.outbox_checkpoints.update().values(last_event_id=ahead))
    sync_redis.flushall()

    rebuild(sync_redis, pg, settings)
    await engine.reserve([LineRequest("sku-1", 1)], BUYER)

    # the ended records put back (their event, redis_restored) and the new reservation
    entries = cast(list[tuple[str, dict[str, str]]], sync_redis.xrange(K.outbox))
    assert [e["type"] for _, e in entries] == [
        "redis_restored",
        "reservation_created",
    ]
    assert drain_partition(sync_redis, pg, settings, 0).applied == 2
    assert check(sync_redis, pg, settings).ok


async def test_rebuild_holds_the_drain_locks(
    engine: Engine, pg: DatabaseEngine, sync_redis: redis.Redis, settings: Settings
) -> None:
    """A drainer holding a partition keeps a rebuild out (and so a rebuild keeps drainers out:
    no checkpoint moves while it reads the database and writes Redis)."""
    await workload(engine, rounds=2)
    drain_partition(sync_redis, pg, settings, 0)
    short = dataclasses.replace(settings, drain_lease_ms=300)
    before = await snapshot(engine.redis)
    lock = sync_redis.lock(K.drain_lock, timeout=5)
    assert lock.acquire()
    try:
        with pytest.raises(RuntimeError, match="a drainer held its lock"):
            rebuild(sync_redis, pg, short, force=True)
    finally:
        lock.release()
    assert await snapshot(engine.redis) == before  # refused before it wrote anything
    rebuild(sync_redis, pg, short, force=True)
    assert not sync_redis.exists(K.drain_lock)  # and let go after


def test_the_cli_rebuilds_once_and_refuses_twice(
    redis_server: RedisServer, clean_redis: None, pg_url: str, pg: DatabaseEngine
) -> None:
    env = {**os.environ, "REDIS_URL": redis_server.url, "DATABASE_URL": pg_url}
    own = Settings(redis_url=redis_server.url, database_url=pg_url)
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)

    def inventory(*args: str) -> tuple[int, dict[str, Any], str]:
        proc = run_cli(*args, env=env)
        return proc.returncode, last_json(proc), proc.stderr

    async def setup() -> None:
        async with Engine.from_settings(own) as engine:
            await engine.setup_product("p1", SYSTEM, price=100, stock={"main": 5})
            await engine.reserve([LineRequest("p1", 2)], BUYER)

    asyncio.run(setup())
    drain_partition(client, pg, own, 0)
    client.flushall()

    code, rebuilt, _ = inventory("rebuild", "--json")
    assert (code, rebuilt["ok"], rebuilt["partitions"][0]["reservations"]) == (0, True, 1)
    code, refused, err = inventory("rebuild", "--json")
    assert (code, refused["ok"]) == (2, False)
    assert "already has data" in refused["refused"]
    assert "refused" in err
    code, report, _ = inventory("reconcile", "--json")
    assert (code, report["ok"]) == (0, True)
    client.close()
