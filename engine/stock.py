"""The engine's product and stock calls: set a product up, adjust its stock, read it."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from engine import errors, replies, specs
from engine import validation as v
from engine.base import EngineBase
from engine.keys import CATALOG_VERSION, PartitionKeys, stock_fields, uuid4_hex
from engine.models import (
    CallContext,
    Movements,
    Product,
    ProductStock,
    StockLevel,
    StockReason,
)


class StockOps(EngineBase):
    async def setup_product(
        self,
        product: str,
        ctx: CallContext,
        *,
        price: int,
        currency: str | None = None,
        warehouses: Mapping[str, int] | None = None,
        stock: Mapping[str, int] | None = None,
        create_only: bool = False,
    ) -> Product:
        """Create or update a product: price (minor units), currency, warehouses with their
        priority (lower first), and opening stock per warehouse. `create_only`: refuse with
        ProductExists unless the product is new, so that of many creates racing for one
        product exactly one sets it up and adds its opening stock."""
        v.check_name("product", product)
        v.check_int("price", price, 0, v.MAX_PRICE)
        currency = currency or self.settings.default_currency
        if not v.CURRENCY.fullmatch(currency):
            raise errors.InvalidInput("currency", "must be a three-letter ISO 4217 code")
        if warehouses is not None and not warehouses:
            raise errors.InvalidInput("warehouses", "name at least one warehouse, or leave it out")
        # Left out: an existing product keeps its warehouses, a new one gets the default.
        warehouses = warehouses or {}
        for name, priority in warehouses.items():
            v.check_name("warehouse", name)
            v.check_int("priority", priority, -(10**6), 10**6)
        opening = dict(stock or {})
        for name, quantity in opening.items():
            v.check_name("warehouse", name)
            v.check_int("stock", quantity, 0, v.MAX_STOCK_DELTA)
        opening = {w: q for w, q in opening.items() if q > 0}
        k = self._keys_for_product(product)
        payload: dict[str, str | int] = {
            "product": product,
            "price": price,
            "currency": currency,
            "warehouses": v.dumps(sorted(warehouses.items())),
            "opening_stock": v.dumps(sorted(opening.items())),
        }
        # (a create's fingerprint differs from an update's with the same fields)
        fingerprinted = [*payload.values(), "create"] if create_only else [*payload.values()]
        reply = await self.scripts.run(
            specs.SETUP_PRODUCT,
            stock=k.stock,
            products=k.products,
            outbox=k.outbox,
            behind=k.behind,
            **payload,
            **self._caller(k, ctx, "setup_product", fingerprinted),
            default_warehouse=self.settings.default_warehouse,
            create_only="1" if create_only else "",
        )
        replies.raise_for(reply)
        return replies.product_reply(reply)

    async def adjust_stock(
        self,
        product: str,
        changes: Mapping[str, int],
        reason: StockReason | str,
        ctx: CallContext,
    ) -> Movements:
        """Receive (delta > 0) or remove (delta < 0) units per warehouse, all or nothing."""
        v.check_name("product", product)
        try:
            reason = StockReason(reason)
        except ValueError:
            allowed = ", ".join(r.value for r in StockReason)
            raise errors.InvalidInput("reason", f"must be one of: {allowed}") from None
        if not changes:
            raise errors.InvalidInput("changes", "name at least one warehouse")
        for name, delta in changes.items():
            v.check_name("warehouse", name)
            v.check_int("quantity", delta, -v.MAX_STOCK_DELTA, v.MAX_STOCK_DELTA)
            if delta == 0:
                raise errors.InvalidInput("quantity", "must not be zero")
        k = self._keys_for_product(product)
        payload: dict[str, str | int] = {
            "product": product,
            "changes": v.dumps(sorted(changes.items())),
            "reason": reason.value,
        }
        reply = await self.scripts.run(
            specs.ADJUST_STOCK,
            stock=k.stock,
            products=k.products,
            outbox=k.outbox,
            behind=k.behind,
            **payload,
            **self._caller(k, ctx, "adjust_stock", [*payload.values()]),
        )
        replies.raise_for(reply)
        return replies.movements(reply)

    async def idempotency_key_used(self, product: str, ctx: CallContext, operation: str) -> bool:
        """Whether `ctx`'s idempotency key has already answered `operation` (a script's name)
        in `product`'s partition: a call under it now replays, or is refused as another
        request, whatever it asks."""
        if ctx.idempotency_key is None:
            return False
        k = self._keys_for_product(product)
        record = k.idempotency(ctx.actor, operation, ctx.idempotency_key)
        return bool(await self.redis.exists(record))

    async def get_stock(self, product: str) -> ProductStock:
        found = await self.get_stocks([product])
        if product not in found:
            raise errors.ProductNotFound(product)
        return found[product]

    async def get_stocks(self, products: Iterable[str]) -> dict[str, ProductStock]:
        """Live stock of many products in two round trips (two commands per partition);
        unknown products are left out."""
        return (await self._stocks(products, catalog_version=False))[1]

    async def catalog_stocks(
        self, products: Iterable[str]
    ) -> tuple[str | None, dict[str, ProductStock]]:
        """get_stocks, and the catalog's version (keys.CATALOG_VERSION; None until a catalog
        write sets one) read in its first round trip, before the stock."""
        return await self._stocks(products, catalog_version=True)

    async def new_catalog_version(self) -> None:
        """A catalog write is done: every API process's cached catalog rows are stale."""
        await self.redis.set(CATALOG_VERSION, uuid4_hex())

    async def _stocks(
        self, products: Iterable[str], *, catalog_version: bool
    ) -> tuple[str | None, dict[str, ProductStock]]:
        # One HMGET per partition and round trip, however many products: a page of the
        # catalog costs Redis (and the caller's parser) a few commands, not two per product.
        groups: dict[PartitionKeys, list[str]] = {}
        for p in dict.fromkeys(products):
            if v.NAME.fullmatch(p):
                groups.setdefault(self._keys_for_product(p), []).append(p)
        async with self.redis.pipeline(transaction=False) as pipe:
            if catalog_version:
                pipe.get(CATALOG_VERSION)
            for k, names in groups.items():
                pipe.hmget(k.products, names)
            replies: list[Any] = await pipe.execute()
        version: str | None = replies.pop(0) if catalog_version else None
        if not groups:
            return version, {}
        found: dict[PartitionKeys, list[tuple[str, Any]]] = {}
        for (k, names), metas in zip(groups.items(), replies, strict=True):
            known = [(p, json.loads(m)) for p, m in zip(names, metas, strict=True) if m]
            if known:
                found[k] = known
        async with self.redis.pipeline(transaction=False) as pipe:
            for k, known in found.items():
                fields: list[str] = []
                for p, meta in known:
                    for w, _ in meta["warehouses"]:
                        fields += stock_fields(p, w)
                pipe.hmget(k.stock, fields)
            counters: list[list[str | None]] = await pipe.execute() if found else []
        out: dict[str, ProductStock] = {}
        for known, values in zip(found.values(), counters, strict=True):
            at = 0
            for p, meta in known:
                levels = []
                for w, prio in meta["warehouses"]:
                    available, reserved = values[at], values[at + 1]
                    at += 2
                    levels.append(StockLevel(w, prio, int(available or 0), int(reserved or 0)))
                out[p] = ProductStock(p, meta["price"], meta["currency"], tuple(levels))
        return version, out
