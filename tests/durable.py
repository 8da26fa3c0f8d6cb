"""Helpers for the write-through tests: a workload that touches every event type, and
readers of the database side."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import redis
from sqlalchemy import Engine as DatabaseEngine
from sqlalchemy import func, select

from engine.engine import Engine
from engine.keys import partition_keys
from engine.models import SYSTEM, CallContext, LineRequest
from engine.outbox import OutboxEvent
from persistence import schema

BUYER = CallContext(actor="buyer-1", request_id="req-buyer")


async def workload(engine: Engine, rounds: int = 10, product: str = "sku-1") -> None:
    """Every event type at least once: set-up, adjust, reserve, release, extend, expire,
    commit, direct order, transitions (with a cancellation that returns units)."""
    await engine.setup_product(
        product, SYSTEM, price=1999, warehouses={"main": 0, "east": 1}, stock={"main": 1000}
    )
    await engine.adjust_stock(product, {"east": 500}, "received", SYSTEM)
    for i in range(rounds):
        r = await engine.reserve([LineRequest(product, 2)], BUYER)
        if i % 4 == 0:
            await engine.release(r.id, BUYER)
        elif i % 4 == 1:
            await engine.extend(r.id, BUYER, ttl_ms=120_000)
            order = await engine.commit(r.id, BUYER)
            await engine.transition(order.id, "confirmed", SYSTEM)
            await engine.transition(order.id, "cancelled", SYSTEM)
        elif i % 4 == 2:
            order = await engine.commit(r.id, BUYER)
            await engine.transition(order.id, "confirmed", SYSTEM)
        else:
            await engine.place_order([LineRequest(product, 1, "east")], BUYER)
    await engine.reserve([LineRequest(product, 1)], BUYER, ttl_ms=50)
    await asyncio.sleep(0.08)
    await engine.expire()


def events_added(client: redis.Redis, partition: int = 0) -> int:
    """Every event ever appended to the partition's outbox (trimmed or not)."""
    info: dict[str, Any] = client.xinfo_stream(partition_keys(partition).outbox)
    return int(info["entries-added"])


def count(db: DatabaseEngine, table: Any) -> int:
    with db.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(table)) or 0)


def duplicates(db: DatabaseEngine) -> dict[str, int]:
    """Event ids that appear more than once where they must appear once."""
    out = {}
    with db.connect() as conn:
        for name, query in {
            "audit": select(schema.audit_log.c.event_id)
            .group_by(schema.audit_log.c.event_id)
            .having(func.count() > 1),
            "ledger": select(schema.stock_ledger.c.event_id)
            .group_by(schema.stock_ledger.c.event_id, schema.stock_ledger.c.seq)
            .having(func.count() > 1),
        }.items():
            out[name] = len(conn.execute(query).all())
    return out


def projection(db: DatabaseEngine) -> dict[tuple[str, str], tuple[int, int]]:
    with db.connect() as conn:
        rows = conn.execute(
            select(
                schema.stock_levels.c.product,
                schema.stock_levels.c.warehouse,
                schema.stock_levels.c.available,
                schema.stock_levels.c.reserved,
            )
        ).all()
    return {(p, w): (int(a), int(r)) for p, w, a, r in rows}


async def redis_counters(engine: Engine) -> dict[tuple[str, str], tuple[int, int]]:
    raw = cast(dict[str, str], await engine.redis.hgetall(partition_keys(0).stock))
    out: dict[tuple[str, str], list[int]] = {}
    for name, value in raw.items():
        kind, product, warehouse = name.split("|", 2)
        out.setdefault((product, warehouse), [0, 0])[0 if kind == "a" else 1] = int(value)
    return {k: (v[0], v[1]) for k, v in out.items()}


def assert_applied_once(db: DatabaseEngine, events: list[OutboxEvent]) -> None:
    """Each event has exactly one audit row and one ledger row per movement."""
    ids = [e.event_id for e in events]
    audit, ledger = schema.audit_log, schema.stock_ledger
    with db.connect() as conn:
        audited = conn.execute(select(audit.c.event_id).where(audit.c.event_id.in_(ids))).all()
        ledgered = conn.execute(
            select(ledger.c.event_id, func.count())
            .where(ledger.c.event_id.in_(ids))
            .group_by(ledger.c.event_id)
        )
        per_event = {str(event_id): int(n) for event_id, n in ledgered}
    assert sorted(r.event_id for r in audited) == sorted(ids)
    assert per_event == {e.event_id: len(e.movements) for e in events if e.movements}
    assert duplicates(db) == {"audit": 0, "ledger": 0}
