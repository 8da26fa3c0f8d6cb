"""The engine's reservation calls: reserve, release, extend, the expiry sweep, and reading a
reservation."""

from __future__ import annotations

import json
from collections.abc import Sequence

from engine import errors, replies, specs
from engine import validation as v
from engine.carts import CartOps
from engine.connection import clock, is_cluster_client
from engine.keys import PartitionKeys, partition_keys
from engine.models import (
    CallContext,
    LineRequest,
    Reservation,
    ReservationStatus,
    ReservedLine,
)
from engine.records import reservation_record


class ReservationOps(CartOps):
    async def reserve(
        self,
        lines: Sequence[LineRequest],
        ctx: CallContext,
        *,
        ttl_ms: int | None = None,
        allow_split: bool = True,
    ) -> Reservation:
        """Hold units for `ttl_ms` (default RESERVATION_TTL), all lines or none."""
        ttl = self._ttl(ttl_ms)
        merged = v.merge_lines(lines)
        parts = self._partitions_of(merged)
        if len(parts) > 1:  # a cart across partitions (engine/carts.py)
            return await self._reserve_cart(
                merged,
                parts,
                ctx,
                ttl=ttl,
                allow_split=allow_split,
                max_live=self.settings.max_live_reservations_per_customer,
            )
        k = partition_keys(parts[0])
        reservation_id = self._new_id(k.partition, self.settings.partitions)
        payload: dict[str, str | int] = {
            "lines": v.lines_json(merged),
            "ttl": ttl,
            "allow_split": "1" if allow_split else "0",
        }
        values: dict[str, str | int] = {
            **specs.RESERVE.partition_keys(k),
            "record": k.reservation(reservation_id),
            "reservation_id": reservation_id,
            **payload,
            "owner": ctx.actor,
            **await self._claimed(k, ctx, "reserve", [*payload.values()]),
            "expiry_batch": self.settings.expire_batch,
            "retention": self.settings.reservation_retention_ms,
            "cart": "",
            "parts": "",
            "hold": 0,
            "max_live": self.settings.max_live_reservations_per_customer,
        }
        reply = await self._run_coalesced(specs.RESERVE, values)
        replies.raise_for(reply)
        return replies.reservation_reply(k.partition, reply)

    async def release(self, reservation_id: str, ctx: CallContext) -> Reservation:
        """Give a live reservation's units back."""
        k = self._keys_for_record(reservation_id, errors.ReservationNotFound)
        reply = await self.scripts.run(
            specs.RELEASE,
            **specs.RELEASE.partition_keys(k),
            record=k.reservation(reservation_id),
            reservation_id=reservation_id,
            scope=ctx.scope,
            **await self._claimed(k, ctx, "release", [reservation_id]),
            retention=self.settings.reservation_retention_ms,
            hold=self.settings.cart_hold_ms,
        )
        replies.raise_for(reply)
        if "parts" in reply:  # a cart's home: its other parts follow (engine/carts.py)
            reply = await self._follow_release(reservation_id, reply, ctx)
        return replies.reservation_reply(k.partition, reply)

    async def extend(
        self, reservation_id: str, ctx: CallContext, *, ttl_ms: int | None = None
    ) -> Reservation:
        """Push expires_at out to now + ttl, capped at created_at + RESERVATION_MAX_LIFETIME."""
        ttl = self._ttl(ttl_ms)
        k = self._keys_for_record(reservation_id, errors.ReservationNotFound)
        reply = await self.scripts.run(
            specs.EXTEND,
            **specs.EXTEND.partition_keys(k),
            record=k.reservation(reservation_id),
            reservation_id=reservation_id,
            scope=ctx.scope,
            ttl=ttl,
            max_lifetime=self.settings.reservation_max_lifetime_ms,
            **await self._claimed(k, ctx, "extend", [reservation_id, ttl]),
            retention=self.settings.reservation_retention_ms,
            hold=self.settings.cart_hold_ms,
        )
        replies.raise_for(reply)
        if "parts" in reply:
            reply = await self._follow_extend(reservation_id, reply, ctx)
        return replies.reservation_reply(k.partition, reply)

    async def get_reservation(self, reservation_id: str, ctx: CallContext) -> Reservation:
        """A reservation as its owner (or staff) sees it; 'expired' once expires_at passed."""
        k = self._keys_for_record(reservation_id, errors.ReservationNotFound)
        key = k.reservation(reservation_id)
        rec: dict[str, str]
        if is_cluster_client(self.redis):  # no TIME in a cluster's MULTI: its node's, after
            rec = await self.redis.hgetall(key)  # type: ignore[assignment]
            seconds, micros = await clock(self.redis, key)
        else:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.time()
                pipe.hgetall(key)
                (seconds, micros), rec = await pipe.execute()
        rec = reservation_record(reservation_id, rec)  # ('data' unpacked)
        if not rec:  # a waitlist's hand-off not used yet has no record (lua/wait.lua)
            rec = await self._handed(k, reservation_id)
        if (
            not rec
            or (ctx.scope and rec["owner"] != ctx.scope)
            or rec.get("cart", reservation_id) != reservation_id  # a cart's part: not its own
        ):
            raise errors.ReservationNotFound(reservation_id)
        lines = json.loads(rec["lines"])
        if "parts" in rec:  # a cart's home: every part's lines
            lines.extend(await self._part_lines(reservation_id, json.loads(rec["parts"])))
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
            lines=tuple(ReservedLine(p, w, q) for p, w, q in lines),
            order_id=rec.get("order_id") or None,
            source=rec.get("source") or "request",
        )

    async def _handed(self, k: PartitionKeys, reservation_id: str) -> dict[str, str]:
        """The record fields of a reservation a waitlist handed over and nobody has used yet
        (lua/wait.lua handed_record), read from its hand-off and its live entry; {} if none."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hget(k.wait_data, f"h|{reservation_id}")
            pipe.hget(k.live, reservation_id)
            handed, live = await pipe.execute()
        if not handed or not live:
            return {}
        h, entry = json.loads(handed), json.loads(live)
        return {
            "id": reservation_id,
            "owner": str(entry["owner"]),
            "status": "active",
            "created_at": str(int(h["created_at"])),
            "expires_at": str(int(h["expires_at"])),
            "lines": json.dumps(entry["lines"]),
            "source": "waitlist",
        }

    def _ttl(self, ttl_ms: int | None) -> int:
        """A reservation's time to live: `ttl_ms` within the settings' bounds, or the default."""
        ttl = self.settings.reservation_ttl_ms if ttl_ms is None else ttl_ms
        v.check_int(
            "ttl", ttl, self.settings.reservation_ttl_min_ms, self.settings.reservation_ttl_max_ms
        )
        return ttl
