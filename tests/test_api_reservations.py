"""Reservations end to end through HTTP: the real app, Redis and the database (Postgres and
SQLite), drained as the worker would. Products are set up through the engine with the
catalog's integer-like ids."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from datetime import datetime
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import select
from starlette.applications import Starlette

from engine.connection import connect_sync
from engine.keys import partition_keys
from engine.models import SYSTEM
from persistence import schema
from persistence.drain import drain_partition
from tests.api import assert_invalid_body, bearer, data, err, newest_first
from tests.support import redis_env
from web import consistency
from web.consistency import WAIT_S
from web.services.container import Services

TOKEN = re.compile(r"p0-\d+-\d+")
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def svc(app: Starlette) -> Services:
    found: Services = app.state.services
    return found


def user(app: Starlette, user_id: str = "1", *, staff: bool = False) -> dict[str, str]:
    return bearer(app, user_id, staff=staff)


async def product(
    app: Starlette,
    pid: int,
    *,
    price: int = 1999,
    currency: str | None = None,
    stock: dict[str, int] | None = None,
    warehouses: dict[str, int] | None = None,
) -> None:
    await svc(app).engine.setup_product(
        str(pid),
        SYSTEM,
        price=price,
        currency=currency,
        warehouses=warehouses,
        stock={"main": 10} if stock is None else stock,
    )


async def redis_ms(app: Starlette) -> int:
    """The Redis clock, which stamps every record."""
    seconds, micros = await svc(app).engine.redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def levels(app: Starlette, pid: int) -> dict[str, tuple[int, int]]:
    """(available, reserved) per warehouse, live from Redis."""
    found = await svc(app).engine.get_stock(str(pid))
    return {lv.warehouse: (lv.available, lv.reserved) for lv in found.levels}


async def state(app: Starlette, pid: int = 1) -> tuple[Any, ...]:
    """What a refused write must leave alone: the product's counters and the outbox."""
    events = await svc(app).engine.redis.xlen(partition_keys(0).outbox)
    return await levels(app, pid), events


async def drain(app: Starlette) -> None:
    """Apply the outbox to the database, as the worker's drain job does."""
    s = svc(app)
    client = connect_sync(s.settings)
    try:
        await asyncio.to_thread(drain_partition, client, s.db, s.settings, 0)
    finally:
        client.close()


async def reserve(
    client: httpx.AsyncClient, headers: dict[str, str], body: dict[str, Any] | None = None
) -> dict[str, Any]:
    response = await client.post(
        "/api/reservations/", json=body or {"product": 1, "quantity": 1}, headers=headers
    )
    assert response.status_code == 201, response.text
    made: dict[str, Any] = data(response)
    return made


@pytest.fixture
async def shop(app: Starlette, client: httpx.AsyncClient) -> Starlette:
    """Product 1: 19.99, 10 units in main. Product 2: 5.00, 2 in main and 5 in east."""
    await product(app, 1)
    await product(
        app, 2, price=500, warehouses={"main": 0, "east": 1}, stock={"main": 2, "east": 5}
    )
    return app


# -- reserve ------------------------------------------------------------------------------------


async def test_reserve_the_original_shape(shop: Starlette, client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/reservations/", json={"product": 1, "quantity": 3}, headers=user(shop)
    )

    assert response.status_code == 201
    made = data(response)
    assert set(made) == {
        "id", "user", "status", "lines", "expires_at", "created_at", "order", "source"
    }  # fmt: skip
    assert made["source"] == "request"  # (not handed over by a waitlist)
    assert (made["user"], made["status"], made["order"]) == ("1", "active", None)
    assert made["lines"] == [{"product": 1, "warehouse": "main", "quantity": 3}]
    assert ISO_UTC.fullmatch(made["expires_at"])
    assert ISO_UTC.fullmatch(made["created_at"])
    held = datetime.fromisoformat(made["expires_at"]) - datetime.fromisoformat(made["created_at"])
    assert held.total_seconds() == 600
    assert TOKEN.fullmatch(response.headers["x-consistency-token"])
    assert "idempotent-replayed" not in response.headers
    assert await levels(shop, 1) == {"main": (7, 3)}


