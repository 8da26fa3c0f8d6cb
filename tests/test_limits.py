"""What one customer may buy (issue 14, items 1 and 2): a product's purchase limits
(`max_per_customer`, `min_quantity`, `quantity_increment`, `max_per_order`) and the cap on
live reservations per customer (MAX_LIVE_RESERVATIONS_PER_CUSTOMER), each checked inside the
reserve and place-order functions in the same atomic step as the stock (lua/limits.lua)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import Engine as DatabaseEngine
from starlette.applications import Starlette

from engine import errors
from engine.engine import Engine
from engine.invariants import check
from engine.keys import partition_keys, partition_of
from engine.models import CallContext, LineRequest, ProductLimits
from engine.settings import Settings
from engine.states import OrderStatus
from persistence.drain import drain_partition
from persistence.rebuild import rebuild
from tests.api import bearer, data, err
from tests.catalog_support import create, svc
from tests.helpers import events
from tests.support import ALICE, BOB, STAFF, add_product, levels

TWO_EACH = ProductLimits(max_per_customer=2)


def buyer(n: int) -> CallContext:
    return CallContext(actor=f"buyer-{n}", request_id=f"req-{n}")


async def limit(engine: Engine, product: str, limits: ProductLimits) -> None:
    """Set `product`'s limits (its price and warehouses kept)."""
    stock = await engine.get_stock(product)
    await engine.setup_product(product, STAFF, price=stock.price, limits=limits)


async def held(engine: Engine, partition: int = 0) -> dict[str, str]:
    """The partition's counts of what each customer holds (lua/limits.lua)."""
    found = await engine.redis.hgetall(partition_keys(partition).held)
    return {str(k): str(v) for k, v in found.items()}


@pytest.fixture
async def drop(settings: Settings, clean_redis: None) -> AsyncIterator[Engine]:
    """An engine with 'drop' (100 units, 2 per customer) and 'plain' (no limits)."""
    e = Engine.from_settings(settings)
    await add_product(e, "drop", {"main": 100})
    await add_product(e, "plain", {"main": 100})
    await limit(e, "drop", TWO_EACH)
    yield e
    await e.aclose()


# -- max_per_customer --------------------------------------------------------------------------


async def test_fifty_concurrent_reservations_of_one_customer_get_exactly_the_limit(
    drop: Engine,
) -> None:
    got = await asyncio.gather(
        *(drop.reserve([LineRequest("drop", 1)], ALICE) for _ in range(50)),
        *(drop.reserve([LineRequest("drop", 1)], BOB) for _ in range(3)),
        return_exceptions=True,
    )
    alice, bob = got[:50], got[50:]
    made = [r for r in alice if not isinstance(r, BaseException)]
    assert len(made) == 2
    refused = [r for r in alice if isinstance(r, errors.LimitExceeded)]
    assert len(refused) == 48
    assert {(r.limit, r.held, r.requested) for r in refused} == {(2, 2, 1)}
    assert sum(not isinstance(r, BaseException) for r in bob) == 2  # others unaffected
    assert await levels(drop, "drop") == {"main": (96, 4)}
    assert await held(drop) == {"u|drop|alice": "2", "u|drop|bob": "2", "n|alice": "2",
                                "n|bob": "2"}  # fmt: skip
    assert all(r.ok for r in await check(drop.redis, 1))


async def test_the_limit_holds_across_reservations_commits_and_direct_orders(
    drop: Engine,
) -> None:
    reservation = await drop.reserve([LineRequest("drop", 1)], ALICE)
    order = await drop.commit(reservation.id, ALICE)  # still held: in an order
    with pytest.raises(errors.LimitExceeded):
        await drop.reserve([LineRequest("drop", 2)], ALICE)
    direct = await drop.place_order([LineRequest("drop", 1)], ALICE)
    with pytest.raises(errors.LimitExceeded) as refused:
        await drop.place_order([LineRequest("drop", 1)], ALICE)
    assert refused.value.details() == {
        "product": "drop",
        "rule": "max_per_customer",
        "limit": 2,
        "held": 2,
        "requested": 1,
    }
    with pytest.raises(errors.LimitExceeded):  # a cart with another product: all or nothing
        await drop.reserve([LineRequest("plain", 1), LineRequest("drop", 1)], ALICE)
    assert await levels(drop, "plain") == {"main": (100, 0)}

    # a confirmed and delivered order still counts; a cancelled one gives its units back
    for status in ("confirmed", "processing", "shipped", "delivered"):
        await drop.transition(order.id, status, STAFF)
    await drop.transition(direct.id, OrderStatus.CANCELLED, ALICE)
    assert await held(drop) == {"u|drop|alice": "1"}
    again = await drop.reserve([LineRequest("drop", 1)], ALICE)
    with pytest.raises(errors.LimitExceeded):
        await drop.reserve([LineRequest("drop", 1)], ALICE)

    # a release gives it back; so does an expiry
    await drop.release(again.id, ALICE)
    short = await drop.reserve([LineRequest("drop", 1)], ALICE, ttl_ms=100)
    await asyncio.sleep(0.15)
    assert (await drop.expire()).expired == 1
    assert short.id
    await drop.reserve([LineRequest("drop", 1)], ALICE)
    assert await held(drop) == {"u|drop|alice": "2", "n|alice": "1"}
    assert all(r.ok for r in await check(drop.redis, 1))


