"""Products, stock and warehouses end to end through HTTP: real app, Redis and database."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import Engine as DatabaseEngine
from starlette.applications import Starlette

from engine.models import CallContext, LineRequest
from persistence import catalog
from tests.api import bearer, data, err
from tests.catalog_support import create, snapshot, svc


@pytest.fixture
def staff(app: Starlette) -> dict[str, str]:
    return bearer(app, "1", staff=True)


@pytest.fixture
def customer(app: Starlette) -> dict[str, str]:
    return bearer(app, "2")


async def test_create_then_read_openly(client: httpx.AsyncClient, staff: dict[str, str]) -> None:
    made = await create(client, staff, "TSHIRT-1", total_stock=10, description="cotton")

    one = await client.get(f"/api/products/{made['id']}/")
    listed = await client.get("/api/products/")

    assert made["price"] == "19.99"
    assert made["currency"] == "USD"
    assert made["description"] == "cotton"
    assert (made["total_stock"], made["available_stock"], made["reserved_stock"]) == (10, 10, 0)
    assert made["warehouses"] == [
        {"warehouse": "main", "priority": 0, "available": 10, "reserved": 0, "total": 10}
    ]
    assert data(one) == made
    assert data(listed) == [made]
    assert listed.json()["next"] is None


async def test_opening_stock_per_warehouse(
    client: httpx.AsyncClient, staff: dict[str, str]
) -> None:
    east = {"id": "east", "name": "East", "priority": -1}
    assert (await client.post("/api/warehouses/", json=east, headers=staff)).status_code == 201
    stock = [{"warehouse": "main", "quantity": 3}, {"warehouse": "east", "quantity": 4}]

    made = await create(client, staff, "YEN-1", price="500", currency="JPY", stock=stock)

    assert made["price"] == "500"
    assert [(w["warehouse"], w["priority"], w["available"]) for w in made["warehouses"]] == [
        ("east", -1, 4),
        ("main", 0, 3),
    ]
    assert made["total_stock"] == 7


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"sku": "has space"}, "sku"),
        ({"sku": "x" * 65}, "sku"),
        ({"price": 19.99}, "price"),
        ({"price": "-1"}, "price"),
        ({"price": "1.999"}, "price"),
        ({"currency": "usd"}, "currency"),
        ({"total_stock": 1.5}, "total_stock"),
        ({"total_stock": "5"}, "total_stock"),
        ({"total_stock": True}, "total_stock"),
        ({"total_stock": -1}, "total_stock"),
        ({"total_stock": 10**12}, "total_stock"),
        ({"total_stock": 1, "stock": [{"warehouse": "main", "quantity": 1}]}, "body"),
        ({"stock": [{"warehouse": "main", "quantity": 1, "x": 1}]}, "stock.0.x"),
        ({"colour": "red"}, "colour"),
    ],
)
async def test_bad_create_bodies_change_nothing(
    client: httpx.AsyncClient,
    staff: dict[str, str],
    db: DatabaseEngine,
    sync_redis: redis.Redis,
    body: dict[str, Any],
    field: str,
) -> None:
    before = snapshot(db, sync_redis)

    response = await client.post(
        "/api/products/", json={"name": "N", "sku": "S-1", "price": "1.00", **body}, headers=staff
    )

    assert response.status_code == 400
    error = err(response)
    assert error["code"] == "invalid_input"
    assert field in [e["field"] for e in error["details"]["errors"]], error
    assert snapshot(db, sync_redis) == before


async def test_create_conflicts_change_nothing(
    client: httpx.AsyncClient, staff: dict[str, str], db: DatabaseEngine, sync_redis: redis.Redis
) -> None:
    made = await create(client, staff, "DUP-1", total_stock=5)
    before = snapshot(db, sync_redis)
    nowhere = [{"warehouse": "nowhere", "quantity": 1}]

    dup = await client.post(
        "/api/products/", json={"name": "B", "sku": "DUP-1", "price": "2.00"}, headers=staff
    )
    missing = await client.post(
        "/api/products/",
        json={"name": "C", "sku": "NEW-1", "price": "2.00", "stock": nowhere},
        headers=staff,
    )

    assert dup.status_code == 409
    assert err(dup)["details"] == {"sku": "DUP-1", "product": made["id"]}
    assert err(dup)["code"] == "sku_exists"
    assert missing.status_code == 404
    assert err(missing)["code"] == "warehouse_not_found"
    assert "nowhere" in err(missing)["message"]
    assert snapshot(db, sync_redis) == before


async def test_a_first_create_into_a_missing_warehouse_changes_nothing(
    client: httpx.AsyncClient, staff: dict[str, str], db: DatabaseEngine, sync_redis: redis.Redis
) -> None:
    before = snapshot(db, sync_redis)  # not even the default warehouse exists yet
    stock = [{"warehouse": "main", "quantity": 1}, {"warehouse": "nowhere", "quantity": 1}]

    response = await client.post(
        "/api/products/",
        json={"name": "N", "sku": "N-1", "price": "1", "stock": stock},
        headers=staff,
    )

    assert response.status_code == 404
    assert err(response)["details"] == {"warehouse": "nowhere"}
    assert snapshot(db, sync_redis) == before


async def test_unfinished_create_is_finished_by_a_retry(
    client: httpx.AsyncClient, staff: dict[str, str], db: DatabaseEngine, sync_redis: redis.Redis
) -> None:
    # The failure in between: the catalog row is written, the engine step never happened.
    row, _ = catalog.insert_product(
        db, sku="HALF-1", name="Half", description="", price=100, currency="USD"
    )

    hidden_one = await client.get(f"/api/products/{row.id}/")
    hidden_list = await client.get("/api/products/")
    retried = await create(client, staff, "HALF-1", total_stock=4, price="2.50")
    again = await client.post(
        "/api/products/", json={"name": "x", "sku": "HALF-1", "price": "2.50"}, headers=staff
    )

    assert hidden_one.status_code == 404
    assert data(hidden_list) == []
    assert (retried["id"], retried["price"], retried["total_stock"]) == (row.id, "2.50", 4)
    assert again.status_code == 409
    assert data(await client.get(f"/api/products/{row.id}/"))["total_stock"] == 4


async def test_create_replays_under_the_same_idempotency_key(
    client: httpx.AsyncClient, staff: dict[str, str], db: DatabaseEngine, sync_redis: redis.Redis
) -> None:
    headers = {**staff, "Idempotency-Key": "create-once"}
    body = {"name": "Once", "sku": "ONCE-1", "price": "3.00", "total_stock": 6}

    first = await client.post("/api/products/", json=body, headers=headers)
    state = snapshot(db, sync_redis)
    second = await client.post("/api/products/", json=body, headers=headers)
    other = await client.post(
        "/api/products/", json={**body, "sku": "ONCE-2", "total_stock": 1}, headers=headers
    )

    assert (first.status_code, second.status_code) == (201, 201)
    assert data(second) == data(first)
    assert data(second)["total_stock"] == 6
    assert other.status_code == 422
    assert err(other)["code"] == "idempotency_mismatch"
    assert snapshot(db, sync_redis) == state  # the refused ONCE-2 row was removed again


async def test_writes_need_staff_and_reads_are_open(
    client: httpx.AsyncClient,
    staff: dict[str, str],
    customer: dict[str, str],
    db: DatabaseEngine,
    sync_redis: redis.Redis,
) -> None:
    pid = (await create(client, staff, "AUTH-1", total_stock=2))["id"]
    writes = [
        ("POST", "/api/products/", {"name": "n", "sku": "AUTH-2", "price": "1.00"}),
        (
            "PUT",
            f"/api/products/{pid}/",
            {"name": "n", "sku": "s", "price": "1", "description": ""},
        ),
        ("PATCH", f"/api/products/{pid}/", {"name": "n"}),
        ("DELETE", f"/api/products/{pid}/", None),
        ("POST", f"/api/products/{pid}/stock/", {"quantity": 1, "reason": "received"}),
        ("POST", "/api/warehouses/", {"id": "west", "name": "West"}),
    ]
    before = snapshot(db, sync_redis)

    for method, url, body in writes:
        anonymous = await client.request(method, url, json=body)
        customers = await client.request(method, url, json=body, headers=customer)
        assert anonymous.status_code == 401, (method, url)
        assert err(anonymous)["code"] == "not_authenticated"
        assert customers.status_code == 403, (method, url)
        assert err(customers)["code"] == "forbidden"
    for url in ("/api/products/", f"/api/products/{pid}/", "/api/warehouses/"):
        assert (await client.get(url)).status_code == 200
        assert (await client.get(url, headers=customer)).status_code == 200
    assert snapshot(db, sync_redis) == before


@pytest.mark.parametrize("raw", ["999", "abc", "1e3", "99999999999999999999", "-1"])
async def test_unknown_products_are_404(client: httpx.AsyncClient, raw: str) -> None:
    response = await client.get(f"/api/products/{raw}/")

    assert response.status_code == 404
    assert err(response)["code"] == "product_not_found"


async def test_search_and_pages_both_ways(client: httpx.AsyncClient, staff: dict[str, str]) -> None:
    names = ["Red Shirt", "Blue SHIRT", "Green Hat", "Red Hat", "Shirt Box", "Sock", "Cap"]
    made = [await create(client, staff, f"SKU-{i}", name=n) for i, n in enumerate(names)]
    ids = [p["id"] for p in made]

    pages: list[list[int]] = []
    response = await client.get("/api/products/", params={"limit": 3})
    while True:
        pages.append([p["id"] for p in data(response)])
        cursor = response.json()["next"]
        if cursor is None:
            break
        response = await client.get("/api/products/", params={"limit": 3, "cursor": cursor})
    back = await client.get(
        "/api/products/", params={"limit": 3, "cursor": response.json()["previous"]}
    )
    shirts = await client.get("/api/products/", params={"search": "shirt"})
    by_sku = await client.get("/api/products/", params={"search": "sku-6"})
    none = await client.get("/api/products/", params={"search": "%"})

    assert pages == [ids[0:3], ids[3:6], ids[6:7]]
    assert [p["id"] for p in data(back)] == ids[3:6]
    assert [p["name"] for p in data(shirts)] == ["Red Shirt", "Blue SHIRT", "Shirt Box"]
    assert [p["name"] for p in data(by_sku)] == ["Cap"]
    assert data(none) == []


async def test_in_stock_reads_redis_and_pages(
    client: httpx.AsyncClient, app: Starlette, staff: dict[str, str]
) -> None:
    made = [await create(client, staff, f"IS-{i}", total_stock=i % 2 * 5) for i in range(9)]
    stocked = [p["id"] for p in made if p["available_stock"] > 0]
    empty = [p["id"] for p in made if p["available_stock"] == 0]
    # All of one product's units reserved: in stock no longer.
    await svc(app).engine.reserve([LineRequest(str(stocked[0]), 5)], CallContext(actor="9"))

    async def walk(in_stock: str) -> list[int]:
        seen: list[int] = []
        params: dict[str, Any] = {"limit": 2, "in_stock": in_stock}
        while True:
            response = await client.get("/api/products/", params=params)
            seen += [p["id"] for p in data(response)]
            if response.json()["next"] is None:
                return seen
            params["cursor"] = response.json()["next"]

    assert await walk("true") == stocked[1:]
    assert await walk("false") == sorted(empty + stocked[:1])


async def test_in_stock_scan_is_bounded(client: httpx.AsyncClient, staff: dict[str, str]) -> None:
    # limit 1 scans chunks of 2 rows, 10 chunks at most: 25 empty products fill more than that.
    for i in range(25):
        await create(client, staff, f"EMPTY-{i}")
    wanted = await create(client, staff, "FULL-1", total_stock=1)

    first = await client.get("/api/products/", params={"limit": 1, "in_stock": "true"})
    second = await client.get(
        "/api/products/", params={"limit": 1, "in_stock": "true", "cursor": first.json()["next"]}
    )

    assert data(first) == []
    assert first.json()["next"] is not None  # the scan stopped at its bound, not at the end
    assert [p["id"] for p in data(second)] == [wanted["id"]]
    assert second.json()["next"] is None


@pytest.mark.parametrize(
    "params",
    [{"limit": 0}, {"limit": 201}, {"limit": "x"}, {"in_stock": "maybe"}, {"colour": "red"}],
)
async def test_bad_list_queries(client: httpx.AsyncClient, params: dict[str, Any]) -> None:
    response = await client.get("/api/products/", params=params)

    assert response.status_code == 400
    assert err(response)["code"] == "invalid_input"


@pytest.mark.parametrize("cursor", ["garbage", "eyJ2IjpbIngiXSwiZCI6Im4ifQ"])
async def test_bad_cursors(client: httpx.AsyncClient, cursor: str) -> None:
    response = await client.get("/api/products/", params={"cursor": cursor})

    assert response.status_code == 400
    assert err(response)["code"] == "invalid_cursor"