@pytest.mark.cluster
async def test_an_api_path_without_its_trailing_slash_is_the_same_path(
    shop: Starlette, client: httpx.AsyncClient
) -> None:
    """No redirect (Starlette's is a bare 307 to a URL built from the client's Host)."""
    made = await client.post(
        "/api/reservations", json={"product": 1, "quantity": 3}, headers=user(shop)
    )
    assert made.status_code == 201, made.text
    rid = data(made)["id"]

    read = await client.get(f"/api/reservations/{rid}", headers=user(shop))
    assert (read.status_code, data(read)["id"]) == (200, rid)
    committed = await client.post(f"/api/reservations/{rid}/commit", headers=user(shop))
    assert committed.status_code == 201, committed.text
    missing = await client.get("/api/nowhere", headers=user(shop))
    assert (missing.status_code, err(missing)["code"]) == (404, "not_found")


async def test_reserve_the_cart_shape_splits_over_warehouses(
    shop: Starlette, client: httpx.AsyncClient
) -> None:
    body = {
        "lines": [
            {"product": 2, "quantity": 4},
            {"product": 1, "quantity": 2, "warehouse": "main"},
        ],
        "ttl_seconds": 120,
        "allow_split": True,
    }
    made = await reserve(client, user(shop), body)

    assert made["lines"] == [
        {"product": 1, "warehouse": "main", "quantity": 2},
        {"product": 2, "warehouse": "main", "quantity": 2},
        {"product": 2, "warehouse": "east", "quantity": 2},
    ]
    held = datetime.fromisoformat(made["expires_at"]) - datetime.fromisoformat(made["created_at"])
    assert held.total_seconds() == 120
    assert await levels(shop, 2) == {"main": (0, 2), "east": (3, 2)}


async def test_insufficient_stock_lists_the_shortfall_and_changes_nothing(
    shop: Starlette, client: httpx.AsyncClient
) -> None:
    before = await state(shop), await state(shop, 2)
    body = {"lines": [{"product": 1, "quantity": 11}, {"product": 2, "quantity": 8}]}
    response = await client.post("/api/reservations/", json=body, headers=user(shop))

    assert response.status_code == 409
    error = err(response)
    assert error["code"] == "insufficient_stock"
    assert error["message"] == (
        "not enough stock (1: requested 11, available 10, 2: requested 8, available 7)"
    )
    assert error["details"] == {
        "lines": [
            {"product": 1, "requested": 11, "available": 10, "warehouse": None},
            {"product": 2, "requested": 8, "available": 7, "warehouse": None},
        ]
    }
    assert (await state(shop), await state(shop, 2)) == before


async def test_a_whole_line_from_one_warehouse_when_split_is_off(
    shop: Starlette, client: httpx.AsyncClient
) -> None:
    before = await state(shop, 2)
    refused = await client.post(
        "/api/reservations/",
        json={"lines": [{"product": 2, "quantity": 6}], "allow_split": False},
        headers=user(shop),
    )
    split = await reserve(client, user(shop), {"lines": [{"product": 2, "quantity": 6}]})

    assert refused.status_code == 409
    assert err(refused)["details"] == {
        "lines": [{"product": 2, "requested": 6, "available": 5, "warehouse": None}]
    }
    assert before == ({"main": (2, 0), "east": (5, 0)}, before[1])
    assert [li["quantity"] for li in split["lines"]] == [2, 4]


