"""Products: create, change and delete them (staff). Reading them is web/services/catalog.py.

Creating a product is two writes: the catalog row, then `setup_product` in Redis, which adds
the opening stock. If the engine refuses, the row is removed again. If Redis fails (down, a
timeout: the script may or may not have run), the row stays behind, unseen by readers (they
show only products Redis knows), and a later create with the same sku finishes it: the engine
step runs again and the row takes that request's fields.

Creates of one sku race (two staff users; a retry while the first is still under way), and a
create that finds the row while Redis does not know the product can't tell a failed create
from one about to run its engine step. So Redis decides who sets the product up: a create's
`setup_product` is create-only, refused (`product_exists`) in the same atomic step that would
add the opening stock if the product is set up already. Whichever create's script runs first
makes the product and adds its stock, once; every other create gets 409 `sku_exists`, or,
retried under the same Idempotency-Key, the first answer again. A create finishing another's
row writes its fields to the row only after its engine step succeeded, so the row keeps the
fields of the create that won (were that process to die in between, the row keeps the first
create's fields until a PUT).

A race remains in the database: the inserter removes its row after a refusal while another
create goes to finish it. The finisher first claims the row (catalog.claim_unfinished moves
its updated_at on) and the inserter removes the row only if it is untouched since its insert:
either the removal comes first and the finisher's claim fails (it starts over, and may insert
the row itself), or the claim does and the row stays for the finisher. (So a create that lost
a race may have moved the row's updated_at on; never its fields.)

Every catalog write ends with `catalog_changed`: the API processes' cached catalog rows are
stale from then on (web/catalog_cache.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from engine import errors, outbox
from engine.models import CallContext, ProductLimits, ProductStock, StockReason
from engine.states import TERMINAL
from engine.validation import MAX_STOCK_DELTA
from persistence import catalog
from persistence.catalog import CatalogProduct, SkuTaken
from persistence.translate import BadEvent, translate
from web.errors import ApiError
from web.money import reprice, to_minor
from web.schemas.catalog import (
    LIMITS,
    ProductCreate,
    ProductPatch,
    ProductPut,
    as_dict,
    limits_sent,
)
from web.services.catalog import live_product
from web.services.container import Services
from web.services.stock import warehouse_priorities

# Undrained outbox events a delete reads to find orders the database has not seen yet.
OUTBOX_SCAN_LIMIT = 10_000
# How often a create reads the row holding its sku again when it changed under it.
CLAIM_ATTEMPTS = 5


@dataclass(frozen=True)
class Product:
    """A product as a write left it: its catalog row and its live stock. `replayed` when a
    retry under the same Idempotency-Key got the first answer again."""

    row: CatalogProduct
    live: ProductStock
    replayed: bool = False


async def catalog_changed(svc: Services) -> None:
    """The database has a catalog change: drop this process's cached rows and give the catalog
    a new version in Redis, which every process reads with the stock."""
    svc.catalog.clear()
    await svc.engine.new_catalog_version()


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


async def _set_up_already(svc: Services, row: CatalogProduct, ctx: CallContext) -> bool:
    """The sku is taken by `row`. False: Redis does not know the product, a create to finish.
    True: it does, and this may be a retry under the same Idempotency-Key (the engine replays
    the first answer, or refuses). 409 when it is deleted, or set up and there is no key."""
    if row.deleted_at is not None:
        raise _sku_taken(row.sku, row.id)
    if row.engine_id not in await svc.engine.get_stocks([row.engine_id]):
        return False
    if ctx.idempotency_key is None:
        raise _sku_taken(row.sku, row.id)
    return True


async def create_product(svc: Services, body: ProductCreate, ctx: CallContext) -> Product:
    """A catalog row plus the product in the engine, with its opening stock."""
    currency = body.currency or svc.settings.default_currency
    price = price_minor(body.price, currency)
    fields: dict[str, Any] = {
        "name": body.name,
        "description": body.description,
        "price": price,
        "currency": currency,
    }
    opening = body.opening(svc.settings.default_warehouse)
    warehouses = await warehouse_priorities(svc, opening)
    finishing = False  # this create takes over another's row
    for _ in range(CLAIM_ATTEMPTS):
        row, inserted = await asyncio.to_thread(
            catalog.insert_product, svc.db, sku=body.sku, **fields
        )
        if inserted or await _set_up_already(svc, row, ctx):
            break
        claimed = await asyncio.to_thread(catalog.claim_unfinished, svc.db, row)
        if claimed is not None:
            row, finishing = claimed, True
            break
        # The row changed since it was read (removed by its inserter, claimed by another
        # create): read it again.
    else:  # other creates keep claiming the row: one of them will finish it
        raise _sku_taken(body.sku, row.id)
    try:
        made = await svc.engine.setup_product(
            row.engine_id,
            ctx,
            price=price,
            currency=currency,
            warehouses=warehouses,
            stock=opening,
            create_only=True,
            limits=ProductLimits(**{name: getattr(body, name) for name in LIMITS}),
        )
    except errors.ProductExists:
        raise _sku_taken(body.sku, row.id) from None  # another create set it up first
    except errors.EngineError:
        # A refusal: the script changed nothing, so neither may we. (A Redis error leaves
        # the row for a retry to finish: the script may have run.)
        if inserted:
            await asyncio.to_thread(catalog.remove_unfinished, svc.db, row)
        raise
    if finishing and any(getattr(row, name) != value for name, value in fields.items()):
        await asyncio.to_thread(catalog.update_product, svc.db, row.id, fields)
    await catalog_changed(svc)
    await svc.trigger.request(svc.engine.partition_of_product(row.engine_id))
    row, live = await live_product(svc, row.id)
    # (when replayed: the first create's answer, with the product as it is now)
    return Product(row, live, made.replayed)


async def update_product(
    svc: Services, pid: int, body: ProductPut | ProductPatch, ctx: CallContext
) -> Product:
    """Replace or change name, sku, price and description, and the purchase limits sent. A new
    price and new limits reach the engine."""
    row, live = await live_product(svc, pid)
    values = as_dict(body)
    limits = dataclasses.replace(live.limits, **limits_sent(body))
    if "price" in values:
        values["price"] = reprice(values["price"], row.currency)
    try:
        updated = await asyncio.to_thread(catalog.update_product, svc.db, pid, values)
    except SkuTaken as exc:
        raise _sku_taken(exc.sku, exc.product_id) from None
    await catalog_changed(svc)
    if updated is None:
        raise errors.ProductNotFound(str(pid))
    # Compared with Redis, not with the old row: a retry after a failed engine call still
    # brings the engine's price up to the catalog's. (No idempotency key: the catalog has
    # changed already, and a key used before must not refuse the engine's half of it.)
    if updated.price != live.price or limits != live.limits:
        try:
            made = await svc.engine.setup_product(
                updated.engine_id,
                dataclasses.replace(ctx, idempotency_key=None),
                price=updated.price,
                currency=updated.currency,
                limits=limits,
            )
        except errors.EngineError:
            # Refused (Redis behind the database, bad limits, ...): Redis changed nothing, so
            # neither does the catalog — unless another edit has changed the row since.
            undo = {field: getattr(row, field) for field in values}
            await asyncio.to_thread(
                catalog.update_product, svc.db, pid, undo, unchanged_since=updated.updated_at
            )
            await catalog_changed(svc)
            raise
        await svc.trigger.request(svc.engine.partition_of_product(updated.engine_id))
        live = dataclasses.replace(live, price=made.price, limits=made.limits)
    return Product(updated, live)


def open_orders_in(events: list[outbox.OutboxEvent], product: str) -> int:
    """How many orders of `product` these events leave open, read from the rows each event
    means to the database (persistence.translate): an order line of the product opens its
    order, a move to a final status closes it. An event the drain could not translate either
    opens or closes nothing."""
    open_orders: set[str] = set()
    for event in events:
        try:
            rows = translate(event)
        except BadEvent:
            continue
        for line in rows.order_lines:
            if line["product"] == product:
                open_orders.add(str(line["order_id"]))
        for update in rows.order_updates:
            if update["status"] in TERMINAL:
                open_orders.discard(str(update["id"]))
    return len(open_orders)


async def _orders_not_yet_recorded(svc: Services, product: str) -> int:
    """Open orders of `product` still only in the outbox (the database trails by the drain
    lag). If the backlog is too long to read, the answer is 'can't tell': refuse."""
    partition = svc.engine.partition_of_product(product)
    events = await svc.engine.outbox_range(partition, count=OUTBOX_SCAN_LIMIT + 1)
    if len(events) > OUTBOX_SCAN_LIMIT:
        raise ApiError(
            409,
            "product_in_use",
            "the durable record is behind; try again once the worker catches up",
            {"product": product, "outbox_backlog": len(events)},
        )
    return await asyncio.to_thread(open_orders_in, events, product)


