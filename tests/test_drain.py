"""The outbox drained into the database: exactly once, in order, trimmed only after commit."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, cast

import redis
from sqlalchemy import Engine as DatabaseEngine
from sqlalchemy import select

from engine import outbox
from engine.engine import Engine
from engine.keys import partition_keys
from engine.models import LineRequest
from engine.settings import Settings
from persistence import schema
from persistence.apply import apply_batch
from persistence.drain import drain_partition
from tests.durable import (
    BUYER,
    count,
    duplicates,
    events_added,
    projection,
    redis_counters,
    workload,
)


async def test_drain_applies_every_event_once_and_trims(
    engine: Engine, db: DatabaseEngine, sync_redis: redis.Redis, settings: Settings
) -> None:
    await workload(engine, rounds=12)
    produced = events_added(sync_redis)
    small_batches = dataclasses.replace(settings, drain_batch=7)

    result = drain_partition(sync_redis, db, small_batches, 0)

    assert result.applied == produced
    assert result.dead == 0
    assert result.batches >= produced // 7
    assert await engine.redis.xlen(partition_keys(0).outbox) == 0
    assert count(db, schema.audit_log) == produced
    assert duplicates(db) == {"audit": 0, "ledger": 0}
    assert projection(db) == await redis_counters(engine)
    with db.connect() as conn:
        checkpoint = conn.scalar(select(schema.outbox_checkpoints.c.last_event_id))
        statuses = dict(
            conn.execute(
                select(schema.orders.c.id, schema.orders.c.status).order_by(schema.orders.c.id)
            ).all()
        )
    assert checkpoint == result.checkpoint
    assert sorted(set(statuses.values())) == ["cancelled", "confirmed", "pending"]


async def test_same_batch_applied_twice_changes_nothing(
    engine: Engine, db: DatabaseEngine, sync_redis: redis.Redis
) -> None:
    await workload(engine, rounds=8)
    events = await outbox.read(engine.redis, 0)
    with db.begin() as conn:
        first = apply_batch(conn, events)
    ledger, audit = count(db, schema.stock_ledger), count(db, schema.audit_log)

    with db.begin() as conn:
        second = apply_batch(conn, events)

    assert first.applied == len(events)
    assert second.applied == 0
    assert second.skipped == len(events)
    assert (count(db, schema.stock_ledger), count(db, schema.audit_log)) == (ledger, audit)
    assert audit == len(events)
    assert ledger == sum(len(e.movements) for e in events)


async def test_replay_after_a_lost_checkpoint_applies_nothing_twice(
    engine: Engine, db: DatabaseEngine, sync_redis: redis.Redis, settings: Settings
) -> None:
    # The checkpoint row is lost (say, restored from an old backup) while the stream still
    # holds the events: the event ids guard the replay.
    await workload(engine, rounds=4)
    events = await outbox.read(engine.redis, 0)
    with db.begin() as conn:
        apply_batch(conn, events)

    result = drain_partition(sync_redis, db, settings, 0)

    assert result.applied == 0
    assert result.skipped == len(events)
    assert count(db, schema.audit_log) == len(events)
    assert await engine.redis.xlen(partition_keys(0).outbox) == 0


async def test_a_poison_event_is_dead_lettered_and_the_rest_applied(
    engine: Engine, db: DatabaseEngine, sync_redis: redis.Redis, settings: Settings
) -> None:
    k = partition_keys(0)
    await workload(engine, rounds=3)
    # a bug wrote an event nobody can apply: a reservation_created without its lines
    poison: dict[Any, Any] = {
        "type": "reservation_created",
        "data": json.dumps({"type": "reservation_created"}),
    }
    poison_id = str(await engine.redis.xadd(k.outbox, poison))
    await engine.reserve([LineRequest("sku-1", 1)], BUYER)
    produced = events_added(sync_redis)

    result = drain_partition(sync_redis, db, settings, 0)

    assert result.dead == 1
    assert result.applied == produced - 1
    dead = cast(list[tuple[str, dict[str, str]]], await engine.redis.xrange(k.dead_letters))
    assert [d["event_id"] for _, d in dead] == [f"p0-{poison_id}"]
    assert "reservation" in dead[0][1]["error"]
    with db.connect() as conn:
        row = conn.execute(select(schema.dead_letters)).one()
    assert row.event_id == f"p0-{poison_id}"
    assert projection(db) == await redis_counters(engine)  # the event after it was applied
    assert await engine.redis.xlen(k.outbox) == 0


async def test_an_event_the_database_refuses_is_dead_lettered_alone(
    engine: Engine, db: DatabaseEngine, sync_redis: redis.Redis, settings: Settings
) -> None:
    # Well-formed but impossible: a status change of an order the database never saw
    # (its history row can't reference it). The bulk write fails; the slow path isolates it.
    k = partition_keys(0)
    await workload(engine, rounds=2)
    ghost: dict[str, Any] = {
        "type": "order_status_changed",
        "order": "f" * 32,
        "user": "x",
        "from": "pending",
        "to": "confirmed",
        "movements": [],
        "ts": 1,
        "actor": "x",
        "request_id": "",
    }
    await engine.redis.xadd(k.outbox, {"type": str(ghost["type"]), "data": json.dumps(ghost)})
    await engine.reserve([LineRequest("sku-1", 1)], BUYER)
    produced = events_added(sync_redis)

    result = drain_partition(sync_redis, db, settings, 0)

    assert (result.applied, result.dead) == (produced - 1, 1)
    assert count(db, schema.dead_letters) == 1
    assert count(db, schema.audit_log) == produced - 1


async def test_a_second_drainer_is_locked_out(
    engine: Engine, db: DatabaseEngine, sync_redis: redis.Redis, settings: Settings
) -> None:
    await workload(engine, rounds=2)
    lock = sync_redis.lock(partition_keys(0).drain_lock, timeout=10)
    assert lock.acquire(blocking=False)
    try:
        result = drain_partition(sync_redis, db, settings, 0)
    finally:
        lock.release()
    assert result.locked_out
    assert count(db, schema.audit_log) == 0
    assert await engine.redis.xlen(partition_keys(0).outbox) == events_added(sync_redis)