@pytest.mark.parametrize(
    ("body", "field", "problem"),
    [
        ({"product": 1, "quantity": 0}, "quantity", "greater than 0"),
        ({"product": 1, "quantity": -2}, "quantity", "greater than 0"),
        ({"product": 1, "quantity": 1.5}, "quantity", "valid integer"),
        ({"product": 1.5, "quantity": 1}, "product", "valid integer"),
        ({"product": 1, "quantity": "3"}, "quantity", "valid integer"),
        ({"product": 1, "quantity": True}, "quantity", "valid integer"),
        ({"product": 1, "quantity": 1_000_001}, "quantity", "less than or equal to 1000000"),
        ({"product": 1, "quantity": 10**30}, "quantity", "less than or equal"),
        ({"product": "1", "quantity": 1}, "product", "valid integer"),
        ({"product": 0, "quantity": 1}, "product", "greater than 0"),
        ({"product": "1; DROP TABLE orders", "quantity": 1}, "product", "valid integer"),
        ({"product": 1}, "body", "give both product and quantity"),
        ({}, "body", "give product and quantity, or lines"),
        (
            {"product": 1, "quantity": 1, "lines": [{"product": 1, "quantity": 1}]},
            "body",
            "not both",
        ),
        ({"lines": []}, "lines", "at least 1 item"),
        ({"lines": [{"product": 1}]}, "lines.0.quantity", "Field required"),
        ({"lines": [{"product": 1, "quantity": 1, "colour": "red"}]}, "lines.0.colour", "Extra"),
        ({"product": 1, "quantity": 1, "price": "0.01"}, "price", "Extra inputs"),
        ({"product": 1, "quantity": 1, "ttl_seconds": "60"}, "ttl_seconds", "valid"),
        ({"product": 1, "quantity": 1, "ttl_seconds": -5}, "ttl_seconds", "greater than 0"),
        ({"product": 1, "quantity": 1, "allow_split": "yes"}, "allow_split", "valid boolean"),
        ({"lines": [{"product": 1, "quantity": 1}] * 101}, "lines", "at most 100 items"),
    ],
)
async def test_bad_bodies_are_400_and_change_nothing(
    shop: Starlette, client: httpx.AsyncClient, body: dict[str, Any], field: str, problem: str
) -> None:
    before = await state(shop)
    response = await client.post("/api/reservations/", json=body, headers=user(shop))

    assert_invalid_body(response, field, problem)
    assert await state(shop) == before


@pytest.mark.parametrize(
    ("body", "status", "code", "message"),
    [
        (
            {"product": 1, "quantity": 1, "ttl_seconds": 0.01},
            400,
            "invalid_input",
            "ttl_seconds must be between 0.05 and 3600",
        ),
        (
            {"product": 1, "quantity": 1, "ttl_seconds": 3601},
            400,
            "invalid_input",
            "ttl_seconds must be between 0.05 and 3600",
        ),
        (
            {"lines": [{"product": 1, "quantity": 1, "warehouse": "no|pipes"}]},
            400,
            "invalid_input",
            "must be 1-64 characters: letters, digits and _ . : - (not first)",
        ),
        ({"product": 77, "quantity": 1}, 404, "product_not_found", "product '77' does not exist"),
        (
            {"lines": [{"product": 1, "quantity": 1, "warehouse": "east"}]},
            404,
            "warehouse_not_found",
            "product '1' is not stocked in warehouse 'east'",
        ),
        (  # the two lines of one product are summed: each is within bounds, their sum is not
            {"lines": [{"product": 1, "quantity": 600_000}, {"product": 1, "quantity": 600_000}]},
            409,
            "insufficient_stock",
            "not enough stock (1: requested 1200000, available 10)",
        ),
    ],
)
async def test_refusals_have_a_clear_message_and_change_nothing(
    shop: Starlette,
    client: httpx.AsyncClient,
    body: dict[str, Any],
    status: int,
    code: str,
    message: str,
) -> None:
    before = await state(shop)
    response = await client.post("/api/reservations/", json=body, headers=user(shop))

    assert response.status_code == status
    assert (err(response)["code"], err(response)["message"]) == (code, message)
    if code == "invalid_input":
        assert err(response)["details"]["field"] in ("ttl_seconds", "warehouse", "quantity")
    assert await state(shop) == before