async def delete_product(svc: Services, pid: int, ctx: CallContext) -> tuple[int, datetime]:
    """Soft-delete, refused while units are reserved, an order is open or customers wait for
    it. The id and the time of the deletion."""
    row, live = await live_product(svc, pid)
    in_use: dict[str, int] = {"reserved": max(live.reserved, 0)}
    in_use["open_orders"] = await asyncio.to_thread(catalog.open_orders, svc.db, row.engine_id)
    if not in_use["open_orders"]:
        in_use["open_orders"] = await _orders_not_yet_recorded(svc, row.engine_id)
    in_use["waiting"] = await svc.engine.waiting(row.engine_id)
    if any(in_use.values()):
        raise ApiError(
            409,
            "product_in_use",
            f"product {row.id} has live reservations, open orders or customers waiting for it; "
            "it can't be deleted",
            {"product": row.id, **in_use},
        )
    # Its units leave sale first, so Redis (which knows no catalog) refuses to reserve it.
    left = {lv.warehouse: lv.available for lv in live.levels if lv.available > 0}
    # (no idempotency key: a repeated DELETE finds the product gone; chunks differ)
    ctx = dataclasses.replace(ctx, idempotency_key=None)
    while left:  # one adjustment moves at most MAX_STOCK_DELTA units per warehouse
        step = {w: -min(n, MAX_STOCK_DELTA) for w, n in left.items()}
        await svc.engine.adjust_stock(row.engine_id, step, StockReason.WITHDRAWN, ctx)
        left = {w: n + step[w] for w, n in left.items() if n + step[w] > 0}
        await svc.trigger.request(svc.engine.partition_of_product(row.engine_id))
    deleted = await asyncio.to_thread(catalog.soft_delete, svc.db, row.id)
    await catalog_changed(svc)
    if deleted is None or deleted.deleted_at is None:
        raise errors.ProductNotFound(row.engine_id)
    return deleted.id, deleted.deleted_at
