"""Products and stock: setup_product, adjust_stock, get_stock(s), on a real Redis."""

from __future__ import annotations

import pytest

from engine import errors
from engine.engine import Engine
from engine.models import LineRequest, Movement, StockLevel, StockReason
from tests.helpers import event_types, events, snapshot
from tests.support import ADMIN, ALICE, add_product, assert_stamped, levels, movement, redis_now_ms

# -- setup_product ----------------------------------------------------------------------


async def test_setup_creates_product_with_opening_stock_and_two_events(engine: Engine) -> None:
    t0 = await redis_now_ms(engine)
    p = await engine.setup_product(
        "sku-1",
        ADMIN,
        price=1999,
        currency="EUR",
        warehouses={"west": 1, "east": 0},
        stock={"east": 5, "west": 7},
    )
    t1 = await redis_now_ms(engine)
    assert p.created is True
    assert (p.id, p.price, p.currency) == ("sku-1", 1999, "EUR")
    assert p.warehouses == (("east", 0), ("west", 1))

    stock = await engine.get_stock("sku-1")
    assert (stock.price, stock.currency) == (1999, "EUR")
    assert stock.levels == (StockLevel("east", 0, 5, 0), StockLevel("west", 1, 7, 0))
    assert (stock.available, stock.reserved, stock.total) == (12, 0, 12)

    updated, adjusted = await events(engine.redis)
    assert updated["type"] == "product_updated"
    assert updated["product"] == "sku-1"
    assert updated["before"] == {}
    assert updated["after"] == {
        "price": 1999,
        "currency": "EUR",
        "warehouses": [["east", 0], ["west", 1]],
    }
    assert adjusted["type"] == "stock_adjusted"
    assert adjusted["reason"] == "initial"
    assert adjusted["movements"] == [
        movement("sku-1", "east", (0, 5), (0, 0)),
        movement("sku-1", "west", (0, 7), (0, 0)),
    ]
    for e in (updated, adjusted):
        assert_stamped(e, actor="admin", request_id="req-admin", low_ms=t0, high_ms=t1)


async def test_setup_defaults_to_settings_warehouse_and_currency(engine: Engine) -> None:
    p = await engine.setup_product("sku-1", ADMIN, price=10)
    assert (p.currency, p.warehouses) == ("USD", (("main", 0),))
    assert await levels(engine, "sku-1") == {"main": (0, 0)}
    # no opening stock: no stock_adjusted event
    assert await event_types(engine.redis) == ["product_updated"]


async def test_setup_updates_price_and_priority(engine: Engine) -> None:
    await add_product(engine, "sku-1", {"east": 5, "west": 7}, price=100)
    p = await engine.setup_product("sku-1", ADMIN, price=120, warehouses={"west": -1})
    assert p.created is False
    assert (p.price, p.warehouses) == (120, (("west", -1), ("east", 0)))
    # counters are untouched by an update
    assert await levels(engine, "sku-1") == {"west": (7, 0), "east": (5, 0)}
    last = (await events(engine.redis))[-1]
    assert last["type"] == "product_updated"
    assert last["before"]["price"] == 100
    assert last["before"]["warehouses"] == [["east", 0], ["west", 1]]
    assert last["after"]["price"] == 120
    assert last["after"]["warehouses"] == [["west", -1], ["east", 0]]
    # the new priority routes the next reservation
    r = await engine.reserve([LineRequest("sku-1", 2)], ALICE)
    assert [(x.warehouse, x.quantity) for x in r.lines] == [("west", 2)]


async def test_setup_adds_opening_stock_to_an_existing_product(engine: Engine) -> None:
    await add_product(engine, "sku-1", {"main": 5})
    p = await engine.setup_product(
        "sku-1", ADMIN, price=250, warehouses={"main": 0}, stock={"main": 3}
    )
    assert p.created is False
    assert await levels(engine, "sku-1") == {"main": (8, 0)}
    # nothing but the stock changed: one stock_adjusted, no product_updated
    assert await event_types(engine.redis) == [
        "product_updated",
        "stock_adjusted",
        "stock_adjusted",
    ]
    assert (await events(engine.redis))[-1]["movements"] == [
        movement("sku-1", "main", (5, 8), (0, 0))
    ]