async def test_malformed_json_wrong_content_type_and_no_token(
    shop: Starlette, client: httpx.AsyncClient
) -> None:
    before = await state(shop)
    malformed = await client.post(
        "/api/reservations/",
        content=b'{"product": 1,',
        headers={**user(shop), "content-type": "application/json"},
    )
    form = await client.post(
        "/api/reservations/", data={"product": "1", "quantity": "1"}, headers=user(shop)
    )
    anonymous = await client.post("/api/reservations/", json={"product": 1, "quantity": 1})
    listed = await client.get("/api/reservations/")

    assert (malformed.status_code, err(malformed)["code"]) == (400, "malformed_json")
    assert (form.status_code, err(form)["code"]) == (415, "unsupported_media_type")
    assert err(form)["message"] == "send the body as application/json"
    assert (anonymous.status_code, err(anonymous)["code"]) == (401, "not_authenticated")
    assert (listed.status_code, err(listed)["code"]) == (401, "not_authenticated")
    assert await state(shop) == before


# -- idempotency --------------------------------------------------------------------------------


@pytest.mark.cluster
async def test_a_retry_with_the_same_key_gets_the_first_answer(
    shop: Starlette, client: httpx.AsyncClient
) -> None:
    headers = {**user(shop), "Idempotency-Key": "checkout-42"}
    body = {"product": 1, "quantity": 2}
    first = await client.post("/api/reservations/", json=body, headers=headers)
    again = await client.post("/api/reservations/", json=body, headers=headers)
    other = await client.post(
        "/api/reservations/", json={"product": 1, "quantity": 3}, headers=headers
    )
    someone_else = await client.post(
        "/api/reservations/",
        json=body,
        headers={**user(shop, "2"), "Idempotency-Key": "checkout-42"},
    )

    assert (first.status_code, again.status_code) == (201, 201)
    assert data(again) == data(first)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["x-consistency-token"] == first.headers["x-consistency-token"]
    assert other.status_code == 422
    assert err(other) == {
        "code": "idempotency_mismatch",
        "message": "this Idempotency-Key was used before with a different request",
        "details": {},
    }
    # a key belongs to its user: the other buyer gets a reservation of their own
    assert someone_else.status_code == 201
    assert data(someone_else)["id"] != data(first)["id"]
    assert await levels(shop, 1) == {"main": (6, 4)}


@pytest.mark.cluster
async def test_release_extend_and_commit_replay_too(
    shop: Starlette, client: httpx.AsyncClient
) -> None:
    a, b = await reserve(client, user(shop)), await reserve(client, user(shop))
    headers = {**user(shop), "Idempotency-Key": "k1"}
    released = [await client.delete(f"/api/reservations/{a['id']}/", headers=headers)]
    released.append(await client.delete(f"/api/reservations/{a['id']}/", headers=headers))
    committed = [await client.post(f"/api/reservations/{b['id']}/commit/", headers=headers)]
    committed.append(await client.post(f"/api/reservations/{b['id']}/commit/", headers=headers))

    assert [r.status_code for r in released] == [200, 200]
    assert data(released[0]) == data(released[1])
    assert [r.status_code for r in committed] == [201, 201]
    assert data(committed[0]) == data(committed[1])
    assert committed[1].headers["idempotent-replayed"] == "true"
    assert await levels(shop, 1) == {"main": (9, 0)}


# -- one reservation ----------------------------------------------------------------------------


