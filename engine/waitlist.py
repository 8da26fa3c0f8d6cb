"""The waitlists (issue 14, item 4; lua/waitlist.lua and lua/wait.lua): a customer joins a
sold-out product's waitlist, leaves it, lists their entries. The hand-off itself needs no call
of its own: the call that gives units back hands them to the head of the queue in its own
atomic step, as a reservation with the entry's id."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from engine import replies, specs
from engine import validation as v
from engine.base import EngineBase
from engine.keys import partition_keys
from engine.models import CallContext


@dataclass(frozen=True, slots=True)
class WaitlistEntry:
    id: str  # the reservation's id once it is handed units
    product: str
    owner: str
    quantity: int
    partial: bool  # it takes fewer units than it asks for
    joined_at_ms: int
    expires_at_ms: int  # it leaves unserved then
    position: int  # 1: first in line


def _entry(raw: dict[str, Any], position: int) -> WaitlistEntry:
    return WaitlistEntry(
        id=str(raw["id"]),
        product=str(raw["product"]),
        owner=str(raw["owner"]),
        quantity=int(raw["quantity"]),
        partial=bool(raw["partial"]),
        joined_at_ms=int(raw["joined_at"]),
        expires_at_ms=int(raw["expires_at"]),
        position=position,
    )


class WaitlistOps(EngineBase):
    async def join_waitlist(
        self,
        product: str,
        quantity: int,
        ctx: CallContext,
        *,
        partial: bool = False,
        ttl_ms: int | None = None,
    ) -> WaitlistEntry:
        """Wait for `quantity` units of a sold-out product; when units come back they are
        handed over as a reservation held for `ttl_ms` (default RESERVATION_TTL)."""
        v.check_name("product", product)
        v.check_int("quantity", quantity, 1, v.MAX_QUANTITY)
        ttl = self.settings.reservation_ttl_ms if ttl_ms is None else ttl_ms
        reply = await self._waitlist(
            product,
            ctx,
            "join",
            quantity=quantity,
            partial="1" if partial else "0",
            ttl=ttl,
            wait_ttl=self.settings.waitlist_ttl_ms,
        )
        replies.raise_for(reply)
        return _entry(reply["entry"], int(reply["position"]))

    async def leave_waitlist(self, product: str, ctx: CallContext) -> WaitlistEntry:
        """Leave the product's waitlist; NotWaiting when the customer is not on it."""
        v.check_name("product", product)
        reply = await self._waitlist(product, ctx, "leave")
        replies.raise_for(reply)
        return _entry(reply["entry"], 0)

    async def waiting(self, product: str) -> int:
        """How many customers wait for `product` (its waitlist's length)."""
        k = self._keys_for_product(product)
        return int(await self.redis.hget(k.held, f"w|{product}") or 0)

    async def waitlist_entries(self, ctx: CallContext) -> list[WaitlistEntry]:
        """The customer's entries in every partition, oldest first, each with its position."""
        found = await asyncio.gather(
            *(self._waitlist("", ctx, "list", partition=p) for p in range(self.settings.partitions))
        )
        entries = [
            _entry(raw, int(raw["position"]))
            for reply in found
            for raw in replies.as_list(reply.get("entries", []))
        ]
        return sorted(entries, key=lambda e: (e.joined_at_ms, e.id))

    async def _waitlist(
        self,
        product: str,
        ctx: CallContext,
        action: str,
        *,
        partition: int | None = None,
        **values: str | int,
    ) -> dict[str, Any]:
        k = partition_keys(partition) if partition is not None else self._keys_for_product(product)
        args: dict[str, str | int] = {
            "entry_id": self._new_id(k.partition, self.settings.partitions)
            if action == "join"
            else "",
            "quantity": 0,
            "partial": "0",
            "ttl": 0,
            "wait_ttl": 0,
            **values,
        }
        return await self.scripts.run(
            specs.WAITLIST,
            **specs.WAITLIST.partition_keys(k),
            action=action,
            product=product,
            owner=ctx.actor,
            actor=ctx.actor,
            request_id=ctx.request_id,
            **args,
        )
