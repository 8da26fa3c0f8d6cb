"""Orders end to end through HTTP: the real app, Redis and the database (Postgres and
SQLite), drained as the worker would. Products are set up through the engine with the
catalog's integer-like ids."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from engine.keys import partition_keys
from engine.settings import Settings
from persistence import schema
from tests.api import assert_invalid_body, data, err, newest_first, running
from tests.support import ORDER_MOVES, ORDER_PATHS, ORDER_STATUSES, moves_from
from tests.test_api_reservations import drain, ids, levels, product, reserve, state, svc, user
from web import consistency
from web.app import create_app


@pytest.fixture
async def store(app: Starlette, client: httpx.AsyncClient) -> Starlette:
    """1: 19.99 USD, 100 in main. 2: 5.00 USD, 2 in main and 5 in east. 3: ¥500. 4: €1.00."""
    await product(app, 1, stock={"main": 100})
    await product(
        app, 2, price=500, warehouses={"main": 0, "east": 1}, stock={"main": 2, "east": 5}
    )
    await product(app, 3, price=500, currency="JPY")
    await product(app, 4, price=100, currency="EUR")
    return app


async def order(
    client: httpx.AsyncClient, headers: dict[str, str], body: dict[str, Any] | None = None
) -> dict[str, Any]:
    response = await client.post(
        "/api/orders/", json=body or {"product": 1, "quantity": 1}, headers=headers
    )
    assert response.status_code == 201, response.text
    made: dict[str, Any] = data(response)
    return made


async def move(
    client: httpx.AsyncClient, headers: dict[str, str], order_id: str, status: str
) -> httpx.Response:
    return await client.patch(f"/api/orders/{order_id}/", json={"status": status}, headers=headers)


# -- placing orders -----------------------------------------------------------------------------


async def test_an_order_from_a_reservation(store: Starlette, client: httpx.AsyncClient) -> None:
    held = await reserve(client, user(store), {"product": 1, "quantity": 3})
    response = await client.post(
        "/api/orders/", json={"reservation": held["id"]}, headers=user(store)
    )

    assert response.status_code == 201
    made = data(response)
    assert set(made) == {
        "id",
        "user",
        "status",
        "reservation",
        "lines",
        "total",
        "currency",
        "created_at",
        "updated_at",
    }
    assert (made["user"], made["status"], made["reservation"]) == ("1", "pending", held["id"])
    assert made["lines"] == [
        {"product": 1, "warehouse": "main", "quantity": 3, "unit_price": "19.99"}
    ]
    assert (made["total"], made["currency"]) == ("59.97", "USD")
    assert made["created_at"] == made["updated_at"]
    assert response.headers["x-consistency-token"].startswith("p0-")
    assert await levels(store, 1) == {"main": (97, 0)}


async def test_direct_orders_in_both_shapes(store: Starlette, client: httpx.AsyncClient) -> None:
    single = await order(client, user(store), {"product": 1, "quantity": 2})
    cart = await order(
        client,
        user(store),
        {"lines": [{"product": 2, "quantity": 4}, {"product": 1, "quantity": 1}]},
    )
    yen = await order(client, user(store), {"product": 3, "quantity": 3})

    assert (single["reservation"], single["total"]) == (None, "39.98")
    assert cart["lines"] == [
        {"product": 2, "warehouse": "main", "quantity": 2, "unit_price": "5.00"},
        {"product": 2, "warehouse": "east", "quantity": 2, "unit_price": "5.00"},
        {"product": 1, "warehouse": "main", "quantity": 1, "unit_price": "19.99"},
    ]
    assert cart["total"] == "39.99"
    assert (yen["total"], yen["currency"], yen["lines"][0]["unit_price"]) == ("1500", "JPY", "500")
    assert await levels(store, 2) == {"main": (0, 0), "east": (3, 0)}


@pytest.mark.parametrize(
    ("body", "field", "problem"),
    [
        ({"reservation": "a" * 32, "product": 1, "quantity": 1}, "body", "only one of"),
        ({}, "body", "give one of: reservation, product and quantity, or lines"),
        ({"reservation": "a" * 32, "allow_split": False}, "body", "allow_split applies"),
        ({"reservation": 12}, "reservation", "valid string"),
        ({"reservation": "x" * 65}, "reservation", "at most 64 characters"),
        ({"product": 1, "quantity": 0}, "quantity", "greater than 0"),
        ({"product": 1, "quantity": 0.5}, "quantity", "valid integer"),
        ({"product": 1, "quantity": 1, "total": "0.01"}, "total", "Extra inputs"),
    ],
)
async def test_bad_order_bodies_are_400_and_change_nothing(
    store: Starlette, client: httpx.AsyncClient, body: dict[str, Any], field: str, problem: str
) -> None:
    before = await state(store)
    response = await client.post("/api/orders/", json=body, headers=user(store))

    assert_invalid_body(response, field, problem)
    assert await state(store) == before


async def test_order_refusals_have_a_clear_message_and_change_nothing(
    store: Starlette, client: httpx.AsyncClient
) -> None:
    bobs = await reserve(client, user(store, "2"))
    await product(store, 5, price=10**12, stock={"main": 1000})
    before = await state(store), await state(store, 4), await state(store, 5)
    cases = [
        (
            {"reservation": "f" * 32},
            (404, "reservation_not_found", f"reservation {'f' * 32!r} does not exist"),
        ),
        (
            {"reservation": bobs["id"]},
            (404, "reservation_not_found", f"reservation {bobs['id']!r} does not exist"),
        ),
        (
            {"product": 1, "quantity": 100},
            (409, "insufficient_stock", "not enough stock (1: requested 100, available 99)"),
        ),
        (
            {"lines": [{"product": 1, "quantity": 1}, {"product": 4, "quantity": 1}]},
            (409, "currency_mismatch", "one order can't mix currencies (USD, EUR)"),
        ),
        ({"product": 99, "quantity": 1}, (404, "product_not_found", "product '99' does not exist")),
        (
            {"product": 5, "quantity": 100},
            (409, "order_total_too_large", "the order total is too large"),
        ),
    ]
    for body, expected in cases:
        response = await client.post("/api/orders/", json=body, headers=user(store))
        error = err(response)
        assert (response.status_code, error["code"], error["message"]) == expected, body
    assert (await state(store), await state(store, 4), await state(store, 5)) == before


async def test_a_retried_order_is_placed_once(store: Starlette, client: httpx.AsyncClient) -> None:
    headers = {**user(store), "Idempotency-Key": "order-7"}
    body = {"product": 1, "quantity": 2}
    first = await client.post("/api/orders/", json=body, headers=headers)
    again = await client.post("/api/orders/", json=body, headers=headers)
    other = await client.post("/api/orders/", json={"product": 1, "quantity": 3}, headers=headers)

    assert (first.status_code, again.status_code, other.status_code) == (201, 201, 422)
    assert data(again) == data(first)
    assert again.headers["idempotent-replayed"] == "true"
    assert err(other)["code"] == "idempotency_mismatch"
    assert await levels(store, 1) == {"main": (98, 0)}


# -- one order ----------------------------------------------------------------------------------


async def test_read_one_fresh_from_redis_and_only_ones_own(
    store: Starlette, client: httpx.AsyncClient
) -> None:
    made = await order(client, user(store))
    confirmed = data(await move(client, user(store, "9", staff=True), made["id"], "confirmed"))
    path = f"/api/orders/{made['id']}/"
    own = await client.get(path, headers=user(store))  # nothing drained yet: Redis answers
    staff = await client.get(path, headers=user(store, "9", staff=True))
    other = await client.get(path, headers=user(store, "2"))
    unknown = await client.get("/api/orders/" + "0" * 32 + "/", headers=user(store))

    assert data(own) == data(staff) == confirmed
    assert data(own)["status"] == "confirmed"
    assert (other.status_code, err(other)["code"]) == (404, "order_not_found")
    assert err(other)["message"] == f"order {made['id']!r} does not exist"
    assert (unknown.status_code, err(unknown)["code"]) == (404, "order_not_found")


async def test_staff_move_orders_along_the_state_machine(
    store: Starlette, client: httpx.AsyncClient
) -> None:
    staff = user(store, "9", staff=True)
    made = await order(client, user(store))
    skipped = await move(client, staff, made["id"], "shipped")
    path = ["CONFIRMED", "processing", "Shipped", "delivered"]
    moved = [await move(client, staff, made["id"], status) for status in path]
    after_end = await move(client, staff, made["id"], "cancelled")
    bad = await move(client, staff, made["id"], "lost")
    unknown = await move(client, staff, "0" * 32, "confirmed")

    assert skipped.status_code == 409
    assert err(skipped) == {
        "code": "invalid_transition",
        "message": f"order {made['id']!r} can't go from pending to shipped "
        "(allowed: confirmed, cancelled)",
        "details": {
            "order": made["id"],
            "current": "pending",
            "requested": "shipped",
            "allowed": ["confirmed", "cancelled"],
        },
    }
    assert [r.status_code for r in moved] == [200, 200, 200, 200]
    assert [data(r)["status"] for r in moved] == [s.lower() for s in path]
    assert all(r.headers["x-consistency-token"].startswith("p0-") for r in moved)
    assert err(after_end)["details"]["allowed"] == []
    assert "(allowed: none: it is final)" in err(after_end)["message"]
    assert (bad.status_code, err(bad)["code"]) == (400, "invalid_input")
    assert (unknown.status_code, err(unknown)["code"]) == (404, "order_not_found")
    assert await levels(store, 1) == {"main": (99, 0)}


HTTP_PAIRS = [
    ("shipped", "cancelled"),
    ("processing", "cancelled"),
    ("pending", "delivered"),
    ("delivered", "cancelled"),
    ("cancelled", "confirmed"),
    ("confirmed", "confirmed"),
    ("confirmed", "processing"),
    ("confirmed", "cancelled"),
    ("shipped", "delivered"),
]


@pytest.mark.parametrize(
    ("current", "requested"), HTTP_PAIRS, ids=[f"{a}->{b}" for a, b in HTTP_PAIRS]
)
async def test_patch_follows_designs_table(
    store: Starlette, client: httpx.AsyncClient, current: str, requested: str
) -> None:
    """Some pairs of the table written out in tests/support.py, through PATCH by staff."""
    staff = user(store, "9", staff=True)
    made = await order(client, user(store), {"product": 1, "quantity": 2})
    for step in ORDER_PATHS[current]:
        assert (await move(client, staff, made["id"], step)).status_code == 200
    path = f"/api/orders/{made['id']}/"
    seen = data(await client.get(path, headers=staff))
    before = await state(store)

    response = await move(client, staff, made["id"], requested)

    if ORDER_MOVES[current][ORDER_STATUSES.index(requested)]:
        assert response.status_code == 200
        assert data(response)["status"] == requested
        returned = 2 if requested == "cancelled" else 0
        assert await levels(store, 1) == {"main": (98 + returned, 0)}
        return
    assert response.status_code == 409
    allowed = moves_from(current)
    assert err(response) == {
        "code": "invalid_transition",
        "message": f"order {made['id']!r} can't go from {current} to {requested} "
        f"(allowed: {', '.join(allowed) if allowed else 'none: it is final'})",
        "details": {
            "order": made["id"],
            "current": current,
            "requested": requested,
            "allowed": allowed,
        },
    }
    assert await state(store) == before
    assert data(await client.get(path, headers=staff)) == seen


async def test_a_customer_may_only_cancel_their_own_pending_order(
    store: Starlette, client: httpx.AsyncClient
) -> None:
    alice, staff = user(store), user(store, "9", staff=True)
    pending, confirmed = await order(client, alice), await order(client, alice)
    await move(client, staff, confirmed["id"], "confirmed")

    confirm_own = await move(client, alice, pending["id"], "confirmed")
    cancel_confirmed = await move(client, alice, confirmed["id"], "cancelled")
    cancel_others = await move(client, user(store, "2"), pending["id"], "cancelled")
    assert await levels(store, 1) == {"main": (98, 0)}
    cancelled = await move(client, alice, pending["id"], "cancelled")
    again = await move(client, alice, pending["id"], "cancelled")

    assert confirm_own.status_code == 403
    assert err(confirm_own) == {
        "code": "forbidden",
        "message": "a customer may only cancel an order; other moves are staff's",
        "details": {},
    }
    assert cancel_confirmed.status_code == 403
    assert err(cancel_confirmed) == {
        "code": "forbidden",
        "message": "an order can be cancelled by its buyer only while pending; "
        "this one is confirmed",
        "details": {"order": confirmed["id"], "status": "confirmed"},
    }
    assert (cancel_others.status_code, err(cancel_others)["code"]) == (404, "order_not_found")
    assert (cancelled.status_code, data(cancelled)["status"]) == (200, "cancelled")
    assert (again.status_code, err(again)["code"]) == (409, "invalid_transition")
    assert await levels(store, 1) == {"main": (99, 0)}  # the cancelled unit is back


async def test_a_retried_cancel_gets_the_first_answer(
    store: Starlette, client: httpx.AsyncClient
) -> None:
    made = await order(client, user(store))
    headers = {**user(store), "Idempotency-Key": "cancel-1"}
    first = await client.patch(
        f"/api/orders/{made['id']}/", json={"status": "cancelled"}, headers=headers
    )
    again = await client.patch(
        f"/api/orders/{made['id']}/", json={"status": "cancelled"}, headers=headers
    )

    assert (first.status_code, again.status_code) == (200, 200)
    assert data(again) == data(first)
    assert again.headers["idempotent-replayed"] == "true"
    assert await levels(store, 1) == {"main": (100, 0)}


async def test_a_final_order_redis_has_let_go_comes_from_the_database(
    app_settings: Settings, clean_redis: None
) -> None:
    app = create_app(dataclasses.replace(app_settings, order_retention_ms=50))
    async with running(app) as client:
        await product(app, 1)
        alice, staff = user(app), user(app, "9", staff=True)
        delivered, cancelled = await order(client, alice), await order(client, alice)
        for status in ("confirmed", "processing", "shipped", "delivered"):
            await move(client, staff, delivered["id"], status)
        await move(client, alice, cancelled["id"], "cancelled")
        await asyncio.sleep(0.1)
        await drain(app)

        seen = await client.get(f"/api/orders/{delivered['id']}/", headers=alice)
        by_other = await client.get(f"/api/orders/{delivered['id']}/", headers=user(app, "2"))
        staff_move = await move(client, staff, delivered["id"], "cancelled")
        customer_move = await move(client, alice, cancelled["id"], "cancelled")
        gone = await svc(app).engine.redis.exists(partition_keys(0).order(delivered["id"]))

    assert gone == 0
    assert (seen.status_code, data(seen)["status"]) == (200, "delivered")
    assert data(seen)["lines"] == delivered["lines"]
    assert data(seen)["created_at"] == delivered["created_at"]
    assert (by_other.status_code, err(by_other)["code"]) == (404, "order_not_found")
    assert err(staff_move)["details"] == {
        "order": delivered["id"],
        "current": "delivered",
        "requested": "cancelled",
        "allowed": [],
    }
    assert (customer_move.status_code, err(customer_move)["code"]) == (409, "invalid_transition")


# -- the list -----------------------------------------------------------------------------------


async def listed(
    client: httpx.AsyncClient, headers: dict[str, str], query: str = ""
) -> list[dict[str, Any]]:
    response = await client.get(f"/api/orders/?{query}", headers=headers)
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = data(response)
    return found


def backdate(app: Starlette, order_id: str, at: datetime) -> None:
    """Fake the clock of a drained order: it was placed at `at`."""
    with svc(app).db.begin() as conn:
        conn.execute(
            schema.orders.update().where(schema.orders.c.id == order_id).values(created_at=at)
        )


@pytest.fixture
async def history(store: Starlette, client: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    """Alice's orders placed over three days in January, one today; one of Bob's."""
    alice, staff = user(store), user(store, "9", staff=True)
    made = {
        "jan1": await order(client, alice, {"product": 1, "quantity": 1}),  # 19.99
        "jan2": await order(client, alice, {"product": 1, "quantity": 2}),  # 39.98
        "jan3": await order(client, alice, {"product": 2, "quantity": 1}),  # 5.00
        "today": await order(client, alice, {"product": 1, "quantity": 3}),  # 59.97
        "bob": await order(client, user(store, "2"), {"product": 1, "quantity": 5}),  # 99.95
    }
    await move(client, staff, made["jan2"]["id"], "confirmed")
    await move(client, alice, made["jan3"]["id"], "cancelled")
    await drain(store)
    backdate(store, made["jan1"]["id"], datetime(2024, 1, 1, tzinfo=UTC))
    backdate(store, made["jan2"]["id"], datetime(2024, 1, 2, 23, 59, 59, 999000, tzinfo=UTC))
    backdate(store, made["jan3"]["id"], datetime(2024, 1, 3, tzinfo=UTC))
    return made


async def test_list_filters(
    store: Starlette, client: httpx.AsyncClient, history: dict[str, dict[str, Any]]
) -> None:
    alice = user(store)

    def names(items: list[dict[str, Any]]) -> list[str]:
        by_id = {o["id"]: name for name, o in history.items()}
        return [by_id[o["id"]] for o in items]

    async def query(q: str) -> list[str]:
        return names(await listed(client, alice, q))

    assert await query("") == ["today", "jan3", "jan2", "jan1"]
    assert await query("start_date=2024-01-02&end_date=2024-01-02") == ["jan2"]
    assert await query("start_date=2024-01-02") == ["today", "jan3", "jan2"]
    assert await query("end_date=2024-01-02") == ["jan2", "jan1"]
    assert await query("start_date=2024-01-01&end_date=2024-01-03") == ["jan3", "jan2", "jan1"]
    assert await query("status=PENDING") == ["today", "jan1"]
    assert await query("status=Cancelled") == ["jan3"]
    assert await query("min_total=19.99") == ["today", "jan2", "jan1"]
    assert await query("max_total=19.99") == ["jan3", "jan1"]
    assert await query("min_total=5&max_total=39.98") == ["jan3", "jan2", "jan1"]
    assert await query("min_total=19.991") == ["today", "jan2"]
    assert await query("sort=highest_value") == ["today", "jan2", "jan1", "jan3"]
    assert await query("sort=highest_value&status=pending&min_total=20") == ["today"]
    assert await query("sort=newest&start_date=2024-01-03") == ["today", "jan3"]


async def test_the_list_item_is_the_order_as_read_alone(
    store: Starlette, client: httpx.AsyncClient, history: dict[str, dict[str, Any]]
) -> None:
    alone = data(await client.get(f"/api/orders/{history['today']['id']}/", headers=user(store)))
    listed_today = (await listed(client, user(store)))[0]

    assert listed_today == alone == history["today"]


async def test_whose_orders_a_list_shows(
    store: Starlette, client: httpx.AsyncClient, history: dict[str, dict[str, Any]]
) -> None:
    staff = user(store, "9", staff=True)
    everyone = await listed(client, staff)
    bobs = await listed(client, staff, "user=2")
    own = await listed(client, user(store, "2"), "user=2")
    refused = await client.get("/api/orders/?user=1", headers=user(store, "2"))

    assert len(everyone) == 5
    assert everyone[0]["id"] == history["bob"]["id"]  # the newest: Bob's, placed last
    assert [o["id"] for o in bobs] == [o["id"] for o in own] == [history["bob"]["id"]]
    assert refused.status_code == 403
    assert err(refused)["message"] == "only staff can list another user's records"


async def test_amounts_are_read_in_each_orders_currency(
    store: Starlette, client: httpx.AsyncClient
) -> None:
    alice = user(store)
    yen = await order(client, alice, {"product": 3, "quantity": 1})  # ¥500
    usd = await order(client, alice, {"product": 2, "quantity": 1})  # $5.00 = 500 cents
    await drain(store)

    assert ids(await listed(client, alice, "min_total=6")) == [yen["id"]]
    assert ids(await listed(client, alice, "max_total=499.5")) == [usd["id"]]
    assert ids(await listed(client, alice, "min_total=5&max_total=5")) == [usd["id"]]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("start_date=2024-13-01", "start_date"),
        ("start_date=20240101", "start_date"),
        ("end_date=yesterday", "end_date"),
        ("min_total=abc", "min_total"),
        ("min_total=-1", "min_total"),
        ("max_total=1e3", "max_total"),
        ("max_total=NaN", "max_total"),
        ("status=lost", "status"),
        ("sort=oldest", "sort"),
        ("limit=-1", "limit"),
        ("page=2", "page"),
        ("user=" + "x" * 151, "user"),
    ],
)
async def test_bad_list_queries_are_400(
    store: Starlette, client: httpx.AsyncClient, query: str, field: str
) -> None:
    response = await client.get(f"/api/orders/?{query}", headers=user(store))

    assert response.status_code == 400
    error = err(response)
    assert (error["code"], error["message"]) == ("invalid_input", "the query string is not valid")
    assert [e["field"] for e in error["details"]["errors"]] == [
        "body" if field == "query" else field
    ]


async def test_a_cursor_is_a_position_in_the_order_asked_for(
    store: Starlette, client: httpx.AsyncClient
) -> None:
    """Both orders' cursors have one form (a number and an id), so one of either sort is a
    position in the other: an answer, never an error the document can't foretell."""
    for _ in range(3):
        await order(client, user(store))
    await drain(store)
    newest = await client.get("/api/orders/?limit=1", headers=user(store))
    by_value = await client.get("/api/orders/?limit=1&sort=highest_value", headers=user(store))

    # A time in microseconds, read as a total, is above every total: from the top.
    crossed_to_value = await client.get(
        f"/api/orders/?limit=1&sort=highest_value&cursor={newest.json()['next']}",
        headers=user(store),
    )
    # A total of 1999 minor units, read as a time, is in 1970: before every order.
    crossed_to_time = await client.get(
        f"/api/orders/?limit=1&cursor={by_value.json()['next']}", headers=user(store)
    )

    assert ids(data(crossed_to_value)) == ids(data(by_value))
    assert (data(crossed_to_time), crossed_to_time.json()["next"]) == ([], None)