async def test_read_one_fresh_and_only_ones_own(shop: Starlette, client: httpx.AsyncClient) -> None:
    made = await reserve(client, user(shop))
    path = f"/api/reservations/{made['id']}/"
    own = await client.get(path, headers=user(shop))
    staff = await client.get(path, headers=user(shop, "9", staff=True))
    other = await client.get(path, headers=user(shop, "2"))
    unknown = await client.get("/api/reservations/" + "0" * 32 + "/", headers=user(shop))
    garbage = await client.get("/api/reservations/not-an-id/", headers=user(shop))

    assert data(own) == data(staff) == made
    assert (other.status_code, err(other)["code"]) == (404, "reservation_not_found")
    assert err(other)["message"] == f"reservation {made['id']!r} does not exist"
    assert (unknown.status_code, garbage.status_code) == (404, 404)


@pytest.mark.cluster
async def test_read_one_shows_expired_the_moment_it_lapses(
    shop: Starlette, client: httpx.AsyncClient
) -> None:
    made = await reserve(client, user(shop), {"product": 1, "quantity": 1, "ttl_seconds": 0.05})
    await asyncio.sleep(0.1)
    seen = data(await client.get(f"/api/reservations/{made['id']}/", headers=user(shop)))
    commit = await client.post(f"/api/reservations/{made['id']}/commit/", headers=user(shop))

    assert seen["status"] == "expired"
    assert (commit.status_code, err(commit)["code"]) == (409, "reservation_expired")
    assert err(commit)["message"] == f"reservation {made['id']!r} expired"
    assert await levels(shop, 1) == {"main": (10, 0)}


async def test_release_gives_the_units_back_once(
    shop: Starlette, client: httpx.AsyncClient
) -> None:
    made = await reserve(client, user(shop), {"product": 1, "quantity": 4})
    path = f"/api/reservations/{made['id']}/"
    by_other = await client.delete(path, headers=user(shop, "2"))
    released = await client.delete(path, headers=user(shop))
    again = await client.delete(path, headers=user(shop))

    assert (by_other.status_code, err(by_other)["code"]) == (404, "reservation_not_found")
    assert released.status_code == 200
    assert data(released)["status"] == "released"
    assert TOKEN.fullmatch(released.headers["x-consistency-token"])
    assert (again.status_code, err(again)["code"]) == (409, "reservation_not_live")
    assert err(again)["message"] == f"reservation {made['id']!r} is released, not active"
    assert err(again)["details"] == {
        "reservation": made["id"],
        "status": "released",
        "order": None,
    }
    assert await levels(shop, 1) == {"main": (10, 0)}


async def test_extend(shop: Starlette, client: httpx.AsyncClient) -> None:
    made = await reserve(client, user(shop), {"product": 1, "quantity": 1, "ttl_seconds": 60})
    path = f"/api/reservations/{made['id']}/extend/"
    by_other = await client.post(path, json={"ttl_seconds": 900}, headers=user(shop, "2"))
    t0 = await redis_ms(shop)
    longer = await client.post(path, json={"ttl_seconds": 900}, headers=user(shop))
    t1 = await redis_ms(shop)
    default = await client.post(path, headers=user(shop))  # no body: the default ttl (600 s)
    too_long = await client.post(path, json={"ttl_seconds": 7200}, headers=user(shop))
    unknown = await client.post(path, json={"ttl": 60}, headers=user(shop))

    assert (by_other.status_code, err(by_other)["code"]) == (404, "reservation_not_found")
    assert longer.status_code == 200
    # now + 900 s on the Redis clock, whenever the call ran
    expires_at = datetime.fromisoformat(data(longer)["expires_at"]).timestamp() * 1000
    assert t0 + 900_000 <= round(expires_at) <= t1 + 900_000
    # 600 s from now is sooner than what it holds already: nothing changes, no event
    assert default.status_code == 200
    assert data(default)["expires_at"] == data(longer)["expires_at"]
    assert TOKEN.fullmatch(default.headers["x-consistency-token"])
    assert too_long.status_code == 400
    assert err(too_long)["message"] == "ttl_seconds must be between 0.05 and 3600"
    assert (unknown.status_code, err(unknown)["code"]) == (400, "invalid_input")


