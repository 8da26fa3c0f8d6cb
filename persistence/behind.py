"""Telling that a Redis is behind the database, exactly.

The database's checkpoint names the last outbox event it applied. A Redis that had that event
either still holds it in the stream (not trimmed yet) or trimmed it, and the trim moved the
partition's applied marker up to it in the same step (lua/trim_outbox.lua). A Redis that holds
neither never had the event: it came back from an older copy (AOF `everysec` lost its last
second, a failover promoted a replica that lagged, an old backup was restored), and the
database holds changes this Redis lacks. Draining it then would skip or misplace events, so
the drain pauses the partition and `inventory reconcile --fix` restores what Redis lost.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import redis
from sqlalchemy import Engine, inspect

from engine import outbox
from engine.outbox import sid
from engine.scripts import Checkpoints, SyncCheckpoints
from persistence import queries_orders, schema

log = logging.getLogger("inventory.drain")


@dataclass(frozen=True, slots=True)
class Behind:
    """What showed that partition's Redis is behind the database."""

    partition: int
    checkpoint: str  # the database's: the last event it applied
    last_id: str | None  # the outbox's last generated id (None: no stream)
    applied: str | None  # the marker (None: never trimmed, or a Redis from before markers)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def is_behind(
    checkpoint: str, last_id: str | None, applied: str | None, checkpoint_present: bool
) -> bool:
    """Whether a Redis never had the checkpoint's event (see the module docstring). Without a
    marker (a Redis written before markers existed) only the stream's last id can tell."""
    if checkpoint == "0-0" or checkpoint_present:
        return False
    if last_id is None or sid(last_id) < sid(checkpoint):
        return True
    return applied is not None and sid(applied) < sid(checkpoint)


def flag(client: redis.Redis, found: Behind) -> None:
    """Record that the partition is behind, for the dashboard, /readyz and reconcile; the
    flag stays until a repair (or a drain that finds the partition caught up) removes it."""
    at_ms = int(time.time() * 1000)
    if outbox.flag_behind(client, found.partition, {**found.to_json(), "at_ms": at_ms}):
        log.error(
            "partition %d: Redis is behind the database (checkpoint %s, outbox last id %s, "
            "applied marker %s): its drain is paused; run `inventory reconcile` to see what "
            "Redis lost and `inventory reconcile --fix` to restore it from the database "
            "(`inventory rebuild` if it lost all its data)",
            found.partition,
            found.checkpoint,
            found.last_id,
            found.applied,
        )


# How long the API waits for the database to say a partition's checkpoint when a Redis that
# has started is checked (engine/scripts.py): its writes there wait as long.
CHECKPOINT_READ_TIMEOUT_S = 5.0


def checkpoints_sync(db: Engine) -> SyncCheckpoints:
    """The reader of each partition's checkpoint in `db` (the id of the last event the
    database applied; None: none yet) with which the engine checks a Redis that has started
    before its first write there (engine/scripts.py, lua/verify.lua). A database that can't
    be read raises — one not set up yet too (no checkpoints table): a process pointed at the
    wrong database must not pass a restored copy for every process."""
    return functools.partial(queries_orders.checkpoint, db)


def holds_a_record(db: Engine) -> bool:
    """Whether `db` is set up (its checkpoints table exists): a database that is not has
    recorded nothing, and a tool that may run without one (`inventory chaos`) takes Redis as
    it is there."""
    with db.connect() as conn:
        return inspect(conn).has_table(schema.outbox_checkpoints.name)


def checkpoints(db: Engine) -> Checkpoints:
    """`checkpoints_sync` for the async engine: read in a thread, within
    CHECKPOINT_READ_TIMEOUT_S (a database that does not answer: RedisUnverified)."""
    read = checkpoints_sync(db)

    async def read_async(partition: int) -> str | None:
        return await asyncio.wait_for(asyncio.to_thread(read, partition), CHECKPOINT_READ_TIMEOUT_S)

    return read_async
