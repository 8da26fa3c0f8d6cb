"""The sweep: what comes due with time in every partition, in one function call each
(lua/expire.lua) — the due reservations released, the steps of carts across partitions past
their deadline made good (engine/carts.py), the direct orders pending past ORDER_PENDING_TTL
cancelled (engine/orders.py). `inventory sweep` and the scheduler's periodic job run it."""

from __future__ import annotations

from engine import replies, specs
from engine import validation as v
from engine.keys import partition_keys
from engine.models import ExpiryResult
from engine.orders import OrderOps
from engine.reservations import ReservationOps


class SweepOps(ReservationOps, OrderOps):
    async def expire(self, limit: int | None = None) -> ExpiryResult:
        """The sweep: release due reservations in every partition, up to `limit` each; finish
        the steps of carts across partitions past their deadline; cancel the direct orders
        pending past ORDER_PENDING_TTL. A partition whose Redis is behind the database refuses
        (nothing done there): listed in `redis_behind`."""
        batch = self.settings.sweep_batch if limit is None else limit
        v.check_int("limit", batch, 1, 100_000)
        expired = due = carts = timed_out = left = 0
        behind: list[int] = []
        # in ascending partition order: a cart's home is its lowest partition, so its other
        # parts follow (below) before the sweep reaches their own partitions' holds
        for partition in range(self.settings.partitions):
            k = partition_keys(partition)
            reply = await self.scripts.run(
                specs.EXPIRE,
                **specs.EXPIRE.partition_keys(k),
                limit=batch,
                hold=self.settings.cart_hold_ms,
                retention=self.settings.reservation_retention_ms,
            )
            if reply.get("fenced"):
                behind.append(partition)
            expired += int(reply["expired"])
            left += int(reply.get("left_waitlist", 0))
            due += int(reply["due"])
            carts += await self.follow_carts(partition, replies.as_list(reply.get("claimed", [])))
            orders = replies.as_list(reply.get("orders_due", []))
            timed_out += await self.time_out_orders(k, orders) if orders else 0
        return ExpiryResult(
            expired=expired,
            still_due=due,
            carts=carts,
            timed_out=timed_out,
            waitlist_left=left,
            redis_behind=behind,
        )
