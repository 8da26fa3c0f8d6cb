"""Keyset pages where the sort key ties: rows sharing `created_at` (or `total`, or the audit
log's `at`) across page boundaries, one row a page, newest first. Every row must come exactly
once, in (key desc, id desc) order, forwards through `next` and back through `previous`.
Through HTTP on the real app, on Postgres and SQLite; the ties are written into the
database, which the lists read (rows drained in one millisecond tie the same way)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Table, select
from starlette.applications import Starlette

from persistence import schema
from tests.api import data
from tests.test_api_reservations import drain, product, reserve, svc, user

TIE = datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
STAFF = "9"


async def pages(client: httpx.AsyncClient, headers: dict[str, str], url: str) -> list[Any]:
    """Every page of `url` at limit=1 through `next`, then back through `previous`; returns
    the rows seen going forwards after checking the way back shows the same ones."""
    joiner = "&" if "?" in url else "?"
    forwards: list[Any] = []
    cursor: str | None = None
    last: dict[str, Any] = {}
    for _ in range(100):
        query = f"{url}{joiner}limit=1" + (f"&cursor={cursor}" if cursor else "")
        response = await client.get(query, headers=headers)
        assert response.status_code == 200, response.text
        last = response.json()
        forwards.extend(last["data"])
        cursor = last["next"]
        if cursor is None:
            break
    backwards: list[Any] = []
    cursor = last["previous"]
    while cursor is not None:
        response = await client.get(f"{url}{joiner}limit=1&cursor={cursor}", headers=headers)
        assert response.status_code == 200, response.text
        backwards = data(response) + backwards
        cursor = response.json()["previous"]
    assert backwards == forwards[:-1]
    return forwards


def set_column(app: Starlette, table: Table, column: str, values: dict[Any, Any]) -> None:
    """Give rows (by id) the values of their sort key that the test needs."""
    with svc(app).db.begin() as conn:
        for row_id, value in values.items():
            conn.execute(table.update().where(table.c.id == row_id).values({column: value}))


def newest_first(app: Starlette, table: Table, column: str) -> list[Any]:
    """The ids in the order the lists promise: the key descending, then the id descending."""
    key = table.c[column]
    with svc(app).db.connect() as conn:
        return list(conn.scalars(select(table.c.id).order_by(key.desc(), table.c.id.desc())))


@pytest.fixture
async def orders(app: Starlette, client: httpx.AsyncClient) -> list[str]:
    """Six orders of one unit of product 1 (so all of one total): four tied on created_at,
    one older, one newer."""
    await product(app, 1)
    made = []
    for _ in range(6):
        response = await client.post(
            "/api/orders/", json={"product": 1, "quantity": 1}, headers=user(app)
        )
        assert response.status_code == 201, response.text
        made.append(data(response)["id"])
    await drain(app)
    at = {made[0]: TIE - timedelta(seconds=1), made[5]: TIE + timedelta(seconds=1)}
    set_column(app, schema.orders, "created_at", {**dict.fromkeys(made[1:5], TIE), **at})
    return made


async def test_orders_tied_on_created_at(
    app: Starlette, client: httpx.AsyncClient, orders: list[str]
) -> None:
    seen = await pages(client, user(app), "/api/orders/")

    ids = [o["id"] for o in seen]
    assert sorted(ids) == sorted(orders)
    assert ids == newest_first(app, schema.orders, "created_at")
    assert (ids[0], ids[-1]) == (orders[5], orders[0])
    assert ids[1:5] == sorted(orders[1:5], reverse=True)  # the tie, broken by the id
    assert [o["created_at"] for o in seen[1:5]] == ["2024-01-02T03:04:05.678Z"] * 4


async def test_orders_tied_on_total(
    app: Starlette, client: httpx.AsyncClient, orders: list[str]
) -> None:
    seen = await pages(client, user(app), "/api/orders/?sort=highest_value")

    assert {o["total"] for o in seen} == {"19.99"}
    assert [o["id"] for o in seen] == sorted(orders, reverse=True)


async def test_reservations_tied_on_created_at(app: Starlette, client: httpx.AsyncClient) -> None:
    await product(app, 1)
    made = [(await reserve(client, user(app)))["id"] for _ in range(5)]
    await drain(app)
    set_column(
        app,
        schema.reservations,
        "created_at",
        {**dict.fromkeys(made[:4], TIE), made[4]: TIE - timedelta(milliseconds=1)},
    )

    seen = await pages(client, user(app), "/api/reservations/")

    ids = [r["id"] for r in seen]
    assert ids == [*sorted(made[:4], reverse=True), made[4]]
    assert ids == newest_first(app, schema.reservations, "created_at")


async def test_audit_log_tied_on_at(app: Starlette, client: httpx.AsyncClient) -> None:
    await product(app, 1)  # product_updated and stock_adjusted: one script, one timestamp
    for _ in range(3):
        await reserve(client, user(app))
    await drain(app)
    with svc(app).db.connect() as conn:
        rows = list(conn.scalars(select(schema.audit_log.c.id)))
    assert len(rows) == 5
    set_column(
        app,
        schema.audit_log,
        "at",
        {**dict.fromkeys(rows[1:], TIE), rows[0]: TIE + timedelta(microseconds=1)},
    )

    seen = await pages(client, user(app, STAFF, staff=True), "/api/audit-logs/")

    ids = [r["id"] for r in seen]
    assert ids == [rows[0], *sorted(rows[1:], reverse=True)]
    assert ids == newest_first(app, schema.audit_log, "at")
