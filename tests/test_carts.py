"""Carts across partitions (engine/carts.py): a reservation or direct order whose lines live in
several partitions. On one redis-server with PARTITIONS=4 here (the partitions are hash tags
alike), and on a Redis Cluster's shards in tests/test_cluster.py.

sku-1 and sku-3 live in partition 2, sku-2 in partition 0, sku-4 in partition 1: a cart of
sku-1 and sku-2 has its home in partition 0 and one other part in partition 2.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
from sqlalchemy import Engine as DatabaseEngine
from sqlalchemy import func, select

from engine import errors, specs
from engine.engine import Engine
from engine.invariants import check
from engine.keys import part_id, partition_keys
from engine.models import SYSTEM, CallContext, LineRequest, ReservationStatus
from engine.settings import Settings
from engine.states import OrderStatus
from persistence import schema
from persistence.drain import drain_partition
from persistence.queries_orders import list_reservations
from persistence.rebuild import rebuild
from persistence.reconcile import check as reconcile_check
from persistence.schema import orders as ORD
from tests.api import bearer, data, err, running
from tests.helpers import events, snapshot
from tests.support import ALICE, BOB, add_product, levels
from web.app import create_app

STAFF = CallContext(actor="staff", staff=True)
CART = [LineRequest("sku-1", 2), LineRequest("sku-2", 1)]
THREE = [LineRequest("sku-3", 1), LineRequest("sku-2", 1), LineRequest("sku-4", 1)]


@pytest.fixture
async def sharded(settings: Settings, clean_redis: None) -> AsyncIterator[Engine]:
    """An engine over 4 partitions, with short cart holds (1 s)."""
    e = Engine.from_settings(dataclasses.replace(settings, partitions=4, cart_hold_ms=1_000))
    for product in ("sku-1", "sku-2", "sku-3", "sku-4"):
        await add_product(e, product, {"main": 5})
    yield e
    await e.aclose()


async def assert_invariants(engine: Engine) -> None:
    for report in await check(engine.redis, 4):
        assert report.ok, (report.partition, report.problems)


async def all_levels(engine: Engine) -> dict[str, dict[str, tuple[int, int]]]:
    return {p: await levels(engine, p) for p in ("sku-1", "sku-2", "sku-3", "sku-4")}


def part_of(cart: str, partition: int) -> str:
    return part_id(cart, partition, 4)


async def test_the_products_sit_where_the_module_says(sharded: Engine) -> None:
    assert [sharded.partition_of_product(p) for p in ("sku-1", "sku-2", "sku-3", "sku-4")] == [
        2,
        0,
        2,
        1,
    ]


async def test_a_cart_across_partitions_is_one_reservation(sharded: Engine) -> None:
    r = await sharded.reserve(CART, ALICE, ttl_ms=60_000)
    assert r.status == ReservationStatus.ACTIVE
    assert sorted((x.product, x.quantity) for x in r.lines) == [("sku-1", 2), ("sku-2", 1)]
    assert r.expires_at_ms - r.created_at_ms >= 59_000
    assert await levels(sharded, "sku-1") == {"main": (3, 2)}
    assert await levels(sharded, "sku-2") == {"main": (4, 1)}
    await assert_invariants(sharded)

    # each part is a reservation of its own partition, with the cart's expires_at
    home = await sharded.redis.hgetall(partition_keys(0).reservation(r.id))
    other = await sharded.redis.hgetall(partition_keys(2).reservation(part_of(r.id, 2)))
    assert (home["cart"], other["cart"]) == (r.id, r.id)
    assert home["expires_at"] == other["expires_at"] == str(r.expires_at_ms)
    assert await sharded.redis.zcard(partition_keys(0).carts) == 0  # every step followed

    # read back whole; the other part is nobody's reservation of its own
    got = await sharded.get_reservation(r.id, ALICE)
    assert sorted((x.product, x.quantity) for x in got.lines) == [("sku-1", 2), ("sku-2", 1)]
    assert got.expires_at_ms == r.expires_at_ms
    for op in (sharded.get_reservation, sharded.release, sharded.commit):
        with pytest.raises(errors.ReservationNotFound):
            await op(part_of(r.id, 2), STAFF)
    with pytest.raises(errors.ReservationNotFound):
        await sharded.get_reservation(r.id, BOB)

    # the events: a hold in each partition naming the cart, then the cart made live in the home
    e0, e2 = await events(sharded.redis, 0), await events(sharded.redis, 2)
    created0 = [e for e in e0 if e["type"] == "reservation_created"]
    created2 = [e for e in e2 if e["type"] == "reservation_created"]
    assert [(e["reservation"], e["cart"]) for e in created0] == [(r.id, r.id)]
    assert [(e["reservation"], e["cart"]) for e in created2] == [(part_of(r.id, 2), r.id)]
    assert (e0[-1]["type"], e0[-1]["cart"]) == ("reservation_created", r.id)
    assert e2[-1]["type"] == "reservation_extended"
    assert e2[-1]["expires_at_after"] == r.expires_at_ms


async def test_release_and_extend_move_every_part(sharded: Engine) -> None:
    r = await sharded.reserve(CART, ALICE, ttl_ms=30_000)
    longer = await sharded.extend(r.id, ALICE, ttl_ms=120_000)
    assert longer.expires_at_ms > r.expires_at_ms
    assert len(longer.lines) == 2
    other = partition_keys(2).reservation(part_of(r.id, 2))
    assert await sharded.redis.hget(other, "expires_at") == str(longer.expires_at_ms)
    assert await sharded.redis.zscore(partition_keys(2).expiry, part_of(r.id, 2)) == float(
        longer.expires_at_ms
    )

    released = await sharded.release(r.id, ALICE)
    assert released.status == ReservationStatus.RELEASED
    assert len(released.lines) == 2
    assert await all_levels(sharded) == {
        p: {"main": (5, 0)} for p in ("sku-1", "sku-2", "sku-3", "sku-4")
    }
    assert await sharded.redis.hget(other, "status") == "released"
    await assert_invariants(sharded)
    with pytest.raises(errors.ReservationNotLive):
        await sharded.release(r.id, ALICE)
    assert await sharded.redis.zcard(partition_keys(0).carts) == 0


async def test_a_refusal_in_the_home_releases_the_holds_taken(sharded: Engine) -> None:
    before = await all_levels(sharded)
    # the other parts are held first, the home last: short in the home, sku-2
    with pytest.raises(errors.InsufficientStock) as info:
        await sharded.reserve([LineRequest("sku-2", 9), LineRequest("sku-3", 1)], ALICE)
    assert [s.product for s in info.value.lines] == ["sku-2"]
    assert await all_levels(sharded) == before
    await assert_invariants(sharded)
    # the other part's hold was taken and given back, on the record
    types = [e["type"] for e in await events(sharded.redis, 2)]
    assert types[-2:] == ["reservation_created", "reservation_released"]
    # short in another part: refused before the home is asked
    with pytest.raises(errors.InsufficientStock):
        await sharded.reserve([LineRequest("sku-2", 1), LineRequest("sku-3", 9)], ALICE)
    assert await all_levels(sharded) == before
    with pytest.raises(errors.ProductNotFound):
        await sharded.reserve([LineRequest("sku-2", 1), LineRequest("nope", 1)], ALICE)
    assert await all_levels(sharded) == before


async def test_commit_makes_one_order_and_cancel_gives_every_unit_back(sharded: Engine) -> None:
    r = await sharded.reserve([*CART, LineRequest("sku-4", 3)], ALICE)
    order = await sharded.commit(r.id, ALICE)
    assert order.status == OrderStatus.PENDING
    assert order.reservation_id == r.id
    assert sorted((x.product, x.quantity) for x in order.lines) == [
        ("sku-1", 2),
        ("sku-2", 1),
        ("sku-4", 3),
    ]
    assert order.total == sum(x.quantity * x.unit_price for x in order.lines) > 0
    # every unit left its partition's total, none is reserved any more
    assert await all_levels(sharded) == {
        "sku-1": {"main": (3, 0)},
        "sku-2": {"main": (4, 0)},
        "sku-3": {"main": (5, 0)},
        "sku-4": {"main": (2, 0)},
    }
    await assert_invariants(sharded)
    assert (await sharded.get_reservation(r.id, ALICE)).order_id == order.id
    committed = [e for e in await events(sharded.redis, 1) if e["type"] == "reservation_committed"]
    assert [(e["order"], e["cart"]) for e in committed] == [(order.id, r.id)]
    assert await sharded.redis.zcard(partition_keys(0).carts) == 0

    again = await sharded.transition(order.id, OrderStatus.CANCELLED, STAFF)
    assert again.status == OrderStatus.CANCELLED
    assert await all_levels(sharded) == {
        p: {"main": (5, 0)} for p in ("sku-1", "sku-2", "sku-3", "sku-4")
    }
    returned = [e for e in await events(sharded.redis, 2) if e["type"] == "order_part_returned"]
    assert [(e["order"], e["part"]) for e in returned] == [(order.id, part_of(r.id, 2))]
    assert await sharded.redis.zcard(partition_keys(0).carts) == 0
    await assert_invariants(sharded)


async def test_a_direct_order_across_partitions(sharded: Engine) -> None:
    keyed = dataclasses.replace(ALICE, idempotency_key="order-1")
    order = await sharded.place_order(CART, keyed)
    assert sorted((x.product, x.quantity) for x in order.lines) == [("sku-1", 2), ("sku-2", 1)]
    assert order.reservation_id is not None
    again = await sharded.place_order(CART, keyed)
    assert (again.id, again.replayed) == (order.id, True)
    with pytest.raises(errors.IdempotencyMismatch):
        await sharded.place_order([LineRequest("sku-1", 1), LineRequest("sku-2", 1)], keyed)
    assert await levels(sharded, "sku-1") == {"main": (3, 0)}
    assert await levels(sharded, "sku-2") == {"main": (4, 0)}
    await assert_invariants(sharded)


async def test_a_keyed_cart_is_made_once(sharded: Engine) -> None:
    keyed = dataclasses.replace(ALICE, idempotency_key="cart-1")
    first = await sharded.reserve(CART, keyed)
    again = await sharded.reserve(CART, keyed)
    assert (again.id, again.replayed) == (first.id, True)
    both = await asyncio.gather(
        *(sharded.reserve(CART, dataclasses.replace(BOB, idempotency_key="same")) for _ in range(4))
    )
    assert len({b.id for b in both}) == 1
    assert await levels(sharded, "sku-1") == {"main": (1, 4)}
    await assert_invariants(sharded)


async def test_concurrent_carts_never_oversell(sharded: Engine) -> None:
    """40 buyers, each a cart of one sku-1 and one sku-2 (5 each): exactly 5 carts made, the
    rest refused, nothing held by them."""

    async def buy(i: int) -> bool:
        ctx = CallContext(actor=f"u{i}")
        try:
            await sharded.reserve([LineRequest("sku-1", 1), LineRequest("sku-2", 1)], ctx)
        except errors.InsufficientStock:
            return False
        return True

    made = await asyncio.gather(*(buy(i) for i in range(40)))
    assert sum(made) == 5
    assert await levels(sharded, "sku-1") == {"main": (0, 5)}
    assert await levels(sharded, "sku-2") == {"main": (0, 5)}
    await assert_invariants(sharded)


def commit_call(rid: str, oid: str) -> dict[str, str | int]:
    """The first call of a cart's commit, as the engine makes it (engine/orders.py)."""
    k = partition_keys(0)
    return {
        **specs.COMMIT.partition_keys(k),
        "record": k.reservation(rid),
        "order": k.order(oid),
        "idem": k.unused_idempotency,
        "reservation_id": rid,
        "order_id": oid,
        "scope": "",
        "actor": "alice",
        "request_id": "",
        "fingerprint": "",
        "idempotency_ttl": 60_000,
        "retention": 60_000,
        "foreign_lines": "",
        "deadline": "",
        "hold": 1_000,
        "pending_ttl": 0,
        "foreign_held": "",
    }


