"""The scenarios over HTTP: flash-sale, catalog and lifecycle."""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

from engine.engine import Engine
from scripts.bench import loadgen
from scripts.bench.loadgen import Call, Outcome
from scripts.bench.measure import (
    Progress,
    buyer_tokens,
    drainer,
    measure,
    nothing,
    offer,
    reserve_call,
    shown,
    span,
    summarise,
)
from scripts.bench.options import BARE, BASELINES, HUGE, OURS, Options
from scripts.bench.stack import Stack


def _systems(opts: Options, *, bare: bool = False) -> list[tuple[str, str | None]]:
    """(system, durability) pairs to measure: ours once per appendfsync setting, each baseline
    once per synchronous_commit setting."""
    rows: list[tuple[str, str | None]] = [(OURS, f) for f in opts.fsync]
    if bare:
        rows.append((BARE, opts.fsync[0]))
    rows += [(b, c) for b in opts.baselines for c in opts.baseline_commit]
    return rows


def _label(system: str, durability: str | None) -> str:
    if system in BASELINES:
        return f"{system} ({durability})"
    return f"{system} (appendfsync {durability})"


def flash_sale(stack: Stack, progress: Progress) -> dict[str, Any]:
    opts = stack.opts
    rows: list[dict[str, Any]] = []
    for system, fsync in _systems(opts, bare=True):
        tokens = buyer_tokens(stack, system, 10_000, opts.buyers)
        if system not in BASELINES and fsync:
            stack.set_fsync(fsync)
        label = _label(system, fsync)
        # 1. the sale: every buyer presses "buy" at once, `rounds` times; ours with the drainer
        # writing the events through, as at saturation
        if system != BARE:
            outcomes: list[Outcome] = []
            oversold = 0
            exact = True
            busy = 0.0  # the sales' own seconds, not the set-up between them
            for r in range(opts.rounds):
                product = stack.product_id()
                stack.stock(system, {product: opts.stock})
                progress.step(f"flash-sale: {label}: sale {r + 1}/{opts.rounds}")
                body = {"product": product, "quantity": 1}
                calls = [
                    reserve_call(stack, system, t, body, "reserve", fsync)
                    for t in tokens  # one connection per buyer
                ]
                with drainer(stack) if system == OURS else nothing():
                    got = offer(stack, "burst", calls)
                outcomes += got
                busy += span(got)
                available, reserved = stack.reserved(system, product)
                won = sum(1 for o in got if o.status == 201)
                oversold += max(0, won - opts.stock) + max(0, reserved - opts.stock)
                exact &= won == reserved == opts.stock and available == 0
                exact &= sum(1 for o in got if o.status == 409) == opts.buyers - opts.stock
            sale = summarise(
                outcomes,
                system=system,
                fsync=fsync,
                mode="sale",
                connections=opts.buyers,
                oversold=oversold,
                exact_counts=exact,
            )
            sale["ops_per_s"] = round(len(outcomes) / busy, 1) if busy else None
            rows.append(sale)
        # 2. saturation: the same number of connections on one hot product
        hot = stack.product_id()
        stack.stock(system, {hot: HUGE})
        body = {"product": hot, "quantity": 1}
        calls = [reserve_call(stack, system, t, body, "reserve", fsync) for t in tokens]
        progress.step(f"flash-sale: {label}: saturation, {opts.buyers} connections")
        stack.drain_to_end()  # each timed row starts with no backlog of the one before
        rows.append(measure(stack, system, fsync, calls, connections=opts.buyers))
        # 3. a fixed offered rate, so that queueing shows
        if system != BARE:
            progress.step(f"flash-sale: {label}: fixed rate {opts.rate:g}/s")
            stack.drain_to_end()
            connections = min(opts.buyers, 256)
            rows.append(
                measure(stack, system, fsync, calls, connections=connections, rate=opts.rate)
            )
    stack.set_fsync(opts.fsync[0])
    return {"rows": rows, **stack.checks()}


