"""`Idempotency-Key` on every write that takes it, through HTTP on the real app, Redis and
database: the same key and request get the first answer again (status and data, with
`Idempotent-Replayed: true`) and change nothing; the key with another request is 422
`idempotency_mismatch` and changes nothing. One table of endpoints, each with a request and
another one to send under the same key."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from starlette.applications import Starlette

from persistence import schema
from tests.api import data, err
from tests.catalog_support import create
from tests.helpers import snapshot
from tests.test_api_reservations import drain, product, reserve, svc, user

MISMATCH = {
    "code": "idempotency_mismatch",
    "message": "this Idempotency-Key was used before with a different request",
    "details": {},
}


@dataclass(frozen=True)
class Write:
    method: str
    path: str
    body: dict[str, Any] | None = None


# Sets up what the write needs; returns the write and another request for the same key.
Prepare = Callable[[Starlette, httpx.AsyncClient], Awaitable[tuple[Write, Write]]]


@dataclass(frozen=True)
class Case:
    status: int
    prepare: Prepare
    staff: bool = False


def staff(app: Starlette) -> dict[str, str]:
    return user(app, "9", staff=True)


async def two_reservations(app: Starlette, client: httpx.AsyncClient) -> tuple[str, str]:
    await product(app, 1)
    a, b = await reserve(client, user(app)), await reserve(client, user(app))
    return a["id"], b["id"]


async def order_of(app: Starlette, client: httpx.AsyncClient) -> str:
    response = await client.post(
        "/api/orders/", json={"product": 1, "quantity": 1}, headers=user(app)
    )
    assert response.status_code == 201, response.text
    made: str = data(response)["id"]
    return made


async def create_product(app: Starlette, client: httpx.AsyncClient) -> tuple[Write, Write]:
    body = {"name": "Once", "sku": "ONCE-1", "price": "3.00", "total_stock": 6}
    other = {**body, "sku": "ONCE-2", "total_stock": 1}
    return Write("POST", "/api/products/", body), Write("POST", "/api/products/", other)


async def adjust_stock(app: Starlette, client: httpx.AsyncClient) -> tuple[Write, Write]:
    pid = (await create(client, staff(app), "ADJ-1", total_stock=5))["id"]
    path = f"/api/products/{pid}/stock/"
    return (
        Write("POST", path, {"quantity": 5, "reason": "received"}),
        Write("POST", path, {"quantity": 4, "reason": "received"}),
    )


async def adjust_stock_elsewhere(app: Starlette, client: httpx.AsyncClient) -> tuple[Write, Write]:
    """The other request receives into a warehouse the product does not stock yet: the
    route would add the warehouse to the product before the engine sees the key."""
    east = {"id": "east", "name": "East", "priority": 1}
    assert (await client.post("/api/warehouses/", json=east, headers=staff(app))).is_success
    pid = (await create(client, staff(app), "ADJ-2", total_stock=5))["id"]
    path = f"/api/products/{pid}/stock/"
    return (
        Write("POST", path, {"quantity": 5, "reason": "received"}),
        Write("POST", path, {"quantity": 5, "reason": "received", "warehouse": "east"}),
    )


async def adjust_stock_into_a_new_warehouse(
    app: Starlette, client: httpx.AsyncClient
) -> tuple[Write, Write]:
    """The write itself adds a warehouse to the product first."""
    for name in ("east", "west"):
        warehouse = {"id": name, "name": name.title(), "priority": 1}
        assert (
            await client.post("/api/warehouses/", json=warehouse, headers=staff(app))
        ).is_success
    pid = (await create(client, staff(app), "ADJ-3", total_stock=5))["id"]
    path = f"/api/products/{pid}/stock/"
    return (
        Write("POST", path, {"quantity": 5, "reason": "received", "warehouse": "east"}),
        Write("POST", path, {"quantity": 5, "reason": "received", "warehouse": "west"}),
    )


async def reserve_one(app: Starlette, client: httpx.AsyncClient) -> tuple[Write, Write]:
    await product(app, 1)
    return (
        Write("POST", "/api/reservations/", {"product": 1, "quantity": 2}),
        Write("POST", "/api/reservations/", {"product": 1, "quantity": 3}),
    )


async def reserve_cart(app: Starlette, client: httpx.AsyncClient) -> tuple[Write, Write]:
    await product(app, 1)
    await product(app, 2, warehouses={"main": 0, "east": 1}, stock={"main": 2, "east": 5})
    cart = {
        "lines": [{"product": 2, "quantity": 4}, {"product": 1, "quantity": 1}],
        "ttl_seconds": 120,
    }
    return (
        Write("POST", "/api/reservations/", cart),
        Write("POST", "/api/reservations/", {**cart, "allow_split": False}),
    )


async def release(app: Starlette, client: httpx.AsyncClient) -> tuple[Write, Write]:
    a, b = await two_reservations(app, client)
    return Write("DELETE", f"/api/reservations/{a}/"), Write("DELETE", f"/api/reservations/{b}/")


async def extend(app: Starlette, client: httpx.AsyncClient) -> tuple[Write, Write]:
    a, _ = await two_reservations(app, client)
    path = f"/api/reservations/{a}/extend/"
    return Write("POST", path, {"ttl_seconds": 900}), Write("POST", path, {"ttl_seconds": 1200})


async def commit(app: Starlette, client: httpx.AsyncClient) -> tuple[Write, Write]:
    a, b = await two_reservations(app, client)
    return (
        Write("POST", f"/api/reservations/{a}/commit/"),
        Write("POST", f"/api/reservations/{b}/commit/"),
    )


async def order_a_reservation(app: Starlette, client: httpx.AsyncClient) -> tuple[Write, Write]:
    a, b = await two_reservations(app, client)
    return (
        Write("POST", "/api/orders/", {"reservation": a}),
        Write("POST", "/api/orders/", {"reservation": b}),
    )


async def order_one(app: Starlette, client: httpx.AsyncClient) -> tuple[Write, Write]:
    await product(app, 1)
    return (
        Write("POST", "/api/orders/", {"product": 1, "quantity": 2}),
        Write("POST", "/api/orders/", {"product": 1, "quantity": 1}),
    )


async def order_cart(app: Starlette, client: httpx.AsyncClient) -> tuple[Write, Write]:
    await product(app, 1)
    await product(app, 2, warehouses={"main": 0, "east": 1}, stock={"main": 2, "east": 5})
    lines = [{"product": 2, "quantity": 3}, {"product": 1, "quantity": 1}]
    return (
        Write("POST", "/api/orders/", {"lines": lines}),
        Write("POST", "/api/orders/", {"lines": lines[:1]}),
    )


async def move_order(app: Starlette, client: httpx.AsyncClient) -> tuple[Write, Write]:
    await product(app, 1)
    path = f"/api/orders/{await order_of(app, client)}/"
    return Write("PATCH", path, {"status": "confirmed"}), Write(
        "PATCH", path, {"status": "cancelled"}
    )


async def cancel_own_order(app: Starlette, client: httpx.AsyncClient) -> tuple[Write, Write]:
    await product(app, 1)
    first, second = await order_of(app, client), await order_of(app, client)
    return (
        Write("PATCH", f"/api/orders/{first}/", {"status": "cancelled"}),
        Write("PATCH", f"/api/orders/{second}/", {"status": "cancelled"}),
    )


CASES = {
    "create product": Case(201, create_product, staff=True),
    "adjust stock": Case(200, adjust_stock, staff=True),
    "adjust stock, then elsewhere": Case(200, adjust_stock_elsewhere, staff=True),
    "adjust stock into a new warehouse": Case(200, adjust_stock_into_a_new_warehouse, staff=True),
    "reserve one product": Case(201, reserve_one),
    "reserve a cart": Case(201, reserve_cart),
    "release": Case(200, release),
    "extend": Case(200, extend),
    "commit": Case(201, commit),
    "order a reservation": Case(201, order_a_reservation),
    "order one product": Case(201, order_one),
    "order a cart": Case(201, order_cart),
    "move an order (staff)": Case(200, move_order, staff=True),
    "cancel one's own order": Case(200, cancel_own_order),
}


async def send(client: httpx.AsyncClient, write: Write, headers: dict[str, str]) -> httpx.Response:
    return await client.request(write.method, write.path, json=write.body, headers=headers)


async def state(app: Starlette) -> tuple[Any, ...]:
    """What a replay or a refusal must leave alone: every key the engine owns in Redis (the
    counters, records, idempotency records and the outbox) and every row of the database.
    The drain request flag and the RQ queue it feeds are the worker's, not a write's."""
    redis_state = {
        key: value
        for key, value in (await snapshot(svc(app).engine.redis, "inv:{p*")).items()
        if not key.endswith(("drain-requested", "drain-lock"))
    }
    with svc(app).db.connect() as conn:
        rows = {
            table.name: sorted(map(repr, conn.execute(select(table)).all()))
            for table in schema.metadata.sorted_tables
        }
    return redis_state, rows


RETRIES = [pytest.param(case, id=name) for name, case in CASES.items()]


@pytest.mark.parametrize("case", RETRIES)
async def test_a_retry_gets_the_first_answer_and_changes_nothing(
    app: Starlette, client: httpx.AsyncClient, case: Case
) -> None:
    write, _ = await case.prepare(app, client)
    headers = {**(staff(app) if case.staff else user(app)), "Idempotency-Key": "retry-1"}
    first = await send(client, write, headers)
    await drain(app)  # the first write is durable: a second effect would show in the rows too
    before = await state(app)

    again = await send(client, write, headers)
    await drain(app)

    assert first.status_code == case.status, first.text
    assert "idempotent-replayed" not in first.headers
    assert again.status_code == first.status_code
    assert data(again) == data(first)
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.headers.get("x-consistency-token") == first.headers.get("x-consistency-token")
    assert await state(app) == before


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
async def test_the_key_with_another_request_is_422_and_changes_nothing(
    app: Starlette, client: httpx.AsyncClient, case: Case
) -> None:
    write, other = await case.prepare(app, client)
    headers = {**(staff(app) if case.staff else user(app)), "Idempotency-Key": "retry-1"}
    first = await send(client, write, headers)
    await drain(app)
    before = await state(app)

    refused = await send(client, other, headers)
    await drain(app)

    assert first.status_code == case.status, first.text
    assert refused.status_code == 422, refused.text
    assert err(refused) == MISMATCH
    assert await state(app) == before


@pytest.mark.parametrize(
    "twice",
    [
        [("Idempotency-Key", "retry-1"), ("Idempotency-Key", "retry-2")],
        [("Idempotency-Key", "retry-1"), ("Idempotency-Key", "retry-1")],
        [("Authorization", "Bearer x.y.z")],  # after the buyer's own
    ],
    ids=["two-keys", "one-key-twice", "two-authorizations"],
)
async def test_a_header_given_twice_is_400_and_changes_nothing(
    app: Starlette, client: httpx.AsyncClient, twice: list[tuple[str, str]]
) -> None:
    """Which of two keys (or tokens) would count is a guess: neither does."""
    await product(app, 1)
    headers = [*user(app).items(), *twice]
    before = await state(app)

    refused = await client.post(
        "/api/reservations/", json={"product": 1, "quantity": 1}, headers=headers
    )

    assert refused.status_code == 400, refused.text
    field = twice[-1][0]
    assert err(refused) == {
        "code": "invalid_input",
        "message": f"the {field} header may be given once",
        "details": {"field": field},
    }
    assert await state(app) == before


async def test_catalog_edits_ignore_the_key_and_never_stop_halfway(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """PUT, PATCH and DELETE of a product and POST of a warehouse run no engine script of
    their own and take no Idempotency-Key: sent again they do the same again (PUT and PATCH
    set the same values, DELETE and POST find their work done). A key on them changes
    nothing, and in particular can't leave a price changed in the catalog but not in Redis."""
    headers = {**staff(app), "Idempotency-Key": "edit-1"}
    pid = (await create(client, staff(app), "EDIT-1", total_stock=3))["id"]
    url = f"/api/products/{pid}/"
    full = {"name": "Full", "sku": "EDIT-1", "price": "5.00", "description": ""}

    put = [await client.put(url, json=full, headers=headers) for _ in range(2)]
    patched = await client.patch(url, json={"price": "7.50"}, headers=headers)
    live = await svc(app).engine.get_stock(str(pid))
    warehouse = {"id": "east", "name": "East", "priority": 1}
    made = [await client.post("/api/warehouses/", json=warehouse, headers=headers) for _ in "ab"]
    deleted = [await client.delete(url, headers=headers) for _ in range(2)]

    assert [r.status_code for r in put] == [200, 200]
    assert {**data(put[0]), "updated_at": None} == {**data(put[1]), "updated_at": None}
    assert "idempotent-replayed" not in put[1].headers
    assert (patched.status_code, data(patched)["price"]) == (200, "7.50")
    assert live.price == 750  # the engine has the catalog's price
    assert [r.status_code for r in made] == [201, 409]
    assert err(made[1])["code"] == "warehouse_exists"
    assert [r.status_code for r in deleted] == [200, 404]
    assert err(deleted[1])["code"] == "product_not_found"


async def test_a_replayed_adjustment_shows_the_product_as_it_is_now(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    pid = (await create(client, staff(app), "ADJ-9", total_stock=5))["id"]
    path = f"/api/products/{pid}/stock/"
    keyed = {**staff(app), "Idempotency-Key": "receive-1"}
    body = {"quantity": 5, "reason": "received"}
    first = await client.post(path, json=body, headers=keyed)
    await client.post(path, json={"quantity": 1, "reason": "returned"}, headers=staff(app))

    again = await client.post(path, json=body, headers=keyed)

    assert again.headers["idempotent-replayed"] == "true"
    assert data(again)["adjustment"] == data(first)["adjustment"]
    assert data(again)["adjustment"]["available_after"] == 10
    assert data(again)["product"]["total_stock"] == 11
