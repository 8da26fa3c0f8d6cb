"""Proving Redis and the database agree, and repairing drift (`inventory reconcile`).

The check reads both sides (persistence.snapshot) and compares them (persistence.drift),
partition by partition. Should the drain move the checkpoint past the snapshot between the two
reads, the snapshot is taken again (the last attempt holds the drain locks). With `--fix`,
each partition is repaired under its drain lock (persistence.repair) towards the durable
record, then checked again.

What --fix never does: make available a unit that the durable record (the ledger and the
events still in the outbox) says is reserved or sold. Counters only ever move back to the
record; a roll-back that would go below zero is refused and reported as a conflict.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from typing import Any

import redis
from sqlalchemy import Engine

from engine.outbox import sid
from engine.settings import Settings
from persistence.drain import drain_locks
from persistence.drift import Drift, PartitionState, StockRow, compare
from persistence.rebuild import rebuild_partition
from persistence.repair import ACTOR, RedisRepairs, repair_database, repair_redis
from persistence.snapshot import (
    Pair,
    consistent_read,
    pre_read,
    read_database,
    redis_orders,
    redis_snapshot,
)

__all__ = [
    "Drift",
    "Pair",
    "PartitionState",
    "Report",
    "StockRow",
    "check",
    "drain_locks",
    "reconcile",
]

ATTEMPTS = 4


@dataclass
class Report:
    partitions: list[PartitionState]
    rows: list[StockRow]
    drift: list[Drift]
    found: list[Drift] | None = None  # after --fix: the drift the first check found
    repairs: list[dict[str, Any]] = field(default_factory=list)
    # counters --fix could not roll back without going below zero (units promised twice)
    conflicts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No drift, and no event the database lacks (an unresolved dead letter)."""
        return not self.drift and not any(p.dead_letters_unresolved for p in self.partitions)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, **asdict(self)}


def check(
    client: redis.Redis,
    db: Engine,
    settings: Settings,
    parts: Sequence[int] | None = None,
    *,
    locked: bool = False,
) -> Report:
    """Compare Redis and the database, partition by partition (every one by default).
    `locked`: the caller holds the partitions' drain locks."""
    parts = list(range(settings.partitions)) if parts is None else list(parts)
    for attempt in range(ATTEMPTS):
        with ExitStack() as stack:
            if attempt == ATTEMPTS - 1 and not locked:
                stack.enter_context(drain_locks(client, settings, parts))
            checkpoints, live_orders = pre_read(db)
            snaps = {}
            for p in parts:
                orders = {o for o, part in live_orders.items() if part == p}
                orders |= redis_orders(client, p)
                snaps[p] = redis_snapshot(client, p, checkpoints.get(p, "0-0"), sorted(orders))
            with consistent_read(db) as conn:
                data = read_database(conn, snaps, settings.partitions)
        moved = [
            p
            for p in parts
            if (now := data.checkpoints.get(p, "0-0")) != checkpoints.get(p, "0-0")
            and (snaps[p].last_id is None or sid(now) > sid(snaps[p].last_id or "0-0"))
        ]
        if not moved:
            break
    else:
        raise RuntimeError("the database checkpoint kept moving past the Redis snapshot")
    report = Report([], [], [])
    for p in parts:
        state, rows, drift = compare(p, snaps[p], data)
        report.partitions.append(state)
        report.rows += rows
        report.drift += drift
    return report


def reconcile(client: redis.Redis, db: Engine, settings: Settings, *, fix: bool = False) -> Report:
    """Check; with `fix`, repair each partition from the side that is right (Redis first, so
    that the database repairs count its repair events as pending), then check again."""
    if not fix:
        return check(client, db, settings)
    run = f"{ACTOR}-{uuid.uuid4().hex[:16]}"
    found: list[Drift] = []
    repairs: list[dict[str, Any]] = []
    conflicts: list[dict[str, Any]] = []
    for p in range(settings.partitions):
        with drain_locks(client, settings, [p]):
            report = check(client, db, settings, [p], locked=True)
            found += report.drift
            checkpoint = report.partitions[0].checkpoint
            done = RedisRepairs()
            if any(d.kind == "redis_lost_data" for d in report.drift):
                # nothing left to repair: everything to restore, as `inventory rebuild` does
                counts = rebuild_partition(client, db, settings, p, run)
                done.done.append({"side": "redis", "kind": "redis_rebuilt", **counts})
                report = check(client, db, settings, [p], locked=True)
            if any(d.repair == "redis" for d in report.drift):
                done = repair_redis(
                    client, db, settings, p, report.rows, report.drift, checkpoint, run
                )
                report = check(client, db, settings, [p], locked=True)
            repairs += done.done
            conflicts += done.conflicts
            checkpoint = report.partitions[0].checkpoint
            repairs += repair_database(client, db, p, report.drift, checkpoint, run)
    after = check(client, db, settings)
    after.found, after.repairs, after.conflicts = found, repairs, conflicts
    return after
