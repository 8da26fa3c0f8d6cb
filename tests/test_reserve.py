"""reserve: counters, records, routing over warehouses, refusals, idempotency."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, cast

import pytest

from engine import errors, outbox, records
from engine.engine import Engine
from engine.invariants import check_partition
from engine.models import LineRequest, ReservationStatus, ReservedLine
from engine.validation import MAX_LINES, MAX_QUANTITY
from persistence.event_replies import created_reply
from persistence.translate import BadEvent, Rows, translate, translate_into
from tests.helpers import event_types, events, snapshot
from tests.support import ALICE, BOB, add_product, assert_stamped, levels, movement, redis_now_ms

pytestmark = pytest.mark.cluster  # on the redis-server and on a Redis Cluster


def placed(lines: tuple[ReservedLine, ...]) -> list[tuple[str, str, int]]:
    return [(x.product, x.warehouse, x.quantity) for x in lines]


async def test_reserve_moves_units_and_writes_record_live_expiry_and_event(
    engine: Engine,
) -> None:
    await add_product(engine, "sku-1", {"main": 10})
    k = engine.keys(0)
    t0 = await redis_now_ms(engine)
    r = await engine.reserve([LineRequest("sku-1", 3)], ALICE, ttl_ms=60_000)
    t1 = await redis_now_ms(engine)

    assert (r.owner, r.status, r.replayed, r.order_id) == ("alice", "active", False, None)
    assert placed(r.lines) == [("sku-1", "main", 3)]
    assert r.quantity == 3
    assert t0 <= r.created_at_ms <= t1
    assert r.expires_at_ms == r.created_at_ms + 60_000
    assert await levels(engine, "sku-1") == {"main": (7, 3)}

    record = cast(dict[str, str], await engine.redis.hgetall(k.reservation(r.id)))
    # what its calls read or change as fields; what never changes after its start in 'data'
    assert record == {
        "owner": "alice",
        "status": "active",
        "expires_at": str(r.expires_at_ms),
        "data": records.record_data(
            r.created_at_ms, [["sku-1", "main", 3]], "req-alice", '{"n":1}'
        ),  # counted: one of alice's live reservations (lua/limits.lua)
    }
    assert json.loads(record["data"]) == {
        "created_at": r.created_at_ms,
        "lines": [["sku-1", "main", 3]],
        "request_id": "req-alice",
        "counted": {"n": 1},
    }
    assert records.reservation_record(r.id, record) == {
        "id": r.id,
        "owner": "alice",
        "status": "active",
        "created_at": str(r.created_at_ms),
        "expires_at": str(r.expires_at_ms),
        "lines": '[["sku-1","main",3]]',
        "request_id": "req-alice",
        "counted": '{"n":1}',
    }
    # no TTL while live: its end gives it one (tests/test_expiry.py)
    assert await engine.redis.pttl(k.reservation(r.id)) == -1
    live = await engine.redis.hget(k.live, r.id)
    assert live is not None
    assert json.loads(live) == {"owner": "alice", "lines": [["sku-1", "main", 3]], "n": 1}
    assert await engine.redis.zscore(k.expiry, r.id) == r.expires_at_ms

    created = (await events(engine.redis))[-1]
    assert created["type"] == "reservation_created"
    assert (created["reservation"], created["user"]) == (r.id, "alice")
    assert created["expires_at"] == r.expires_at_ms
    assert created["lines"] == [["sku-1", "main", 3]]
    assert created["movements"] == [movement("sku-1", "main", (10, 7), (0, 3))]
    assert_stamped(created, actor="alice", request_id="req-alice", low_ms=t0, high_ms=t1)
    assert created["ts"] == r.created_at_ms
    assert (await check_partition(engine.redis, 0)).ok

    seen = await engine.get_reservation(r.id, ALICE)
    assert dataclasses.replace(seen, replayed=False) == r


async def test_a_record_written_before_its_data_was_packed_reads_alike(engine: Engine) -> None:
    # a record the previous version wrote keeps each field of its own (id, created_at, lines,
    # request_id, counted); it lives on for its retention after an upgrade, and every reader
    # of a record — the read, an extend (created_at), a commit, the repair's — takes it alike
    await add_product(engine, "sku-1", {"main": 10})
    k = engine.keys(0)
    r = await engine.reserve([LineRequest("sku-1", 2)], ALICE, ttl_ms=60_000)
    key = k.reservation(r.id)
    before: dict[Any, Any] = records.reservation_record(
        r.id, cast(dict[str, str], await engine.redis.hgetall(key))
    )
    await engine.redis.delete(key)
    await engine.redis.hset(key, mapping=before)  # the fields as the previous version wrote them
    assert "data" not in await engine.redis.hgetall(key)

    seen = await engine.get_reservation(r.id, ALICE)
    assert (seen.created_at_ms, seen.expires_at_ms, seen.lines) == (
        r.created_at_ms,
        r.expires_at_ms,
        r.lines,
    )
    extended = await engine.extend(r.id, ALICE, ttl_ms=120_000)
    assert (extended.created_at_ms, extended.lines) == (r.created_at_ms, r.lines)
    assert extended.expires_at_ms > r.expires_at_ms
    order = await engine.commit(r.id, ALICE)
    assert [(x.product, x.quantity) for x in order.lines] == [("sku-1", 2)]
    assert await levels(engine, "sku-1") == {"main": (8, 0)}
    assert (await check_partition(engine.redis, 0)).ok


async def test_reserve_uses_default_ttl(engine: Engine) -> None:
    await add_product(engine, "sku-1", {"main": 1})
    r = await engine.reserve([LineRequest("sku-1", 1)], ALICE)
    assert r.expires_at_ms - r.created_at_ms == engine.settings.reservation_ttl_ms


async def test_lines_of_the_same_product_are_summed(engine: Engine) -> None:
    await add_product(engine, "sku-1", {"main": 10})
    r = await engine.reserve(
        [LineRequest("sku-1", 2), LineRequest("sku-1", 3), LineRequest("sku-1", 1, "main")],
        ALICE,
    )
    assert placed(r.lines) == [("sku-1", "main", 6)]
    assert (await events(engine.redis))[-1]["movements"] == [
        movement("sku-1", "main", (10, 4), (0, 6))
    ]


async def test_named_warehouse_serves_its_line_alone(engine: Engine) -> None:
    await add_product(engine, "sku-1", {"east": 10, "west": 4})
    r = await engine.reserve([LineRequest("sku-1", 3, "west")], ALICE)
    assert placed(r.lines) == [("sku-1", "west", 3)]
    assert await levels(engine, "sku-1") == {"east": (10, 0), "west": (1, 3)}


async def test_named_line_is_served_before_priority_lines(engine: Engine) -> None:
    await add_product(engine, "sku-1", {"east": 3, "west": 3})
    # the unnamed line comes first, yet can't take the units the named one needs
    r = await engine.reserve([LineRequest("sku-1", 4), LineRequest("sku-1", 2, "east")], ALICE)
    assert sorted(placed(r.lines)) == [("sku-1", "east", 3), ("sku-1", "west", 3)]


async def test_priority_decides_the_warehouse(engine: Engine) -> None:
    await add_product(engine, "sku-1", {"east": 10, "west": 10}, priorities={"east": 5, "west": 1})
    r = await engine.reserve([LineRequest("sku-1", 4)], ALICE)
    assert placed(r.lines) == [("sku-1", "west", 4)]


async def test_split_across_warehouses_by_priority(engine: Engine) -> None:
    await add_product(engine, "sku-1", {"a": 2, "b": 0, "c": 5})
    r = await engine.reserve([LineRequest("sku-1", 4)], ALICE)
    assert placed(r.lines) == [("sku-1", "a", 2), ("sku-1", "c", 2)]
    assert await levels(engine, "sku-1") == {"a": (0, 2), "b": (0, 0), "c": (3, 2)}
    assert (await events(engine.redis))[-1]["movements"] == [
        movement("sku-1", "a", (2, 0), (0, 2)),
        movement("sku-1", "c", (5, 3), (0, 2)),
    ]


async def test_no_split_picks_the_first_warehouse_that_holds_the_line(engine: Engine) -> None:
    await add_product(engine, "sku-1", {"a": 3, "b": 5, "c": 9})
    r = await engine.reserve([LineRequest("sku-1", 4)], ALICE, allow_split=False)
    assert placed(r.lines) == [("sku-1", "b", 4)]


async def test_no_split_refuses_when_no_single_warehouse_holds_the_line(engine: Engine) -> None:
    await add_product(engine, "sku-1", {"a": 3, "b": 5})
    before = await snapshot(engine.redis)
    with pytest.raises(errors.InsufficientStock) as info:
        await engine.reserve([LineRequest("sku-1", 6)], ALICE, allow_split=False)
    # the best single warehouse is what could be had
    assert info.value.lines == [errors.Shortage("sku-1", requested=6, available=5)]
    assert await snapshot(engine.redis) == before
    # with splitting allowed, the same line is served
    r = await engine.reserve([LineRequest("sku-1", 6)], ALICE)
    assert placed(r.lines) == [("sku-1", "a", 3), ("sku-1", "b", 3)]


async def test_shortage_names_every_short_line_and_changes_nothing(engine: Engine) -> None:
    await add_product(engine, "sku-1", {"east": 2, "west": 1})
    await add_product(engine, "sku-2", {"main": 5})
    await add_product(engine, "sku-3", {"main": 1})
    before = await snapshot(engine.redis)
    with pytest.raises(errors.InsufficientStock) as info:
        await engine.reserve(
            [
                LineRequest("sku-1", 4),
                LineRequest("sku-2", 5),
                LineRequest("sku-3", 2, "main"),
            ],
            ALICE,
        )
    assert sorted(info.value.lines, key=lambda s: s.product) == [
        errors.Shortage("sku-1", requested=4, available=3),
        errors.Shortage("sku-3", requested=2, available=1, warehouse="main"),
    ]
    assert info.value.code == "insufficient_stock"
    assert "sku-3@main: requested 2, available 1" in str(info.value)
    # all or nothing: sku-2 had enough, and was not reserved
    assert await snapshot(engine.redis) == before
    assert await levels(engine, "sku-2") == {"main": (5, 0)}


async def test_unknown_product_or_warehouse_is_refused(engine: Engine) -> None:
    await add_product(engine, "sku-1", {"main": 5})
    before = await snapshot(engine.redis)
    with pytest.raises(errors.ProductNotFound) as missing:
        await engine.reserve([LineRequest("sku-1", 1), LineRequest("sku-404", 1)], ALICE)
    assert missing.value.details() == {"product": "sku-404"}
    with pytest.raises(errors.WarehouseNotFound) as nowhere:
        await engine.reserve([LineRequest("sku-1", 1, "south")], ALICE)
    assert nowhere.value.details() == {"product": "sku-1", "warehouse": "south"}
    assert await snapshot(engine.redis) == before


@pytest.mark.parametrize(
    ("lines", "ttl_ms", "field"),
    [
        ([LineRequest("sku-1", 0)], None, "quantity"),
        ([LineRequest("sku-1", -2)], None, "quantity"),
        ([LineRequest("sku-1", True)], None, "quantity"),
        ([LineRequest("sku-1", MAX_QUANTITY + 1)], None, "quantity"),
        ([LineRequest("sku-1", 1)] * (MAX_LINES + 1), None, "lines"),
        ([], None, "lines"),
        ([LineRequest("sku|1", 1)], None, "product"),
        ([LineRequest("", 1)], None, "product"),
        ([LineRequest("sku-1", 1, "")], None, "warehouse"),
        ([LineRequest("sku-1", 1, "ma|in")], None, "warehouse"),
        ([LineRequest("sku-1", 1)], 49, "ttl"),
        ([LineRequest("sku-1", 1)], 3_600_001, "ttl"),
    ],
)
async def test_bad_input_is_refused_and_changes_nothing(
    engine: Engine, lines: list[LineRequest], ttl_ms: int | None, field: str
) -> None:
    await add_product(engine, "sku-1", {"main": MAX_QUANTITY + 5})
    before = await snapshot(engine.redis)
    with pytest.raises(errors.InvalidInput) as info:
        await engine.reserve(lines, ALICE, ttl_ms=ttl_ms)
    assert info.value.field == field
    assert info.value.details() == {"field": field}
    assert await snapshot(engine.redis) == before


async def test_lines_of_one_product_are_summed_past_the_bound_of_one_line(
    engine: Engine,
) -> None:
    await add_product(engine, "sku-1", {"main": MAX_QUANTITY + 5})

    held = await engine.reserve(
        [LineRequest("sku-1", MAX_QUANTITY), LineRequest("sku-1", 1)], ALICE
    )

    assert [(li.product, li.quantity) for li in held.lines] == [("sku-1", MAX_QUANTITY + 1)]
    assert await levels(engine, "sku-1") == {"main": (4, MAX_QUANTITY + 1)}


async def test_idempotent_replay_returns_the_same_reservation(engine: Engine) -> None:
    await add_product(engine, "sku-1", {"main": 10})
    ctx = dataclasses.replace(ALICE, idempotency_key="cart-42")
    first = await engine.reserve([LineRequest("sku-1", 3)], ctx, ttl_ms=60_000)
    after_first = await snapshot(engine.redis)
    again = await engine.reserve([LineRequest("sku-1", 3)], ctx, ttl_ms=60_000)
    assert (first.replayed, again.replayed) == (False, True)
    assert dataclasses.replace(again, replayed=False) == first
    assert await snapshot(engine.redis) == after_first
    assert await levels(engine, "sku-1") == {"main": (7, 3)}
    assert (await event_types(engine.redis)).count("reservation_created") == 1


async def test_idempotency_key_with_another_body_is_refused(engine: Engine) -> None:
    await add_product(engine, "sku-1", {"main": 10})
    ctx = dataclasses.replace(ALICE, idempotency_key="cart-42")
    await engine.reserve([LineRequest("sku-1", 3)], ctx)
    before = await snapshot(engine.redis)
    for lines, split in (([LineRequest("sku-1", 4)], True), ([LineRequest("sku-1", 3)], False)):
        with pytest.raises(errors.IdempotencyMismatch) as info:
            await engine.reserve(lines, ctx, allow_split=split)
        assert info.value.code == "idempotency_mismatch"
    assert await snapshot(engine.redis) == before


async def test_same_key_from_different_actors_does_not_collide(engine: Engine) -> None:
    await add_product(engine, "sku-1", {"main": 10})
    a = await engine.reserve(
        [LineRequest("sku-1", 3)], dataclasses.replace(ALICE, idempotency_key="k")
    )
    b = await engine.reserve(
        [LineRequest("sku-1", 3)], dataclasses.replace(BOB, idempotency_key="k")
    )
    assert a.id != b.id
    assert (a.owner, b.owner, b.replayed) == ("alice", "bob", False)
    assert await levels(engine, "sku-1") == {"main": (4, 6)}
    assert (await event_types(engine.redis)).count("reservation_created") == 2


async def test_bad_idempotency_key_is_refused(engine: Engine) -> None:
    await add_product(engine, "sku-1", {"main": 10})
    before = await snapshot(engine.redis)
    for key in ("", "x" * 256):
        with pytest.raises(errors.InvalidInput) as info:
            await engine.reserve(
                [LineRequest("sku-1", 1)], dataclasses.replace(ALICE, idempotency_key=key)
            )
        assert info.value.field == "idempotency_key"
    assert await snapshot(engine.redis) == before


async def test_reserved_units_are_not_sold_twice(engine: Engine) -> None:
    await add_product(engine, "sku-1", {"main": 5})
    held = await engine.reserve([LineRequest("sku-1", 5)], ALICE)
    before = await snapshot(engine.redis)
    with pytest.raises(errors.InsufficientStock) as info:
        await engine.reserve([LineRequest("sku-1", 1)], BOB)
    assert info.value.lines == [errors.Shortage("sku-1", requested=1, available=0)]
    assert await snapshot(engine.redis) == before
    assert (await engine.get_reservation(held.id, ALICE)).status == ReservationStatus.ACTIVE


async def test_partitions_route_by_product_and_id(engine: Engine) -> None:
    sharded = Engine(engine.redis, dataclasses.replace(engine.settings, partitions=4))
    # sku-1 and sku-3 live in partition 2, sku-2 in partition 0
    for product in ("sku-1", "sku-2", "sku-3"):
        await add_product(sharded, product, {"main": 5})
    r = await sharded.reserve([LineRequest("sku-1", 1), LineRequest("sku-3", 2)], ALICE)
    assert sharded.partition_of_product("sku-1") == 2
    assert await engine.redis.exists(engine.keys(2).reservation(r.id)) == 1
    assert (await event_types(engine.redis, 2))[-1] == "reservation_created"
    assert "reservation_created" not in await event_types(engine.redis, 0)
    assert (await check_partition(engine.redis, 2)).ok

    # an id alone finds its partition
    assert (await sharded.release(r.id, ALICE)).status == ReservationStatus.RELEASED
    assert await levels(sharded, "sku-3") == {"main": (5, 0)}
    assert (await event_types(engine.redis, 2))[-1] == "reservation_released"


async def test_the_created_event_is_exactly_its_fields_split_and_keyed(engine: Engine) -> None:
    """reserve.lua writes its event as text (lib.lua emit_text): it decodes to the fields
    and the values (whole numbers) a cjson-encoded event has, text that needs escaping
    included, and a keyed call's idempotency copy — without the reply, which the event holds
    whole: the drain's rebuild of it (event_replies.created_reply) is the reply Redis keeps."""
    await add_product(engine, "sku-1", {"east": 2, "west": 5})
    ctx = dataclasses.replace(ALICE, actor='al"ice\\/é', request_id="req\n1", idempotency_key="k")
    r = await engine.reserve([LineRequest("sku-1", 4)], ctx, ttl_ms=60_000)

    created = (await events(engine.redis))[-1]
    event_id = created.pop("_id")
    copy = created.pop("idempotency")
    lines = [["sku-1", "east", 2], ["sku-1", "west", 2]]
    assert created == {
        "type": "reservation_created",
        "ts": r.created_at_ms,
        "actor": 'al"ice\\/é',
        "request_id": "req\n1",
        "reservation": r.id,
        "user": 'al"ice\\/é',
        "expires_at": r.expires_at_ms,
        "lines": lines,
        "movements": [
            movement("sku-1", "east", (2, 0), (0, 2)),
            movement("sku-1", "west", (5, 3), (0, 2)),
        ],
    }
    assert all(type(v) is int for v in (created["ts"], created["expires_at"]))
    reply = {
        "reservation": {
            "id": r.id,
            "owner": 'al"ice\\/é',
            "status": "active",
            "created_at": r.created_at_ms,
            "expires_at": r.expires_at_ms,
            "lines": lines,
        }
    }
    k = engine.keys(0)
    assert copy == {
        "key": k.idempotency('al"ice\\/é', "reserve", "k"),
        "fp": copy["fp"],
        "expires_at": r.created_at_ms + engine.settings.idempotency_ttl_ms,
    }
    assert len(copy["fp"]) == 32
    stored = str(await engine.redis.get(copy["key"]))
    assert stored.startswith(copy["fp"] + "{")
    assert json.loads(stored[32:]) == {"ok": True, "event": event_id, **reply}
    (last,) = [e for e in await outbox.read(engine.redis, 0) if e.id == event_id]
    assert created_reply(last) == reply
    (row,) = translate(last).idempotency
    assert json.loads(row["reply"]) == json.loads(stored[32:])


async def test_a_bad_event_in_a_batchs_translation_leaves_none_of_its_rows(
    engine: Engine,
) -> None:
    """The drain translates a batch's events into one set of rows (persistence/translate.py
    translate_into): an event found bad halfway — its reservation's row made, a line's
    quantity not a number — takes back what it had added, and is the dead letter alone."""
    await add_product(engine, "sku-1", {"main": 10})
    await engine.reserve([LineRequest("sku-1", 1)], ALICE)
    await engine.reserve([LineRequest("sku-1", 2)], BOB)
    first, second = [
        e for e in await outbox.read(engine.redis, 0) if e.type == "reservation_created"
    ]
    bad = dataclasses.replace(
        second, data={**second.data, "lines": [["sku-1", "main", 2], ["sku-1", "main", "x"]]}
    )
    rows = Rows()
    translate_into(first, rows)
    with pytest.raises(BadEvent):
        translate_into(bad, rows)
    assert rows == translate(first)
    translate_into(second, rows)
    assert len(rows.reservations_new) == len(rows.audit) == 2
