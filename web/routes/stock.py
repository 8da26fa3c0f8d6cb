"""Stock adjustments with a reason, and the warehouses they happen in (the use cases are in
web/services/stock.py)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from web.auth import require_staff
from web.bodies import parse_body
from web.consistency import REPLAY_HEADER
from web.products_view import product_id, product_json
from web.responses import iso, ok
from web.schemas.catalog import StockAdjust, WarehouseCreate
from web.services import stock
from web.services.container import services


async def adjust_stock(request: Request) -> Response:
    """Staff: receive (quantity > 0) or remove (quantity < 0) units, with a reason."""
    principal = require_staff(request)
    pid = product_id(request.path_params["id"])
    body = await parse_body(request, StockAdjust)
    done = await stock.adjust_stock(services(request), pid, body, principal.context(request))
    moved = done.movements[0]
    adjustment = {
        "warehouse": done.warehouse,
        "quantity": body.quantity,
        "reason": body.reason,
        "available_before": moved.available_before,
        "available_after": moved.available_after,
    }
    response = ok(request, {"adjustment": adjustment, "product": product_json(done.row, done.live)})
    if done.movements.replayed:  # the first adjustment's answer, with the product as it is now
        response.headers[REPLAY_HEADER] = "true"
    return response


async def list_warehouses(request: Request) -> Response:
    """Every warehouse, by priority. Open to all, like the catalog."""
    found = await stock.list_warehouses(services(request))
    items = [
        {"id": w.id, "name": w.name, "priority": w.priority, "created_at": iso(w.created_at)}
        for w in found
    ]
    return ok(request, items, next=None, previous=None)


async def create_warehouse(request: Request) -> Response:
    """Staff: a new warehouse (`id` a slug; lower `priority` is drawn from first)."""
    require_staff(request)
    body = await parse_body(request, WarehouseCreate)
    made = await stock.create_warehouse(services(request), body)
    data = {"id": made.id, "name": made.name, "priority": made.priority}
    return ok(request, {**data, "created_at": iso(made.created_at)}, 201)


routes: list[BaseRoute] = [
    Route("/api/products/{id}/stock/", adjust_stock, methods=["POST"]),
    Route("/api/warehouses/", list_warehouses, methods=["GET"]),
    Route("/api/warehouses/", create_warehouse, methods=["POST"]),
]
