"""The service layer called directly, without HTTP: a real Redis and a real database (both
kinds), the clients in a `Services` as the app factory would hand them down."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis
from sqlalchemy import Engine as DatabaseEngine
from sqlalchemy import select

from engine.engine import Engine
from engine.errors import IdempotencyMismatch, OrderNotFound, ReservationNotFound
from engine.keys import partition_keys
from engine.models import CallContext
from engine.settings import Settings
from engine.states import OrderStatus
from persistence import schema
from persistence.drain import drain_partition
from persistence.trigger import DrainTrigger
from web.auth import Principal
from web.errors import ApiError
from web.schemas.catalog import AuditQuery, ProductCreate
from web.schemas.orders import OrderIn, OrderQuery, ReserveIn
from web.services import audit, orders, products, reservations
from web.services.container import Services

STAFF = CallContext(actor="1", staff=True)
ALICE = CallContext(actor="2")
BOB = CallContext(actor="3")


@pytest.fixture
async def svc(
    app_settings: Settings, clean_redis: None, db: DatabaseEngine
) -> AsyncIterator[Services]:
    engine = Engine.from_settings(app_settings)
    await engine.scripts.load()
    trigger = DrainTrigger(engine, app_settings.redis_url)
    yield Services(app_settings, engine, db, trigger)
    trigger.close()
    await engine.aclose()


async def drain(svc: Services, sync_redis: redis.Redis) -> None:
    await asyncio.to_thread(drain_partition, sync_redis, svc.db, svc.settings, 0)


def skus(db: DatabaseEngine) -> list[str]:
    with db.connect() as conn:
        return list(conn.scalars(select(schema.products.c.sku).order_by(schema.products.c.id)))


async def lamp(svc: Services, stock: int = 5) -> products.Product:
    body = ProductCreate(name="Lamp", sku="LAMP-1", price="19.99", total_stock=stock)
    return await products.create_product(svc, body, STAFF)


async def test_create_makes_the_row_and_the_stock(svc: Services) -> None:
    made = await lamp(svc)

    live = await svc.engine.get_stock(made.row.engine_id)
    assert (made.row.sku, made.row.price, made.row.currency) == ("LAMP-1", 1999, "USD")
    assert (made.live.total, made.live.available, made.replayed) == (5, 5, False)
    assert (live.total, live.available) == (5, 5)


async def test_a_create_the_engine_refuses_removes_its_row(svc: Services) -> None:
    keyed = CallContext(actor="1", staff=True, idempotency_key="create-once")
    first = ProductCreate(name="Once", sku="ONCE-1", price="3.00", total_stock=6)
    other = ProductCreate(name="Once", sku="ONCE-2", price="3.00", total_stock=1)
    await products.create_product(svc, first, keyed)
    again = await products.create_product(svc, first, keyed)

    with pytest.raises(IdempotencyMismatch):
        await products.create_product(svc, other, keyed)

    assert again.replayed
    assert skus(svc.db) == ["ONCE-1"]  # the ONCE-2 row was removed again


async def test_a_delete_counts_the_orders_still_only_in_the_outbox(svc: Services) -> None:
    made = await lamp(svc)
    pid = made.row.id
    order = await orders.place_order(svc, OrderIn(product=pid, quantity=2), ALICE)

    with pytest.raises(ApiError) as in_use:
        await products.delete_product(svc, pid, STAFF)
    await orders.transition(
        svc, Principal("1", "staff", True), order.id, OrderStatus.CANCELLED, STAFF
    )
    deleted, _ = await products.delete_product(svc, pid, STAFF)

    assert in_use.value.code == "product_in_use"
    assert in_use.value.details == {"product": pid, "reserved": 0, "open_orders": 1, "waiting": 0}
    assert deleted == pid


async def test_a_record_redis_let_go_is_read_from_the_database(
    svc: Services, sync_redis: redis.Redis
) -> None:
    pid = (await lamp(svc)).row.id
    held = await reservations.reserve(svc, ReserveIn(product=pid, quantity=1), ALICE)
    await reservations.release(svc, held.id, ALICE)
    await drain(svc, sync_redis)
    sync_redis.delete(partition_keys(0).reservation(held.id))

    kept = await reservations.get_reservation(svc, held.id, ALICE)
    with pytest.raises(ReservationNotFound):
        await reservations.get_reservation(svc, held.id, BOB)  # not Bob's
    with pytest.raises(ReservationNotFound):
        await reservations.get_reservation(svc, "f" * 32, ALICE)  # nobody's
    with pytest.raises(OrderNotFound):
        await orders.get_order(svc, "not-an-id", ALICE)

    assert (kept.id, kept.status) == (held.id, "released")


async def test_a_customer_may_only_cancel_a_pending_order(svc: Services) -> None:
    pid = (await lamp(svc)).row.id
    order = await orders.place_order(svc, OrderIn(product=pid, quantity=1), ALICE)
    alice = Principal("2", "alice", False)

    with pytest.raises(ApiError) as refused:
        await orders.transition(svc, alice, order.id, OrderStatus.CONFIRMED, ALICE)
    unchanged = await orders.get_order(svc, order.id, ALICE)
    cancelled = await orders.transition(svc, alice, order.id, OrderStatus.CANCELLED, ALICE)

    assert (refused.value.status, refused.value.code) == (403, "forbidden")
    assert unchanged.status == OrderStatus.PENDING
    assert cancelled.status == OrderStatus.CANCELLED


async def test_the_audit_page_filters_the_drained_log(
    svc: Services, sync_redis: redis.Redis
) -> None:
    pid = (await lamp(svc)).row.id
    order = await orders.place_order(svc, OrderIn(product=pid, quantity=1), ALICE)
    await drain(svc, sync_redis)

    page = await audit.audit_page(svc, AuditQuery(object_type="order"))
    everything = await audit.audit_page(svc, AuditQuery())

    assert [(r.object_type, r.object_id) for r in page.rows] == [("order", order.id)]
    assert len(everything.rows) > len(page.rows)


async def test_a_list_waits_for_the_write_it_names(svc: Services, sync_redis: redis.Redis) -> None:
    pid = (await lamp(svc)).row.id
    alice = Principal("2", "alice", False)
    order = await orders.place_order(svc, OrderIn(product=pid, quantity=1), ALICE)
    token = order.event_id
    assert token is not None

    before = await orders.list_orders(
        svc, alice, OrderQuery.model_validate({"consistent_with": token})
    )
    await drain(svc, sync_redis)
    after = await orders.list_orders(
        svc, alice, OrderQuery.model_validate({"consistent_with": token})
    )
    with pytest.raises(ApiError) as forbidden:
        await orders.list_orders(svc, alice, OrderQuery.model_validate({"user": "3"}))

    assert (before.state, before.page.rows) == ("stale", [])
    assert after.state == "consistent"
    assert [o.id for o in after.page.rows] == [order.id]
    assert forbidden.value.status == 403