# -- crashes: the saga stopped after each step ---------------------------------------------------


async def hold(
    engine: Engine, cart: str, partition: int, product: str, qty: int, parts: str = ""
) -> dict[str, Any]:
    """One part's reservation as the saga makes it (engine/carts.py): another part's hold, or
    with `parts` the home's (the commit point)."""
    k = partition_keys(partition)
    pid = cart if partition == 0 else part_of(cart, partition)
    hold_ms = engine.settings.cart_hold_ms
    reply = await engine.scripts.run(
        specs.RESERVE,
        **specs.RESERVE.partition_keys(k),
        idem=k.unused_idempotency,
        record=k.reservation(pid),
        reservation_id=pid,
        lines=f'[["{product}","",{qty}]]',
        ttl=60_000 if parts else hold_ms * 2,
        allow_split="1",
        owner="alice",
        actor="alice",
        request_id="",
        fingerprint="",
        idempotency_ttl=60_000,
        expiry_batch=100,
        retention=60_000,
        cart=cart,
        parts=parts,
        hold=hold_ms,
        max_live=0,
    )
    assert "err" not in reply, reply
    return reply


async def test_holds_left_by_a_crash_before_the_commit_point_expire_alone(
    sharded: Engine,
) -> None:
    cart = sharded._new_id(0, 4)
    held = {
        p: await hold(sharded, cart, p, sku, n) for p, sku, n in ((2, "sku-1", 2), (1, "sku-4", 1))
    }
    # ... and the process died before the home: nobody was told of this cart
    assert await levels(sharded, "sku-1") == {"main": (3, 2)}
    with pytest.raises(errors.ReservationNotFound):
        await sharded.get_reservation(cart, ALICE)
    with pytest.raises(errors.ReservationNotFound):
        await sharded.get_reservation(part_of(cart, 2), ALICE)
    await asyncio.sleep(1.1)  # CART_HOLD_TTL: still held
    await sharded.expire()
    assert await levels(sharded, "sku-1") == {"main": (3, 2)}
    await asyncio.sleep(1)  # twice CART_HOLD_TTL: gone
    await sharded.expire()
    assert await all_levels(sharded) == {
        p: {"main": (5, 0)} for p in ("sku-1", "sku-2", "sku-3", "sku-4")
    }
    await assert_invariants(sharded)
    # each part's record is kept the engine's retention after its expires_at, from the sweep
    # of its own partition (lua/holds.lua expire_due): none while it was live
    retention = sharded.settings.reservation_retention_ms
    for p, reply in held.items():
        record = partition_keys(p).reservation(part_of(cart, p))
        until = await sharded.redis.pexpiretime(record)
        assert until == reply["reservation"]["expires_at"] + retention


