"""The engine's order calls: commit a reservation, place a direct order, move an order along
the state machine (engine/states.py), and read an order."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import cast

from engine import errors, replies, specs
from engine import validation as v
from engine.carts import CartOps
from engine.keys import PartitionKeys, partition_keys
from engine.models import CallContext, LineRequest, Order
from engine.states import OrderStatus


class OrderOps(CartOps):
    async def commit(self, reservation_id: str, ctx: CallContext) -> Order:
        """Turn a live reservation into a pending order."""
        k = self._keys_for_record(reservation_id, errors.ReservationNotFound)
        return await self._commit(
            k, reservation_id, ctx, self._caller(k, ctx, "commit", [reservation_id])
        )

    async def _commit(
        self,
        k: PartitionKeys,
        reservation_id: str,
        ctx: CallContext,
        caller: dict[str, str | int],
        *,
        pending_ttl: int = 0,
    ) -> Order:
        order_id = self._new_id(k.partition, self.settings.partitions)
        call: dict[str, str | int] = dict(
            stock=k.stock,
            products=k.products,
            live=k.live,
            expiry=k.expiry,
            outbox=k.outbox,
            record=k.reservation(reservation_id),
            order=k.order(order_id),
            behind=k.behind,
            reservation_id=reservation_id,
            order_id=order_id,
            scope=ctx.scope,
            **caller,
            retention=self.settings.reservation_retention_ms,
            carts=k.carts,
            foreign_lines="",
            deadline="",
            hold=self.settings.cart_hold_ms,
            pending=k.pending,
            pending_ttl=pending_ttl,
        )
        reply = await self.scripts.run(specs.COMMIT, **call)
        if reply.get("err") == "cart_parts":  # a cart's home (engine/carts.py)
            return await self._commit_cart(reservation_id, order_id, reply, ctx, call)
        replies.raise_for(reply)
        return replies.order_reply(k.partition, reply)

    async def place_order(
        self, lines: Sequence[LineRequest], ctx: CallContext, *, allow_split: bool = True
    ) -> Order:
        """Reserve and commit in one step: a direct order."""
        merged = v.merge_lines(lines)
        parts = self._partitions_of(merged)
        if len(parts) > 1:  # a cart across partitions (engine/carts.py)
            return await self._place_cart_order(merged, parts, ctx, allow_split=allow_split)
        k = partition_keys(parts[0])
        order_id = self._new_id(k.partition, self.settings.partitions)
        payload: dict[str, str | int] = {
            "lines": v.lines_json(merged),
            "allow_split": "1" if allow_split else "0",
        }
        reply = await self._run_coalesced(
            specs.PLACE_ORDER,
            **specs.PLACE_ORDER.partition_keys(k),
            order=k.order(order_id),
            order_id=order_id,
            **payload,
            owner=ctx.actor,
            **self._caller(k, ctx, "place_order", [*payload.values()]),
            expiry_batch=self.settings.expire_batch,
            pending_ttl=self.settings.order_pending_ttl_ms,
        )
        replies.raise_for(reply)
        return replies.order_reply(k.partition, reply)

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
        reply = await self._move_order(k, order_id, target, ctx, expected=expected)
        replies.raise_for(reply)
        return replies.order_reply(k.partition, reply)

    async def _place_cart_order(
        self, merged: list[tuple[str, str, int]], parts: list[int], ctx: CallContext,
        *, allow_split: bool,
    ) -> Order:  # fmt: skip
        """A direct order across partitions: the cart held for the shortest reservation
        time, then committed; the order names it as its reservation."""
        k = partition_keys(parts[0])
        payload: list[str | int] = [v.lines_json(merged), "1" if allow_split else "0"]
        caller = self._caller(k, ctx, "place_order", payload)
        if caller["fingerprint"]:
            first = await self._cart(
                k, "lookup", "", idem=caller["idem"], fingerprint=caller["fingerprint"]
            )
            replies.raise_for(first)
            if "order" in first:
                return replies.order_reply(k.partition, first)
        plain = CallContext(actor=ctx.actor, request_id=ctx.request_id, staff=ctx.staff)
        cart = await self._reserve_cart(
            merged,
            parts,
            plain,
            ttl=self.settings.reservation_ttl_min_ms,
            allow_split=allow_split,
        )
        try:
            return await self._commit(
                k, cart.id, plain, caller, pending_ttl=self.settings.order_pending_ttl_ms
            )
        except errors.EngineError:
            await self._each(parts, "release", cart.id, parts[0], plain)
            raise

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