async def test_a_refusal_changes_nothing(drop: Engine) -> None:
    await drop.reserve([LineRequest("drop", 2)], ALICE)
    before = (await drop.redis.xlen(partition_keys(0).outbox), await held(drop))
    with pytest.raises(errors.LimitExceeded):
        await drop.reserve([LineRequest("drop", 1)], ALICE)
    assert (await drop.redis.xlen(partition_keys(0).outbox), await held(drop)) == before
    assert await levels(drop, "drop") == {"main": (98, 2)}


async def test_a_limit_set_later_counts_from_then_and_removed_stops_counting(
    settings: Settings, clean_redis: None
) -> None:
    async with Engine.from_settings(settings) as engine:
        await add_product(engine, "late", {"main": 10})
        before = await engine.reserve([LineRequest("late", 3)], ALICE)
        await limit(engine, "late", TWO_EACH)
        counted = await engine.reserve([LineRequest("late", 2)], ALICE)
        with pytest.raises(errors.LimitExceeded):
            await engine.reserve([LineRequest("late", 1)], ALICE)
        await engine.release(before.id, ALICE)  # it counted nothing, so gives nothing back
        assert (await held(engine))["u|late|alice"] == "2"
        await limit(engine, "late", ProductLimits())  # removed
        await engine.reserve([LineRequest("late", 5)], ALICE)  # not counted
        await engine.release(counted.id, ALICE)  # gives back what it counted
        assert "u|late|alice" not in await held(engine)
        assert (await engine.get_stock("late")).limits == ProductLimits()


# -- the quantity rules --------------------------------------------------------------------------


async def test_minimum_increment_and_per_order_maximum(drop: Engine) -> None:
    rules = ProductLimits(min_quantity=2, quantity_increment=2, max_per_order=4)
    await limit(drop, "plain", rules)
    with pytest.raises(errors.InvalidQuantity) as low:
        await drop.reserve([LineRequest("plain", 1)], ALICE)
    assert low.value.details() == {
        "product": "plain",
        "rule": "min_quantity",
        "min_quantity": 2,
        "requested": 1,
    }
    with pytest.raises(errors.InvalidQuantity) as odd:
        await drop.place_order([LineRequest("plain", 3)], ALICE)
    assert odd.value.details()["rule"] == "quantity_increment"
    with pytest.raises(errors.LimitExceeded) as big:
        await drop.reserve([LineRequest("plain", 6)], ALICE)
    assert big.value.details() == {
        "product": "plain",
        "rule": "max_per_order",
        "limit": 4,
        "held": 0,
        "requested": 6,
    }
    # the units of a product are counted over its lines (two warehouses' lines are one 4)
    made = await drop.reserve([LineRequest("plain", 2), LineRequest("plain", 2)], ALICE)
    assert sum(line.quantity for line in made.lines) == 4
    assert await levels(drop, "plain") == {"main": (96, 4)}
    assert "u|plain|alice" not in await held(drop)  # no max_per_customer: nothing counted


async def test_limits_are_checked_when_set(drop: Engine) -> None:
    with pytest.raises(errors.InvalidInput):
        await limit(drop, "plain", ProductLimits(max_per_customer=0))
    with pytest.raises(errors.InvalidInput):
        await limit(drop, "plain", ProductLimits(min_quantity=-1))
    assert (await drop.get_stock("plain")).limits == ProductLimits()


# -- MAX_LIVE_RESERVATIONS_PER_CUSTOMER --------------------------------------------------------