# -- paging while orders arrive -----------------------------------------------------------------


async def page_through(
    app: Starlette, client: httpx.AsyncClient, query: str, between: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Every page of the list; before each next page, place the next of `between` and drain."""
    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    arrivals = iter(between)
    while True:
        url = f"/api/orders/?limit=2&{query}" + (f"&cursor={cursor}" if cursor else "")
        response = await client.get(url, headers=user(app))
        seen.extend(data(response))
        cursor = response.json()["next"]
        if cursor is None:
            return seen
        body = next(arrivals, None)
        if body is not None:
            await order(client, user(app), body)
            await drain(app)


async def test_newest_first_pages_never_repeat_or_skip_while_orders_arrive(
    store: Starlette, client: httpx.AsyncClient
) -> None:
    existing = [await order(client, user(store)) for _ in range(7)]
    await drain(store)
    arriving = [{"product": 1, "quantity": 1}] * 4

    seen = await page_through(store, client, "", arriving)

    assert ids(seen) == newest_first(*existing)


async def test_highest_value_pages_never_repeat_or_skip_while_orders_arrive(
    store: Starlette, client: httpx.AsyncClient
) -> None:
    quantities = [5, 1, 4, 2, 3, 2, 1]
    existing = [await order(client, user(store), {"product": 1, "quantity": q}) for q in quantities]
    await drain(store)
    # orders worth more and less than the page boundaries land while the client pages
    arriving = [{"product": 1, "quantity": q} for q in (6, 1, 3, 2)]

    seen = await page_through(store, client, "sort=highest_value", arriving)

    assert len(ids(seen)) == len(set(ids(seen)))
    assert set(ids(existing)) <= set(ids(seen))
    keys = [(int(o["total"].replace(".", "")), o["id"]) for o in seen]
    assert keys == sorted(keys, reverse=True)
    # the 6-unit order arrived above the pages already read: later pages don't show it
    assert max(keys)[0] == 5 * 1999


async def test_previous_pages_lead_back(store: Starlette, client: httpx.AsyncClient) -> None:
    made = [await order(client, user(store)) for _ in range(5)]
    await drain(store)
    first = await client.get("/api/orders/?limit=2", headers=user(store))
    second = await client.get(
        f"/api/orders/?limit=2&cursor={first.json()['next']}", headers=user(store)
    )
    back = await client.get(
        f"/api/orders/?limit=2&cursor={second.json()['previous']}", headers=user(store)
    )

    in_order = newest_first(*made)
    assert ids(data(second)) == in_order[2:4]
    assert ids(data(back)) == ids(data(first)) == in_order[:2]
    assert back.json()["previous"] is None


# -- read-your-writes ---------------------------------------------------------------------------


async def test_a_status_change_shows_in_the_list_it_is_waited_for(
    store: Starlette, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a wait that only the drain can end, however slow the machine is
    monkeypatch.setattr(consistency, "WAIT_S", 600.0)
    made = await order(client, user(store))
    await drain(store)
    changed = await move(client, user(store, "9", staff=True), made["id"], "confirmed")
    token = changed.headers["x-consistency-token"]

    trailing = await listed(client, user(store), "status=confirmed")
    waiting = asyncio.create_task(
        client.get(f"/api/orders/?status=confirmed&consistent_with={token}", headers=user(store))
    )
    await asyncio.sleep(0.1)
    await drain(store)
    caught_up = await asyncio.wait_for(waiting, 60)  # a guard against a hang

    assert trailing == []
    assert ids(data(caught_up)) == [made["id"]]
    assert caught_up.headers["x-consistency"] == "consistent"
