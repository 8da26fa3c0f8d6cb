"""A reservation's life: release and extend, by its owner, by others, by staff."""

from __future__ import annotations

import dataclasses

import pytest

from engine import errors
from engine.engine import Engine
from engine.invariants import check_partition
from engine.models import ExpiryResult, LineRequest, ReservationStatus
from tests.helpers import events, snapshot
from tests.support import (
    ALICE,
    BOB,
    SHORT_TTL_MS,
    STAFF,
    add_product,
    assert_stamped,
    hold,
    levels,
    movement,
    of_type,
    redis_now_ms,
    wait_until_due,
)

# -- release ----------------------------------------------------------------------------


async def test_release_gives_units_back(engine: Engine) -> None:
    r = await hold(engine)
    k = engine.keys(0)
    t0 = await redis_now_ms(engine)
    released = await engine.release(r.id, ALICE)
    t1 = await redis_now_ms(engine)
    assert released.status == ReservationStatus.RELEASED
    assert (released.id, released.expires_at_ms) == (r.id, r.expires_at_ms)
    assert await levels(engine, "sku-1") == {"main": (10, 0)}
    assert await engine.redis.hget(k.live, r.id) is None
    assert await engine.redis.zscore(k.expiry, r.id) is None
    assert (await engine.get_reservation(r.id, ALICE)).status == ReservationStatus.RELEASED
    assert (await check_partition(engine.redis, 0)).ok

    e = (await events(engine.redis))[-1]
    assert e["type"] == "reservation_released"
    assert (e["reservation"], e["user"]) == (r.id, "alice")
    assert e["movements"] == [movement("sku-1", "main", (7, 10), (3, 0))]
    assert_stamped(e, actor="alice", request_id="req-alice", low_ms=t0, high_ms=t1)


async def test_second_release_is_refused(engine: Engine) -> None:
    r = await hold(engine)
    await engine.release(r.id, ALICE)
    before = await snapshot(engine.redis)
    with pytest.raises(errors.ReservationNotLive) as info:
        await engine.release(r.id, ALICE)
    assert info.value.details() == {"reservation": r.id, "status": "released", "order": None}
    assert await snapshot(engine.redis) == before


async def test_another_users_reservation_is_not_found(engine: Engine) -> None:
    r = await hold(engine)
    before = await snapshot(engine.redis)
    with pytest.raises(errors.ReservationNotFound) as info:
        await engine.release(r.id, BOB)
    assert info.value.reservation == r.id
    with pytest.raises(errors.ReservationNotFound):
        await engine.extend(r.id, BOB, ttl_ms=120_000)
    with pytest.raises(errors.ReservationNotFound):
        await engine.commit(r.id, BOB)
    with pytest.raises(errors.ReservationNotFound):
        await engine.get_reservation(r.id, BOB)
    assert await snapshot(engine.redis) == before


async def test_staff_can_release_anyones_reservation(engine: Engine) -> None:
    r = await hold(engine)
    released = await engine.release(r.id, STAFF)
    assert (released.owner, released.status) == ("alice", ReservationStatus.RELEASED)
    assert (await engine.get_reservation(r.id, STAFF)).owner == "alice"
    e = (await events(engine.redis))[-1]
    assert (e["type"], e["user"], e["actor"], e["request_id"]) == (
        "reservation_released",
        "alice",
        "staff-1",
        "req-staff",
    )


@pytest.mark.parametrize("bad_id", ["", "nope", "0" * 31, "A" * 32, "0" * 33, "../" + "0" * 29])
async def test_malformed_or_unknown_id_is_not_found(engine: Engine, bad_id: str) -> None:
    await hold(engine)
    before = await snapshot(engine.redis)
    for call in (engine.release, engine.extend, engine.commit, engine.get_reservation):
        with pytest.raises(errors.ReservationNotFound):
            await call(bad_id, STAFF)
    with pytest.raises(errors.ReservationNotFound) as info:
        await engine.release("f" * 32, STAFF)
    assert info.value.reservation == "f" * 32
    assert await snapshot(engine.redis) == before


