"""Draining a partition's outbox into the database.

One drainer per partition at a time (a Redis lock with a lease). Each batch: read the events
after the partition's checkpoint, apply them and move the checkpoint in ONE database
transaction, commit, and only then trim the stream up to the checkpoint — an event leaves
Redis only once the database has it (invariant 4). The checkpoint row is locked for the
transaction, so even a drainer whose lease lapsed can't apply a batch twice.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import cast

import redis
from sqlalchemy import Connection, Engine, select
from sqlalchemy.dialects import postgresql, sqlite

from engine import outbox
from engine.keys import partition_keys
from engine.settings import Settings
from persistence import schema
from persistence.apply import apply_batch


@dataclass
class DrainResult:
    partition: int
    applied: int = 0
    skipped: int = 0
    dead: int = 0
    batches: int = 0
    locked_out: bool = False  # another drainer holds the partition
    checkpoint: str = "0-0"
    lag_ms: list[int] = field(default_factory=list)  # event ts -> commit, per applied event


def _next_id(stream_id: str) -> str:
    ms, seq = stream_id.split("-")
    return f"{ms}-{int(seq) + 1}"


def _checkpoint(conn: Connection, partition: int) -> str:
    """The partition's checkpoint, its row locked until the transaction ends."""
    t = schema.outbox_checkpoints
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    conn.execute(
        insert(t)
        .values(partition=partition, last_event_id="0-0", applied=0, updated_at=datetime.now(UTC))
        .on_conflict_do_nothing(index_elements=["partition"])
    )
    query = select(t.c.last_event_id).where(t.c.partition == partition)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    return cast(str, conn.scalar(query))


def drain_batch(
    client: redis.Redis, db: Engine, partition: int, batch_size: int, result: DrainResult
) -> int:
    """Apply one batch; return how many events it read (0: the outbox is drained)."""
    k = partition_keys(partition)
    with db.begin() as conn:
        after = _checkpoint(conn, partition)
        entries = cast(
            list[tuple[str, dict[str, str]]],
            client.xrange(k.outbox, f"({after}", "+", count=batch_size),
        )
        if not entries:
            result.checkpoint = after
            if after != "0-0":
                # The events up to the checkpoint are committed; a trim lost after that commit
                # (Redis went away in between) would otherwise wait for the next event.
                client.xtrim(k.outbox, minid=_next_id(after), approximate=False)
            return 0
        events = [outbox.decode(partition, i, f) for i, f in entries]
        batch = apply_batch(conn, events)
        now = datetime.now(UTC)
        if batch.dead:
            conn.execute(
                schema.dead_letters.insert(),
                [
                    {
                        "event_id": e.event_id,
                        "partition": partition,
                        "type": e.type,
                        "payload": e.data,
                        "error": error,
                        "at": now,
                    }
                    for e, error in batch.dead
                ],
            )
        last = entries[-1][0]
        conn.execute(
            schema.outbox_checkpoints.update()
            .where(schema.outbox_checkpoints.c.partition == partition)
            .values(
                last_event_id=last,
                applied=schema.outbox_checkpoints.c.applied + batch.applied,
                updated_at=now,
            )
        )
    # committed: now, and only now, the events may leave Redis
    committed_ms = int(time.time() * 1000)
    for e, error in batch.dead:
        client.xadd(
            k.dead_letters,
            {"event_id": e.event_id, "type": e.type, "data": json.dumps(e.data), "error": error},
        )
    client.xtrim(k.outbox, minid=_next_id(last), approximate=False)
    dead_ids = {e.event_id for e, _ in batch.dead}
    result.lag_ms.extend(committed_ms - e.ts_ms for e in events if e.event_id not in dead_ids)
    result.applied += batch.applied
    result.skipped += batch.skipped
    result.dead += len(batch.dead)
    result.batches += 1
    result.checkpoint = last
    return len(entries)


def drain_partition(
    client: redis.Redis,
    db: Engine,
    settings: Settings,
    partition: int,
    *,
    max_batches: int | None = None,
) -> DrainResult:
    """Drain until the outbox is empty (or max_batches), holding the partition's lease."""
    result = DrainResult(partition)
    lock = client.lock(
        partition_keys(partition).drain_lock,
        timeout=settings.drain_lease_ms / 1000,
        blocking=False,
    )
    if not lock.acquire():
        result.locked_out = True
        return result
    try:
        while max_batches is None or result.batches < max_batches:
            read = drain_batch(client, db, partition, settings.drain_batch, result)
            if read < settings.drain_batch:
                break
            lock.reacquire()
    finally:
        if lock.owned():
            lock.release()
    return result