async def test_a_crash_after_the_commit_point_is_finished_by_the_sweep(sharded: Engine) -> None:
    cart = sharded._new_id(0, 4)
    await hold(sharded, cart, 2, "sku-1", 2)
    live = await hold(sharded, cart, 0, "sku-2", 1, parts="[0,2]")
    # ... and the process died: the other part still has its short hold
    await asyncio.sleep(1.1)
    result = await sharded.expire()
    assert result.carts == 1
    other = partition_keys(2).reservation(part_of(cart, 2))
    assert await sharded.redis.hget(other, "expires_at") == str(live["reservation"]["expires_at"])
    assert await levels(sharded, "sku-1") == {"main": (3, 2)}
    got = await sharded.get_reservation(cart, ALICE)
    assert (got.status, len(got.lines)) == (ReservationStatus.ACTIVE, 2)
    await assert_invariants(sharded)
    assert await sharded.redis.zcard(partition_keys(0).carts) == 0


async def test_a_crash_inside_a_commit_is_finished_by_the_sweep(sharded: Engine) -> None:
    r = await sharded.reserve(CART, ALICE)
    # the commit stopped after the home made the order: the other part is pinned, not moved
    oid = sharded._new_id(0, 4)
    call = commit_call(r.id, oid)
    first = await sharded.scripts.run(specs.COMMIT, **call)
    assert first["err"] == "cart_parts"
    pinned = await sharded._part(2, "pin", r.id, 0, ALICE, pin=86_400_000)
    made = await sharded.scripts.run(
        specs.COMMIT,
        **{**call, "foreign_lines": json.dumps(pinned["lines"]),
           "deadline": first["deadline"]},
    )  # fmt: skip
    assert made["order"]["total"] > 0
    assert await levels(sharded, "sku-1") == {"main": (3, 2)}  # still reserved there
    await asyncio.sleep(1.1)
    assert (await sharded.expire()).carts == 1
    assert await levels(sharded, "sku-1") == {"main": (3, 0)}
    assert await levels(sharded, "sku-2") == {"main": (4, 0)}
    await assert_invariants(sharded)
    assert (await sharded.get_order(oid, ALICE)).status == OrderStatus.PENDING


