"""Shared by the catalog API tests: make a product over HTTP, snapshot what must not change."""

from __future__ import annotations

from typing import Any

import httpx
import redis
from sqlalchemy import Engine as DatabaseEngine
from sqlalchemy import select
from starlette.applications import Starlette

from engine.keys import partition_keys
from persistence import schema
from tests.api import data
from web.services.container import Services

Snapshot = tuple[Any, ...]


def snapshot(db: DatabaseEngine, r: redis.Redis) -> Snapshot:
    """Everything a refused write must leave alone: catalog rows and Redis state."""
    with db.connect() as conn:
        products = conn.execute(select(schema.products).order_by(schema.products.c.id)).all()
        warehouses = conn.execute(select(schema.warehouses).order_by(schema.warehouses.c.id)).all()
    k = partition_keys(0)
    return products, warehouses, r.hgetall(k.stock), r.hgetall(k.products), r.xlen(k.outbox)


def svc(app: Starlette) -> Services:
    found: Services = app.state.services
    return found


async def create(
    client: httpx.AsyncClient, headers: dict[str, str], sku: str, **fields: Any
) -> dict[str, Any]:
    body = {"name": f"Product {sku}", "sku": sku, "price": "19.99", **fields}
    response = await client.post("/api/products/", json=body, headers=headers)
    assert response.status_code == 201, response.text
    product: dict[str, Any] = data(response)
    return product