async def test_setup_with_nothing_changed_writes_no_event(engine: Engine) -> None:
    await add_product(engine, "sku-1", {"main": 5})
    before = await snapshot(engine.redis)
    p = await engine.setup_product("sku-1", ADMIN, price=250, warehouses={"main": 0})
    assert p.created is False
    assert await snapshot(engine.redis) == before


async def test_setup_opening_stock_in_unknown_warehouse_is_refused(engine: Engine) -> None:
    await add_product(engine, "sku-1", {"main": 5})
    before = await snapshot(engine.redis)
    with pytest.raises(errors.WarehouseNotFound) as info:
        await engine.setup_product(
            "sku-1", ADMIN, price=999, warehouses={"main": 0}, stock={"nowhere": 3}
        )
    assert (info.value.product, info.value.warehouse) == ("sku-1", "nowhere")
    assert info.value.details() == {"product": "sku-1", "warehouse": "nowhere"}
    # the price change in the same call did not happen either
    assert await snapshot(engine.redis) == before


async def test_price_only_update_keeps_the_products_warehouses(engine: Engine) -> None:
    await add_product(engine, "sku-1", {"east": 5, "west": 7})
    p = await engine.setup_product("sku-1", ADMIN, price=300)
    assert p.warehouses == (("east", 0), ("west", 1))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"price": -1}, "price"),
        ({"price": True}, "price"),
        ({"price": 10**12 + 1}, "price"),
        ({"price": 1, "currency": "usd"}, "currency"),
        ({"price": 1, "warehouses": {"a|b": 0}}, "warehouse"),
        ({"price": 1, "warehouses": {"main": 10**6 + 1}}, "priority"),
        ({"price": 1, "stock": {"main": -1}}, "stock"),
        ({"price": 1, "warehouses": {}}, "warehouses"),
    ],
)
async def test_setup_bad_input_changes_nothing(
    engine: Engine, kwargs: dict[str, object], field: str
) -> None:
    await add_product(engine, "sku-1", {"main": 5})
    before = await snapshot(engine.redis)
    with pytest.raises(errors.InvalidInput) as info:
        await engine.setup_product("sku-1", ADMIN, **kwargs)  # type: ignore[arg-type]
    assert info.value.field == field
    assert await snapshot(engine.redis) == before


# -- adjust_stock -----------------------------------------------------------------------


async def test_adjust_receives_and_removes_with_one_event_each(engine: Engine) -> None:
    await add_product(engine, "sku-1", {"main": 5})
    t0 = await redis_now_ms(engine)
    got = await engine.adjust_stock("sku-1", {"main": 4}, StockReason.RECEIVED, ALICE)
    assert got == [Movement("sku-1", "main", 5, 9, 0, 0)]
    assert got[0].total_delta == 4
    got = await engine.adjust_stock("sku-1", {"main": -9}, "damaged", ALICE)
    assert got == [Movement("sku-1", "main", 9, 0, 0, 0)]
    t1 = await redis_now_ms(engine)
    assert await levels(engine, "sku-1") == {"main": (0, 0)}

    received, damaged = (await events(engine.redis))[-2:]
    assert (received["type"], received["reason"]) == ("stock_adjusted", "received")
    assert received["movements"] == [movement("sku-1", "main", (5, 9), (0, 0))]
    assert (damaged["type"], damaged["reason"]) == ("stock_adjusted", "damaged")
    assert damaged["movements"] == [movement("sku-1", "main", (9, 0), (0, 0))]
    for e in (received, damaged):
        assert e["product"] == "sku-1"
        assert_stamped(e, actor="alice", request_id="req-alice", low_ms=t0, high_ms=t1)


async def test_removing_more_than_available_is_refused(engine: Engine) -> None:
    await add_product(engine, "sku-1", {"main": 5})
    before = await snapshot(engine.redis)
    with pytest.raises(errors.InsufficientStock) as info:
        await engine.adjust_stock("sku-1", {"main": -6}, "lost", ALICE)
    assert info.value.lines == [errors.Shortage("sku-1", 6, 5, "main")]
    assert info.value.details() == {
        "lines": [{"product": "sku-1", "requested": 6, "available": 5, "warehouse": "main"}]
    }
    assert "requested 6, available 5" in str(info.value)
    assert await snapshot(engine.redis) == before


