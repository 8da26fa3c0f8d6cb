"""Products: the catalog (database) joined with live stock (Redis); staff create, change and
delete them. Stock adjustments and warehouses are in web/routes/stock.py.

Creating a product is two writes: the catalog row, then `setup_product` in Redis. If the
engine refuses, the row is removed again. If Redis fails (down, a timeout: the script may or
may not have run), the row stays behind, unseen by readers (they show only products Redis
knows), and a create with the same sku finishes it: the row takes that request's fields and
the engine step runs again. Two finishers can't both add the opening stock: the engine call
carries an idempotency key (the client's, else one derived from the product id), so a second
identical call by the same user is a replay.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from engine import errors, outbox
from engine.models import CallContext, StockReason
from engine.states import TERMINAL
from engine.validation import MAX_STOCK_DELTA
from persistence import catalog
from persistence.catalog import CatalogProduct, SkuTaken
from web.app import Services, services
from web.auth import require_staff
from web.bodies import parse_body, parse_query
from web.errors import ApiError
from web.money import reprice, to_minor
from web.products_view import live_product, page_products, product_id, product_json
from web.responses import iso, ok
from web.routes import stock
from web.schemas_catalog import (
    ProductCreate,
    ProductPatch,
    ProductPut,
    ProductQuery,
    as_dict,
)

# Undrained outbox events a delete reads to find orders the database has not seen yet.
OUTBOX_SCAN_LIMIT = 10_000


def price_minor(value: str, currency: str) -> int:
    try:
        return to_minor(value, currency)
    except ApiError as exc:
        problem = {"field": "price", "problem": exc.message, "type": "value_error"}
        raise ApiError(400, "invalid_input", exc.message, {"errors": [problem]}) from None


def _sku_taken(sku: str, product: int) -> ApiError:
    details: dict[str, Any] = {"sku": sku}
    if product >= 0:
        details["product"] = product
    return ApiError(409, "sku_exists", f"a product with sku {sku!r} exists already", details)


async def list_products(request: Request) -> Response:
    """The catalog with live stock; `search`, `in_stock`, cursor pagination. Open to all."""
    query = parse_query(request, ProductQuery)
    page = await page_products(services(request), query)
    return ok(request, page.items, next=page.next, previous=page.previous)


async def get_product(request: Request) -> Response:
    """One product with live stock. Open to all."""
    row, live = await live_product(services(request), product_id(request.path_params["id"]))
    return ok(request, product_json(row, live))


async def _finish_or_refuse(
    svc: Services,
    row: CatalogProduct,
    body: ProductCreate,
    price: int,
    currency: str,
    ctx: CallContext,
) -> CatalogProduct:
    """The sku is taken by `row`. Finish it if its create never reached Redis; replay the
    original create if this is a retry under the same Idempotency-Key; else 409."""
    known = await svc.engine.get_stocks([row.engine_id])
    if row.deleted_at is None and row.engine_id not in known:
        values = {"name": body.name, "description": body.description}
        finished = await asyncio.to_thread(
            catalog.update_product, svc.db, row.id, {**values, "price": price, "currency": currency}
        )
        if finished is not None:
            return finished
    elif row.deleted_at is None and ctx.idempotency_key is not None:
        keys = svc.engine.keys(svc.engine.partition_of_product(row.engine_id))
        record = keys.idempotency(ctx.actor, "setup_product", ctx.idempotency_key)
        if await svc.engine.redis.exists(record):
            return row  # setup_product below replays its first reply (422 if the body differs)
    raise _sku_taken(body.sku, row.id)


async def create_product(request: Request) -> Response:
    """Staff: a catalog row plus the product in the engine, with its opening stock."""
    principal = require_staff(request)
    body = await parse_body(request, ProductCreate)
    svc = services(request)
    currency = body.currency or svc.settings.default_currency
    price = price_minor(body.price, currency)
    opening = body.opening(svc.settings.default_warehouse)
    warehouses = await stock.warehouse_priorities(svc, opening)
    ctx = principal.context(request)
    row, inserted = await asyncio.to_thread(
        catalog.insert_product,
        svc.db,
        sku=body.sku,
        name=body.name,
        description=body.description,
        price=price,
        currency=currency,
    )
    if not inserted:
        row = await _finish_or_refuse(svc, row, body, price, currency, ctx)
    if ctx.idempotency_key is None:
        ctx = dataclasses.replace(ctx, idempotency_key=f"create-product:{row.id}")
    try:
        await svc.engine.setup_product(
            row.engine_id, ctx, price=price, currency=currency, warehouses=warehouses, stock=opening
        )
    except errors.EngineError:
        # A refusal: the script changed nothing, so neither may we. (A Redis error leaves
        # the row for a retry to finish: the script may have run.)
        if inserted:
            await asyncio.to_thread(catalog.remove_unfinished, svc.db, row.id)
        raise
    await svc.trigger.request(svc.engine.partition_of_product(row.engine_id))
    row, live = await live_product(svc, row.id)
    return ok(request, product_json(row, live), 201)


async def _update(request: Request, model: type[ProductPut] | type[ProductPatch]) -> Response:
    principal = require_staff(request)
    pid = product_id(request.path_params["id"])
    body = await parse_body(request, model)
    svc = services(request)
    row, live = await live_product(svc, pid)
    values = as_dict(body)
    if "price" in values:
        values["price"] = reprice(values["price"], row.currency)
    try:
        updated = await asyncio.to_thread(catalog.update_product, svc.db, pid, values)
    except SkuTaken as exc:
        raise _sku_taken(exc.sku, exc.product_id) from None
    if updated is None:
        raise errors.ProductNotFound(str(pid))
    # Compared with Redis, not with the old row: a retry after a failed engine call still
    # brings the engine's price up to the catalog's.
    if updated.price != live.price:
        await svc.engine.setup_product(
            updated.engine_id,
            principal.context(request),
            price=updated.price,
            currency=updated.currency,
        )
        await svc.trigger.request(svc.engine.partition_of_product(updated.engine_id))
    return ok(request, product_json(updated, live))


async def put_product(request: Request) -> Response:
    """Staff: replace name, sku, price and description. A new price reaches the engine."""
    return await _update(request, ProductPut)


async def patch_product(request: Request) -> Response:
    """Staff: change any of name, sku, price and description."""
    return await _update(request, ProductPatch)


async def _orders_not_yet_recorded(svc: Services, product: str) -> int:
    """Open orders of `product` still only in the outbox (the database trails by the drain
    lag). If the backlog is too long to read, the answer is 'can't tell': refuse."""
    partition = svc.engine.partition_of_product(product)
    events = await outbox.read(svc.engine.redis, partition, count=OUTBOX_SCAN_LIMIT + 1)
    if len(events) > OUTBOX_SCAN_LIMIT:
        raise ApiError(
            409,
            "product_in_use",
            "the durable record is behind; try again once the worker catches up",
            {"product": product, "outbox_backlog": len(events)},
        )
    open_orders: set[str] = set()
    for event in events:
        data = event.data
        if event.type == "order_created" and any(
            line[0] == product for line in data.get("lines", [])
        ):
            open_orders.add(str(data["order"]))
        elif event.type == "order_status_changed" and data.get("to") in TERMINAL:
            open_orders.discard(str(data.get("order")))
    return len(open_orders)


