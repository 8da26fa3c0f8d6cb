"""Expiry: a due reservation is dead on access, its units go to the next buyer at once,
and the sweep records each expiry exactly once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from engine import errors
from engine.engine import Engine
from engine.invariants import check_partition
from engine.models import ExpiryResult, LineRequest, Reservation, ReservationStatus
from tests.helpers import event_types, events, snapshot
from tests.support import (
    ALICE,
    BOB,
    SHORT_TTL_MS,
    STAFF,
    add_product,
    hold,
    levels,
    movement,
    of_type,
    redis_now_ms,
    wait_until_due,
)


async def test_due_reservation_cant_be_committed_and_is_released_then(engine: Engine) -> None:
    r = await hold(engine, ttl_ms=SHORT_TTL_MS)
    await wait_until_due(engine, r)
    # due but not yet released: the units are still counted as reserved
    assert await levels(engine, "sku-1") == {"main": (7, 3)}
    with pytest.raises(errors.ReservationExpired) as info:
        await engine.commit(r.id, ALICE)
    assert info.value.details() == {"reservation": r.id, "expires_at_ms": r.expires_at_ms}
    assert await levels(engine, "sku-1") == {"main": (10, 0)}
    assert (await check_partition(engine.redis, 0)).ok

    [e] = await of_type(engine, "reservation_expired")
    assert (e["reservation"], e["user"], e["trigger"]) == (r.id, "alice", "access")
    assert e["expires_at"] == r.expires_at_ms
    assert e["movements"] == [movement("sku-1", "main", (7, 10), (3, 0))]
    assert (e["actor"], e["request_id"]) == ("system", "")
    assert e["ts"] >= r.expires_at_ms
    assert "order_created" not in await event_types(engine.redis)

    # once released, every later call is refused the same way and changes nothing
    before = await snapshot(engine.redis)
    for call in (engine.commit, engine.release, engine.extend):
        with pytest.raises(errors.ReservationExpired):
            await call(r.id, ALICE)
    assert await snapshot(engine.redis) == before


async def test_due_reservation_cant_be_released_or_extended(engine: Engine) -> None:
    r = await hold(engine, ttl_ms=SHORT_TTL_MS)
    await wait_until_due(engine, r)
    with pytest.raises(errors.ReservationExpired):
        await engine.extend(r.id, ALICE, ttl_ms=60_000)
    assert await levels(engine, "sku-1") == {"main": (10, 0)}
    with pytest.raises(errors.ReservationExpired):
        await engine.release(r.id, ALICE)
    assert [e["trigger"] for e in await of_type(engine, "reservation_expired")] == ["access"]
    assert await of_type(engine, "reservation_extended") == []
    assert await of_type(engine, "reservation_released") == []


async def test_due_units_go_to_the_next_reserve_call_without_a_sweep(engine: Engine) -> None:
    r = await hold(engine, 10, ttl_ms=SHORT_TTL_MS)
    with pytest.raises(errors.InsufficientStock):
        await engine.reserve([LineRequest("sku-1", 1)], BOB)
    await wait_until_due(engine, r)
    bobs = await engine.reserve([LineRequest("sku-1", 10)], BOB)
    assert [line.quantity for line in bobs.lines] == [10]
    assert await levels(engine, "sku-1") == {"main": (0, 10)}
    assert await event_types(engine.redis) == [
        "product_updated",
        "stock_adjusted",
        "reservation_created",
        "reservation_expired",
        "reservation_created",
    ]
    expired = (await events(engine.redis))[-2]
    assert (expired["reservation"], expired["trigger"]) == (r.id, "reserve")
    assert expired["movements"] == [movement("sku-1", "main", (0, 10), (10, 0))]
    assert (await check_partition(engine.redis, 0)).ok


async def test_due_units_go_to_the_next_direct_order(engine: Engine) -> None:
    r = await hold(engine, 10, ttl_ms=SHORT_TTL_MS)
    await wait_until_due(engine, r)
    order = await engine.place_order([LineRequest("sku-1", 10)], BOB)
    assert [line.quantity for line in order.lines] == [10]
    assert await levels(engine, "sku-1") == {"main": (0, 0)}
    assert (await event_types(engine.redis))[-2:] == ["reservation_expired", "order_created"]


async def test_sweep_expires_each_due_reservation_exactly_once(engine: Engine) -> None:
    await add_product(engine, "sku-1", {"main": 10})
    short = [
        await engine.reserve([LineRequest("sku-1", 2)], ctx, ttl_ms=SHORT_TTL_MS)
        for ctx in (ALICE, BOB)
    ]
    long = await engine.reserve([LineRequest("sku-1", 1)], ALICE, ttl_ms=60_000)
    assert await engine.expire() == ExpiryResult(expired=0, still_due=0)
    await wait_until_due(engine, *short)

    assert await engine.expire() == ExpiryResult(expired=2, still_due=0)
    swept = await of_type(engine, "reservation_expired")
    assert sorted(e["reservation"] for e in swept) == sorted(r.id for r in short)
    assert {e["trigger"] for e in swept} == {"sweep"}
    assert {e["user"] for e in swept} == {"alice", "bob"}
    assert await levels(engine, "sku-1") == {"main": (9, 1)}

    before = await snapshot(engine.redis)
    assert await engine.expire() == ExpiryResult(expired=0, still_due=0)
    assert await snapshot(engine.redis) == before
    for r in short:
        assert (await engine.get_reservation(r.id, STAFF)).status == ReservationStatus.EXPIRED
        with pytest.raises(errors.ReservationExpired):
            await engine.commit(r.id, STAFF)
    assert (await engine.get_reservation(long.id, ALICE)).status == ReservationStatus.ACTIVE
    assert len(await of_type(engine, "reservation_expired")) == 2


async def test_sweep_limit_leaves_the_rest_due(engine: Engine) -> None:
    await add_product(engine, "sku-1", {"main": 10})
    held = [
        await engine.reserve([LineRequest("sku-1", 1)], ALICE, ttl_ms=SHORT_TTL_MS)
        for _ in range(3)
    ]
    await wait_until_due(engine, *held)
    assert await engine.expire(limit=2) == ExpiryResult(expired=2, still_due=1)
    assert await engine.expire(limit=2) == ExpiryResult(expired=1, still_due=0)
    with pytest.raises(errors.InvalidInput):
        await engine.expire(limit=0)


async def test_get_reservation_shows_expired_once_due(engine: Engine) -> None:
    r = await hold(engine, ttl_ms=SHORT_TTL_MS)
    assert (await engine.get_reservation(r.id, ALICE)).status == ReservationStatus.ACTIVE
    await wait_until_due(engine, r)
    # before any script released it, a read already says expired
    seen = await engine.get_reservation(r.id, ALICE)
    assert seen.status == ReservationStatus.EXPIRED
    assert seen.lines == r.lines


async def test_ended_records_keep_a_ttl(engine: Engine) -> None:
    await add_product(engine, "sku-1", {"main": 10})
    k = engine.keys(0)
    retention = engine.settings.reservation_retention_ms
    released = await engine.reserve([LineRequest("sku-1", 1)], ALICE, ttl_ms=60_000)
    committed = await engine.reserve([LineRequest("sku-1", 1)], ALICE, ttl_ms=60_000)
    expired = await engine.reserve([LineRequest("sku-1", 1)], ALICE, ttl_ms=SHORT_TTL_MS)
    t0 = await redis_now_ms(engine)
    await engine.release(released.id, ALICE)
    order = await engine.commit(committed.id, ALICE)
    t1 = await redis_now_ms(engine)
    await wait_until_due(engine, expired)
    assert (await engine.expire()).expired == 1

    # the Redis clock around the calls bounds when they ended, however long the test takes
    for r in (released, committed):
        ends = await engine.redis.pexpiretime(k.reservation(r.id))
        assert t0 + retention <= ends <= t1 + retention
    # an expired one's record is kept retention after its expires_at, as before it had a TTL
    # from its start (lua/lib.lua's layout: none while live)
    assert await engine.redis.pexpiretime(k.reservation(expired.id)) == (
        expired.expires_at_ms + retention
    )
    seen = await engine.get_reservation(committed.id, ALICE)
    assert (seen.status, seen.order_id) == (ReservationStatus.COMMITTED, order.id)


async def _expire_by_commit(engine: Engine, r: Reservation) -> None:
    with pytest.raises(errors.ReservationExpired):
        await engine.commit(r.id, ALICE)


async def _expire_by_reserve(engine: Engine, r: Reservation) -> None:
    await engine.reserve([LineRequest("sku-1", 10)], BOB)


async def _expire_by_order(engine: Engine, r: Reservation) -> None:
    await engine.place_order([LineRequest("sku-1", 10)], BOB)


async def _expire_by_sweep(engine: Engine, r: Reservation) -> None:
    assert (await engine.expire()).expired == 1


@pytest.mark.cluster  # (the sweep names the records from a prefix: the same slot, no KEYS)
@pytest.mark.parametrize(
    "end", [_expire_by_commit, _expire_by_reserve, _expire_by_order, _expire_by_sweep]
)
async def test_a_live_record_has_no_ttl_and_every_way_of_expiring_gives_it_one(
    engine: Engine, end: Callable[[Engine, Reservation], Awaitable[None]]
) -> None:
    # the record's TTL is written as the reservation ends (one write less per reservation):
    # whichever call finds it due — a call on it, another buyer's reserve or direct order (their
    # sweep first), the periodic sweep — leaves the record retention after its expires_at
    k = engine.keys(0)
    r = await hold(engine, 10, ttl_ms=SHORT_TTL_MS)
    assert await engine.redis.pttl(k.reservation(r.id)) == -1
    await wait_until_due(engine, r)
    await end(engine, r)
    assert await engine.redis.pexpiretime(k.reservation(r.id)) == (
        r.expires_at_ms + engine.settings.reservation_retention_ms
    )
    seen = await engine.get_reservation(r.id, ALICE)
    assert seen.status == ReservationStatus.EXPIRED
    assert (await check_partition(engine.redis, 0)).ok


# -- exactly at expires_at ---------------------------------------------------------------

# Holds the Redis server until its clock (TIME, read as the scripts read it) reaches ARGV[1] ms.
HOLD_UNTIL = """
local target = tonumber(ARGV[1])
while true do
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if now >= target then return now end
end
"""

HOLD_MS = 10
TRIALS = 200

CALLS: dict[str, Callable[[Engine, str], Awaitable[Any]]] = {
    "commit": lambda engine, rid: engine.commit(rid, ALICE),
    "release": lambda engine, rid: engine.release(rid, ALICE),
    "extend": lambda engine, rid: engine.extend(rid, ALICE, ttl_ms=60_000),
}
DONE = {
    "commit": "order_created",
    "release": "reservation_released",
    "extend": "reservation_extended",
}


async def call_at(
    engine: Engine, holder: Redis, call: str, before_ms: int
) -> tuple[int, int, bool]:
    """`call` on a fresh reservation, run as near as can be arranged to `before_ms` before
    its expires_at on the Redis clock. Returns (expires_at, the script's own clock reading
    from the event it wrote, whether the call succeeded)."""
    r: Reservation = await engine.reserve([LineRequest("sku-1", 1)], ALICE, ttl_ms=SHORT_TTL_MS)
    target = r.expires_at_ms - before_ms
    # hold the server only briefly: a long busy script invites the OS to preempt it after
    await asyncio.sleep(max(0, target - HOLD_MS - await redis_now_ms(engine)) / 1000)
    holding: asyncio.Future[Any] = asyncio.ensure_future(holder.eval(HOLD_UNTIL, 0, target))
    await asyncio.sleep(HOLD_MS / 4000)  # the hold is in before the call (else the trial misses)
    refused: errors.ReservationExpired | None = None
    try:
        await CALLS[call](engine, r.id)
    except errors.ReservationExpired as exc:
        refused = exc
    await holding
    succeeded = refused is None
    if refused is not None:
        assert refused.details() == {"reservation": r.id, "expires_at_ms": r.expires_at_ms}
    last = (await events(engine.redis))[-1]
    assert last["type"] == (DONE[call] if succeeded else "reservation_expired"), last
    assert last["reservation"] == r.id
    return r.expires_at_ms, int(last["ts"]), succeeded


@pytest.mark.parametrize("call", list(CALLS))
async def test_live_until_expires_at_and_not_one_millisecond_after(
    engine: Engine, call: str
) -> None:
    """A call 2 ms before expires_at (Redis clock) succeeds; one at expires_at is refused.

    No clock is faked and no data is edited: the reservation's expires_at is the one the
    reserve script set. To make the call run at a chosen millisecond of the Redis clock, a
    script on another connection holds the (single-threaded) server until TIME reaches it,
    while the engine's call waits in the queue behind it and runs the moment it is let go.
    Whether that landed on the wanted millisecond is not assumed: every script stamps its
    event with the `now` it decided by, so each trial reads back when its call really ran and
    checks the rule against that (succeeded exactly when now < expires_at). A trial that a
    busy machine made miss its millisecond still checks the rule and is tried again: load
    costs trials, never a wrong verdict."""
    await add_product(engine, "sku-1", {"main": 1000})
    holder = Redis.from_url(engine.settings.redis_url)
    ran: dict[int, bool] = {}  # ms before expires_at the call ran -> it succeeded
    try:
        for _ in range(TRIALS):
            missing = [ms for ms in (2, 0) if ms not in ran]
            if not missing:
                break
            expires_at, now, succeeded = await call_at(engine, holder, call, missing[0])
            assert succeeded == (now < expires_at), (expires_at, now)
            ran[expires_at - now] = succeeded
    finally:
        await holder.aclose()

    assert (ran.get(2), ran.get(0)) == (True, False), f"trials landed at {sorted(ran)} ms"
    assert (await check_partition(engine.redis, 0)).ok