async def test_reserved_units_cant_be_removed(engine: Engine) -> None:
    await add_product(engine, "sku-1", {"main": 10})
    await engine.reserve([LineRequest("sku-1", 4)], ALICE)
    before = await snapshot(engine.redis)
    with pytest.raises(errors.InsufficientStock) as info:
        await engine.adjust_stock("sku-1", {"main": -7}, "correction", ADMIN)
    assert info.value.lines == [errors.Shortage("sku-1", 7, 6, "main")]
    assert await snapshot(engine.redis) == before
    # all the available units can go; the reserved ones stay
    await engine.adjust_stock("sku-1", {"main": -6}, "correction", ADMIN)
    assert await levels(engine, "sku-1") == {"main": (0, 4)}


async def test_multi_warehouse_adjustment_is_all_or_nothing(engine: Engine) -> None:
    await add_product(engine, "sku-1", {"east": 5, "west": 2, "north": 1})
    before = await snapshot(engine.redis)
    with pytest.raises(errors.InsufficientStock) as info:
        await engine.adjust_stock(
            "sku-1", {"east": 10, "west": -3, "north": -2}, "correction", ADMIN
        )
    # every short warehouse is named, and the receipt in east did not happen
    assert sorted(info.value.lines, key=lambda s: s.warehouse or "") == [
        errors.Shortage("sku-1", 2, 1, "north"),
        errors.Shortage("sku-1", 3, 2, "west"),
    ]
    assert await snapshot(engine.redis) == before

    got = await engine.adjust_stock("sku-1", {"east": 10, "west": -2}, "correction", ADMIN)
    assert {m.warehouse: m.available_after for m in got} == {"east": 15, "west": 0}
    e = (await events(engine.redis))[-1]
    assert e["type"] == "stock_adjusted"
    assert len(e["movements"]) == 2


async def test_adjust_unknown_product_or_warehouse_is_refused(engine: Engine) -> None:
    await add_product(engine, "sku-1", {"main": 5})
    before = await snapshot(engine.redis)
    with pytest.raises(errors.ProductNotFound) as missing:
        await engine.adjust_stock("sku-404", {"main": 1}, "received", ADMIN)
    assert missing.value.product == "sku-404"
    with pytest.raises(errors.WarehouseNotFound) as nowhere:
        await engine.adjust_stock("sku-1", {"main": 1, "south": 1}, "received", ADMIN)
    assert (nowhere.value.product, nowhere.value.warehouse) == ("sku-1", "south")
    assert await snapshot(engine.redis) == before


@pytest.mark.parametrize(
    ("changes", "reason", "field"),
    [
        ({"main": 0}, "received", "quantity"),
        ({"main": True}, "received", "quantity"),
        ({"main": 10**9 + 1}, "received", "quantity"),
        ({}, "received", "changes"),
        ({"ma|in": 1}, "received", "warehouse"),
        ({"main": 1}, "stolen", "reason"),
        ({"main": 1}, "RECEIVED", "reason"),
    ],
)
async def test_adjust_bad_input_changes_nothing(
    engine: Engine, changes: dict[str, int], reason: str, field: str
) -> None:
    await add_product(engine, "sku-1", {"main": 5})
    before = await snapshot(engine.redis)
    with pytest.raises(errors.InvalidInput) as info:
        await engine.adjust_stock("sku-1", changes, reason, ADMIN)
    assert info.value.field == field
    assert await snapshot(engine.redis) == before


# -- reads ------------------------------------------------------------------------------


async def test_get_stock_and_get_stocks(engine: Engine) -> None:
    await add_product(engine, "sku-1", {"east": 5, "west": 7})
    await add_product(engine, "sku-2", {"main": 3}, price=10, currency="EUR")
    await engine.reserve([LineRequest("sku-1", 6)], ALICE)

    one = await engine.get_stock("sku-1")
    assert one.levels == (StockLevel("east", 0, 0, 5), StockLevel("west", 1, 6, 1))
    assert (one.available, one.reserved, one.total) == (6, 6, 12)
    assert one.levels[1].total == 7

    many = await engine.get_stocks(["sku-2", "sku-404", "bad|id", "sku-1", "sku-2"])
    assert list(many) == ["sku-2", "sku-1"]
    assert many["sku-1"] == one
    assert (many["sku-2"].currency, many["sku-2"].available) == ("EUR", 3)
    assert await engine.get_stocks([]) == {}

    with pytest.raises(errors.ProductNotFound):
        await engine.get_stock("sku-404")
    with pytest.raises(errors.ProductNotFound):
        await engine.get_stock("bad|id")