async def delete_product(request: Request) -> Response:
    """Staff: soft-delete, refused while units are reserved or an order is open."""
    staff = require_staff(request)
    svc = services(request)
    row, live = await live_product(svc, product_id(request.path_params["id"]))
    in_use: dict[str, int] = {}
    if live.reserved > 0:
        in_use["reserved"] = live.reserved
    in_use["open_orders"] = await asyncio.to_thread(catalog.open_orders, svc.db, row.engine_id)
    if not in_use["open_orders"]:
        in_use["open_orders"] = await _orders_not_yet_recorded(svc, row.engine_id)
    if in_use.get("reserved") or in_use["open_orders"]:
        raise ApiError(
            409,
            "product_in_use",
            f"product {row.id} has live reservations or open orders; it can't be deleted",
            {"product": row.id, **in_use},
        )
    # Its units leave sale first, so Redis (which knows no catalog) refuses to reserve it.
    left = {lv.warehouse: lv.available for lv in live.levels if lv.available > 0}
    # (no idempotency key: a repeated DELETE finds the product gone; chunks differ)
    ctx = dataclasses.replace(staff.context(request), idempotency_key=None)
    while left:  # one adjustment moves at most MAX_STOCK_DELTA units per warehouse
        step = {w: -min(n, MAX_STOCK_DELTA) for w, n in left.items()}
        await svc.engine.adjust_stock(row.engine_id, step, StockReason.WITHDRAWN, ctx)
        left = {w: n + step[w] for w, n in left.items() if n + step[w] > 0}
        await svc.trigger.request(svc.engine.partition_of_product(row.engine_id))
    deleted = await asyncio.to_thread(catalog.soft_delete, svc.db, row.id)
    if deleted is None or deleted.deleted_at is None:
        raise errors.ProductNotFound(row.engine_id)
    return ok(request, {"id": deleted.id, "deleted_at": iso(deleted.deleted_at)})


routes: list[BaseRoute] = [
    Route("/api/products/", list_products, methods=["GET"]),
    Route("/api/products/", create_product, methods=["POST"]),
    Route("/api/products/{id}/", get_product, methods=["GET"]),
    Route("/api/products/{id}/", put_product, methods=["PUT"]),
    Route("/api/products/{id}/", patch_product, methods=["PATCH"]),
    Route("/api/products/{id}/", delete_product, methods=["DELETE"]),
    *stock.routes,
]
