"""Orders: commit, place_order, and the state machine of engine/states.py."""

from __future__ import annotations

import dataclasses
import json

import pytest

from engine import errors, outbox
from engine.engine import Engine
from engine.invariants import check_partition
from engine.models import CallContext, LineRequest, Order, OrderLine, ReservationStatus
from engine.states import TRANSITIONS, OrderStatus
from persistence.event_replies import created_reply
from persistence.translate import translate
from tests.helpers import event_types, events, snapshot
from tests.support import (
    ALICE,
    BOB,
    ORDER_MOVES,
    ORDER_PATHS,
    ORDER_STATUSES,
    STAFF,
    add_product,
    assert_stamped,
    levels,
    movement,
    moves_from,
    redis_now_ms,
)

pytestmark = pytest.mark.cluster  # on the redis-server and on a Redis Cluster


async def order_in(engine: Engine, status: OrderStatus) -> Order:
    """Alice's order of 2 x sku-1 (10 units in main at 250), walked to `status` by staff."""
    await add_product(engine, "sku-1", {"main": 10})
    order = await engine.place_order([LineRequest("sku-1", 2)], ALICE)
    for step in ORDER_PATHS[status]:
        order = await engine.transition(order.id, step, STAFF)
    assert order.status == status
    return order


# -- commit -----------------------------------------------------------------------------


async def test_commit_turns_a_reservation_into_a_pending_order(engine: Engine) -> None:
    await add_product(engine, "sku-1", {"east": 2, "west": 5}, price=250)
    await add_product(engine, "sku-2", {"main": 4}, price=1999)
    r = await engine.reserve([LineRequest("sku-1", 3), LineRequest("sku-2", 1)], ALICE)
    t0 = await redis_now_ms(engine)
    order = await engine.commit(r.id, ALICE)
    t1 = await redis_now_ms(engine)

    assert (order.owner, order.status, order.reservation_id) == ("alice", "pending", r.id)
    assert order.lines == (
        OrderLine("sku-1", "east", 2, 250),
        OrderLine("sku-1", "west", 1, 250),
        OrderLine("sku-2", "main", 1, 1999),
    )
    assert (order.total, order.currency) == (2 * 250 + 250 + 1999, "USD")
    assert order.total == sum(line.subtotal for line in order.lines)
    assert t0 <= order.created_at_ms == order.updated_at_ms <= t1
    assert await engine.get_order(order.id, ALICE) == order

    # the units leave 'reserved' and with it 'total'; 'available' is untouched
    assert await levels(engine, "sku-1") == {"east": (0, 0), "west": (4, 0)}
    assert await levels(engine, "sku-2") == {"main": (3, 0)}
    assert (await check_partition(engine.redis, 0)).ok
    k = engine.keys(0)
    assert await engine.redis.hlen(k.live) == 0
    assert await engine.redis.zcard(k.expiry) == 0
    assert await engine.redis.pttl(k.order(order.id)) == -1

    seen = await engine.get_reservation(r.id, ALICE)
    assert (seen.status, seen.order_id) == (ReservationStatus.COMMITTED, order.id)

    e = (await events(engine.redis))[-1]
    assert e["type"] == "order_created"
    assert (e["order"], e["reservation"], e["user"], e["status"]) == (
        order.id,
        r.id,
        "alice",
        "pending",
    )
    assert e["lines"] == [
        ["sku-1", "east", 2, 250],
        ["sku-1", "west", 1, 250],
        ["sku-2", "main", 1, 1999],
    ]
    assert (e["total"], e["currency"]) == (order.total, "USD")
    assert e["movements"] == [
        movement("sku-1", "east", (0, 0), (2, 0)),
        movement("sku-1", "west", (4, 4), (1, 0)),
        movement("sku-2", "main", (3, 3), (1, 0)),
    ]
    assert_stamped(e, actor="alice", request_id="req-alice", low_ms=t0, high_ms=t1)


async def test_second_commit_is_refused(engine: Engine) -> None:
    await add_product(engine, "sku-1", {"main": 10})
    r = await engine.reserve([LineRequest("sku-1", 1)], ALICE)
    order = await engine.commit(r.id, ALICE)
    before = await snapshot(engine.redis)
    with pytest.raises(errors.ReservationNotLive) as info:
        await engine.commit(r.id, ALICE)
    assert info.value.details() == {"reservation": r.id, "status": "committed", "order": order.id}
    assert await snapshot(engine.redis) == before


