"""Stock adjustments with a reason, and the warehouses they happen in.

The warehouses table is the list of places stock may be; a product stocks a subset of them
(in Redis, each with the table's priority). The default warehouse (DEFAULT_WAREHOUSE, priority
0) is created on demand. Receiving stock into a listed warehouse the product does not stock
yet adds that warehouse to the product first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

from engine.models import CallContext, Movements, ProductStock
from persistence import catalog
from persistence.catalog import CatalogProduct, Warehouse
from web.errors import ApiError
from web.schemas.catalog import StockAdjust, WarehouseCreate
from web.services.catalog import live_product
from web.services.container import Services

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


@dataclass(frozen=True)
class Adjusted:
    """An adjustment made (or replayed): where, the engine's movements, the product after."""

    warehouse: str
    movements: Movements
    row: CatalogProduct
    live: ProductStock


async def adjust_stock(svc: Services, pid: int, body: StockAdjust, ctx: CallContext) -> Adjusted:
    """Receive (quantity > 0) or remove (quantity < 0) units of product `pid`, with a reason."""
    row, live = await live_product(svc, pid)
    warehouse = body.warehouse or svc.settings.default_warehouse
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
    return Adjusted(warehouse, movements, row, live)


async def list_warehouses(svc: Services) -> list[Warehouse]:
    """Every warehouse, by priority (the default one made if it is not there yet)."""
    await _ensure_default(svc)
    return await asyncio.to_thread(catalog.list_warehouses, svc.db)


async def create_warehouse(svc: Services, body: WarehouseCreate) -> Warehouse:
    """A new warehouse; 409 when the id is taken."""
    made = await asyncio.to_thread(
        catalog.create_warehouse, svc.db, body.id, body.name, body.priority
    )
    if made is None:
        raise ApiError(
            409, "warehouse_exists", f"warehouse {body.id!r} exists already", {"warehouse": body.id}
        )
    return made
