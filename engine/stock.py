"""The engine's product and stock calls: set a product up, adjust its stock, read it."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from engine import errors, replies, specs
from engine import validation as v
from engine.base import EngineBase
from engine.keys import CATALOG_VERSION, PartitionKeys, stock_fields, uuid4_hex
from engine.models import (
    CallContext,
    Movements,
    Product,
    ProductLimits,
    ProductStock,
    StockLevel,
    StockReason,
)
from engine.shared_reads import SharedReads


class StockOps(EngineBase):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # product -> its meta as last read (see `_read_stocks`)
        self._metas: dict[str, _Meta] = {}
        self.shared_reads = SharedReads()  # (its counts: for the bench and the tests)

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
        limits: ProductLimits | None = None,
    ) -> Product:
        """Create or update a product: price (minor units), currency, warehouses with their
        priority (lower first), opening stock per warehouse, and what one customer may buy of
        it (`limits`; None keeps the product's). `create_only`: refuse with ProductExists
        unless the product is new, so that of many creates racing for one product exactly one
        sets it up and adds its opening stock."""
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
        if limits is not None:
            check_limits(limits)
        k = self._keys_for_product(product)
        payload: dict[str, str | int] = {
            "product": product,
            "price": price,
            "currency": currency,
            "warehouses": v.dumps(sorted(warehouses.items())),
            "opening_stock": v.dumps(sorted(opening.items())),
            "limits": "" if limits is None else v.dumps(limits.as_json()),
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
            **await self._claimed(k, ctx, "setup_product", fingerprinted),
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
            **specs.ADJUST_STOCK.partition_keys(k),
            **payload,
            **await self._claimed(k, ctx, "adjust_stock", [*payload.values()]),
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
        """Live stock of many products in one round trip (two when a product's meta changed
        or was not read before); unknown products are left out."""
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
        # Concurrent reads of the same products share one (engine/shared_reads.py): a sale's
        # buyers all read the same product page.
        wanted = tuple(p for p in dict.fromkeys(products) if v.NAME.fullmatch(p))
        version, found = await self.shared_reads.read(
            (catalog_version, wanted), lambda: self._read_stocks(wanted, catalog_version)
        )
        return version, dict(found)  # each caller's own dict

    async def _read_stocks(
        self, wanted: tuple[str, ...], catalog_version: bool
    ) -> tuple[str | None, dict[str, ProductStock]]:
        # One round trip when every product's meta (its warehouses, price, currency) is the one
        # this engine read last time: the counters of those warehouses are read with the meta,
        # and used if the meta read back is unchanged. Else a second round trip reads the
        # counters the meta names. One HMGET per partition and hash, however many products.
        plan: list[tuple[PartitionKeys, list[str], list[tuple[str, _Meta]]]] = []
        groups: dict[PartitionKeys, list[str]] = {}
        for p in wanted:
            groups.setdefault(self._keys_for_product(p), []).append(p)
        async with self.redis.pipeline(transaction=False) as pipe:
            if catalog_version:
                pipe.get(CATALOG_VERSION)
            for k, names in groups.items():
                pipe.hmget(k.products, names)
                guessed = [(p, m) for p in names if (m := self._metas.get(p)) is not None]
                if guessed:
                    pipe.hmget(k.stock, [f for _, m in guessed for f in m.fields])
                plan.append((k, names, guessed))
            replies: list[Any] = await pipe.execute()
        version: str | None = replies.pop(0) if catalog_version else None
        out: dict[str, ProductStock] = {}
        unread: dict[PartitionKeys, list[tuple[str, _Meta]]] = {}
        at = 0
        for k, names, guessed in plan:
            raws = replies[at]
            counters = replies[at + 1] if guessed else []
            at += 2 if guessed else 1
            held: dict[str, tuple[_Meta, list[str | None]]] = {}
            start = 0
            for p, m in guessed:
                held[p] = (m, counters[start : start + len(m.fields)])
                start += len(m.fields)
            for p, raw in zip(names, raws, strict=True):
                if not raw:
                    continue  # not a product Redis knows
                guess = held.get(p)
                if guess is not None and guess[0].raw == raw:
                    out[p] = guess[0].stock(p, guess[1])
                else:
                    unread.setdefault(k, []).append((p, self._remember(p, raw)))
        if unread:
            async with self.redis.pipeline(transaction=False) as pipe:
                for k, metas in unread.items():
                    pipe.hmget(k.stock, [f for _, m in metas for f in m.fields])
                counted: list[list[str | None]] = await pipe.execute()
            for metas, values in zip(unread.values(), counted, strict=True):
                start = 0
                for p, m in metas:
                    out[p] = m.stock(p, values[start : start + len(m.fields)])
                    start += len(m.fields)
        if len(groups) > 1 or unread:  # in the order asked
            out = {p: out[p] for p in wanted if p in out}
        return version, out

    def _remember(self, product: str, raw: str) -> _Meta:
        if len(self._metas) >= METAS_REMEMBERED:
            self._metas.clear()
        meta = json.loads(raw)
        warehouses = tuple((str(w), int(prio)) for w, prio in meta["warehouses"])
        fields = tuple(f for w, _ in warehouses for f in stock_fields(product, w))
        limits = ProductLimits.from_json(meta.get("limits"))
        found = _Meta(raw, int(meta["price"]), str(meta["currency"]), warehouses, fields, limits)
        self._metas[product] = found
        return found


# How many products' metas an engine remembers for its reads of stock (see `_stocks`).
METAS_REMEMBERED = 10_000


@dataclass(frozen=True, slots=True)
class _Meta:
    """A product's meta as the products hash holds it (`raw`), decoded."""

    raw: str
    price: int
    currency: str
    warehouses: tuple[tuple[str, int], ...]
    fields: tuple[str, ...]  # the stock hash's fields of its warehouses, in order
    limits: ProductLimits

    def stock(self, product: str, values: list[str | None]) -> ProductStock:
        levels = tuple(
            StockLevel(w, prio, int(values[2 * i] or 0), int(values[2 * i + 1] or 0))
            for i, (w, prio) in enumerate(self.warehouses)
        )
        return ProductStock(product, self.price, self.currency, levels, self.limits)


def check_limits(limits: ProductLimits) -> None:
    """Each limit a whole number of units from 1. (Limits that contradict each other, a
    minimum over a maximum, are kept as given: the product then can't be bought in those
    quantities, which its refusals say.)"""
    for name, value in limits.as_json().items():
        v.check_int(name, value, 1, v.MAX_STOCK_DELTA)