async def test_a_commit_past_its_deadline_is_refused_and_the_pins_go(sharded: Engine) -> None:
    r = await sharded.reserve(CART, ALICE)
    oid = sharded._new_id(0, 4)
    before = await snapshot(sharded.redis, f"*{r.id}*")
    call = commit_call(r.id, oid)
    first = await sharded.scripts.run(specs.COMMIT, **call)
    await sharded._part(2, "pin", r.id, 0, ALICE, pin=86_400_000)
    await asyncio.sleep(1.1)
    assert (await sharded.expire()).carts == 1  # the sweep took the step over: pins undone
    late = await sharded.scripts.run(
        specs.COMMIT, **{**call, "foreign_lines": "[]", "deadline": first["deadline"]}
    )
    assert late["err"] == "cart_timeout"
    other = partition_keys(2).reservation(part_of(r.id, 2))
    assert await sharded.redis.hget(other, "expires_at") == str(r.expires_at_ms)
    assert before  # the cart is as it was: live, whole
    order = await sharded.commit(r.id, ALICE)
    assert len(order.lines) == 2
    await assert_invariants(sharded)


# -- the durable record: the drain, reconcile, rebuild --------------------------------------------


async def test_the_database_and_reconcile_see_one_cart(
    sharded: Engine, db: DatabaseEngine, sync_redis: redis.Redis
) -> None:
    s = sharded.settings
    live = await sharded.reserve(CART, ALICE)
    gone = await sharded.reserve(CART, BOB)
    await sharded.release(gone.id, BOB)
    bought = await sharded.commit((await sharded.reserve(CART, BOB)).id, BOB)
    undone = await sharded.commit((await sharded.reserve([*THREE], BOB)).id, BOB)
    await sharded.transition(undone.id, OrderStatus.CANCELLED, STAFF)
    with pytest.raises(errors.InsufficientStock):
        await sharded.reserve([LineRequest("sku-2", 1), LineRequest("sku-3", 50)], BOB)

    assert reconcile_check(sync_redis, db, s).ok  # exact with everything still in the outboxes
    for p in range(4):
        drain_partition(sync_redis, db, s, p)
    report = reconcile_check(sync_redis, db, s)
    assert report.ok, report.drift
    assert sum(r.backlog for r in report.partitions) == 0

    # one reservation per cart, its lines every part's; one order with every line
    with db.connect() as conn:
        listing = list_reservations("alice", None)
        rows = conn.execute(listing.query).all()
        (mine,) = listing.load(conn, rows)
        assert mine.id == live.id
        assert sorted((x.product, x.quantity) for x in mine.lines) == [("sku-1", 2), ("sku-2", 1)]
        theirs = listing.load(conn, conn.execute(list_reservations("bob", None).query).all())
        assert sorted(r.status.value for r in theirs) == ["committed", "committed", "released"]
        assert all(len(r.lines) >= 2 for r in theirs)
        statuses = {str(i): str(st) for i, st in conn.execute(select(ORD.c.id, ORD.c.status))}
        assert statuses == {bought.id: "pending", undone.id: "cancelled"}
        lines = conn.execute(
            select(func.count()).where(schema.order_lines.c.order_id == undone.id)
        ).scalar()
        assert lines == 3
    # the ledger agrees with every partition's counters
    assert {(pw, c) for r in report.rows for pw, c in [((r.product, r.warehouse), r.ledger)]} == {
        (pw, c) for r in report.rows for pw, c in [((r.product, r.warehouse), r.redis)]
    }


