"""The `fair-sale` scenario (issue 14): a drop with `max_per_customer: 1` and a waitlist, in
this process on the bench's Redis. 1,000 buyers (`--buyers`) press "buy" at once for `--stock`
units, each twice (the second is refused by the limit); those left without a unit join the
waitlist; then half the holders walk away at once (release) while the other half buy: every
walk-away's unit goes, in the release's own step, to the head of the line; then everyone
holding a unit buys it. Checked: every unit sold exactly once, each customer at most one, the
hand-offs in the order the waiters joined; measured: the walk-aways' release calls (each is
the hand-off's latency: the waiter holds the unit when the call returns)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from engine import errors
from engine.engine import Engine
from engine.models import SYSTEM, CallContext, LineRequest, ProductLimits
from scripts.bench.measure import Progress
from scripts.bench.stack import Stack


def _ms(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * p))] * 1000, 2)


async def _sale(stack: Stack, progress: Progress) -> dict[str, Any]:
    opts = stack.opts
    buyers, stock = opts.buyers, opts.stock  # buyers >= 2 x stock (inventory bench refuses less)
    product = str(stack.product_id())
    stack.ours.add(product)
    run = f"fair{product}"
    who = [CallContext(f"{run}-{i}", f"{run}-req-{i}") for i in range(buyers)]
    async with Engine.from_settings(stack.settings) as engine:
        await engine.setup_product(
            product, SYSTEM, price=1999, stock={"main": stock},
            limits=ProductLimits(max_per_customer=1),
        )  # fmt: skip
        progress.step(f"fair-sale: {buyers} buyers, {stock} units, each asks twice")
        started = time.monotonic()
        got = await asyncio.gather(
            *(engine.reserve([LineRequest(product, 1)], c) for c in who for _ in range(2)),
            return_exceptions=True,
        )
        sale_s = time.monotonic() - started
        held: dict[int, str] = {}
        by_limit = short = 0
        for n, r in enumerate(got):
            if isinstance(r, errors.LimitExceeded):
                by_limit += 1
            elif isinstance(r, errors.InsufficientStock):
                short += 1
            elif isinstance(r, BaseException):
                raise r
            else:
                held[n // 2] = r.id
        losers = [i for i in range(buyers) if i not in held]
        progress.step(f"fair-sale: {len(losers)} join the waitlist, in turn")
        entries = [await engine.join_waitlist(product, 1, who[i]) for i in losers]
        holders = sorted(held)
        walk, stay = holders[::2], holders[1::2]
        progress.step(f"fair-sale: {len(walk)} holders walk away while {len(stay)} buy")
        latencies: list[float] = []

        async def walk_away(i: int) -> None:
            t = time.monotonic()
            await engine.release(held[i], who[i])
            latencies.append(time.monotonic() - t)

        await asyncio.gather(
            *(walk_away(i) for i in walk), *(engine.commit(held[i], who[i]) for i in stay)
        )
        handed: list[int] = []
        for n, entry in enumerate(entries):
            try:
                r = await engine.get_reservation(entry.id, who[losers[n]])
            except errors.ReservationNotFound:
                continue
            if r.source == "waitlist" and r.status == "active":
                handed.append(n)
                await engine.commit(r.id, who[losers[n]])
        for n in range(len(handed), len(entries)):  # the rest of the line goes home
            with contextlib.suppress(errors.NotWaiting):
                await engine.leave_waitlist(product, who[losers[n]])
        level = await engine.get_stock(product)
    sold = len(stay) + len(handed)
    fifo = handed == list(range(len(walk)))
    exact = (
        # a holder's second press is the limit's; everyone else's two find it sold out
        len(held) == stock and by_limit == stock and short == 2 * (buyers - stock)
        and sold == stock and level.available == 0 and level.reserved == 0 and fifo
    )  # fmt: skip
    return {
        "system": "ours",
        "mode": "fair-sale",
        "buyers": buyers,
        "stock": stock,
        "held_first": len(held),
        "refused_by_limit": by_limit,
        "refused_short": short,
        "waitlisted": len(entries),
        "walked_away": len(walk),
        "handed_off": len(handed),
        "handed_in_join_order": fifo,
        "sold": sold,
        "sale_s": round(sale_s, 3),
        "handoff_p50_ms": _ms(latencies, 0.5),
        "handoff_p99_ms": _ms(latencies, 0.99),
        "exact_counts": exact,
        "ok": sold,
        "errors": 0,
    }


def fair_sale_scenario(stack: Stack, progress: Progress) -> dict[str, Any]:
    row = asyncio.run(_sale(stack, progress))
    return {"rows": [row], **stack.checks()}
