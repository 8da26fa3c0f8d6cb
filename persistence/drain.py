"""Draining a partition's outbox into the database.

One drainer per partition at a time (a Redis lock with a lease). Each batch: read the events
after the partition's checkpoint, apply them and move the checkpoint in ONE database
transaction, commit, and only then trim the stream up to the checkpoint — an event leaves
Redis only once the database has it (invariant 4). The checkpoint row is locked for the
transaction, so even a drainer whose lease lapsed can't apply a batch twice.

Before each batch the drain makes sure this Redis is not behind the database
(persistence/behind.py): a Redis that came back from an older copy lacks events the
checkpoint covers, and its new events would be applied over a state the database has left.
Such a partition is not drained: it is flagged, and waits for `inventory reconcile --fix`.

Only an event that would fail again becomes a dead letter (persistence.failures). A transient
database error (a lock or statement timeout, a deadlock) rolls the whole batch back and is
raised: checkpoint unmoved, nothing trimmed, nothing dead-lettered; the caller retries (the RQ
job's DRAIN_RETRY, the in-process drain's backoff).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import cast

import redis
from redis.lock import Lock
from sqlalchemy import Connection, Engine, select

from engine import outbox, specs
from engine.keys import PartitionKeys, partition_keys
from engine.scripts import run_sync
from engine.settings import Settings
from persistence import behind, schema
from persistence.apply import apply_batch
from persistence.db import insert


@dataclass
class DrainResult:
    partition: int
    applied: int = 0
    skipped: int = 0
    dead: int = 0
    batches: int = 0
    locked_out: bool = False  # another drainer holds the partition
    behind: bool = False  # Redis is behind the checkpoint: not drained (persistence/behind.py)
    checkpoint: str = "0-0"
    lag_ms: list[int] = field(default_factory=list)  # event ts -> commit, per applied event


def _read(
    client: redis.Redis, partition: int, after: str, count: int
) -> tuple[outbox.Tail, behind.Behind | None]:
    """The events after the checkpoint, in one round trip with what tells whether this Redis
    is behind it, whether the partition is flagged as behind, and whether the checkpoint's
    own event is still in the stream (applied, not yet trimmed)."""
    with client.pipeline(transaction=True) as pipe:
        outbox.queue_tail(pipe, partition, after, count)
        tail = outbox.parse_tail(partition, pipe.execute(raise_on_error=False))
    if behind.is_behind(after, tail.last_id, tail.applied, tail.at_checkpoint):
        return tail, behind.Behind(partition, after, tail.last_id, tail.applied)
    return tail, None


def _trim(client: redis.Redis, k: PartitionKeys, last: str) -> None:
    """Drop the outbox up to `last`, which the database has committed, and move the applied
    marker up to it (lua/trim_outbox.lua)."""
    run_sync(client, specs.TRIM_OUTBOX, outbox=k.outbox, applied=k.applied, last_event=last)


def _checkpoint(conn: Connection, partition: int) -> str:
    """The partition's checkpoint, its row locked until the transaction ends."""
    t = schema.outbox_checkpoints
    conn.execute(
        insert(conn, t)
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
        tail, lost = _read(client, partition, after, batch_size)
        if lost is not None:
            behind.flag(client, lost)
            result.behind = True
            result.checkpoint = after
            return 0
        if tail.flagged:  # caught up after all (e.g. the right copy was restored): resume
            outbox.clear_behind(client, partition)
        events = tail.events
        if not events:
            result.checkpoint = after
            if tail.at_checkpoint:
                # The events up to the checkpoint are committed; a trim lost after that commit
                # (Redis went away in between) would otherwise wait for the next event.
                _trim(client, k, after)
            return 0
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
        last = events[-1].id
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
        outbox.dead_letter(client, partition, e, error)
    _trim(client, k, last)
    dead_ids = {e.event_id for e, _ in batch.dead}
    result.lag_ms.extend(committed_ms - e.ts_ms for e in events if e.event_id not in dead_ids)
    result.applied += batch.applied
    result.skipped += batch.skipped
    result.dead += len(batch.dead)
    result.batches += 1
    result.checkpoint = last
    return len(events)


@contextmanager
def drain_locks(
    client: redis.Redis, settings: Settings, parts: Sequence[int]
) -> Iterator[list[Lock]]:
    """Hold the drain lock of these partitions: no drain moves their checkpoints meanwhile.
    Yields the locks (each for DRAIN_LEASE: a holder that outlasts it renews them)."""
    lease = settings.drain_lease_ms / 1000
    locks: list[Lock] = []
    with ExitStack() as stack:
        for p in parts:
            lock = outbox.drain_lock(client, p, timeout=lease, blocking_timeout=lease)
            if not lock.acquire():
                raise RuntimeError(f"partition {p}: a drainer held its lock for {lease:g} s")
            stack.callback(_release, lock)
            locks.append(lock)
        yield locks


def _release(lock: Lock) -> None:
    if lock.owned():
        lock.release()


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
    lock = outbox.drain_lock(
        client, partition, timeout=settings.drain_lease_ms / 1000, blocking=False
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