async def test_extend_stops_at_the_maximum_lifetime(
    shop: Starlette, client: httpx.AsyncClient
) -> None:
    made = await reserve(client, user(shop), {"product": 1, "quantity": 1, "ttl_seconds": 3600})
    capped = await client.post(f"/api/reservations/{made['id']}/extend/", headers=user(shop))

    assert capped.status_code == 409
    error = err(capped)
    assert error["code"] == "extension_limit_reached"
    assert error["message"] == f"reservation {made['id']!r} can't be held any longer"


@pytest.mark.cluster
async def test_commit_makes_an_order(shop: Starlette, client: httpx.AsyncClient) -> None:
    made = await reserve(client, user(shop), {"product": 1, "quantity": 3})
    path = f"/api/reservations/{made['id']}/commit/"
    by_other = await client.post(path, headers=user(shop, "2"))
    committed = await client.post(path, headers=user(shop))
    again = await client.post(path, headers=user(shop))
    seen = data(await client.get(f"/api/reservations/{made['id']}/", headers=user(shop)))

    assert (by_other.status_code, err(by_other)["code"]) == (404, "reservation_not_found")
    assert committed.status_code == 201
    order = data(committed)
    assert (order["status"], order["reservation"], order["user"]) == ("pending", made["id"], "1")
    assert order["lines"] == [
        {"product": 1, "warehouse": "main", "quantity": 3, "unit_price": "19.99"}
    ]
    assert (order["total"], order["currency"]) == ("59.97", "USD")
    assert (again.status_code, err(again)["code"]) == (409, "reservation_not_live")
    assert err(again)["details"]["order"] == order["id"]
    assert (seen["status"], seen["order"]) == ("committed", order["id"])
    assert await levels(shop, 1) == {"main": (7, 0)}


# -- the list -----------------------------------------------------------------------------------


async def listed(
    client: httpx.AsyncClient, headers: dict[str, str], query: str = ""
) -> list[dict[str, Any]]:
    response = await client.get(f"/api/reservations/?{query}", headers=headers)
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = data(response)
    return found


def ids(items: list[dict[str, Any]]) -> list[str]:
    return [item["id"] for item in items]


async def test_list_own_newest_first_filtered_by_status(
    shop: Starlette, client: httpx.AsyncClient
) -> None:
    alice, bob, staff = user(shop), user(shop, "2"), user(shop, "9", staff=True)
    released, committed, active = [await reserve(client, alice) for _ in range(3)]
    lapsed = await reserve(client, alice, {"product": 1, "quantity": 1, "ttl_seconds": 0.05})
    bobs = await reserve(client, bob)
    await client.delete(f"/api/reservations/{released['id']}/", headers=alice)
    await client.post(f"/api/reservations/{committed['id']}/commit/", headers=alice)
    await asyncio.sleep(0.1)
    await drain(shop)

    alices = newest_first(lapsed, active, committed, released)
    assert ids(await listed(client, alice)) == alices
    assert ids(await listed(client, alice, "status=ACTIVE")) == [active["id"]]
    assert ids(await listed(client, alice, "status=released")) == [released["id"]]
    assert ids(await listed(client, alice, "status=committed")) == [committed["id"]]
    # past expires_at it is expired, whether the sweep has recorded it yet or not
    expired = await listed(client, alice, "status=expired")
    assert (ids(expired), expired[0]["status"]) == ([lapsed["id"]], "expired")
    assert ids(await listed(client, alice, "user=1")) == alices
    assert ids(await listed(client, bob)) == [bobs["id"]]
    everyone = newest_first(bobs, lapsed, active, committed, released)
    assert ids(await listed(client, staff)) == everyone
    assert ids(await listed(client, staff, "user=2")) == [bobs["id"]]
    one = (await listed(client, alice, "status=committed"))[0]
    assert one == {**committed, "status": "committed", "order": one["order"]}
    assert one["order"] is not None