async def test_rebuild_restores_a_cart_whole(
    sharded: Engine, db: DatabaseEngine, sync_redis: redis.Redis
) -> None:
    s = sharded.settings
    live = await sharded.reserve(CART, ALICE)
    order = await sharded.commit((await sharded.reserve(CART, BOB)).id, BOB)
    for p in range(4):
        drain_partition(sync_redis, db, s, p)
    sync_redis.flushall()
    rebuild(sync_redis, db, s)
    assert reconcile_check(sync_redis, db, s).ok
    got = await sharded.get_reservation(live.id, ALICE)
    assert len(got.lines) == 2
    await sharded.transition(order.id, OrderStatus.CANCELLED, STAFF)  # every part's units back
    await sharded.release(live.id, ALICE)
    assert await all_levels(sharded) == {
        p: {"main": (5, 0)} for p in ("sku-1", "sku-2", "sku-3", "sku-4")
    }
    await assert_invariants(sharded)


# -- over HTTP ---------------------------------------------------------------------------------


async def test_a_cart_across_partitions_over_http(
    app_settings: Settings, clean_redis: None, sync_redis: redis.Redis
) -> None:
    """The API answers a cart across partitions as one reservation and one order, with the
    same requests and fields as any (catalog ids 1 and 2 live in partitions 3 and 1 of 4)."""
    settings = dataclasses.replace(app_settings, partitions=4)
    app = create_app(settings)
    async with running(app) as client:
        engine = app.state.services.engine
        for pid in ("1", "2"):
            await engine.setup_product(pid, SYSTEM, price=500, stock={"main": 4})
        buyer = bearer(app, "7")
        body = {"lines": [{"product": 1, "quantity": 2}, {"product": 2, "quantity": 1}]}
        made = await client.post("/api/reservations/", json=body, headers=buyer)
        assert made.status_code == 201, made.text
        cart = data(made)
        assert sorted((x["product"], x["quantity"]) for x in cart["lines"]) == [(1, 2), (2, 1)]
        got = data(await client.get(f"/api/reservations/{cart['id']}/", headers=buyer))
        assert len(got["lines"]) == 2
        bought = await client.post(f"/api/reservations/{cart['id']}/commit/", headers=buyer)
        assert bought.status_code == 201, bought.text
        order = data(bought)
        assert (len(order["lines"]), order["reservation"]) == (2, cart["id"])
        direct = await client.post("/api/orders/", json=body, headers=buyer)
        assert direct.status_code == 201, direct.text
        short = {"lines": [{"product": 1, "quantity": 1}, {"product": 2, "quantity": 9}]}
        refused = await client.post("/api/reservations/", json=short, headers=buyer)
        assert (refused.status_code, err(refused)["code"]) == (409, "insufficient_stock")
        cancelled = await client.patch(
            f"/api/orders/{data(direct)['id']}/",
            json={"status": "cancelled"},
            headers=bearer(app, "8", staff=True),
        )
        assert cancelled.status_code == 200, cancelled.text
        for p in range(4):
            drain_partition(sync_redis, app.state.services.db, settings, p)
        # listed once each, with every line: the cart, and the one the direct order made
        listed = {r["id"]: r for r in data(await client.get("/api/reservations/", headers=buyer))}
        assert len(listed) == 2
        one = listed[cart["id"]]
        assert (len(one["lines"]), one["status"]) == (2, "committed")
        assert data(direct)["reservation"] in listed
        assert [await levels(engine, pid) for pid in ("1", "2")] == [
            {"main": (2, 0)},
            {"main": (3, 0)},
        ]