async def test_the_live_reservation_cap(settings: Settings, clean_redis: None) -> None:
    capped = dataclasses.replace(settings, max_live_reservations_per_customer=3)
    async with Engine.from_settings(capped) as engine:
        await add_product(engine, "sku-1", {"main": 100})
        got = await asyncio.gather(
            *(engine.reserve([LineRequest("sku-1", 1)], ALICE, ttl_ms=200) for _ in range(20)),
            return_exceptions=True,
        )
        made = [r for r in got if not isinstance(r, BaseException)]
        assert len(made) == 3
        refused = [r for r in got if isinstance(r, errors.TooManyReservations)]
        assert len(refused) == 17
        assert refused[0].details() == {"limit": 3, "live": 3}
        await engine.reserve([LineRequest("sku-1", 1)], BOB)  # another customer's own count
        await engine.place_order([LineRequest("sku-1", 1)], ALICE)  # an order is not capped

        await engine.release(made[0].id, ALICE)  # a release frees a place
        freed = await engine.reserve([LineRequest("sku-1", 1)], ALICE)
        await engine.commit(freed.id, ALICE)  # so does a commit
        await engine.reserve([LineRequest("sku-1", 1)], ALICE)
        await asyncio.sleep(0.25)  # and an expiry, at the next reserve call
        for _ in range(2):
            await engine.reserve([LineRequest("sku-1", 1)], ALICE)
        with pytest.raises(errors.TooManyReservations):
            await engine.reserve([LineRequest("sku-1", 1)], ALICE)
        assert (await held(engine))["n|alice"] == "3"
        assert all(r.ok for r in await check(engine.redis, 1))


async def test_zero_means_no_cap(settings: Settings, clean_redis: None) -> None:
    free = dataclasses.replace(settings, max_live_reservations_per_customer=0)
    async with Engine.from_settings(free) as engine:
        await add_product(engine, "sku-1", {"main": 100})
        for _ in range(25):
            await engine.reserve([LineRequest("sku-1", 1)], ALICE)
        assert await held(engine) == {}


def test_the_setting_is_read_and_checked() -> None:
    assert Settings.from_env({}).max_live_reservations_per_customer == 20
    got = Settings.from_env({"MAX_LIVE_RESERVATIONS_PER_CUSTOMER": "0"})
    assert got.max_live_reservations_per_customer == 0
    with pytest.raises(ValueError, match="MAX_LIVE_RESERVATIONS_PER_CUSTOMER"):
        Settings.from_env({"MAX_LIVE_RESERVATIONS_PER_CUSTOMER": "-1"})


# -- carts across partitions ---------------------------------------------------------------------


async def test_a_cart_across_partitions_counts_in_each_products_partition(
    settings: Settings, clean_redis: None
) -> None:
    s = dataclasses.replace(settings, partitions=4, max_live_reservations_per_customer=1)
    async with Engine.from_settings(s) as engine:
        parts = {partition_of(p, 4): p for p in ("sku-1", "sku-2")}  # partitions 2 and 0
        assert len(parts) == 2
        for product in parts.values():
            await add_product(engine, product, {"main": 10})
            await limit(engine, product, TWO_EACH)
        cart = await engine.reserve([LineRequest("sku-1", 2), LineRequest("sku-2", 1)], ALICE)
        # the cart is one live reservation, counted in its home
        assert await held(engine, 0) == {"u|sku-2|alice": "1", "n|alice": "1"}
        assert await held(engine, 2) == {"u|sku-1|alice": "2"}
        with pytest.raises(errors.TooManyReservations):
            await engine.reserve([LineRequest("sku-2", 1)], ALICE)
        with pytest.raises(errors.LimitExceeded):
            await engine.place_order([LineRequest("sku-1", 1), LineRequest("sku-2", 1)], ALICE)

        order = await engine.commit(cart.id, ALICE)
        assert await held(engine, 0) == {"u|sku-2|alice": "1"}  # in the order now
        assert await held(engine, 2) == {"u|sku-1|alice": "2"}
        await engine.transition(order.id, OrderStatus.CANCELLED, ALICE)
        assert await held(engine, 0) == {}
        assert await held(engine, 2) == {}

        released = await engine.reserve([LineRequest("sku-1", 1), LineRequest("sku-2", 2)], ALICE)
        await engine.release(released.id, ALICE)
        assert [await held(engine, p) for p in (0, 2)] == [{}, {}]
        assert all(r.ok for r in await check(engine.redis, 4))


# -- the durable record ----------------------------------------------------------------------------


