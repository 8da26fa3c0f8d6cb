"""The engine: one async method per Lua script, typed in and typed out.

Each write is one EVALSHA. The engine validates its inputs, picks the partition, builds
the keys, runs the script and turns its reply into a result or a typed error.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, cast

from redis._parsers import _AsyncHiredisParser
from redis.asyncio import Redis

from engine import errors, replies
from engine import validation as v
from engine.keys import PartitionKeys, new_id, partition_keys, partition_of, stock_fields
from engine.models import (
    CallContext,
    ExpiryResult,
    LineRequest,
    Movements,
    Order,
    Product,
    ProductStock,
    Reservation,
    ReservationStatus,
    ReservedLine,
    StockLevel,
    StockReason,
)
from engine.pool import FairConnectionPool
from engine.reads import EngineReads
from engine.scripts import Scripts
from engine.settings import Settings
from engine.states import OrderStatus


def connect(settings: Settings) -> Redis:
    """A client over an explicit, bounded pool (engine/pool.py): callers past the limit wait,
    first come first served, never pile up."""
    pool = FairConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_pool_timeout_s,
        decode_responses=True,
        parser_class=_AsyncHiredisParser,
        health_check_interval=30,
    )
    return Redis.from_pool(pool)


class Engine(EngineReads):
    def __init__(
        self, redis: Redis, settings: Settings, *, ids: Callable[[int, int], str] = new_id
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.scripts = Scripts(redis)
        # where new reservation and order ids come from: (partition, partitions) -> id
        self._new_id = ids

    @classmethod
    def from_settings(
        cls, settings: Settings, *, ids: Callable[[int, int], str] = new_id
    ) -> Engine:
        return cls(connect(settings), settings, ids=ids)

    async def aclose(self) -> None:
        await self.redis.aclose()

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- products and stock -------------------------------------------------------------

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
        payload: list[str | int] = [
            product,
            price,
            currency,
            v.dumps(sorted(warehouses.items())),
            v.dumps(sorted(opening.items())),
        ]
        # (a create's fingerprint differs from an update's with the same fields)
        fingerprinted = [*payload, "create"] if create_only else payload
        idem, fp = self._idempotency(k, ctx, "setup_product", fingerprinted)
        reply = await self.scripts.call(
            "setup_product",
            [k.stock, k.products, k.outbox, idem, k.behind],
            [
                *payload,
                ctx.actor,
                ctx.request_id,
                fp,
                self.settings.idempotency_ttl_ms,
                self.settings.default_warehouse,
                "1" if create_only else "",
            ],
        )
        replies.raise_for(reply)
        p = reply["product"]
        return Product(
            id=p["id"],
            price=p["price"],
            currency=p["currency"],
            warehouses=tuple((w[0], w[1]) for w in p["warehouses"]),
            created=bool(reply["created"]),
            replayed=bool(reply.get("replayed")),
        )

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
        payload: list[str | int] = [product, v.dumps(sorted(changes.items())), reason.value]
        idem, fp = self._idempotency(k, ctx, "adjust_stock", payload)
        reply = await self.scripts.call(
            "adjust_stock",
            [k.stock, k.products, k.outbox, idem, k.behind],
            [*payload, ctx.actor, ctx.request_id, fp, self.settings.idempotency_ttl_ms],
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
        """Live stock of many products in two round trips; unknown products are left out."""
        wanted = [p for p in dict.fromkeys(products) if v.NAME.fullmatch(p)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for p in wanted:
                pipe.hget(self._keys_for_product(p).products, p)
            metas: list[str | None] = await pipe.execute()
        found = [(p, json.loads(m)) for p, m in zip(wanted, metas, strict=True) if m]
        async with self.redis.pipeline(transaction=False) as pipe:
            for p, meta in found:
                fields: list[str] = []
                for w, _ in meta["warehouses"]:
                    fields += stock_fields(p, w)
                pipe.hmget(self._keys_for_product(p).stock, fields)
            counters: list[list[str | None]] = await pipe.execute()
        out: dict[str, ProductStock] = {}
        for (p, meta), values in zip(found, counters, strict=True):
            levels = tuple(
                StockLevel(
                    warehouse=w,
                    priority=prio,
                    available=int(values[2 * i] or 0),
                    reserved=int(values[2 * i + 1] or 0),
                )
                for i, (w, prio) in enumerate(meta["warehouses"])
            )
            out[p] = ProductStock(p, meta["price"], meta["currency"], levels)
        return out

    # -- reservations -------------------------------------------------------------------

    async def reserve(
        self,
        lines: Sequence[LineRequest],
        ctx: CallContext,
        *,
        ttl_ms: int | None = None,
        allow_split: bool = True,
    ) -> Reservation:
        """Hold units for `ttl_ms` (default RESERVATION_TTL), all lines or none."""
        ttl = self.settings.reservation_ttl_ms if ttl_ms is None else ttl_ms
        v.check_int(
            "ttl", ttl, self.settings.reservation_ttl_min_ms, self.settings.reservation_ttl_max_ms
        )
        merged = v.merge_lines(lines)
        k = self._keys_for_lines(merged)
        reservation_id = self._new_id(k.partition, self.settings.partitions)
        payload: list[str | int] = [v.dumps(merged), ttl, "1" if allow_split else "0"]
        idem, fp = self._idempotency(k, ctx, "reserve", payload)
        reply = await self.scripts.call(
            "reserve",
            [
                k.stock,
                k.products,
                k.live,
                k.expiry,
                k.outbox,
                idem,
                k.reservation(reservation_id),
                k.behind,
            ],
            [
                reservation_id,
                *payload,
                ctx.actor,
                ctx.actor,
                ctx.request_id,
                fp,
                self.settings.idempotency_ttl_ms,
                self.settings.expire_batch,
                self.settings.reservation_retention_ms,
            ],
        )
        replies.raise_for(reply)
        return self._reservation(k, reply)

    async def release(self, reservation_id: str, ctx: CallContext) -> Reservation:
        """Give a live reservation's units back."""
        k = self._keys_for_record(reservation_id, errors.ReservationNotFound)
        idem, fp = self._idempotency(k, ctx, "release", [reservation_id])
        reply = await self.scripts.call(
            "release",
            [k.stock, k.live, k.expiry, k.outbox, k.reservation(reservation_id), idem, k.behind],
            [
                reservation_id,
                ctx.scope,
                ctx.actor,
                ctx.request_id,
                fp,
                self.settings.idempotency_ttl_ms,
                self.settings.reservation_retention_ms,
            ],
        )
        replies.raise_for(reply)
        return self._reservation(k, reply)

    async def extend(
        self, reservation_id: str, ctx: CallContext, *, ttl_ms: int | None = None
    ) -> Reservation:
        """Push expires_at out to now + ttl, capped at created_at + RESERVATION_MAX_LIFETIME."""
        ttl = self.settings.reservation_ttl_ms if ttl_ms is None else ttl_ms
        v.check_int(
            "ttl", ttl, self.settings.reservation_ttl_min_ms, self.settings.reservation_ttl_max_ms
        )
        k = self._keys_for_record(reservation_id, errors.ReservationNotFound)
        idem, fp = self._idempotency(k, ctx, "extend", [reservation_id, ttl])
        reply = await self.scripts.call(
            "extend",
            [k.stock, k.live, k.expiry, k.outbox, k.reservation(reservation_id), idem, k.behind],
            [
                reservation_id,
                ctx.scope,
                ttl,
                self.settings.reservation_max_lifetime_ms,
                ctx.actor,
                ctx.request_id,
                fp,
                self.settings.idempotency_ttl_ms,
                self.settings.reservation_retention_ms,
            ],
        )
        replies.raise_for(reply)
        return self._reservation(k, reply)

    async def expire(self, limit: int | None = None) -> ExpiryResult:
        """The sweep: release due reservations in every partition, up to `limit` each."""
        batch = self.settings.sweep_batch if limit is None else limit
        v.check_int("limit", batch, 1, 100_000)
        expired = due = 0
        for partition in range(self.settings.partitions):
            k = partition_keys(partition)
            reply = await self.scripts.call(
                "expire", [k.stock, k.live, k.expiry, k.outbox, k.behind], [batch]
            )
            expired += int(reply["expired"])
            due += int(reply["due"])
        return ExpiryResult(expired=expired, still_due=due)

    async def get_reservation(self, reservation_id: str, ctx: CallContext) -> Reservation:
        """A reservation as its owner (or staff) sees it; 'expired' once expires_at passed."""
        k = self._keys_for_record(reservation_id, errors.ReservationNotFound)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.time()
            pipe.hgetall(k.reservation(reservation_id))
            (seconds, micros), rec = await pipe.execute()
        if not rec or (ctx.scope and rec["owner"] != ctx.scope):
            raise errors.ReservationNotFound(reservation_id)
        status = rec["status"]
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        if status == ReservationStatus.ACTIVE and now_ms >= int(rec["expires_at"]):
            status = ReservationStatus.EXPIRED
        return Reservation(
            id=rec["id"],
            owner=rec["owner"],
            status=ReservationStatus(status),
            created_at_ms=int(rec["created_at"]),
            expires_at_ms=int(rec["expires_at"]),
            lines=tuple(ReservedLine(p, w, q) for p, w, q in json.loads(rec["lines"])),
            order_id=rec.get("order_id") or None,
        )

    # -- orders -------------------------------------------------------------------------

    async def commit(self, reservation_id: str, ctx: CallContext) -> Order:
        """Turn a live reservation into a pending order."""
        k = self._keys_for_record(reservation_id, errors.ReservationNotFound)
        order_id = self._new_id(k.partition, self.settings.partitions)
        idem, fp = self._idempotency(k, ctx, "commit", [reservation_id])
        reply = await self.scripts.call(
            "commit",
            [
                k.stock,
                k.products,
                k.live,
                k.expiry,
                k.outbox,
                k.reservation(reservation_id),
                k.order(order_id),
                idem,
                k.behind,
            ],
            [
                reservation_id,
                order_id,
                ctx.scope,
                ctx.actor,
                ctx.request_id,
                fp,
                self.settings.idempotency_ttl_ms,
                self.settings.reservation_retention_ms,
            ],
        )
        replies.raise_for(reply)
        return self._order(k, reply)

    async def place_order(
        self, lines: Sequence[LineRequest], ctx: CallContext, *, allow_split: bool = True
    ) -> Order:
        """Reserve and commit in one step: a direct order."""
        merged = v.merge_lines(lines)
        k = self._keys_for_lines(merged)
        order_id = self._new_id(k.partition, self.settings.partitions)
        payload: list[str | int] = [v.dumps(merged), "1" if allow_split else "0"]
        idem, fp = self._idempotency(k, ctx, "place_order", payload)
        reply = await self.scripts.call(
            "place_order",
            [k.stock, k.products, k.live, k.expiry, k.outbox, k.order(order_id), idem, k.behind],
            [
                order_id,
                *payload,
                ctx.actor,
                ctx.actor,
                ctx.request_id,
                fp,
                self.settings.idempotency_ttl_ms,
                self.settings.expire_batch,
            ],
        )
        replies.raise_for(reply)
        return self._order(k, reply)

    async def transition(
        self,
        order_id: str,
        status: OrderStatus | str,
        ctx: CallContext,
        *,
        expected: OrderStatus | None = None,
    ) -> Order:
        """Move an order along the state machine (engine.states). With `expected`, refuse
        (StatusChanged) if the order is no longer in that status: check and move in one step."""
        try:
            target = OrderStatus(str(status).lower())
        except ValueError:
            allowed = ", ".join(s.value for s in OrderStatus)
            raise errors.InvalidInput("status", f"must be one of: {allowed}") from None
        k = self._keys_for_record(order_id, errors.OrderNotFound)
        idem, fp = self._idempotency(k, ctx, "transition", [order_id, target.value])
        reply = await self.scripts.call(
            "transition",
            [k.stock, k.outbox, k.order(order_id), idem, k.behind],
            [
                order_id,
                target.value,
                ctx.scope,
                ctx.actor,
                ctx.request_id,
                fp,
                self.settings.idempotency_ttl_ms,
                self.settings.order_retention_ms,
                expected.value if expected else "",
            ],
        )
        replies.raise_for(reply)
        return self._order(k, reply)

    async def get_order(self, order_id: str, ctx: CallContext) -> Order:
        k = self._keys_for_record(order_id, errors.OrderNotFound)
        rec = cast(dict[str, str], await self.redis.hgetall(k.order(order_id)))
        if not rec or (ctx.scope and rec["owner"] != ctx.scope):
            raise errors.OrderNotFound(order_id)
        return replies.order(
            {
                "id": rec["id"],
                "owner": rec["owner"],
                "status": rec["status"],
                "reservation": rec["reservation_id"],
                "lines": json.loads(rec["lines"]),
                "total": int(rec["total"]),
                "currency": rec["currency"],
                "created_at": int(rec["created_at"]),
                "updated_at": int(rec["updated_at"]),
            }
        )

    # -- helpers ------------------------------------------------------------------------

    def keys(self, partition: int) -> PartitionKeys:
        return partition_keys(partition)

    def partition_of_product(self, product: str) -> int:
        return partition_of(product, self.settings.partitions)

    def _keys_for_product(self, product: str) -> PartitionKeys:
        return partition_keys(partition_of(product, self.settings.partitions))

    def _keys_for_lines(self, lines: list[tuple[str, str, int]]) -> PartitionKeys:
        parts = sorted({partition_of(p, self.settings.partitions) for p, _, _ in lines})
        if len(parts) > 1:
            raise errors.CrossPartition(parts)
        return partition_keys(parts[0])

    def _keys_for_record(
        self, record_id: str, not_found: type[errors.ReservationNotFound | errors.OrderNotFound]
    ) -> PartitionKeys:
        if not isinstance(record_id, str) or not v.RECORD_ID.fullmatch(record_id):
            raise not_found(str(record_id))
        return partition_keys(partition_of(record_id, self.settings.partitions))

    @staticmethod
    def _reservation(k: PartitionKeys, reply: dict[str, Any]) -> Reservation:
        return replies.reservation(
            reply["reservation"],
            replayed=bool(reply.get("replayed")),
            event=replies.event_id(k.partition, reply),
        )

    @staticmethod
    def _order(k: PartitionKeys, reply: dict[str, Any]) -> Order:
        return replies.order(
            reply["order"],
            replayed=bool(reply.get("replayed")),
            event=replies.event_id(k.partition, reply),
        )

    def _idempotency(
        self, k: PartitionKeys, ctx: CallContext, operation: str, payload: list[Any]
    ) -> tuple[str, str]:
        """The idempotency record's key and the request's fingerprint ('' = none)."""
        if ctx.idempotency_key is None:
            return k.unused_idempotency, ""
        key = ctx.idempotency_key
        if not 1 <= len(key) <= 255:
            raise errors.InvalidInput("idempotency_key", "must be 1 to 255 characters")
        fp = hashlib.sha256(v.dumps([operation, payload]).encode()).hexdigest()[:32]
        return k.idempotency(ctx.actor, operation, key), fp