def _carts(stack: Stack, products: list[int], n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    carts = []
    for _ in range(n):
        chosen = rng.sample(products, rng.randint(1, 3))
        carts.append({"lines": [{"product": p, "quantity": rng.randint(1, 2)} for p in chosen]})
    return carts


def catalog(stack: Stack, progress: Progress) -> dict[str, Any]:
    opts = stack.opts
    products = [stack.product_id() for _ in range(opts.products)]
    per_product = 100_000
    progress.step(f"catalog: {opts.products} products in Redis and in the baselines' tables")
    stack.stock(OURS, dict.fromkeys(products, per_product))
    for baseline in opts.baselines:
        stack.stock(baseline, dict.fromkeys(products, per_product))
    carts = _carts(stack, products, 20_000, seed=7)
    rows: list[dict[str, Any]] = []
    for system, fsync in _systems(opts):
        tokens = buyer_tokens(stack, system, 20_000, 1000)
        if system not in BASELINES and fsync:
            stack.set_fsync(fsync)
        label = _label(system, fsync)
        calls = [
            reserve_call(stack, system, tokens[i % len(tokens)], cart, "reserve", fsync)
            for i, cart in enumerate(carts)
        ]
        progress.step(f"catalog: {label}: saturation, {opts.connections} connections")
        rows.append(measure(stack, system, fsync, calls, connections=opts.connections))
        progress.step(f"catalog: {label}: fixed rate {opts.rate * 2:g}/s")
        rate = opts.rate * 2
        rows.append(measure(stack, system, fsync, calls, connections=opts.connections, rate=rate))
    stack.set_fsync(opts.fsync[0])
    return {"rows": rows, **stack.checks()}


LIFECYCLE_STEPS = ("confirmed", "processing", "shipped", "delivered")


def lifecycle(stack: Stack, progress: Progress) -> dict[str, Any]:
    """Flows: 70% reserve → commit → confirmed → … → delivered, 20% reserve → release,
    10% reserve and walk away (ttl 1 s, then the sweep)."""
    opts = stack.opts
    products = [stack.product_id() for _ in range(100)]
    stack.stock(OURS, dict.fromkeys(products, 1_000_000))
    staff = {"Authorization": f"Bearer {stack.token(1, staff=True)}"}
    tokens = stack.tokens(range(30_000, 31_000))
    rng = random.Random(11)
    user_of: dict[bytes, str] = {}
    calls = []
    for i in range(5000):
        fate = rng.choices(["commit", "release", "expire"], weights=[7, 2, 1])[0]
        body: dict[str, Any] = {"product": rng.choice(products), "quantity": 1}
        if fate == "expire":
            body["ttl_seconds"] = 1
        token = tokens[i % len(tokens)]
        call = reserve_call(stack, OURS, token, body, f"reserve:{fate}")
        user_of[call.data] = token
        calls.append(call)

    def then(call: Call, status: int, body: bytes) -> Call | None:
        if status not in (200, 201):
            return None
        step, _, fate = call.tag.partition(":")
        data = json.loads(body)["data"]
        if step == "reserve":
            if fate == "expire":
                return None
            own = {"Authorization": f"Bearer {user_of[call.data]}"}
            if fate == "release":
                path = f"/api/reservations/{data['id']}/"
                return loadgen.encode(
                    "DELETE", path, host=stack.host, headers=own, tag="release", idempotent=True
                )
            path = f"/api/reservations/{data['id']}/commit/"
            return loadgen.encode(
                "POST", path, host=stack.host, headers=own, tag="commit:", idempotent=True
            )
        if step in ("commit", *LIFECYCLE_STEPS[:-1]):
            order = data["id"]
            following = LIFECYCLE_STEPS[0 if step == "commit" else LIFECYCLE_STEPS.index(step) + 1]
            return loadgen.encode(
                "PATCH",
                f"/api/orders/{order}/",
                host=stack.host,
                headers=staff,
                body={"status": following},
                tag=f"{following}:",
                idempotent=True,
            )
        return None

    progress.step(f"lifecycle: {opts.connections} concurrent flows for {opts.seconds:g}s")
    with drainer(stack) as lag:
        got = offer(
            stack,
            "saturate",
            calls,
            connections=opts.connections,
            seconds=opts.seconds,
            then=then,
        )
    flows = sum(1 for o in got if o.tag.startswith("reserve"))
    rows = []
    for step in ("reserve", "commit", "release", *LIFECYCLE_STEPS):
        mine = [o for o in got if o.tag.split(":")[0] == step]
        rows.append(summarise(mine, system=OURS, fsync=opts.fsync[0], mode=step))
    rows.append(summarise(got, system=OURS, fsync=opts.fsync[0], mode="all steps", **shown(lag)))
    progress.step("lifecycle: waiting for the walked-away reservations to expire")
    time.sleep(1.2)

    async def sweep() -> int:
        expired = 0
        async with Engine.from_settings(stack.settings) as engine:
            while True:
                result = await engine.expire(1000)
                expired += result.expired
                if not result.still_due or result.redis_behind:
                    return expired

    expired = asyncio.run(sweep())
    return {
        "rows": rows,
        "flows": flows,
        "flows_per_s": round(flows / opts.seconds, 1),
        "swept_expired": expired,
        **stack.checks(),
    }