async def test_rebuild_counts_what_each_customer_holds_again(
    drop: Engine, db: DatabaseEngine, sync_redis: redis.Redis
) -> None:
    order = await drop.place_order([LineRequest("drop", 1)], ALICE)
    for status in ("confirmed", "processing", "shipped", "delivered"):
        await drop.transition(order.id, status, STAFF)  # delivered: Redis lets it go later
    live = await drop.reserve([LineRequest("drop", 1), LineRequest("plain", 1)], ALICE)
    await drop.reserve([LineRequest("drop", 2)], BOB)
    cancelled = await drop.place_order([LineRequest("drop", 1)], CallContext("carol"))
    await drop.transition(cancelled.id, OrderStatus.CANCELLED, STAFF)
    before = await held(drop)
    drain_partition(sync_redis, db, drop.settings, 0)
    sync_redis.flushall()

    rebuild(sync_redis, db, drop.settings)

    assert await held(drop) == before
    assert (await drop.get_stock("drop")).limits == TWO_EACH
    with pytest.raises(errors.LimitExceeded):
        await drop.reserve([LineRequest("drop", 1)], ALICE)
    await drop.release(live.id, ALICE)  # the restored reservation gives back what it counted
    assert (await held(drop)).get("u|drop|alice") == "1"
    assert all(r.ok for r in await check(drop.redis, 1))


# -- over HTTP -----------------------------------------------------------------------------------


@pytest.fixture
def staff(app: Starlette) -> dict[str, str]:
    return bearer(app, "1", staff=True)


async def test_limits_over_http(
    app: Starlette, client: httpx.AsyncClient, staff: dict[str, str]
) -> None:
    made = await create(client, staff, "DROP-1", total_stock=10, max_per_customer=1, min_quantity=1)
    assert (made["max_per_customer"], made["min_quantity"]) == (1, 1)
    assert made["quantity_increment"] is None
    assert made["max_per_order"] is None
    url = f"/api/products/{made['id']}/"
    tag = (await client.get(url)).headers["etag"]

    patched = await client.patch(
        url, json={"max_per_order": 1, "min_quantity": None}, headers=staff
    )
    assert patched.status_code == 200, patched.text
    assert (data(patched)["max_per_order"], data(patched)["min_quantity"]) == (1, None)
    assert data(patched)["max_per_customer"] == 1  # kept
    read = await client.get(url)
    assert data(read)["max_per_order"] == 1
    assert read.headers["etag"] != tag

    buyer = bearer(app, "7")
    first = await client.post("/api/reservations/", json={"product": made["id"], "quantity": 1},
                              headers=buyer)  # fmt: skip
    assert first.status_code == 201, first.text
    again = await client.post(
        "/api/reservations/", json={"product": made["id"], "quantity": 1}, headers=buyer
    )
    assert again.status_code == 409
    assert err(again)["code"] == "limit_exceeded"
    assert err(again)["details"] == {
        "product": made["id"],
        "rule": "max_per_customer",
        "limit": 1,
        "held": 1,
        "requested": 1,
    }
    other = bearer(app, "8")
    await client.patch(url, json={"quantity_increment": 2, "max_per_order": None,
                                  "max_per_customer": None}, headers=staff)  # fmt: skip
    odd = await client.post("/api/orders/", json={"product": made["id"], "quantity": 3},
                            headers=other)  # fmt: skip
    assert odd.status_code == 422
    assert err(odd)["code"] == "invalid_quantity"
    assert err(odd)["details"]["quantity_increment"] == 2

    bad = await client.patch(url, json={"max_per_customer": 0}, headers=staff)
    assert bad.status_code == 400
    assert err(bad)["code"] == "invalid_input"
    listed: list[dict[str, Any]] = data(await client.get("/api/products/"))
    assert listed[0]["quantity_increment"] == 2
    assert (await events_of(app, "product_updated"))[-1]["after"]["limits"] == {
        "quantity_increment": 2
    }


async def events_of(app: Starlette, etype: str) -> list[dict[str, Any]]:
    return [e for e in await events(svc(app).engine.redis) if e["type"] == etype]


async def test_a_customer_at_the_cap_gets_409_over_http(
    app: Starlette, client: httpx.AsyncClient, staff: dict[str, str]
) -> None:
    made = await create(client, staff, "CAP-1", total_stock=100)
    buyer = bearer(app, "9")
    cap = svc(app).settings.max_live_reservations_per_customer
    body = {"product": made["id"], "quantity": 1}
    for _ in range(cap):
        ok = await client.post("/api/reservations/", json=body, headers=buyer)
        assert ok.status_code == 201
    over = await client.post("/api/reservations/", json=body, headers=buyer)
    assert over.status_code == 409
    assert err(over) | {"message": ""} == {
        "code": "too_many_reservations",
        "message": "",
        "details": {"limit": cap, "live": cap},
    }
    assert data(await client.get(f"/api/products/{made['id']}/"))["reserved_stock"] == cap
