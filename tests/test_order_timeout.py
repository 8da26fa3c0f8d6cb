"""Pending direct orders time out (issue 14, item 3): a direct order still `pending` after
ORDER_PENDING_TTL is cancelled by the sweep with reason `timeout`, its units returned, with its
event and audit row. Orders that left `pending`, and orders of committed reservations, don't."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import pytest
import redis
from sqlalchemy import Engine as DatabaseEngine
from sqlalchemy import select

from engine.engine import Engine
from engine.invariants import check
from engine.keys import partition_keys
from engine.models import SYSTEM, LineRequest
from engine.settings import Settings
from engine.states import OrderStatus
from persistence import schema
from persistence.drain import drain_partition
from persistence.rebuild import rebuild
from tests.helpers import events
from tests.support import ALICE, add_product, levels

TTL_MS = 1_000


@pytest.fixture
async def timing(settings: Settings, clean_redis: None) -> AsyncIterator[Engine]:
    """An engine whose direct orders time out after 1 s."""
    e = Engine.from_settings(dataclasses.replace(settings, order_pending_ttl_ms=TTL_MS))
    await add_product(e, "sku-1", {"main": 10})
    yield e
    await e.aclose()


async def test_a_pending_direct_order_is_cancelled_with_reason_timeout(
    timing: Engine, db: DatabaseEngine, sync_redis: redis.Redis
) -> None:
    order = await timing.place_order([LineRequest("sku-1", 3)], ALICE)
    assert order.status == OrderStatus.PENDING
    assert await levels(timing, "sku-1") == {"main": (7, 0)}
    assert (await timing.expire()).timed_out == 0  # not yet
    await asyncio.sleep(TTL_MS / 1000 + 0.1)

    result = await timing.expire()

    assert result.timed_out == 1
    got = await timing.get_order(order.id, ALICE)
    assert got.status == OrderStatus.CANCELLED
    assert await levels(timing, "sku-1") == {"main": (10, 0)}  # its units back
    last = (await events(timing.redis))[-1]
    assert (last["type"], last["from"], last["to"]) == (
        "order_status_changed",
        "pending",
        "cancelled",
    )
    assert (last["reason"], last["actor"]) == ("timeout", "system")
    assert await timing.redis.hget(partition_keys(0).order(order.id), "reason") == "timeout"
    assert await timing.redis.zcard(partition_keys(0).pending) == 0
    assert (await timing.expire()).timed_out == 0  # once
    assert all(r.ok for r in await check(timing.redis, 1))

    # the durable record: the history and an audit row that say why
    drain_partition(sync_redis, db, timing.settings, 0)
    a = schema.audit_log
    with db.connect() as conn:
        audit = conn.execute(
            select(a.c.actor, a.c.new_value).where(
                a.c.object_id == order.id, a.c.action == "order_status_changed"
            )
        ).one()
        status = conn.scalar(select(schema.orders.c.status).where(schema.orders.c.id == order.id))
    assert audit.actor == "system"
    assert audit.new_value == {"status": "cancelled", "reason": "timeout"}
    assert status == "cancelled"


async def test_orders_that_left_pending_and_committed_reservations_are_kept(
    timing: Engine,
) -> None:
    confirmed = await timing.place_order([LineRequest("sku-1", 1)], ALICE)
    await timing.transition(confirmed.id, OrderStatus.CONFIRMED, SYSTEM)
    committed = await timing.commit(
        (await timing.reserve([LineRequest("sku-1", 2)], ALICE)).id, ALICE
    )
    assert committed.status == OrderStatus.PENDING
    await asyncio.sleep(TTL_MS / 1000 + 0.1)

    assert (await timing.expire()).timed_out == 0

    assert (await timing.get_order(confirmed.id, ALICE)).status == OrderStatus.CONFIRMED
    assert (await timing.get_order(committed.id, ALICE)).status == OrderStatus.PENDING
    assert await levels(timing, "sku-1") == {"main": (7, 0)}


async def test_a_direct_order_cancelled_by_hand_is_not_timed_out_again(timing: Engine) -> None:
    order = await timing.place_order([LineRequest("sku-1", 2)], ALICE)
    await timing.transition(order.id, OrderStatus.CANCELLED, SYSTEM)
    await asyncio.sleep(TTL_MS / 1000 + 0.1)
    assert (await timing.expire()).timed_out == 0
    assert await levels(timing, "sku-1") == {"main": (10, 0)}  # given back once


async def test_a_direct_order_across_partitions_times_out_whole(
    settings: Settings, clean_redis: None
) -> None:
    s = dataclasses.replace(settings, partitions=4, order_pending_ttl_ms=TTL_MS)
    async with Engine.from_settings(s) as engine:
        for product in ("sku-1", "sku-2"):  # partitions 2 and 0 of 4
            await add_product(engine, product, {"main": 5})
        order = await engine.place_order([LineRequest("sku-1", 2), LineRequest("sku-2", 1)], ALICE)
        assert len(order.lines) == 2
        await asyncio.sleep(TTL_MS / 1000 + 0.1)

        assert (await engine.expire()).timed_out == 1

        assert (await engine.get_order(order.id, ALICE)).status == OrderStatus.CANCELLED
        assert await levels(engine, "sku-1") == {"main": (5, 0)}
        assert await levels(engine, "sku-2") == {"main": (5, 0)}
        assert all(r.ok for r in await check(engine.redis, 4))


async def test_zero_means_never(settings: Settings, clean_redis: None) -> None:
    s = dataclasses.replace(settings, order_pending_ttl_ms=0)
    async with Engine.from_settings(s) as engine:
        await add_product(engine, "sku-1", {"main": 5})
        await engine.place_order([LineRequest("sku-1", 1)], ALICE)
        assert await engine.redis.zcard(partition_keys(0).pending) == 0
        assert (await engine.expire()).timed_out == 0


def test_the_setting_is_read_and_checked() -> None:
    assert Settings.from_env({"ORDER_PENDING_TTL": "60"}).order_pending_ttl_ms == 60_000
    assert Settings.from_env({}).order_pending_ttl_ms == 1_800_000
    with pytest.raises(ValueError, match="ORDER_PENDING_TTL"):
        Settings.from_env({"ORDER_PENDING_TTL": "-1"})


async def test_rebuild_puts_a_pending_direct_order_back_on_its_clock(
    timing: Engine, db: DatabaseEngine, sync_redis: redis.Redis
) -> None:
    order = await timing.place_order([LineRequest("sku-1", 4)], ALICE)
    drain_partition(sync_redis, db, timing.settings, 0)
    sync_redis.flushall()
    rebuild(sync_redis, db, timing.settings)
    assert await timing.redis.zcard(partition_keys(0).pending) == 1
    await asyncio.sleep(TTL_MS / 1000 + 0.1)
    assert (await timing.expire()).timed_out == 1
    assert (await timing.get_order(order.id, ALICE)).status == OrderStatus.CANCELLED
    assert await levels(timing, "sku-1") == {"main": (10, 0)}