async def test_commit_prices_at_commit_time_and_staff_commits_for_the_owner(
    engine: Engine,
) -> None:
    await add_product(engine, "sku-1", {"main": 10}, price=100)
    r = await engine.reserve([LineRequest("sku-1", 2)], ALICE)
    await engine.setup_product("sku-1", STAFF, price=120, warehouses={"main": 0})
    order = await engine.commit(r.id, STAFF)
    assert (order.owner, order.total) == ("alice", 240)
    e = (await events(engine.redis))[-1]
    assert (e["user"], e["actor"], e["request_id"]) == ("alice", "staff-1", "req-staff")


async def test_commit_of_mixed_currencies_is_refused(engine: Engine) -> None:
    await add_product(engine, "sku-1", {"main": 10}, currency="USD")
    await add_product(engine, "sku-2", {"main": 10}, currency="EUR")
    r = await engine.reserve([LineRequest("sku-1", 1), LineRequest("sku-2", 1)], ALICE)
    before = await snapshot(engine.redis)
    with pytest.raises(errors.CurrencyMismatch) as info:
        await engine.commit(r.id, ALICE)
    assert info.value.currencies == ["USD", "EUR"]
    # the reservation is still live and still holds its units
    assert await snapshot(engine.redis) == before
    assert (await engine.get_reservation(r.id, ALICE)).status == ReservationStatus.ACTIVE


# -- place_order ------------------------------------------------------------------------


async def test_place_order_takes_units_straight_from_available(engine: Engine) -> None:
    await add_product(engine, "sku-1", {"main": 10}, price=250)
    t0 = await redis_now_ms(engine)
    order = await engine.place_order([LineRequest("sku-1", 4)], ALICE)
    t1 = await redis_now_ms(engine)
    assert (order.status, order.reservation_id, order.total) == ("pending", None, 1000)
    assert order.lines == (OrderLine("sku-1", "main", 4, 250),)
    assert await levels(engine, "sku-1") == {"main": (6, 0)}
    assert await engine.get_order(order.id, ALICE) == order

    e = (await events(engine.redis))[-1]
    assert (e["type"], e["order"], e["reservation"], e["user"]) == (
        "order_created",
        order.id,
        "",
        "alice",
    )
    assert e["movements"] == [movement("sku-1", "main", (10, 6), (0, 0))]
    assert_stamped(e, actor="alice", request_id="req-alice", low_ms=t0, high_ms=t1)
    assert "reservation_created" not in await event_types(engine.redis)


async def test_place_order_refusals_change_nothing(engine: Engine) -> None:
    await add_product(engine, "sku-1", {"main": 3}, currency="USD")
    await add_product(engine, "sku-2", {"main": 3}, currency="EUR")
    await add_product(engine, "sku-3", {"main": 200}, price=10**12)
    before = await snapshot(engine.redis)
    with pytest.raises(errors.InsufficientStock) as short:
        await engine.place_order([LineRequest("sku-1", 4)], ALICE)
    assert short.value.lines == [errors.Shortage("sku-1", requested=4, available=3)]
    with pytest.raises(errors.CurrencyMismatch) as mixed:
        await engine.place_order([LineRequest("sku-1", 1), LineRequest("sku-2", 1)], ALICE)
    assert mixed.value.currencies == ["USD", "EUR"]
    with pytest.raises(errors.OrderTotalTooLarge):
        await engine.place_order([LineRequest("sku-3", 100)], ALICE)
    with pytest.raises(errors.ProductNotFound):
        await engine.place_order([LineRequest("sku-404", 1)], ALICE)
    with pytest.raises(errors.InvalidInput):
        await engine.place_order([LineRequest("sku-1", 0)], ALICE)
    assert await snapshot(engine.redis) == before


# -- transitions ------------------------------------------------------------------------

PAIRS = [(a, b) for a in ORDER_STATUSES for b in ORDER_STATUSES]


def test_the_code_holds_designs_table() -> None:
    assert {s.value: [n.value for n in nxt] for s, nxt in TRANSITIONS.items()} == {
        s: moves_from(s) for s in ORDER_STATUSES
    }


