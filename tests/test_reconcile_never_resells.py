"""`reconcile --fix` never makes available a unit that the durable record says is reserved or
sold, and never keeps one that nobody received.

A random workload is run against a plain model of what it did (units received, reserved,
sold, returned), part of it is drained, Redis is damaged at random (counters nudged either way,
live entries and orders deleted, an order's status changed), and `reconcile --fix` runs. The
counters, the live reservations and the orders must then be exactly the model's — a truth
computed without the reconcile code — and the next check, after a drain, clean.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

import pytest
import redis
from sqlalchemy import Engine as DatabaseEngine

from engine.engine import Engine
from engine.keys import partition_keys
from engine.models import SYSTEM, CallContext, LineRequest
from engine.settings import Settings
from persistence.drain import drain_partition
from persistence.reconcile import check, reconcile
from tests.durable import redis_counters

K = partition_keys(0)
PRODUCTS = ("p1", "p2")
WAREHOUSES = ("main", "east")
BUYER = CallContext(actor="buyer-r", request_id="req-r")


@dataclass
class Model:
    counters: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    live: dict[str, list[tuple[str, str, int]]] = field(default_factory=dict)
    orders: dict[str, tuple[str, list[tuple[str, str, int]]]] = field(default_factory=dict)


async def set_up(engine: Engine, rng: random.Random) -> Model:
    m = Model()
    for p in PRODUCTS:
        await engine.setup_product(p, SYSTEM, price=100, warehouses={"main": 0, "east": 1})
        for w in WAREHOUSES:
            n = rng.randint(5, 15)
            await engine.adjust_stock(p, {w: n}, "received", SYSTEM)
            m.counters[(p, w)] = [n, 0]
    return m


async def run_ops(engine: Engine, m: Model, rng: random.Random, n: int) -> None:
    for _ in range(n):
        op = rng.choice(["reserve", "reserve", "release", "commit", "order", "cancel"])
        p, w, q = rng.choice(PRODUCTS), rng.choice(WAREHOUSES), rng.randint(1, 3)
        c = m.counters[(p, w)]
        if op == "reserve" and c[0] >= q:
            r = await engine.reserve([LineRequest(p, q, w)], BUYER)
            m.live[r.id] = [(p, w, q)]
            c[0], c[1] = c[0] - q, c[1] + q
        elif op == "order" and c[0] >= q:
            o = await engine.place_order([LineRequest(p, q, w)], BUYER)
            m.orders[o.id] = ("pending", [(p, w, q)])
            c[0] -= q
        elif op in ("release", "commit") and m.live:
            rid = rng.choice(sorted(m.live))
            lines = m.live.pop(rid)
            if op == "release":
                await engine.release(rid, BUYER)
                for lp, lw, lq in lines:
                    m.counters[(lp, lw)][0] += lq
            else:
                o = await engine.commit(rid, BUYER)
                m.orders[o.id] = ("pending", lines)
            for lp, lw, lq in lines:
                m.counters[(lp, lw)][1] -= lq
        elif op == "cancel":
            pending = sorted(o for o, (s, _) in m.orders.items() if s == "pending")
            if pending:
                oid = rng.choice(pending)
                await engine.transition(oid, "cancelled", SYSTEM)
                m.orders[oid] = ("cancelled", m.orders[oid][1])
                for lp, lw, lq in m.orders[oid][1]:
                    m.counters[(lp, lw)][0] += lq


async def damage(engine: Engine, m: Model, rng: random.Random) -> list[str]:
    done = []
    for _ in range(rng.randint(2, 4)):
        kind = rng.choice(["available", "reserved", "live", "order", "status"])
        p, w = rng.choice(PRODUCTS), rng.choice(WAREHOUSES)
        if kind in ("available", "reserved"):
            field_name = f"{kind[0]}|{p}|{w}"
            have = int(await engine.redis.hget(K.stock, field_name) or 0)
            delta = rng.choice([-1, 1]) * rng.randint(1, 4)
            if have + delta >= 0:
                await engine.redis.hincrby(K.stock, field_name, delta)
                done.append(f"{field_name} {delta:+d}")
        elif kind == "live" and m.live:
            rid = rng.choice(sorted(m.live))
            await engine.redis.hdel(K.live, rid)
            done.append(f"live entry of {rid} deleted")
        elif kind == "order":
            pending = sorted(o for o, (s, _) in m.orders.items() if s == "pending")
            if pending:
                oid = rng.choice(pending)
                await engine.redis.delete(K.order(oid))
                done.append(f"order {oid} deleted")
        elif kind == "status":
            pending = sorted(o for o, (s, _) in m.orders.items() if s == "pending")
            if pending:
                oid = rng.choice(pending)
                await engine.redis.hset(K.order(oid), "status", "shipped")
                done.append(f"order {oid} marked shipped")
    return done


@pytest.mark.parametrize("seed", range(int(os.environ.get("RECONCILE_SEEDS", "6"))))
async def test_fix_brings_redis_back_to_the_record_exactly(
    seed: int,
    engine: Engine,
    pg: DatabaseEngine,
    sync_redis: redis.Redis,
    settings: Settings,
) -> None:
    rng = random.Random(seed)
    m = await set_up(engine, rng)
    await run_ops(engine, m, rng, 40)
    drain_partition(sync_redis, pg, settings, 0)
    await run_ops(engine, m, rng, 10)  # not drained: the record's part still in the outbox
    damaged = await damage(engine, m, rng)

    fixed = reconcile(sync_redis, pg, settings, fix=True)

    assert fixed.conflicts == [], damaged
    assert fixed.ok, (damaged, fixed.drift)
    model = {pw: (a, r) for pw, (a, r) in m.counters.items()}
    assert await redis_counters(engine) == model, damaged
    assert set(await engine.redis.hkeys(K.live)) == set(m.live), damaged
    for oid, (status, _) in m.orders.items():
        assert await engine.redis.hget(K.order(oid), "status") == status, (oid, damaged)
    drain_partition(sync_redis, pg, settings, 0)
    after = check(sync_redis, pg, settings)
    assert after.ok, (damaged, after.drift)