# -- extend -----------------------------------------------------------------------------


async def test_extend_moves_expires_at(engine: Engine) -> None:
    r = await hold(engine, ttl_ms=10_000)
    k = engine.keys(0)
    t0 = await redis_now_ms(engine)
    extended = await engine.extend(r.id, ALICE, ttl_ms=120_000)
    t1 = await redis_now_ms(engine)
    assert t0 + 120_000 <= extended.expires_at_ms <= t1 + 120_000
    assert (extended.status, extended.created_at_ms) == ("active", r.created_at_ms)
    assert await engine.redis.zscore(k.expiry, r.id) == extended.expires_at_ms
    seen = await engine.get_reservation(r.id, ALICE)
    assert seen.expires_at_ms == extended.expires_at_ms
    assert await engine.redis.pttl(k.reservation(r.id)) > 120_000
    assert await levels(engine, "sku-1") == {"main": (7, 3)}

    e = (await events(engine.redis))[-1]
    assert e["type"] == "reservation_extended"
    assert (e["reservation"], e["user"]) == (r.id, "alice")
    assert (e["expires_at_before"], e["expires_at_after"]) == (
        r.expires_at_ms,
        extended.expires_at_ms,
    )
    assert "movements" not in e
    assert_stamped(e, actor="alice", request_id="req-alice", low_ms=t0, high_ms=t1)


async def test_an_extended_reservation_outlives_its_first_expiry(engine: Engine) -> None:
    r = await hold(engine, ttl_ms=SHORT_TTL_MS)
    await engine.extend(r.id, ALICE, ttl_ms=60_000)
    await wait_until_due(engine, r)
    assert await engine.expire() == ExpiryResult(expired=0, still_due=0)
    await engine.reserve([LineRequest("sku-1", 7)], BOB)  # runs the reserve-time expiry too
    assert (await engine.get_reservation(r.id, ALICE)).status == ReservationStatus.ACTIVE
    order = await engine.commit(r.id, ALICE)
    assert order.reservation_id == r.id
    assert await of_type(engine, "reservation_expired") == []


async def test_extend_to_an_earlier_time_changes_nothing(engine: Engine) -> None:
    r = await hold(engine, ttl_ms=60_000)
    before = await snapshot(engine.redis)
    same = await engine.extend(r.id, ALICE, ttl_ms=10_000)
    assert same.expires_at_ms == r.expires_at_ms
    assert await snapshot(engine.redis) == before


async def test_extend_is_capped_by_the_max_lifetime(engine: Engine) -> None:
    capped = Engine(
        engine.redis, dataclasses.replace(engine.settings, reservation_max_lifetime_ms=20_000)
    )
    await add_product(capped, "sku-1", {"main": 10})
    r = await capped.reserve([LineRequest("sku-1", 1)], ALICE, ttl_ms=10_000)
    cap = r.created_at_ms + 20_000
    extended = await capped.extend(r.id, ALICE, ttl_ms=60_000)
    assert extended.expires_at_ms == cap
    assert (await events(engine.redis))[-1]["expires_at_after"] == cap

    before = await snapshot(engine.redis)
    with pytest.raises(errors.ExtensionLimitReached) as info:
        await capped.extend(r.id, ALICE, ttl_ms=60_000)
    assert info.value.details() == {"reservation": r.id, "max_expires_at_ms": cap}
    assert await snapshot(engine.redis) == before


@pytest.mark.parametrize("ttl_ms", [0, 49, 3_600_001, True])
async def test_extend_with_bad_ttl_is_refused(engine: Engine, ttl_ms: int) -> None:
    r = await hold(engine)
    before = await snapshot(engine.redis)
    with pytest.raises(errors.InvalidInput) as info:
        await engine.extend(r.id, ALICE, ttl_ms=ttl_ms)
    assert info.value.field == "ttl"
    assert await snapshot(engine.redis) == before
