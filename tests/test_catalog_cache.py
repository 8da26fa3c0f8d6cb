"""Product reads from the catalog cache: a change through the API is seen at once by every API
process (two apps here, on one Redis and one database), a change behind the API's back within
the cache's bound, stock never from the cache; ETag and If-None-Match (304)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine as DatabaseEngine
from starlette.applications import Starlette

from engine.settings import Settings
from persistence import schema
from persistence.catalog import CatalogProduct
from scripts.pg_server import PostgresServer
from tests.api import bearer, data, err, running
from tests.catalog_support import create, svc
from web.app import create_app
from web.catalog_cache import CatalogCache
from web.products_view import not_modified


@pytest.fixture
def staff(app: Starlette) -> dict[str, str]:
    return bearer(app, "1", staff=True)


@pytest.fixture
async def other(app_settings: Settings, app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """A second API process on the same Redis and database, with a cache of its own."""
    async with running(create_app(app_settings)) as c:
        yield c


async def _one(client: httpx.AsyncClient, pid: int) -> dict[str, Any]:
    response = await client.get(f"/api/products/{pid}/")
    assert response.status_code == 200, response.text
    found: dict[str, Any] = data(response)
    return found


async def test_a_catalog_change_is_seen_at_once_by_every_process(
    client: httpx.AsyncClient, other: httpx.AsyncClient, staff: dict[str, str]
) -> None:
    made = await create(client, staff, "CACHED-1", total_stock=5)
    before = await other.get(f"/api/products/{made['id']}/")  # the other process caches it
    listed_before = await other.get("/api/products/")

    changed = await client.patch(
        f"/api/products/{made['id']}/",
        json={"name": "Renamed", "price": "7.50", "description": "new"},
        headers=staff,
    )
    after = await other.get(f"/api/products/{made['id']}/")
    listed_after = await other.get("/api/products/")

    assert data(before)["name"] == "Product CACHED-1"
    assert data(listed_before) == [data(before)]
    assert changed.status_code == 200
    assert data(after) == data(changed)
    assert (data(after)["name"], data(after)["price"], data(after)["description"]) == (
        "Renamed",
        "7.50",
        "new",
    )
    assert data(listed_after) == [data(after)]
    assert after.headers["etag"] != before.headers["etag"]
    assert listed_after.headers["etag"] != listed_before.headers["etag"]


async def test_stock_is_live_whatever_is_cached(
    app: Starlette, client: httpx.AsyncClient, other: httpx.AsyncClient, staff: dict[str, str]
) -> None:
    made = await create(client, staff, "CACHED-2", total_stock=5)
    before = await other.get(f"/api/products/{made['id']}/")
    await other.get("/api/products/")
    customer = bearer(app, "2")

    reserved = await client.post(
        "/api/reservations/", json={"product": made["id"], "quantity": 2}, headers=customer
    )
    received = await client.post(
        f"/api/products/{made['id']}/stock/",
        json={"quantity": 3, "reason": "received"},
        headers=staff,
    )
    after = await other.get(f"/api/products/{made['id']}/")
    listed = await other.get("/api/products/", params={"in_stock": "true"})

    assert reserved.status_code == 201, reserved.text
    assert received.status_code == 200, received.text
    stock = data(after)
    assert (stock["total_stock"], stock["available_stock"], stock["reserved_stock"]) == (8, 6, 2)
    assert data(listed) == [stock]
    assert after.headers["etag"] != before.headers["etag"]


async def test_a_deleted_product_is_gone_at_once_from_every_process(
    client: httpx.AsyncClient, other: httpx.AsyncClient, staff: dict[str, str]
) -> None:
    made = await create(client, staff, "CACHED-3", total_stock=1)
    await other.get(f"/api/products/{made['id']}/")
    await other.get("/api/products/")

    deleted = await client.delete(f"/api/products/{made['id']}/", headers=staff)
    one = await other.get(f"/api/products/{made['id']}/")
    listed = await other.get("/api/products/")

    assert deleted.status_code == 200, deleted.text
    assert one.status_code == 404
    assert data(listed) == []


async def test_an_edit_behind_the_apis_back_is_seen_within_the_bound(
    app: Starlette, client: httpx.AsyncClient, staff: dict[str, str], db: DatabaseEngine
) -> None:
    made = await create(client, staff, "CACHED-4", total_stock=1)
    now = [0.0]
    svc(app).catalog = CatalogCache(clock=lambda: now[0])
    await _one(client, made["id"])
    with db.begin() as conn:  # by hand in the database: no new catalog version
        conn.execute(
            schema.products.update()
            .where(schema.products.c.id == made["id"])
            .values(name="By hand")
        )

    cached = await _one(client, made["id"])
    now[0] += svc(app).catalog.max_age + 0.001
    later = await _one(client, made["id"])

    assert cached["name"] == f"Product {made['sku']}"
    assert later["name"] == "By hand"


async def test_a_read_whose_etag_the_client_holds_is_304_without_a_body(
    client: httpx.AsyncClient, staff: dict[str, str]
) -> None:
    made = await create(client, staff, "CACHED-5", total_stock=1)
    first = await client.get(f"/api/products/{made['id']}/")
    tag = first.headers["etag"]
    listed = await client.get("/api/products/")
    list_tag = listed.headers["etag"]

    same = await client.get(
        f"/api/products/{made['id']}/", headers={"If-None-Match": tag, "X-Request-ID": "r-1"}
    )
    among = await client.get(
        f"/api/products/{made['id']}/", headers={"If-None-Match": f'W/"0", {tag}'}
    )
    strong = await client.get(
        f"/api/products/{made['id']}/", headers={"If-None-Match": tag.removeprefix("W/")}
    )
    anything = await client.get(f"/api/products/{made['id']}/", headers={"If-None-Match": "*"})
    another = await client.get(f"/api/products/{made['id']}/", headers={"If-None-Match": 'W/"0"'})
    same_list = await client.get("/api/products/", headers={"If-None-Match": list_tag})
    other_page = await client.get(
        "/api/products/", params={"search": "nothing"}, headers={"If-None-Match": list_tag}
    )

    assert tag.startswith('W/"')
    assert tag.endswith('"')
    for response in (same, among, strong, anything, same_list):
        assert response.status_code == 304
        assert response.content == b""
        assert response.headers["x-request-id"]
    assert same.headers["x-request-id"] == "r-1"
    assert same.headers["etag"] == tag
    assert same_list.headers["etag"] == list_tag
    assert another.status_code == 200
    assert data(another) == data(first)
    assert another.headers["etag"] == tag
    assert other_page.status_code == 200
    assert data(other_page) == []


async def test_unknown_products_are_404_without_an_etag(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/products/999/", headers={"If-None-Match": "*"})

    assert response.status_code == 404
    assert "etag" not in response.headers


def _row(pid: int, name: str = "x") -> CatalogProduct:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    return CatalogProduct(pid, f"S-{pid}", name, "", 100, "USD", at, at, None)


def test_the_cache_is_bounded_and_drops_everything_on_a_new_version() -> None:
    now = [0.0]
    cache = CatalogCache(size=3, max_age=5.0, clock=lambda: now[0])
    assert not cache.current("v1")
    for pid in range(1, 5):
        cache.keep_row("v1", _row(pid))
    cache.keep_row("v0", _row(9))  # read under an older version: not kept

    assert [cache.row(pid) is not None for pid in (1, 2, 3, 4, 9)] == [
        False,
        True,
        True,
        True,
        False,
    ]
    now[0] = 5.5
    assert cache.row(2) is None  # older than max_age
    assert cache.current("v1")
    assert not cache.current("v2")
    assert cache.row(3) is None
    assert cache.row(4) is None
    cache.keep_scan("v2", ("s",), [_row(7), _row(8)])
    assert cache.scan(("s",)) == [_row(7), _row(8)]
    assert cache.row(8) == _row(8)
    assert not cache.current(None)  # Redis lost the version: nothing cached is trusted
    assert cache.scan(("s",)) is None


def test_if_none_match_compares_weakly() -> None:
    assert not_modified('W/"a1"', 'W/"a1"')
    assert not_modified('"a1"', 'W/"a1"')
    assert not_modified(' W/"b", W/"a1" ', 'W/"a1"')
    assert not_modified("*", 'W/"a1"')
    assert not not_modified(None, 'W/"a1"')
    assert not not_modified('W/"a2"', 'W/"a1"')


async def test_reads_missing_one_entry_at_once_share_one_load() -> None:
    cache = CatalogCache()
    loads: list[str | None] = []
    gate = asyncio.Event()

    def loader(version: str | None) -> Callable[[], Awaitable[CatalogProduct]]:
        async def load() -> CatalogProduct:
            loads.append(version)
            await gate.wait()
            return _row(1)

        return load

    waiting = [
        asyncio.ensure_future(cache.once(("row", 1), v, loader(v)))
        for v in ("v1", "v1", "v1", "v2")
    ]
    await asyncio.sleep(0)
    waiting[0].cancel()  # one caller going away cancels nobody else's read
    gate.set()
    found = await asyncio.gather(*waiting[1:])

    assert loads == ["v1", "v2"]
    assert found == [_row(1)] * 3


async def test_with_postgres_down_cached_products_are_served_and_a_restart_is_survived(
    settings: Settings, pg_url: str, pg_server: PostgresServer, clean_redis: None
) -> None:
    app = create_app(dataclasses.replace(settings, database_url=pg_url, jwt_keys="t:" + "k" * 40))
    async with running(app) as client:
        made = await create(client, bearer(app, "1", staff=True), "PG-1", total_stock=3)
        await _one(client, made["id"])
        await client.get("/api/products/")

        pg_server.stop()
        try:
            cached = await client.get(f"/api/products/{made['id']}/")
            uncached = await client.get("/api/products/", params={"search": "PG"})
        finally:
            pg_server.start()
        # the pool's connections died with the server: the first read after it opens anew
        after = await client.get("/api/products/", params={"search": "PG-"})

    assert cached.status_code == 200
    assert data(cached)["available_stock"] == 3
    assert uncached.status_code == 503
    assert err(uncached)["details"] == {"dependency": "database"}
    assert after.status_code == 200, after.text
    assert [p["id"] for p in data(after)] == [made["id"]]