async def test_a_key_reused_for_a_request_in_another_partition_is_a_mismatch(
    sharded: Engine,
) -> None:
    # Each key's record is kept in the partition its request goes to: the same key with a
    # request for another partition found no record there, and made a second reservation.
    # With PARTITIONS > 1 a key's first request is claimed apart (keys.idempotency_claim).
    keyed = dataclasses.replace(ALICE, idempotency_key="cart-1")
    first = await sharded.reserve([LineRequest("sku-1", 1)], keyed)  # partition 2
    before = await all_levels(sharded)

    with pytest.raises(errors.IdempotencyMismatch):
        await sharded.reserve([LineRequest("sku-2", 1)], keyed)  # partition 0
    with pytest.raises(errors.IdempotencyMismatch):  # a cart with its home in partition 0
        await sharded.reserve([LineRequest("sku-1", 1), LineRequest("sku-2", 1)], keyed)
    again = await sharded.reserve([LineRequest("sku-1", 1)], keyed)  # the same: replayed
    assert (again.id, again.replayed) == (first.id, True)
    assert await all_levels(sharded) == before  # nothing changed

    # the same for a key naming records in the path: a release of one reservation, then of
    # another in another partition under the same key
    other = await sharded.reserve([LineRequest("sku-2", 1)], ALICE)
    released = dataclasses.replace(ALICE, idempotency_key="release-1")
    await sharded.release(first.id, released)
    with pytest.raises(errors.IdempotencyMismatch):
        await sharded.release(other.id, released)
    assert (await sharded.get_reservation(other.id, ALICE)).status == "active"
    # another operation is another key's use: a key per operation, as in one partition
    order = await sharded.place_order([LineRequest("sku-2", 1)], keyed)
    assert order.status == "pending"
    await assert_invariants(sharded)