async def test_list_refusals(shop: Starlette, client: httpx.AsyncClient) -> None:
    alice = user(shop)
    cases = {
        "user=2": (403, "forbidden", "only staff can list another user's records"),
        "status=pending": (400, "invalid_input", "the query string is not valid"),
        "limit=0": (400, "invalid_input", "the query string is not valid"),
        "limit=201": (400, "invalid_input", "the query string is not valid"),
        "limit=ten": (400, "invalid_input", "the query string is not valid"),
        "colour=red": (400, "invalid_input", "the query string is not valid"),
        "cursor=not-a-cursor": (400, "invalid_cursor", "the cursor is not one this API gave out"),
        "consistent_with=p0-1": (
            400,
            "invalid_consistency_token",
            "consistent_with takes the X-Consistency-Token header of a write response",
        ),
        "consistent_with=p7-1-0": (
            400,
            "invalid_consistency_token",
            "consistent_with takes the X-Consistency-Token header of a write response",
        ),
    }
    for query, expected in cases.items():
        response = await client.get(f"/api/reservations/?{query}", headers=alice)
        error = err(response)
        assert (response.status_code, error["code"], error["message"]) == expected, query


async def test_list_pages_by_keyset(shop: Starlette, client: httpx.AsyncClient) -> None:
    alice = user(shop)
    made = [await reserve(client, alice) for _ in range(5)]
    await drain(shop)
    in_order = newest_first(*made)

    first = await client.get("/api/reservations/?limit=2", headers=alice)
    second = await client.get(
        f"/api/reservations/?limit=2&cursor={first.json()['next']}", headers=alice
    )
    third = await client.get(
        f"/api/reservations/?limit=2&cursor={second.json()['next']}", headers=alice
    )
    back = await client.get(
        f"/api/reservations/?limit=2&cursor={second.json()['previous']}", headers=alice
    )

    assert [ids(data(page)) for page in (first, second, third)] == [
        in_order[:2],
        in_order[2:4],
        in_order[4:],
    ]
    assert (first.json()["previous"], third.json()["next"]) == (None, None)
    assert ids(data(back)) == in_order[:2]
    # a cursor of another list's form (the audit log's: a time and a number) does not fit
    alien = "n" + "0" * 32
    refused = await client.get(f"/api/reservations/?cursor={alien}", headers=alice)
    assert (refused.status_code, err(refused)["code"]) == (400, "invalid_cursor")


# -- read-your-writes ---------------------------------------------------------------------------


