"""The audit log over HTTP: filled by the drain, staff only, filters, newest first, pages."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import Engine as DatabaseEngine
from starlette.applications import Starlette

from engine.models import CallContext, LineRequest
from engine.settings import Settings
from persistence.drain import drain_partition
from tests.api import bearer, data, err
from tests.catalog_support import create, svc
from web.pagination import encode_cursor

URL = "/api/audit-logs/"


@pytest.fixture
async def filled(
    client: httpx.AsyncClient,
    app: Starlette,
    app_settings: Settings,
    sync_redis: redis.Redis,
    db: DatabaseEngine,
) -> dict[str, Any]:
    """Product A (created and adjusted by staff user 1), product B, a reservation by user 9;
    drained. Returns the staff headers and the product ids."""
    staff = bearer(app, "1", staff=True)
    a = await create(client, staff | {"X-Request-ID": "rid-create-a"}, "A-1", total_stock=5)
    await client.post(
        f"/api/products/{a['id']}/stock/",
        json={"quantity": 3, "reason": "received"},
        headers=staff | {"X-Request-ID": "rid-adjust"},
    )
    b = await create(client, staff, "B-1")
    await svc(app).engine.reserve([LineRequest(str(a["id"]), 2)], CallContext(actor="9"))
    assert data(await client.get(URL, headers=staff)) == []  # the log trails by the drain lag
    await asyncio.to_thread(drain_partition, sync_redis, db, app_settings, 0)
    return {"staff": staff, "a": str(a["id"]), "b": str(b["id"])}


async def get(client: httpx.AsyncClient, filled: dict[str, Any], **params: Any) -> list[Any]:
    response = await client.get(URL, params=params, headers=filled["staff"])
    assert response.status_code == 200, response.text
    rows: list[Any] = data(response)
    return rows


async def test_everything_newest_first(client: httpx.AsyncClient, filled: dict[str, Any]) -> None:
    rows = await get(client, filled)

    assert [(r["action"], r["object_id"]) for r in rows] == [
        ("reservation_created", rows[0]["object_id"]),
        ("product_updated", filled["b"]),
        ("stock_adjusted", filled["a"]),
        ("stock_adjusted", filled["a"]),
        ("product_updated", filled["a"]),
    ]
    assert [(r["at"], r["id"]) for r in rows] == sorted(
        ((r["at"], r["id"]) for r in rows), reverse=True
    )
    adjusted = rows[2]
    assert (adjusted["actor"], adjusted["request_id"]) == ("1", "rid-adjust")
    assert adjusted["old_value"] == [{"warehouse": "main", "available": 5}]
    assert adjusted["new_value"] == [{"warehouse": "main", "available": 8}]
    assert adjusted["at"].endswith("Z")


async def test_filters(client: httpx.AsyncClient, filled: dict[str, Any]) -> None:
    a = filled["a"]

    adjusted = await get(client, filled, action="stock_adjusted")
    of_a = await get(client, filled, object_type="product", object_id=a)
    by_buyer = await get(client, filled, actor="9")
    by_request = await get(client, filled, request_id="rid-create-a")
    combined = await get(client, filled, action="product_updated", object_id=a)
    nothing = await get(client, filled, action="no_such_action")

    assert {r["object_id"] for r in adjusted} == {a}
    assert len(adjusted) == 2
    assert [r["action"] for r in of_a] == ["stock_adjusted", "stock_adjusted", "product_updated"]
    assert [r["action"] for r in by_buyer] == ["reservation_created"]
    assert {r["action"] for r in by_request} == {"product_updated", "stock_adjusted"}
    assert len(combined) == 1
    assert nothing == []


async def test_time_range(client: httpx.AsyncClient, filled: dict[str, Any]) -> None:
    rows = await get(client, filled)
    middle = rows[2]["at"]
    plus_two = datetime.fromisoformat(middle).astimezone(timezone(timedelta(hours=2))).isoformat()

    since = await get(client, filled, since=middle)
    since_offset = await get(client, filled, since=plus_two)
    until = await get(client, filled, until=middle)
    both = await get(client, filled, since=middle, until=middle)

    assert {r["id"] for r in since} == {r["id"] for r in rows if r["at"] >= middle}
    assert since_offset == since
    assert {r["id"] for r in until} == {r["id"] for r in rows if r["at"] <= middle}
    assert {r["id"] for r in both} == {r["id"] for r in rows if r["at"] == middle}


async def test_pages_forward_and_back(client: httpx.AsyncClient, filled: dict[str, Any]) -> None:
    everything = [r["id"] for r in await get(client, filled)]
    pages: list[list[int]] = []
    params: dict[str, Any] = {"limit": 2}
    while True:
        response = await client.get(URL, params=params, headers=filled["staff"])
        pages.append([r["id"] for r in data(response)])
        if response.json()["next"] is None:
            break
        params["cursor"] = response.json()["next"]
    back = await client.get(
        URL, params={"limit": 2, "cursor": response.json()["previous"]}, headers=filled["staff"]
    )

    assert pages == [everything[0:2], everything[2:4], everything[4:5]]
    assert [r["id"] for r in data(back)] == everything[2:4]


async def test_staff_only(client: httpx.AsyncClient, app: Starlette) -> None:
    anonymous = await client.get(URL)
    customer = await client.get(URL, headers=bearer(app, "2"))

    assert anonymous.status_code == 401
    assert err(anonymous)["code"] == "not_authenticated"
    assert customer.status_code == 403
    assert err(customer)["code"] == "forbidden"


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"since": "yesterday"}, "invalid_input"),
        ({"since": "1700000000"}, "invalid_input"),
        ({"limit": "0"}, "invalid_input"),
        ({"object_id": "x" * 65}, "invalid_input"),
        ({"colour": "red"}, "invalid_input"),
        ({"cursor": "not-a-cursor"}, "invalid_cursor"),
        ({"cursor": "n" + "g" * 32}, "invalid_cursor"),
        ({"cursor": encode_cursor([1], "n")}, "invalid_cursor"),
    ],
)
async def test_bad_queries(
    client: httpx.AsyncClient, app: Starlette, params: dict[str, Any], code: str
) -> None:
    response = await client.get(URL, params=params, headers=bearer(app, "1", staff=True))

    assert response.status_code == 400
    assert err(response)["code"] == code
