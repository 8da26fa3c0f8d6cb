"""The engine's order calls: commit a reservation, place a direct order, move an order along
the state machine (engine/states.py), and read an order."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, cast

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
            k, reservation_id, ctx, await self._claimed(k, ctx, "commit", [reservation_id])
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
            **specs.COMMIT.partition_keys(k),
            record=k.reservation(reservation_id),
            order=k.order(order_id),
            reservation_id=reservation_id,
            order_id=order_id,
            scope=ctx.scope,
            **caller,
            retention=self.settings.reservation_retention_ms,
            foreign_lines="",
            deadline="",
            hold=self.settings.cart_hold_ms,
            pending_ttl=pending_ttl,
            foreign_held="",
        )
        reply = await self._run_coalesced(specs.COMMIT, call)
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
        values: dict[str, str | int] = {
            **specs.PLACE_ORDER.partition_keys(k),
            "order": k.order(order_id),
            "order_id": order_id,
            **payload,
            "owner": ctx.actor,
            **await self._claimed(k, ctx, "place_order", [*payload.values()]),
            "expiry_batch": self.settings.expire_batch,
            "pending_ttl": self.settings.order_pending_ttl_ms,
            "retention": self.settings.reservation_retention_ms,
        }
        reply = await self._run_coalesced(specs.PLACE_ORDER, values)
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
        caller = await self._claimed(k, ctx, "place_order", payload)
        first = await self._first_answer(k, caller)
        if first is not None:  # this key's order, made before
            return replies.order_reply(k.partition, first)
        plain = CallContext(actor=ctx.actor, request_id=ctx.request_id, staff=ctx.staff)
        cart = await self._reserve_cart(
            merged,
            parts,
            plain,
            ttl=self.settings.reservation_ttl_min_ms,
            allow_split=allow_split,
            max_live=0,  # a direct order is no live reservation of its customer's
        )
        try:
            return await self._commit(
                k, cart.id, plain, caller, pending_ttl=self.settings.order_pending_ttl_ms
            )
        except errors.EngineError:
            await self._each(parts, "release", cart.id, parts[0], plain)
            raise

    async def _move_order(
        self,
        k: PartitionKeys,
        order_id: str,
        target: OrderStatus,
        ctx: CallContext,
        *,
        expected: OrderStatus | None = None,
        reason: str = "",
    ) -> dict[str, Any]:
        """One order transition (lua/transition.lua); a cart's order cancelled gives every
        other part's units back. Its reply, a refusal included."""
        reply = await self.scripts.run(
            specs.TRANSITION,
            **specs.TRANSITION.partition_keys(k),
            order=k.order(order_id),
            order_id=order_id,
            status=target.value,
            scope=ctx.scope,
            **await self._claimed(k, ctx, "transition", [order_id, target.value]),
            retention=self.settings.order_retention_ms,
            expected=expected.value if expected else "",
            hold=self.settings.cart_hold_ms,
            reason=reason,
        )
        if "parts" in reply:  # a cart's order cancelled: every part's units back
            await self._return_parts(reply["order"], reply, ctx)
        return reply

    async def time_out_orders(self, k: PartitionKeys, due: Sequence[str]) -> int:
        """Cancel these direct orders of partition `k`, pending past ORDER_PENDING_TTL as the
        sweep found them (lua/expire.lua), reason 'timeout'; their units go back. Returns how
        many it cancelled (one that moved on meanwhile is left as it is)."""
        done = 0
        ctx = CallContext(actor="system", staff=True)
        for order_id in due:
            reply = await self._move_order(
                k, str(order_id), OrderStatus.CANCELLED, ctx,
                expected=OrderStatus.PENDING, reason="timeout",
            )  # fmt: skip
            if "err" not in reply:
                done += 1
            elif reply["err"] in ("order_not_found", "status_changed", "invalid_transition"):
                await self.redis.zrem(k.pending, str(order_id))  # nothing left to time out
        return done

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
