"""Carts across partitions: a reservation (or direct order) whose lines live in several
partitions, on a Redis Cluster with PARTITIONS > 1. No Redis call can touch two partitions,
so the cart is a saga over per-partition steps (docs/cluster-carts.md, README "Carts across
partitions"):

- A cart is one reservation per partition of its lines, its *parts*, each holding and giving
  back its own units in its own partition, as any reservation. The part of the lowest
  partition, the *home*, has the cart's id and decides for the cart: its status is the cart's.
  The other parts' ids follow from the cart's (engine.keys.part_id); their records name the
  cart, and no caller but the cart moves them (lua/part.lua).
- **Create:** the other parts are held in ascending partition order, each for twice
  CART_HOLD_TTL (a refusal releases what was held and answers as a one-partition cart would);
  then the home is reserved for the cart's time, its parts and the step recorded in the same
  call: the commit point. The other parts then take its expires_at. A crash before the commit
  point leaves holds that expire by themselves; after it, holds the sweep (which acts once the
  step is CART_HOLD_TTL old) still finds held, to make them follow.
- **Release, extend:** the home decides (release.lua, extend.lua), the other parts follow.
- **Commit:** the other parts are pinned (they can't expire while the order is made) and
  priced; the home makes the order with every line (commit.lua, within the step's deadline);
  the other parts' units go into it. **Cancel** of the order gives each part's units back.
- Each step the other parts are to follow is recorded in the home (`carts`) until they have;
  past its deadline (CART_HOLD_TTL) the sweep makes them follow the home (`follow_carts`).

Expiry needs no step: every part carries the cart's expires_at and expires with it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any, cast

from engine import errors, replies, specs
from engine import validation as v
from engine.base import EngineBase
from engine.connection import clock
from engine.keys import PartitionKeys, part_id, partition_keys, partition_of
from engine.models import CallContext, Order, Reservation
from engine.records import record_lines

Line = tuple[str, str, int]


class CartOps(EngineBase):
    def _partitions_of(self, lines: Sequence[Line]) -> list[int]:
        return sorted({partition_of(p, self.settings.partitions) for p, _, _ in lines})

    def _part_id(self, cart: str, home: int, partition: int) -> str:
        return cart if partition == home else part_id(cart, partition, self.settings.partitions)

    async def _part_lines(self, cart: str, parts: Sequence[int]) -> list[Any]:
        """The lines of a cart's other parts, as their records hold them."""
        home, *others = parts
        keys = [partition_keys(p).reservation(self._part_id(cart, home, p)) for p in others]
        found = await asyncio.gather(*(self.redis.hmget(key, ["lines", "data"]) for key in keys))
        return [line for lines, data in found for line in record_lines(lines, data)]

    # -- the calls ------------------------------------------------------------------------------

    async def _part(
        self,
        partition: int,
        action: str,
        cart: str,
        home: int,
        ctx: CallContext,
        **values: str | int,
    ) -> dict[str, Any]:
        """One part's step (lua/part.lua); its reply, a refusal included (not raised)."""
        k = partition_keys(partition)
        pid = self._part_id(cart, home, partition)
        order_id = str(values.get("order_id", ""))
        args: dict[str, str | int] = {
            "expires_at": "",
            "pin": 0,
            "order_id": "",
            "lines": "",
            "owner": "",
            "retention": self.settings.reservation_retention_ms,
            "counted": "",
            **values,
        }
        return await self.scripts.run(
            specs.PART,
            **specs.PART.partition_keys(k),
            record=k.return_mark(order_id) if action == "return" else k.reservation(pid),
            action=action,
            reservation_id=pid,
            cart_id=cart,
            actor=ctx.actor,
            request_id=ctx.request_id,
            **args,
        )

    async def _cart(
        self, k: PartitionKeys, action: str, member: str, **values: str | int
    ) -> dict[str, Any]:
        """The home's bookkeeping (lua/cart.lua); its reply, a refusal included."""
        args: dict[str, str | int] = {
            "idem": k.unused_idempotency,
            "deadline": "",
            "fingerprint": "",
            "idempotency_ttl": self.settings.idempotency_ttl_ms,
            **values,
        }
        return await self.scripts.run(
            specs.CART, carts=k.carts, action=action, reservation_id=member, **args
        )

    async def _first_answer(
        self, k: PartitionKeys, caller: dict[str, str | int]
    ) -> dict[str, Any] | None:
        """The first answer of a keyed request for a cart whose home is `k`'s, if it got one
        (lua/cart.lua lookup): asked before any hold, so that a retry replays rather than
        competes for units. None without a key or an answer; a mismatch is raised."""
        if not caller["fingerprint"]:
            return None
        first = await self._cart(
            k, "lookup", "", idem=caller["idem"], fingerprint=caller["fingerprint"]
        )
        replies.raise_for(first)
        return first if "replayed" in first else None

    async def _done(self, home: int, member: str, deadline: Any) -> None:
        """The step with this deadline is followed: its record in the home goes."""
        await self._cart(partition_keys(home), "done", member, deadline=str(int(deadline)))

    async def _each(
        self, partitions: Sequence[int], action: str, cart: str, home: int, ctx: CallContext,
        **values: str | int,
    ) -> list[dict[str, Any]]:  # fmt: skip
        """The same step for these parts, at once; their replies in the same order."""
        return list(
            await asyncio.gather(
                *(self._part(p, action, cart, home, ctx, **values) for p in partitions)
            )
        )

    # -- create ---------------------------------------------------------------------------------

    async def _reserve_cart(
        self,
        merged: list[Line],
        partitions: list[int],
        ctx: CallContext,
        *,
        ttl: int,
        allow_split: bool,
        max_live: int,
    ) -> Reservation:
        home, *others = partitions
        hk = partition_keys(home)
        payload: list[str | int] = [v.lines_json(merged), ttl, "1" if allow_split else "0"]
        caller = await self._claimed(hk, ctx, "reserve", payload)
        first = await self._first_answer(hk, caller)
        if first is not None:  # this key's cart, made before
            return await self._whole(home, partitions, first)
        cart = self._new_id(home, self.settings.partitions)
        held: list[int] = []
        lines: list[Any] = []
        plain = CallContext(actor=ctx.actor, request_id=ctx.request_id)
        try:
            # the other parts first, in ascending partition order, held for twice
            # CART_HOLD_TTL: past a step's deadline (CART_HOLD_TTL) the sweep still finds them
            # held, to make them follow; then the home, for the cart's time: the commit point
            for p in [*others, home]:
                k = partition_keys(p)
                reply = await self._hold(k, cart, home, merged, ctx, allow_split=allow_split,
                    **(
                        {"ttl": ttl, "parts": json.dumps(partitions), **caller,
                         "max_live": max_live}
                        if p == home
                        else {
                            "ttl": self.settings.cart_hold_ms * 2,
                            "parts": "",
                            **self._caller(k, plain, "reserve", []),  # (no key: a part)
                            "max_live": 0,  # a cart counts once, in its home
                        }
                    ),
                )  # fmt: skip
                replies.raise_for(reply)
                if p != home:
                    held.append(p)
                    lines.extend(reply["reservation"]["lines"])
        except BaseException:
            await self._each(held[::-1], "release", cart, home, ctx)
            raise
        if reply.get("replayed"):  # a request with the same key made its cart meanwhile
            await self._each(held, "release", cart, home, ctx)
            return await self._whole(home, partitions, reply)
        expires_at = int(reply["reservation"]["expires_at"])
        followed = await self._each(others, "align", cart, home, ctx, expires_at=expires_at)
        if any("err" in r for r in followed):  # a part outlived its hold: the cart can't be whole
            await self._each(partitions, "release", cart, home, ctx)
            raise errors.CartTimeout(cart)
        await self._done(home, cart, reply["deadline"])
        reply["reservation"]["lines"] = [*reply["reservation"]["lines"], *lines]
        return replies.reservation_reply(home, reply)

    async def _hold(
        self,
        k: PartitionKeys,
        cart: str,
        home: int,
        merged: list[Line],
        ctx: CallContext,
        *,
        allow_split: bool,
        **values: str | int,
    ) -> dict[str, Any]:
        """One part's reservation (reserve.lua), of the cart's lines of its partition."""
        n = self.settings.partitions
        own = [line for line in merged if partition_of(line[0], n) == k.partition]
        pid = self._part_id(cart, home, k.partition)
        return await self._run_coalesced(
            specs.RESERVE,
            {
                **specs.RESERVE.partition_keys(k),
                "record": k.reservation(pid),
                "reservation_id": pid,
                "lines": v.lines_json(own),
                "allow_split": "1" if allow_split else "0",
                "owner": ctx.actor,
                "expiry_batch": self.settings.expire_batch,
                "retention": self.settings.reservation_retention_ms,
                "cart": cart,
                "hold": self.settings.cart_hold_ms,
                **values,
            },
        )

    async def _whole(self, home: int, partitions: list[int], reply: dict[str, Any]) -> Reservation:
        """A cart's reply (its home's) with every part's lines, from their records."""
        view = reply["reservation"]
        more = await self._part_lines(str(view["id"]), partitions)
        reply["reservation"] = {**view, "lines": [*view["lines"], *more]}
        return replies.reservation_reply(home, reply)

    # -- release, extend: the home decided; the other parts follow --------------------------------

    async def _follow_release(
        self, cart: str, reply: dict[str, Any], ctx: CallContext
    ) -> dict[str, Any]:
        home, *others = (int(p) for p in reply["parts"])
        followed = await self._each(others, "release", cart, home, ctx)
        await self._done(home, cart, reply["deadline"])
        return self._with_lines(reply, followed)

    async def _follow_extend(
        self, cart: str, reply: dict[str, Any], ctx: CallContext
    ) -> dict[str, Any]:
        home, *others = (int(p) for p in reply["parts"])
        expires_at = int(reply["reservation"]["expires_at"])
        followed = await self._each(others, "align", cart, home, ctx, expires_at=expires_at)
        if any("err" in r for r in followed):
            # a part is gone (its step was lost for longer than CART_HOLD_TTL): the cart can't
            # be bought whole, so it ends whole
            await self._each([home, *others], "release", cart, home, ctx)
            raise errors.ReservationExpired(cart, expires_at)
        await self._done(home, cart, reply["deadline"])
        return self._with_lines(reply, followed)

    @staticmethod
    def _with_lines(reply: dict[str, Any], followed: list[dict[str, Any]]) -> dict[str, Any]:
        lines = list(reply["reservation"]["lines"])
        for r in followed:
            lines.extend(replies.as_list(r.get("lines", [])))
        return {**reply, "reservation": {**reply["reservation"], "lines": lines}}

    # -- commit, cancel -------------------------------------------------------------------------

    async def _commit_cart(
        self,
        cart: str,
        order_id: str,
        first: dict[str, Any],
        ctx: CallContext,
        call: dict[str, str | int],
    ) -> Order:
        """After commit.lua's first answer (cart_parts): pin and price the other parts, make
        the order in the home, move the other parts' units into it. `call` is the commit's
        call as the engine built it."""
        home, *others = (int(p) for p in first["parts"])
        deadline = int(first["deadline"])
        pinned = await self._each(others, "pin", cart, home, ctx, pin=self.settings.cart_pin_ms)
        refused = next((r for r in pinned if "err" in r), None)
        if refused is not None:  # a part is gone: the cart can't be bought whole
            await self._each([home, *others], "release", cart, home, ctx)
            if refused["err"] in ("reservation_expired", "reservation_not_live"):
                raise errors.ReservationExpired(cart, int(refused.get("expires_at", 0)))
            replies.raise_for(refused)
        foreign = [line for r in pinned for line in replies.as_list(r["lines"])]
        counted = [p for r in pinned for p in replies.as_list(r.get("held", []))]
        reply = await self.scripts.run(
            specs.COMMIT,
            **{
                **call,
                "foreign_lines": json.dumps(foreign),
                "deadline": deadline,
                "foreign_held": json.dumps(counted),
            },
        )
        if "err" in reply:
            await self.follow_cart(home, cart, ctx)  # the pins go: the parts follow the home
            replies.raise_for(reply)
        await self._each(others, "commit", cart, home, ctx, order_id=order_id)
        await self._done(home, cart, deadline)
        return replies.order_reply(home, reply)

    async def _return_parts(
        self, order: dict[str, Any], reply: dict[str, Any], ctx: CallContext
    ) -> None:
        """A cancelled cart order: each other part's units go back to available."""
        home, *others = (int(p) for p in reply["parts"])
        held = replies.as_list(reply.get("held", []))
        await self._give_back(home, others, {**order, "held": held}, ctx)
        await self._done(home, str(order["id"]), reply["deadline"])

    async def _give_back(
        self, home: int, others: Sequence[int], order: dict[str, Any], ctx: CallContext
    ) -> None:
        cart, order_id = str(order["reservation"]), str(order["id"])
        n = self.settings.partitions
        for p in others:
            # its units must have gone into the order first (a step the sweep may not have
            # made yet); a part whose record is gone went into it long ago
            await self._part(p, "commit", cart, home, ctx, order_id=order_id)
            lines = [[pr, w, q] for pr, w, q, *_ in order["lines"] if partition_of(pr, n) == p]
            counted = [pr for pr in order.get("held", []) if partition_of(pr, n) == p]
            await self._part(
                p,
                "return",
                cart,
                home,
                ctx,
                order_id=order_id,
                lines=json.dumps(lines),
                owner=str(order["owner"]),
                retention=self.settings.order_retention_ms,
                counted=json.dumps(counted) if counted else "",
            )

    # -- the sweep: steps past their deadline ---------------------------------------------------

    async def follow_carts(self, home: int, claimed: Sequence[dict[str, Any]]) -> int:
        """Make the other parts of each cart whose step the sweep claimed in partition `home`
        (lua/expire.lua) follow its home. Returns how many steps it finished."""
        ctx = CallContext(actor="system")
        for step in claimed:
            await self.follow_cart(home, str(step["id"]), ctx)
            await self._done(home, str(step["id"]), step["deadline"])
        return len(claimed)

    async def follow_cart(self, home: int, member: str, ctx: CallContext) -> None:
        """Make the other parts of the cart (or cart order) `member` follow its home, as the
        home is now: live -> the cart's expires_at; ended -> released; committed -> into the
        order; the order cancelled -> their units back."""
        hk = partition_keys(home)
        rec = cast(dict[str, str], await self.redis.hgetall(hk.reservation(member)))
        if "parts" not in rec:
            order = cast(dict[str, str], await self.redis.hgetall(hk.order(member)))
            if "parts" in order and order["status"] == "cancelled":
                await self._give_back(home, json.loads(order["parts"])[1:], _order(order), ctx)
            return
        cart, others = member, json.loads(rec["parts"])[1:]
        seconds, micros = await clock(self.redis, hk.reservation(cart))
        now = int(seconds) * 1000 + int(micros) // 1000
        status = rec["status"]
        if status == "committed":
            order = cast(dict[str, str], await self.redis.hgetall(hk.order(rec["order_id"])))
            await self._each(others, "commit", cart, home, ctx, order_id=rec["order_id"])
            if order.get("status") == "cancelled":
                await self._give_back(home, others, _order(order), ctx)
        elif status == "active" and now < int(rec["expires_at"]):
            followed = await self._each(
                others, "align", cart, home, ctx, expires_at=int(rec["expires_at"])
            )
            if any("err" in r for r in followed):
                await self._each([home, *others], "release", cart, home, ctx)
        else:
            await self._each(others, "release", cart, home, ctx)


def _order(rec: dict[str, str]) -> dict[str, Any]:
    return {
        "id": rec["id"],
        "reservation": rec["reservation_id"],
        "owner": rec["owner"],
        "lines": json.loads(rec["lines"]),
        "held": json.loads(rec.get("held") or "[]"),
    }