@pytest.mark.cluster
async def test_a_list_waits_for_the_write_it_is_given(
    shop: Starlette, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a wait that only the drain can end, however slow the machine is
    monkeypatch.setattr(consistency, "WAIT_S", 600.0)
    alice = user(shop)
    response = await client.post(
        "/api/reservations/", json={"product": 1, "quantity": 1}, headers=alice
    )
    token, made = response.headers["x-consistency-token"], data(response)

    trailing = await client.get("/api/reservations/", headers=alice)
    waiting = asyncio.create_task(
        client.get(f"/api/reservations/?consistent_with={token}", headers=alice)
    )
    await asyncio.sleep(0.2)
    assert not waiting.done()
    await drain(shop)
    caught_up = await asyncio.wait_for(waiting, 60)  # a guard against a hang

    assert (data(trailing), "x-consistency" in trailing.headers) == ([], False)
    assert ids(data(caught_up)) == [made["id"]]
    assert caught_up.headers["x-consistency"] == "consistent"
    with svc(shop).db.connect() as conn:
        event = conn.scalar(
            select(schema.audit_log.c.event_id).where(
                schema.audit_log.c.object_id == made["id"],
                schema.audit_log.c.action == "reservation_created",
            )
        )
    assert event == token  # the token is the write's outbox event


async def test_a_list_answers_stale_when_the_drain_is_late(
    shop: Starlette, client: httpx.AsyncClient
) -> None:
    alice = user(shop)
    response = await client.post(
        "/api/reservations/", json={"product": 1, "quantity": 1}, headers=alice
    )
    started = asyncio.get_running_loop().time()
    stale = await asyncio.wait_for(  # the timeout only keeps a broken run from hanging
        client.get(
            f"/api/reservations/?consistent_with={response.headers['x-consistency-token']}",
            headers=alice,
        ),
        timeout=consistency.WAIT_S + 60,
    )
    waited = asyncio.get_running_loop().time() - started

    # no drain ran: the list gave the write its full time, then answered from what it had
    assert stale.status_code == 200
    assert (data(stale), stale.headers["x-consistency"]) == ([], "stale")
    assert waited >= consistency.WAIT_S


async def test_a_token_no_write_has_reached_is_refused_at_once(
    shop: Starlette, client: httpx.AsyncClient, sync_redis: redis.Redis
) -> None:
    alice = user(shop)
    response = await client.post(
        "/api/reservations/", json={"product": 1, "quantity": 1}, headers=alice
    )
    token = response.headers["x-consistency-token"]
    _, ms, seq = token.split("-")
    await drain(shop)  # and so trimmed: the stream is empty, its newest id stays
    assert sync_redis.xlen(partition_keys(0).outbox) == 0

    async def listed_with(token: str) -> httpx.Response:
        # a token that is waited for answers after WAIT_S at the earliest
        async with asyncio.timeout(WAIT_S * 0.9):
            return await client.get(f"/api/reservations/?consistent_with={token}", headers=alice)

    reached = await listed_with(token)
    beyond = [f"p0-{ms}-{int(seq) + 1}", f"p0-{int(ms) + 1000}-0", "p0-99999999999999-0"]
    refused = [await listed_with(t) for t in beyond]

    assert (reached.status_code, reached.headers["x-consistency"]) == (200, "consistent")
    for t, answer in zip(beyond, refused, strict=True):
        assert answer.status_code == 400
        assert err(answer) == {
            "code": "invalid_consistency_token",
            "message": "consistent_with names a position no write has reached: pass the "
            "X-Consistency-Token header of a write response",
            "details": {"consistent_with": t},
        }


async def test_tokens_against_a_missing_outbox_stream(
    app: Starlette, client: httpx.AsyncClient, sync_redis: redis.Redis
) -> None:
    alice = user(app)
    await product(app, 1)
    written = await client.post(
        "/api/reservations/", json={"product": 1, "quantity": 1}, headers=alice
    )
    token = written.headers["x-consistency-token"]
    await drain(app)
    # Redis came back without the stream (behind the database): no event is newer than 0-0,
    # but the database holds this write, so its token is answered, not refused
    sync_redis.delete(partition_keys(0).outbox)

    async def listed_with(token: str) -> httpx.Response:
        async with asyncio.timeout(WAIT_S * 0.9):
            return await client.get(f"/api/reservations/?consistent_with={token}", headers=alice)

    held = await listed_with(token)
    empty = await listed_with("p0-0-0")
    _, ms, seq = token.split("-")
    beyond = await listed_with(f"p0-{ms}-{int(seq) + 1}")

    assert (held.status_code, held.headers["x-consistency"]) == (200, "consistent")
    assert [r["id"] for r in data(held)] == [data(written)["id"]]
    assert (empty.status_code, empty.headers["x-consistency"]) == (200, "consistent")
    assert (beyond.status_code, err(beyond)["code"]) == (400, "invalid_consistency_token")


@pytest.mark.cluster
async def test_writes_ask_the_worker_to_drain(
    shop: Starlette, client: httpx.AsyncClient, app_settings: Any
) -> None:
    alice = user(shop)
    made = await reserve(client, alice)
    worker = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "scripts.cli", "worker", "--burst", "--log-level", "WARNING"],
        env={
            **os.environ,
            **redis_env(app_settings),
            "DATABASE_URL": app_settings.database_url,
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert worker.returncode == 0, worker.stderr
    assert ids(await listed(client, alice)) == [made["id"]]
