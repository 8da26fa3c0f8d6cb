"""Restoring Redis from the database after Redis lost its data (`inventory rebuild`).

Restored per partition, in one MULTI: the products hash (product_settings), the counters
(stock_levels), the live reservations (status 'active': live entry, expiry index, record hash
and its TTL; those already due too, so that the sweep releases them and records
reservation_expired as usual) and the orders not yet terminal. No outbox event is written for
them: the database holds all of it already. The outbox's ids are made to start after the
database checkpoint, so that a drain never skips a new event, and the applied marker is moved
up to it (persistence/behind.py). Then, as after `reconcile --fix` of a Redis that fell
behind, the ended records still within their retention and the idempotency records not yet
expired are put back (persistence/repair.py), so that a client retrying a write with the same
Idempotency-Key gets its first answer again. The drain locks are held throughout.

What no rebuild can restore: events appended before the loss and not yet drained are gone with
Redis, unless its AOF had them (that is why AOF is on). Nothing left in Redis says what they
were, so there is nothing to refuse on; `inventory reconcile` afterwards shows the result.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.client import Pipeline
from sqlalchemy import Engine, func, select

from engine import invariants, restore
from engine.keys import partition_of
from engine.partition import time_ms
from engine.records import compact, counted_record, product_meta
from engine.restore import LiveReservation, RestorePlan
from engine.settings import Settings
from persistence import schema
from persistence.drain import drain_locks
from persistence.records import (
    audit,
    cart_parts,
    counts_of,
    order_hash,
    read_lines,
    reservation_hash,
)
from persistence.repair import restore_lost
from persistence.snapshot import LIVE_ORDER, checkpoints, consistent_read


class RebuildRefused(RuntimeError):
    """Redis already holds data for a partition (or events the database lacks)."""


@dataclass
class RebuildResult:
    partitions: list[dict[str, int]] = field(default_factory=list)  # what each one got
    # Unresolved dead letters: events the database lacks, and so the rebuilt Redis too.
    dead_letters: int = 0
    problems: list[str] = field(default_factory=list)  # invariants the restored data breaks


def _read(
    db: Engine, partitions: int, pending_ttl_ms: int = 0, max_live: int = 0
) -> tuple[list[RestorePlan], dict[int, str], int]:
    """What each partition gets, the checkpoints and the unresolved dead letters.

    What each customer holds is counted again (lua/limits.lua): the units of every product
    with a max_per_customer in their live reservations and orders not cancelled, and (with
    `max_live`, MAX_LIVE_RESERVATIONS_PER_CUSTOMER) their live reservations; each live
    reservation and live order is marked as counting them. (A limit set after some of those
    were made counts them too, where the engine counted from when it was set.)"""
    plans = [RestorePlan() for _ in range(partitions)]
    rs, o, dl = schema.reservations, schema.orders, schema.dead_letters
    limited: set[str] = set()

    def count(product: str, owner: str, units: int) -> None:
        held = plans[partition_of(product, partitions)].held
        held[f"u|{product}|{owner}"] = held.get(f"u|{product}|{owner}", 0) + units

    with consistent_read(db) as conn:
        at = checkpoints(conn)
        dead = conn.scalar(select(func.count()).where(dl.c.resolved_at.is_(None))) or 0
        for row in conn.execute(select(schema.product_settings)):
            plan = plans[partition_of(row.product, partitions)]
            meta = product_meta(row.price, row.currency, row.warehouses, row.limits)
            plan.add_product(row.product, meta)
            if meta.get("limits", {}).get("max_per_customer") is not None:
                limited.add(row.product)
        for row in conn.execute(select(schema.stock_levels)):
            plan = plans[partition_of(row.product, partitions)]
            plan.counters[(row.product, row.warehouse)] = (int(row.available), int(row.reserved))
        active = rs.c.status == "active"
        lines = read_lines(
            conn, schema.reservation_lines, "reservation_id", select(rs.c.id).where(active)
        )
        # carts across partitions: each home names its parts, each cart order its partitions
        homes = select(rs.c.id).where(rs.c.cart_id == rs.c.id)
        parts = cart_parts(conn, homes)
        for row in conn.execute(select(rs).where(active)):
            plan = plans[partition_of(row.id, partitions)]  # where the engine will look for it
            held = lines.get(row.id, [])
            counted, capped = counts_of(row, held, limited, max_live)
            for p, _, qty in held:
                if p in limited:
                    count(str(p), row.user_id, int(qty))
            if capped:
                plan.held[f"n|{row.user_id}"] = plan.held.get(f"n|{row.user_id}", 0) + 1
            record = reservation_hash(row, held, parts.get(row.id), counted_record(counted, capped))
            plan.reservations[row.id] = LiveReservation(row.user_id, held, record, counted, capped)
        lines = read_lines(conn, schema.order_lines, "order_id", select(o.c.id).where(LIVE_ORDER))
        for row in conn.execute(select(o).where(LIVE_ORDER)):
            plan = plans[partition_of(row.id, partitions)]
            plan.orders[row.id] = order_hash(
                row, lines.get(row.id, []), parts.get(row.reservation_id or ""), partitions
            )
            products = dict.fromkeys(str(p) for p, *_ in lines.get(row.id, []) if p in limited)
            if products:
                plan.orders[row.id]["held"] = compact(list(products))
            if pending_ttl_ms and row.status == "pending" and not row.reservation_id:
                # a direct order times out as it would have (ORDER_PENDING_TTL)
                plan.pending[row.id] = int(plan.orders[row.id]["created_at"]) + pending_ttl_ms
        if limited:  # every order not cancelled counts, delivered ones too
            ol = schema.order_lines
            units = (
                select(o.c.user_id, ol.c.product, func.sum(ol.c.quantity))
                .join(o, o.c.id == ol.c.order_id)
                .where(o.c.status != "cancelled", ol.c.product.in_(sorted(limited)))
                .group_by(o.c.user_id, ol.c.product)
            )
            for user, product, qty in conn.execute(units):
                count(str(product), str(user), int(qty))
    return plans, at, int(dead)


def _refusal(client: Any, p: int, checkpoint: str, force: bool) -> str | None:
    present = restore.occupied(client, p)
    if present and not force:
        return (
            f"partition {p} already has data in Redis ({', '.join(present)}); rebuild restores "
            "a Redis that lost its data: --force replaces what is there"
        )
    if restore.events_after(client, p, checkpoint):
        return (
            f"partition {p}: the outbox holds events the database has not applied; "
            "drain them first (`inventory drain`): the database lacks them, so would Redis"
        )
    return None


def _write(
    client: redis.Redis, p: int, plan: RestorePlan, checkpoint: str, force: bool, retention_ms: int
) -> None:
    """Write one partition in one MULTI, watching its keys: if anything writes them between
    the check and the EXEC, it runs again (and refuses, unless `force`)."""

    def fill(pipe: Pipeline) -> None:
        refused = _refusal(pipe, p, checkpoint, force)
        if refused:
            raise RebuildRefused(refused)
        position = restore.read_position(pipe, p)
        pipe.multi()
        restore.queue_restore(pipe, p, plan, checkpoint, position, retention_ms)

    client.transaction(fill, *restore.watched(p))


def rebuild(
    client: redis.Redis, db: Engine, settings: Settings, *, force: bool = False
) -> RebuildResult:
    """Restore every partition from the database; refuses (before writing anything) when a
    partition already has data, unless `force`, and always when its outbox holds events
    the database lacks."""
    with drain_locks(client, settings, range(settings.partitions)):
        return _rebuild(client, db, settings, force)


def _rebuild(client: redis.Redis, db: Engine, settings: Settings, force: bool) -> RebuildResult:
    plans, checkpoints, dead = _plans(db, settings)
    for p in range(settings.partitions):
        refused = _refusal(client, p, checkpoints.get(p, "0-0"), force)
        if refused:
            raise RebuildRefused(refused)
    result = RebuildResult(dead_letters=dead)
    run = f"rebuild-{uuid.uuid4().hex[:16]}"
    for p, plan in enumerate(plans):
        counts, problems = _restore(client, db, settings, p, plan, checkpoints, force, run)
        result.partitions.append(counts)
        result.problems += problems
    return result


def rebuild_partition(
    client: redis.Redis, db: Engine, settings: Settings, p: int, run: str
) -> dict[str, int]:
    """`rebuild` of one partition that lost its data (`inventory reconcile --fix` of a
    `redis_lost_data`), the caller holding its drain lock; what it got, as `rebuild` says it.
    Refused (RebuildRefused) when the partition holds data."""
    plans, checkpoints, _ = _plans(db, settings)
    refused = _refusal(client, p, checkpoints.get(p, "0-0"), False)
    if refused:
        raise RebuildRefused(refused)
    counts, _ = _restore(client, db, settings, p, plans[p], checkpoints, False, run)
    return counts


def _plans(db: Engine, settings: Settings) -> tuple[list[RestorePlan], dict[int, str], int]:
    return _read(
        db,
        settings.partitions,
        settings.order_pending_ttl_ms,
        settings.max_live_reservations_per_customer,
    )


def _restore(
    client: redis.Redis,
    db: Engine,
    settings: Settings,
    p: int,
    plan: RestorePlan,
    checkpoints: dict[int, str],
    force: bool,
    run: str,
) -> tuple[dict[str, int], list[str]]:
    """Write one partition's plan, put back what it lost beside it, and audit it."""
    now_ms = time_ms(client.time())
    try:
        _write(client, p, plan, checkpoints.get(p, "0-0"), force, settings.reservation_retention_ms)
    except redis.WatchError:
        raise RebuildRefused(f"partition {p}: Redis changed during the rebuild") from None
    counts = {
        "partition": p,
        "products": len(plan.products),
        "stock_levels": len(plan.counters),
        "reservations": len(plan.reservations),
        "reservations_due": sum(1 for r in plan.reservations.values() if r.expires_at <= now_ms),
        "orders": len(plan.orders),
        **restore_lost(client, db, settings, p, run),
    }
    with db.begin() as conn:
        audit(conn, "rebuild", "redis_rebuilt", ("partition", str(p)), None, counts, run)
    return counts, invariants.judge(p, plan.state()).problems
