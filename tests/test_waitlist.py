"""The waitlists (issue 14, item 4): a customer joins a sold-out product's waitlist; when units
come back (a release, an expiry, a cancellation, a stock adjustment up) the call that gives
them back hands them, in the same atomic step, to the head of the queue as a reservation of
its own; while anyone waits, those units are nobody else's (lua/wait.lua)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import Engine as DatabaseEngine
from sqlalchemy import select
from starlette.applications import Starlette

from engine import errors
from engine.engine import Engine
from engine.invariants import check
from engine.keys import partition_keys
from engine.models import CallContext, LineRequest, ProductLimits, StockReason
from engine.settings import Settings
from engine.states import OrderStatus
from persistence import schema
from persistence.drain import drain_partition
from persistence.reconcile import reconcile
from tests.api import bearer, data, err
from tests.catalog_support import create
from tests.helpers import events
from tests.support import STAFF, add_product, levels

A = CallContext("alice", "req-a")
B = CallContext("bob", "req-b")
C = CallContext("carol", "req-c")
D = CallContext("dave", "req-d")


@pytest.fixture
async def one(settings: Settings, clean_redis: None) -> AsyncIterator[Engine]:
    """An engine with 'drop': one unit."""
    e = Engine.from_settings(settings)
    await add_product(e, "drop", {"main": 1})
    yield e
    await e.aclose()


async def of_type(engine: Engine, etype: str) -> list[dict[str, Any]]:
    return [e for e in await events(engine.redis) if e["type"] == etype]


async def test_the_issues_walk(one: Engine) -> None:
    held = await one.reserve([LineRequest("drop", 1)], A)
    entry = await one.join_waitlist("drop", 1, B)
    assert (entry.position, entry.quantity, entry.owner) == (1, 1, "bob")
    with pytest.raises(errors.InsufficientStock):
        await one.reserve([LineRequest("drop", 1)], C)

    await one.release(held.id, A)  # the unit comes back: bob holds it, in the same step

    handed = await one.get_reservation(entry.id, B)
    assert (handed.status, handed.source, handed.quantity) == ("active", "waitlist", 1)
    assert await levels(one, "drop") == {"main": (0, 1)}
    with pytest.raises(errors.InsufficientStock):
        await one.reserve([LineRequest("drop", 1)], C)
    created = (await of_type(one, "reservation_created"))[-1]
    assert (created["source"], created["entry"], created["user"]) == ("waitlist", entry.id, "bob")
    assert await one.waitlist_entries(B) == []
    assert all(r.ok for r in await check(one.redis, 1))


async def test_an_expired_hand_off_goes_to_the_next_in_line_or_is_free(
    settings: Settings, clean_redis: None
) -> None:
    async with Engine.from_settings(settings) as engine:
        await add_product(engine, "drop", {"main": 1})
        held = await engine.reserve([LineRequest("drop", 1)], A)
        b = await engine.join_waitlist("drop", 1, B, ttl_ms=100)
        c = await engine.join_waitlist("drop", 1, C, ttl_ms=100)
        assert (b.position, c.position) == (1, 2)
        assert [e.position for e in await engine.waitlist_entries(C)] == [2]
        await engine.release(held.id, A)
        assert (await engine.get_reservation(b.id, B)).status == "active"
        assert [e.position for e in await engine.waitlist_entries(C)] == [1]

        await asyncio.sleep(0.15)  # bob walks away: his hand-off expires
        assert (await engine.expire()).expired == 1
        assert (await engine.get_reservation(c.id, C)).source == "waitlist"  # carol's now
        await asyncio.sleep(0.15)
        await engine.expire()  # and carol walks away too: nobody waits, the unit is free
        assert await levels(engine, "drop") == {"main": (1, 0)}
        made = await engine.reserve([LineRequest("drop", 1)], D)
        assert made.source == "request"
        assert all(r.ok for r in await check(engine.redis, 1))


async def test_every_way_units_come_back_hands_them_off(one: Engine) -> None:
    # a cancelled order
    order = await one.place_order([LineRequest("drop", 1)], A)
    b = await one.join_waitlist("drop", 1, B)
    await one.transition(order.id, OrderStatus.CANCELLED, A)
    assert (await one.get_reservation(b.id, B)).source == "waitlist"
    # a stock adjustment up, for a wait of 2, not split
    c = await one.join_waitlist("drop", 2, C)
    await one.adjust_stock("drop", {"main": 1}, StockReason.RECEIVED, STAFF)
    assert await one.waitlist_entries(C) != []  # 1 unit: carol waits on, it is held back
    with pytest.raises(errors.InsufficientStock):
        await one.reserve([LineRequest("drop", 1)], D)
    await one.adjust_stock("drop", {"main": 1}, StockReason.RECEIVED, STAFF)
    assert (await one.get_reservation(c.id, C)).quantity == 2
    # a commit of the hand-off: an order like any
    committed = await one.commit(b.id, B)
    assert committed.lines[0].quantity == 1
    assert await levels(one, "drop") == {"main": (0, 2)}
    assert all(r.ok for r in await check(one.redis, 1))


async def test_partial_entries_take_what_there_is_and_the_line_is_first_come_first_served(
    one: Engine,
) -> None:
    held = await one.reserve([LineRequest("drop", 1)], A)
    await one.adjust_stock("drop", {"main": 2}, StockReason.RECEIVED, STAFF)
    await one.reserve([LineRequest("drop", 2)], D)  # sold out again
    b = await one.join_waitlist("drop", 3, B, partial=True)
    c = await one.join_waitlist("drop", 1, C)
    await one.release(held.id, A)  # one unit: bob, first in line, takes it (he allows a part)
    assert (await one.get_reservation(b.id, B)).quantity == 1
    assert [e.id for e in await one.waitlist_entries(C)] == [c.id]


async def test_leaving_limits_and_expiry_of_entries(settings: Settings, clean_redis: None) -> None:
    short = dataclasses.replace(settings, waitlist_ttl_ms=100)
    async with Engine.from_settings(short) as engine:
        await add_product(engine, "drop", {"main": 1})
        await engine.setup_product("drop", STAFF, price=250, limits=ProductLimits(max_per_order=2))
        held = await engine.reserve([LineRequest("drop", 1)], A)
        with pytest.raises(errors.LimitExceeded):
            await engine.join_waitlist("drop", 3, B)
        b = await engine.join_waitlist("drop", 1, B)
        with pytest.raises(errors.AlreadyWaiting):
            await engine.join_waitlist("drop", 1, B)
        left = await engine.leave_waitlist("drop", B)
        assert left.id == b.id
        with pytest.raises(errors.NotWaiting):
            await engine.leave_waitlist("drop", B)
        await engine.join_waitlist("drop", 1, C)
        await asyncio.sleep(0.15)
        await engine.expire()  # carol's entry ran out
        assert await engine.waitlist_entries(C) == []
        reasons = [e["reason"] for e in await of_type(engine, "waitlist_left")]
        assert reasons == ["left", "expired"]
        await engine.release(held.id, A)  # nobody waits: the unit is anyone's
        assert await levels(engine, "drop") == {"main": (1, 0)}
        assert await engine.redis.hgetall(partition_keys(0).held) == {}


async def test_fifty_concurrent_buyers_and_a_queue_sell_each_unit_once(
    settings: Settings, clean_redis: None
) -> None:
    async with Engine.from_settings(settings) as engine:
        await add_product(engine, "drop", {"main": 5})
        holders = [await engine.reserve([LineRequest("drop", 1)], CallContext(f"h{i}"))
                   for i in range(5)]  # fmt: skip
        waiting = [await engine.join_waitlist("drop", 1, CallContext(f"w{i}")) for i in range(5)]
        buyers = [engine.reserve([LineRequest("drop", 1)], CallContext(f"b{i}")) for i in range(50)]
        releases = [engine.release(h.id, CallContext(f"h{i}")) for i, h in enumerate(holders)]
        got = await asyncio.gather(*buyers, *releases, return_exceptions=True)
        assert all(isinstance(r, errors.InsufficientStock) for r in got[:50])
        for i, w in enumerate(waiting):
            assert (await engine.get_reservation(w.id, CallContext(f"w{i}"))).status == "active"
        assert await levels(engine, "drop") == {"main": (0, 5)}
        assert all(r.ok for r in await check(engine.redis, 1))


async def test_the_record_has_each_hand_off_and_the_queue_moves(
    one: Engine, db: DatabaseEngine, sync_redis: redis.Redis
) -> None:
    held = await one.reserve([LineRequest("drop", 1)], A)
    b = await one.join_waitlist("drop", 1, B)
    await one.release(held.id, A)
    drain_partition(sync_redis, db, one.settings, 0)
    a, r = schema.audit_log, schema.reservations
    with db.connect() as conn:
        actions = conn.execute(
            select(a.c.action, a.c.object_type).where(a.c.object_id == b.id).order_by(a.c.id)
        ).all()
        source = conn.scalar(select(r.c.source).where(r.c.id == b.id))
    assert [tuple(x) for x in actions] == [
        ("waitlist_joined", "waitlist_entry"),
        ("reservation_created", "reservation"),
    ]
    assert source == "waitlist"


# -- over HTTP -----------------------------------------------------------------------------------


async def test_the_waitlist_over_http(
    app: Starlette, client: httpx.AsyncClient, db: DatabaseEngine
) -> None:
    staff = bearer(app, "1", staff=True)
    made = await create(client, staff, "WAIT-1", total_stock=1)
    pid = made["id"]
    first, second = bearer(app, "11"), bearer(app, "12")
    held = await client.post("/api/reservations/", json={"product": pid, "quantity": 1},
                             headers=first)  # fmt: skip
    assert held.status_code == 201
    url = f"/api/products/{pid}/waitlist/"

    joined = await client.post(url, json={"quantity": 1}, headers=second)
    assert joined.status_code == 202, joined.text
    body = data(joined)
    assert body["position"] == 1
    assert (body["entry"]["product"], body["entry"]["quantity"]) == (pid, 1)
    again = await client.post(url, json={"quantity": 1}, headers=second)
    assert (again.status_code, err(again)["code"]) == (409, "already_waiting")
    mine = await client.get("/api/waitlist/", headers=second)
    assert [e["position"] for e in data(mine)] == [1]
    assert (mine.json()["next"], mine.json()["previous"]) == (None, None)  # a list's cursors

    released = await client.delete(f"/api/reservations/{data(held)['id']}/", headers=first)
    assert released.status_code == 200
    entry_id = body["entry"]["id"]
    handed = await client.get(f"/api/reservations/{entry_id}/", headers=second)
    assert handed.status_code == 200, handed.text
    assert (data(handed)["status"], data(handed)["source"]) == ("active", "waitlist")
    extended = await client.post(f"/api/reservations/{entry_id}/extend/", headers=second)
    assert extended.status_code == 200, extended.text  # a write's answer says so too
    assert data(extended)["source"] == "waitlist"
    assert data(await client.get("/api/waitlist/", headers=second)) == []

    left = await client.delete(url, headers=second)
    assert (left.status_code, err(left)["code"]) == (404, "not_waiting")
    for nowhere in ("99999", "abc"):  # no such product: so says leaving, as joining does
        gone = await client.delete(f"/api/products/{nowhere}/waitlist/", headers=second)
        assert (gone.status_code, err(gone)["code"]) == (404, "product_not_found")
    free = await create(client, staff, "WAIT-2", total_stock=3)
    in_stock = await client.post(
        f"/api/products/{free['id']}/waitlist/", json={"quantity": 1}, headers=second
    )
    assert (in_stock.status_code, err(in_stock)["code"]) == (409, "in_stock")
    bad = await client.post(url, json={"quantity": 0}, headers=second)
    assert bad.status_code == 400
    assert (await client.post(url, json={"quantity": 1})).status_code == 401


async def test_reconcile_finds_nothing_to_mend_after_hand_offs(
    one: Engine, db: DatabaseEngine, sync_redis: redis.Redis
) -> None:
    held = await one.reserve([LineRequest("drop", 1)], A)
    b = await one.join_waitlist("drop", 1, B)
    await one.release(held.id, A)
    drain_partition(sync_redis, db, one.settings, 0)
    report = reconcile(sync_redis, db, one.settings)
    assert report.ok, report.drift
    await one.extend(b.id, B)  # the hand-off's first use makes its record
    drain_partition(sync_redis, db, one.settings, 0)
    assert reconcile(sync_redis, db, one.settings).ok


async def test_a_cart_part_given_back_serves_its_partitions_waitlist(
    settings: Settings, clean_redis: None
) -> None:
    s = dataclasses.replace(settings, partitions=4)
    async with Engine.from_settings(s) as engine:
        for product in ("sku-1", "sku-2"):  # partitions 2 and 0 of 4
            await add_product(engine, product, {"main": 1})
        cart = await engine.reserve([LineRequest("sku-1", 1), LineRequest("sku-2", 1)], A)
        waiting = await engine.join_waitlist("sku-1", 1, B)  # sku-1 lives in partition 2
        await engine.release(cart.id, A)  # the home decides, the part in partition 2 follows
        handed = await engine.get_reservation(waiting.id, B)
        assert (handed.source, handed.lines[0].product) == ("waitlist", "sku-1")
        assert await levels(engine, "sku-2") == {"main": (1, 0)}
        assert all(r.ok for r in await check(engine.redis, 4))


async def test_a_join_while_units_are_there_is_refused_so_none_are_held_back(
    settings: Settings, clean_redis: None
) -> None:
    # A waitlist is for a sold-out product. Joining one whose units are there, for more than
    # there are, used to succeed — and hold those units back from everyone for as long as the
    # entry waited (a million asked for: the product stopped selling for WAITLIST_TTL).
    async with Engine.from_settings(settings) as engine:
        await add_product(engine, "drop", {"main": 3})
        await engine.reserve([LineRequest("drop", 1)], A)
        for quantity, partial in ((1_000_000, False), (5, False), (5, True), (2, False)):
            with pytest.raises(errors.EngineError) as refused:
                await engine.join_waitlist("drop", quantity, B, partial=partial)
            assert (refused.value.code, refused.value.details()["available"]) == ("in_stock", 2)
        assert await engine.waitlist_entries(B) == []
        made = await engine.reserve([LineRequest("drop", 2)], C)  # the units sell as ever
        assert made.source == "request"
        entry = await engine.join_waitlist("drop", 1_000_000, B)  # sold out: it may wait
        assert entry.position == 1


async def test_a_part_handed_off_keeps_the_product_s_increment_and_minimum(
    settings: Settings, clean_redis: None
) -> None:
    # sold in pairs (at least 2, by 2): a partial entry for 4 is handed 2 of 3 units that
    # came back, not 3, and nothing of 1 — it was handed 1 unit, an order no one could place
    async with Engine.from_settings(settings) as engine:
        await add_product(engine, "pairs", {"main": 4})
        limits = ProductLimits(min_quantity=2, quantity_increment=2)
        await engine.setup_product("pairs", STAFF, price=250, limits=limits)
        first = await engine.reserve([LineRequest("pairs", 2)], A)
        second = await engine.reserve([LineRequest("pairs", 2)], C)
        entry = await engine.join_waitlist("pairs", 4, B, partial=True)

        await engine.adjust_stock("pairs", {"main": 1}, StockReason.RECEIVED, STAFF)
        assert [e.id for e in await engine.waitlist_entries(B)] == [entry.id]  # 1: waits on
        await engine.release(first.id, A)  # 3 there now: a part of 2
        handed = await engine.get_reservation(entry.id, B)
        assert (handed.source, handed.quantity) == ("waitlist", 2)
        assert await levels(engine, "pairs") == {"main": (1, 4)}
        await engine.release(second.id, C)
        assert await levels(engine, "pairs") == {"main": (3, 2)}  # nobody waits: anyone's


async def test_a_hand_off_keeps_the_product_s_limits_as_they_are_now(
    settings: Settings, clean_redis: None
) -> None:
    # max_per_order lowered after they joined: bob's entry for 2 (not to be split) can't be
    # handed whole and leaves, over the limit; carol's partial one is handed 1, not 2 (both
    # were handed 2, an order the product no longer allows). A partial entry is handed what
    # max_per_customer leaves its customer (dave holds 1, the limit now 2: handed 1 of the 2
    # he asked for, where his entry left the waitlist)
    async with Engine.from_settings(settings) as engine:
        await add_product(engine, "drop", {"main": 6})
        everything = await engine.reserve([LineRequest("drop", 6)], A)
        await engine.join_waitlist("drop", 2, B)
        carol = await engine.join_waitlist("drop", 2, C, partial=True)
        limits = ProductLimits(max_per_order=1)
        await engine.setup_product("drop", STAFF, price=250, limits=limits)

        await engine.release(everything.id, A)

        assert await engine.waitlist_entries(B) == []
        left = [(e["user"], e["reason"]) for e in await of_type(engine, "waitlist_left")]
        assert left == [("bob", "limit_exceeded")]
        assert (await engine.get_reservation(carol.id, C)).quantity == 1
        assert await levels(engine, "drop") == {"main": (5, 1)}

    async with Engine.from_settings(settings) as engine:
        await add_product(engine, "cap", {"main": 3})
        await engine.setup_product(
            "cap", STAFF, price=250, limits=ProductLimits(max_per_customer=3)
        )
        mine = await engine.reserve([LineRequest("cap", 1)], D)
        theirs = await engine.reserve([LineRequest("cap", 2)], A)
        dave = await engine.join_waitlist("cap", 2, D, partial=True)
        await engine.setup_product(
            "cap", STAFF, price=250, limits=ProductLimits(max_per_customer=2)
        )

        await engine.release(theirs.id, A)

        handed = await engine.get_reservation(dave.id, D)
        assert (handed.source, handed.quantity) == ("waitlist", 1)
        assert mine.quantity == 1
        assert await levels(engine, "cap") == {"main": (1, 2)}
