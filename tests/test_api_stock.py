"""Changing and deleting products, adjusting stock, warehouses: end to end through HTTP."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import Engine as DatabaseEngine
from sqlalchemy import text
from starlette.applications import Starlette

from engine.keys import partition_keys
from engine.models import CallContext, LineRequest
from engine.settings import Settings
from persistence.drain import drain_partition
from tests.api import bearer, data, err
from tests.catalog_support import create, snapshot, svc

BUYER = CallContext(actor="9", request_id="buyer")


@pytest.fixture
def staff(app: Starlette) -> dict[str, str]:
    return bearer(app, "1", staff=True)


async def drain(app_settings: Settings, sync_redis: redis.Redis, db: DatabaseEngine) -> None:
    await asyncio.to_thread(drain_partition, sync_redis, db, app_settings, 0)


async def test_patch_and_put(client: httpx.AsyncClient, staff: dict[str, str]) -> None:
    pid = (await create(client, staff, "EDIT-1", total_stock=3))["id"]
    url = f"/api/products/{pid}/"

    patched = await client.patch(url, json={"name": "  Renamed  "}, headers=staff)
    put = await client.put(
        url,
        json={"name": "Full", "sku": "EDIT-2", "price": "5.00", "description": "new"},
        headers=staff,
    )

    assert data(patched)["name"] == "Renamed"
    assert data(patched)["sku"] == "EDIT-1"
    after = data(await client.get(url))
    assert (after["name"], after["sku"], after["price"], after["description"]) == (
        "Full",
        "EDIT-2",
        "5.00",
        "new",
    )
    assert after["total_stock"] == 3
    assert data(put) == after


@pytest.mark.parametrize(
    ("method", "body", "status", "code"),
    [
        ("PUT", {"name": "only a name"}, 400, "invalid_input"),
        ("PATCH", {}, 400, "invalid_input"),
        ("PATCH", {"name": None}, 400, "invalid_input"),
        ("PATCH", {"price": "1.0001"}, 400, "invalid_input"),
        # a price in KWD, not in this USD product's currency
        ("PATCH", {"price": "1.001"}, 409, "price_currency_mismatch"),
        ("PATCH", {"currency": "EUR"}, 400, "invalid_input"),
        ("PATCH", {"sku": "TAKEN-1"}, 409, "sku_exists"),
    ],
)
async def test_bad_updates_change_nothing(
    client: httpx.AsyncClient,
    staff: dict[str, str],
    db: DatabaseEngine,
    sync_redis: redis.Redis,
    method: str,
    body: dict[str, Any],
    status: int,
    code: str,
) -> None:
    await create(client, staff, "TAKEN-1")
    pid = (await create(client, staff, "MINE-1", total_stock=2))["id"]
    before = snapshot(db, sync_redis)

    response = await client.request(method, f"/api/products/{pid}/", json=body, headers=staff)

    assert response.status_code == status
    assert err(response)["code"] == code
    assert snapshot(db, sync_redis) == before


@pytest.mark.parametrize(
    ("method", "body"),
    [
        ("PATCH", {"price": "6.00", "name": "Renamed"}),
        ("PUT", {"name": "Full", "sku": "NEW-SKU", "price": "7.00", "description": "new"}),
        ("PATCH", {"max_per_customer": 2}),
    ],
)
async def test_an_update_the_engine_refuses_changes_the_catalog_neither(
    client: httpx.AsyncClient,
    staff: dict[str, str],
    db: DatabaseEngine,
    sync_redis: redis.Redis,
    method: str,
    body: dict[str, Any],
) -> None:
    """Redis behind the database refuses the new price or limits (503): the catalog row the
    update had written first is put back as it was, so a refusal changes nothing."""
    pid = (await create(client, staff, "MINE-1", price="5.00", total_stock=2))["id"]
    sync_redis.set(partition_keys(0).behind, json.dumps({"partition": 0}))
    before = snapshot(db, sync_redis)

    response = await client.request(method, f"/api/products/{pid}/", json=body, headers=staff)

    assert response.status_code == 503, response.text
    assert err(response)["code"] == "redis_behind"
    assert snapshot(db, sync_redis)[1:] == before[1:]

    def fields(rows: Any) -> list[dict[str, Any]]:  # (but when the row was last edited)
        return [{k: v for k, v in r._asdict().items() if k != "updated_at"} for r in rows]

    assert fields(snapshot(db, sync_redis)[0]) == fields(before[0])
    sync_redis.delete(partition_keys(0).behind)
    shown = data(await client.get(f"/api/products/{pid}/"))
    assert (shown["sku"], shown["price"], shown["name"]) == ("MINE-1", "5.00", "Product MINE-1")


async def test_a_new_price_reaches_commit(
    client: httpx.AsyncClient, app: Starlette, staff: dict[str, str]
) -> None:
    pid = (await create(client, staff, "PRICE-1", price="10.00", total_stock=5))["id"]
    engine = svc(app).engine

    response = await client.patch(f"/api/products/{pid}/", json={"price": "12.50"}, headers=staff)
    reservation = await engine.reserve([LineRequest(str(pid), 2)], BUYER)
    order = await engine.commit(reservation.id, BUYER)

    assert data(response)["price"] == "12.50"
    assert [line.unit_price for line in order.lines] == [1250]
    assert order.total == 2500


async def test_delete_is_refused_while_in_use(
    client: httpx.AsyncClient,
    app: Starlette,
    app_settings: Settings,
    staff: dict[str, str],
    db: DatabaseEngine,
    sync_redis: redis.Redis,
) -> None:
    pid = (await create(client, staff, "DEL-1", total_stock=5))["id"]
    url = f"/api/products/{pid}/"
    engine = svc(app).engine

    async def refused(why: dict[str, int]) -> None:
        before = snapshot(db, sync_redis)
        response = await client.delete(url, headers=staff)
        assert response.status_code == 409
        assert err(response)["code"] == "product_in_use"
        assert err(response)["details"] == {"product": pid, **why}
        assert snapshot(db, sync_redis) == before

    reservation = await engine.reserve([LineRequest(str(pid), 2)], BUYER)
    await refused({"reserved": 2, "open_orders": 0, "waiting": 0})
    order = await engine.commit(reservation.id, BUYER)
    await refused({"reserved": 0, "open_orders": 1, "waiting": 0})  # still only in the outbox
    await drain(app_settings, sync_redis, db)
    await refused({"reserved": 0, "open_orders": 1, "waiting": 0})  # now in the database
    await engine.transition(order.id, "cancelled", BUYER)
    await refused({"reserved": 0, "open_orders": 1, "waiting": 0})  # the database: pending...
    await drain(app_settings, sync_redis, db)
    # a customer waiting for it: the entry outlived a deleted product, for WAITLIST_TTL
    held = await engine.reserve([LineRequest(str(pid), 5)], BUYER)
    waiter = CallContext("waiter-1", "req-w")
    await engine.join_waitlist(str(pid), 6, waiter)  # more than there is: waits on
    await engine.release(held.id, BUYER)
    await refused({"reserved": 0, "open_orders": 0, "waiting": 1})
    await engine.leave_waitlist(str(pid), waiter)

    deleted = await client.delete(url, headers=staff)  # ...until the cancel is drained

    assert data(deleted)["id"] == pid
    assert (await client.get(url)).status_code == 404
    assert data(await client.get("/api/products/")) == []
    assert (await client.delete(url, headers=staff)).status_code == 404
    assert (await client.patch(url, json={"name": "x"}, headers=staff)).status_code == 404
    again = await client.post(
        "/api/products/", json={"name": "n", "sku": "DEL-1", "price": "1.00"}, headers=staff
    )
    assert err(again)["code"] == "sku_exists"  # a deleted product keeps its sku
    # its units left sale with it: nobody can reserve a deleted product
    stock = await engine.get_stock(str(pid))
    assert (stock.available, stock.reserved) == (0, 0)
    late = await client.post(
        "/api/reservations/", json={"product": pid, "quantity": 1}, headers=bearer(app, "9")
    )
    assert late.status_code == 409
    assert err(late)["code"] == "insufficient_stock"
    await drain(app_settings, sync_redis, db)
    with db.connect() as conn:
        reasons = [r for (r,) in conn.execute(text("SELECT reason FROM stock_ledger"))]
    assert reasons.count("withdrawn") == 1


async def test_stock_adjustments(client: httpx.AsyncClient, staff: dict[str, str]) -> None:
    pid = (await create(client, staff, "ADJ-1", total_stock=5))["id"]
    url = f"/api/products/{pid}/stock/"

    received = await client.post(url, json={"quantity": 5, "reason": "received"}, headers=staff)
    damaged = await client.post(url, json={"quantity": -2, "reason": "damaged"}, headers=staff)

    assert data(received)["adjustment"] == {
        "warehouse": "main",
        "quantity": 5,
        "reason": "received",
        "available_before": 5,
        "available_after": 10,
    }
    assert data(damaged)["product"]["available_stock"] == 8


async def test_receiving_into_a_new_warehouse_adds_it(
    client: httpx.AsyncClient, staff: dict[str, str]
) -> None:
    pid = (await create(client, staff, "ADJ-2", total_stock=1))["id"]
    east = {"id": "east", "name": "East", "priority": 5}
    await client.post("/api/warehouses/", json=east, headers=staff)

    response = await client.post(
        f"/api/products/{pid}/stock/",
        json={"quantity": 4, "reason": "received", "warehouse": "east"},
        headers=staff,
    )

    levels = data(response)["product"]["warehouses"]
    assert [(w["warehouse"], w["priority"], w["available"]) for w in levels] == [
        ("main", 0, 1),
        ("east", 5, 4),
    ]


BAD_ADJUSTMENTS: list[tuple[dict[str, Any], int, str, str]] = [
    ({"quantity": -6, "reason": "lost"}, 409, "insufficient_stock", "requested 6, available 5"),
    ({"quantity": 0, "reason": "correction"}, 400, "invalid_input", "must not be zero"),
    ({"quantity": 1, "reason": "found"}, 400, "invalid_input", "'lost' or 'correction'"),
    ({"quantity": -1, "reason": "received"}, 400, "invalid_input", "must add units"),
    ({"quantity": 1, "reason": "lost"}, 400, "invalid_input", "must remove units"),
    ({"quantity": 1.5, "reason": "received"}, 400, "invalid_input", "valid integer"),
    ({"quantity": "1", "reason": "received"}, 400, "invalid_input", "valid integer"),
    ({"quantity": False, "reason": "correction"}, 400, "invalid_input", "valid integer"),
    ({"quantity": 10**10, "reason": "received"}, 400, "invalid_input", "less than or equal"),
    ({"quantity": 1, "reason": "received", "by": "me"}, 400, "invalid_input", "Extra inputs"),
    ({"quantity": 1, "reason": "received", "warehouse": "nope"}, 404, "warehouse_not_found",
     "'nope' does not exist"),
    ({"quantity": -1, "reason": "lost", "warehouse": "east"}, 404, "warehouse_not_found",
     "not stocked in warehouse 'east'"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "status", "code", "words"), BAD_ADJUSTMENTS)
async def test_bad_adjustments_change_nothing(
    client: httpx.AsyncClient,
    staff: dict[str, str],
    db: DatabaseEngine,
    sync_redis: redis.Redis,
    body: dict[str, Any],
    status: int,
    code: str,
    words: str,
) -> None:
    pid = (await create(client, staff, "ADJ-3", total_stock=5))["id"]
    await client.post("/api/warehouses/", json={"id": "east", "name": "East"}, headers=staff)
    before = snapshot(db, sync_redis)

    response = await client.post(f"/api/products/{pid}/stock/", json=body, headers=staff)

    assert response.status_code == status
    assert err(response)["code"] == code
    assert words in json.dumps(err(response))
    assert snapshot(db, sync_redis) == before


async def test_warehouses(
    client: httpx.AsyncClient, staff: dict[str, str], db: DatabaseEngine, sync_redis: redis.Redis
) -> None:
    made = await client.post(
        "/api/warehouses/", json={"id": "north-1", "name": "North", "priority": -3}, headers=staff
    )
    listed = await client.get("/api/warehouses/")
    before = snapshot(db, sync_redis)
    dup = await client.post("/api/warehouses/", json={"id": "north-1", "name": "X"}, headers=staff)
    bad = [
        await client.post("/api/warehouses/", json=body, headers=staff)
        for body in (
            {"id": "Has Caps", "name": "X"},
            {"id": "ok", "name": ""},
            {"id": "ok", "name": "X", "priority": 1.5},
            {"id": "ok", "name": "X", "extra": 1},
        )
    ]

    assert made.status_code == 201
    assert [(w["id"], w["priority"]) for w in data(listed)] == [("north-1", -3), ("main", 0)]
    assert dup.status_code == 409
    assert err(dup)["code"] == "warehouse_exists"
    assert [r.status_code for r in bad] == [400] * 4
    assert snapshot(db, sync_redis) == before