@pytest.mark.parametrize(("current", "requested"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
async def test_transition_table(engine: Engine, current: str, requested: str) -> None:
    """Every (from, to) pair of DESIGN.md's table, written out in tests/support.py, against
    the real transition script: allowed moves happen, the others change nothing."""
    order = await order_in(engine, OrderStatus(current))
    k = engine.keys(0)

    if not ORDER_MOVES[current][ORDER_STATUSES.index(requested)]:
        before = await snapshot(engine.redis)
        with pytest.raises(errors.InvalidTransition) as info:
            await engine.transition(order.id, requested, STAFF)
        assert info.value.details() == {
            "order": order.id,
            "current": current,
            "requested": requested,
            "allowed": moves_from(current),
        }
        assert await snapshot(engine.redis) == before
        return

    t0 = await redis_now_ms(engine)
    moved = await engine.transition(order.id, requested, CallContext("alice", "req-7"))
    t1 = await redis_now_ms(engine)
    assert moved.status == requested
    assert (moved.id, moved.lines, moved.total) == (order.id, order.lines, order.total)
    assert moved.created_at_ms == order.created_at_ms
    assert t0 <= moved.updated_at_ms <= t1
    assert await engine.get_order(order.id, ALICE) == moved

    e = (await events(engine.redis))[-1]
    assert (e["type"], e["order"], e["user"]) == ("order_status_changed", order.id, "alice")
    assert (e["from"], e["to"]) == (current, requested)
    assert_stamped(e, actor="alice", request_id="req-7", low_ms=t0, high_ms=t1)
    if requested == "cancelled":
        assert e["movements"] == [movement("sku-1", "main", (8, 10), (0, 0))]
        assert await levels(engine, "sku-1") == {"main": (10, 0)}
    else:
        assert e["movements"] == []
        assert await levels(engine, "sku-1") == {"main": (8, 0)}

    pttl = await engine.redis.pttl(k.order(order.id))
    if not moves_from(requested):  # a final status: the record leaves Redis in time
        assert 0 < pttl <= engine.settings.order_retention_ms
    else:
        assert pttl == -1


async def test_cancelling_a_committed_order_returns_units_to_available(engine: Engine) -> None:
    await add_product(engine, "sku-1", {"east": 1, "west": 5})
    r = await engine.reserve([LineRequest("sku-1", 3)], ALICE)
    order = await engine.commit(r.id, ALICE)
    order = await engine.transition(order.id, "confirmed", STAFF)
    assert await levels(engine, "sku-1") == {"east": (0, 0), "west": (3, 0)}
    cancelled = await engine.transition(order.id, "cancelled", ALICE)
    assert cancelled.status == OrderStatus.CANCELLED
    assert await levels(engine, "sku-1") == {"east": (1, 0), "west": (5, 0)}
    e = (await events(engine.redis))[-1]
    assert (e["from"], e["to"]) == ("confirmed", "cancelled")
    assert e["movements"] == [
        movement("sku-1", "east", (0, 1), (0, 0)),
        movement("sku-1", "west", (3, 5), (0, 0)),
    ]
    assert (await check_partition(engine.redis, 0)).ok


@pytest.mark.parametrize("spelling", ["CONFIRMED", "Confirmed", OrderStatus.CONFIRMED])
async def test_status_is_case_insensitive(engine: Engine, spelling: str) -> None:
    order = await order_in(engine, OrderStatus.PENDING)
    assert (await engine.transition(order.id, spelling, ALICE)).status == OrderStatus.CONFIRMED


@pytest.mark.parametrize("status", ["", "paid", " confirmed", "confirmed!", "CANCELED"])
async def test_bad_status_is_invalid_input(engine: Engine, status: str) -> None:
    order = await order_in(engine, OrderStatus.PENDING)
    before = await snapshot(engine.redis)
    with pytest.raises(errors.InvalidInput) as info:
        await engine.transition(order.id, status, ALICE)
    assert info.value.field == "status"
    assert "pending, confirmed, processing, shipped, delivered, cancelled" in str(info.value)
    assert await snapshot(engine.redis) == before


async def test_another_users_order_is_not_found(engine: Engine) -> None:
    order = await order_in(engine, OrderStatus.PENDING)
    before = await snapshot(engine.redis)
    with pytest.raises(errors.OrderNotFound) as info:
        await engine.transition(order.id, "cancelled", BOB)
    assert info.value.details() == {"order": order.id}
    with pytest.raises(errors.OrderNotFound):
        await engine.get_order(order.id, BOB)
    for bad in ("nope", "F" * 32, "0" * 32):
        with pytest.raises(errors.OrderNotFound):
            await engine.transition(bad, "cancelled", STAFF)
        with pytest.raises(errors.OrderNotFound):
            await engine.get_order(bad, STAFF)
    assert await snapshot(engine.redis) == before
    assert (await engine.get_order(order.id, STAFF)).owner == "alice"


async def test_transition_replay_and_mismatch(engine: Engine) -> None:
    order = await order_in(engine, OrderStatus.PENDING)
    ctx = dataclasses.replace(ALICE, idempotency_key="t-1")
    first = await engine.transition(order.id, "confirmed", ctx)
    after_first = await snapshot(engine.redis)
    again = await engine.transition(order.id, "confirmed", ctx)
    assert (first.replayed, again.replayed) == (False, True)
    assert dataclasses.replace(again, replayed=False) == first
    with pytest.raises(errors.IdempotencyMismatch):
        await engine.transition(order.id, "cancelled", ctx)
    assert await snapshot(engine.redis) == after_first
    assert (await event_types(engine.redis)).count("order_status_changed") == 1


async def test_a_move_that_expects_a_status_fails_once_the_order_moved(engine: Engine) -> None:
    # the buyer saw it pending; staff confirmed it before the buyer's cancel arrived
    order = await order_in(engine, OrderStatus.PENDING)
    await engine.transition(order.id, "confirmed", STAFF)
    before = await snapshot(engine.redis)

    with pytest.raises(errors.StatusChanged) as info:
        await engine.transition(order.id, "cancelled", ALICE, expected=OrderStatus.PENDING)

    assert info.value.details() == {
        "order": order.id,
        "current": "confirmed",
        "expected": "pending",
    }
    assert await snapshot(engine.redis) == before
    held = await engine.transition(order.id, "processing", STAFF, expected=OrderStatus.CONFIRMED)
    assert held.status == OrderStatus.PROCESSING


async def test_a_commits_event_reply_and_order_are_exactly_their_fields(engine: Engine) -> None:
    """commit.lua writes its order_created event, its reply and the order's record as text
    (holds.lua write_order, emit_order_created): they decode to the fields and whole numbers
    cjson wrote, text that needs escaping included, and the keyed call's idempotency copy
    leaves the reply out — the drain's rebuild of it (event_replies.created_reply) is the reply
    Redis keeps. A direct order (place_order.lua) alike."""
    await add_product(engine, "sku-1", {"east": 2, "west": 5}, price=1999)
    r = await engine.reserve([LineRequest("sku-1", 4)], ALICE)
    ctx = dataclasses.replace(STAFF, actor='st"aff\\/é', request_id="req\n1", idempotency_key="k")
    order = await engine.commit(r.id, ctx)

    (last,) = (await outbox.read(engine.redis, 0))[-1:]
    created = dict(last.data)
    copy = created.pop("idempotency")
    lines = [["sku-1", "east", 2, 1999], ["sku-1", "west", 2, 1999]]
    assert created == {
        "type": "order_created",
        "ts": order.created_at_ms,
        "actor": 'st"aff\\/é',
        "request_id": "req\n1",
        "order": order.id,
        "reservation": r.id,
        "user": "alice",
        "status": "pending",
        "lines": lines,
        "total": 4 * 1999,
        "currency": "USD",
        "movements": [
            movement("sku-1", "east", (0, 0), (2, 0)),
            movement("sku-1", "west", (3, 3), (2, 0)),
        ],
    }
    assert all(type(created[n]) is int for n in ("ts", "total"))
    k = engine.keys(0)
    assert set(copy) == {"key", "fp", "expires_at"}  # (no reply: the event holds it)
    stored = str(await engine.redis.get(copy["key"]))
    reply = json.loads(stored[32:])
    assert reply == {
        "ok": True,
        "event": last.id,
        "order": {
            "id": order.id,
            "owner": "alice",
            "status": "pending",
            "reservation": r.id,
            "lines": lines,
            "total": 4 * 1999,
            "currency": "USD",
            "created_at": order.created_at_ms,
            "updated_at": order.created_at_ms,
        },
    }
    assert {"ok": True, "event": last.id, **created_reply(last)} == reply
    (row,) = translate(last).idempotency
    assert json.loads(row["reply"]) == reply
    assert await engine.redis.hgetall(k.order(order.id)) == {
        "id": order.id,
        "owner": "alice",
        "status": "pending",
        "reservation_id": r.id,
        "lines": '[["sku-1","east",2,1999],["sku-1","west",2,1999]]',
        "total": str(4 * 1999),
        "currency": "USD",
        "created_at": str(order.created_at_ms),
        "updated_at": str(order.created_at_ms),
    }
    record = await engine.redis.hgetall(k.reservation(r.id))
    assert (record["status"], record["order_id"]) == ("committed", order.id)
    assert record["ended_at"] == str(order.created_at_ms)

    # a direct order's (place_order.lua) alike, with no reservation
    bob = dataclasses.replace(BOB, idempotency_key="d")
    direct = await engine.place_order([LineRequest("sku-1", 1)], bob)
    (last,) = (await outbox.read(engine.redis, 0))[-1:]
    assert (last.type, last.data["reservation"], last.data["user"]) == ("order_created", "", "bob")
    assert last.data["lines"] == [["sku-1", "west", 1, 1999]]
    assert "reply" not in last.data["idempotency"]
    stored = str(await engine.redis.get(last.data["idempotency"]["key"]))
    assert {"ok": True, "event": last.id, **created_reply(last)} == json.loads(stored[32:])
    assert json.loads(stored[32:])["order"]["id"] == direct.id
    assert (await check_partition(engine.redis, 0)).ok
