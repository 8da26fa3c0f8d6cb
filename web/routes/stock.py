"""Stock adjustments with a reason, and the warehouses they happen in.

The warehouses table is the list of places stock may be; a product stocks a subset of them
(in Redis, each with the table's priority). The default warehouse (DEFAULT_WAREHOUSE, priority
0) is created on demand. Receiving stock into a listed warehouse the product does not stock
yet adds that warehouse to the product first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from persistence import catalog
from web.auth import require_staff
from web.bodies import parse_body
from web.consistency import REPLAY_HEADER
from web.errors import ApiError
from web.products_view import live_product, product_id, product_json
from web.responses import iso, ok
from web.schemas.catalog import StockAdjust, WarehouseCreate
from web.services.container import Services, services

DEFAULT_WAREHOUSE_NAME = "Default warehouse"


async def _ensure_default(svc: Services) -> None:
    name = svc.settings.default_warehouse
    await asyncio.to_thread(catalog.ensure_warehouse, svc.db, name, DEFAULT_WAREHOUSE_NAME, 0)


async def warehouse_priorities(svc: Services, names: Iterable[str]) -> dict[str, int]:
    """Each named warehouse's priority from the table; 404 for one that is not there."""
    wanted = list(names)
    found = await asyncio.to_thread(catalog.warehouse_priorities, svc.db, wanted)
    default = svc.settings.default_warehouse
    for name in wanted:
        if name not in found and name != default:
            raise ApiError(
                404,
                "warehouse_not_found",
                f"warehouse {name!r} does not exist; create it with POST /api/warehouses/",
                {"warehouse": name},
            )
    if default in wanted and default not in found:
        await _ensure_default(svc)
        found = await asyncio.to_thread(catalog.warehouse_priorities, svc.db, wanted)
    return found


async def adjust_stock(request: Request) -> Response:
    """Staff: receive (quantity > 0) or remove (quantity < 0) units, with a reason."""
    principal = require_staff(request)
    pid = product_id(request.path_params["id"])
    body = await parse_body(request, StockAdjust)
    svc = services(request)
    row, live = await live_product(svc, pid)
    warehouse = body.warehouse or svc.settings.default_warehouse
    ctx = principal.context(request)
    if warehouse not in {level.warehouse for level in live.levels}:
        priorities = await warehouse_priorities(svc, [warehouse])
        # Under a key that has answered an adjustment already, the engine answers this one
        # (a replay, or 422 for another request): the product must not gain a warehouse first.
        used = await svc.engine.idempotency_key_used(row.engine_id, ctx, "adjust_stock")
        if body.quantity > 0 and not used:
            await svc.engine.setup_product(
                row.engine_id, ctx, price=live.price, currency=live.currency, warehouses=priorities
            )
        # Removing from a warehouse the product doesn't stock: the engine says 404.
    movements = await svc.engine.adjust_stock(
        row.engine_id, {warehouse: body.quantity}, body.reason, ctx
    )
    await svc.trigger.request(svc.engine.partition_of_product(row.engine_id))
    row, live = await live_product(svc, pid)
    moved = movements[0]
    adjustment = {
        "warehouse": warehouse,
        "quantity": body.quantity,
        "reason": body.reason,
        "available_before": moved.available_before,
        "available_after": moved.available_after,
    }
    response = ok(request, {"adjustment": adjustment, "product": product_json(row, live)})
    if movements.replayed:  # the first adjustment's answer, with the product as it is now
        response.headers[REPLAY_HEADER] = "true"
    return response


async def list_warehouses(request: Request) -> Response:
    """Every warehouse, by priority. Open to all, like the catalog."""
    svc = services(request)
    await _ensure_default(svc)
    found = await asyncio.to_thread(catalog.list_warehouses, svc.db)
    items = [
        {"id": w.id, "name": w.name, "priority": w.priority, "created_at": iso(w.created_at)}
        for w in found
    ]
    return ok(request, items, next=None, previous=None)


async def create_warehouse(request: Request) -> Response:
    """Staff: a new warehouse (`id` a slug; lower `priority` is drawn from first)."""
    require_staff(request)
    body = await parse_body(request, WarehouseCreate)
    svc = services(request)
    made = await asyncio.to_thread(
        catalog.create_warehouse, svc.db, body.id, body.name, body.priority
    )
    if made is None:
        raise ApiError(
            409, "warehouse_exists", f"warehouse {body.id!r} exists already", {"warehouse": body.id}
        )
    data = {"id": made.id, "name": made.name, "priority": made.priority}
    return ok(request, {**data, "created_at": iso(made.created_at)}, 201)


routes: list[BaseRoute] = [
    Route("/api/products/{id}/stock/", adjust_stock, methods=["POST"]),
    Route("/api/warehouses/", list_warehouses, methods=["GET"]),
    Route("/api/warehouses/", create_warehouse, methods=["POST"]),
]
