"""Reading the outbox streams: every change in Redis is one event here, in order."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from engine.keys import partition_keys
from engine.models import Movement


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    partition: int
    id: str  # the stream id: unique and ordered within the partition
    type: str
    data: dict[str, Any]

    @property
    def event_id(self) -> str:
        """Globally unique: partition and stream id."""
        return f"p{self.partition}-{self.id}"

    @property
    def ts_ms(self) -> int:
        return int(self.data["ts"])

    @property
    def movements(self) -> list[Movement]:
        raw = self.data.get("movements")
        return [Movement(**m) for m in raw] if isinstance(raw, list) else []


def decode(partition: int, entry_id: str, fields: dict[str, str]) -> OutboxEvent:
    return OutboxEvent(partition, entry_id, fields["type"], json.loads(fields["data"]))


async def read(
    client: Redis, partition: int, *, after: str = "-", count: int | None = None
) -> list[OutboxEvent]:
    """Events after `after` (exclusive; '-' = from the start), oldest first."""
    start = "-" if after == "-" else f"({after}"
    entries = cast(
        list[tuple[str, dict[str, str]]],
        await client.xrange(partition_keys(partition).outbox, start, "+", count=count),
    )
    return [decode(partition, entry_id, fields) for entry_id, fields in entries]


async def backlog(client: Redis, partition: int) -> int:
    length: int = await client.xlen(partition_keys(partition).outbox)
    return length


async def last_id(client: Redis, partition: int) -> str:
    """The stream id of the newest event ever appended to the partition's outbox ('0-0' when
    none was): the stream's last-generated id, which trimming leaves where it is."""
    try:
        info = await client.xinfo_stream(partition_keys(partition).outbox)
    except ResponseError as exc:
        if "no such key" in str(exc).lower():
            return "0-0"
        raise
    return str(info["last-generated-id"])


async def paused(client: Redis, partitions: int) -> list[int]:
    """The partitions whose drain is paused because their Redis came back behind the
    database (the flag persistence/behind.py leaves until `reconcile --fix` restores it)."""
    async with client.pipeline(transaction=False) as pipe:
        for p in range(partitions):
            pipe.exists(partition_keys(p).behind)
        flags: list[int] = await pipe.execute()
    return [p for p, flagged in enumerate(flags) if flagged]
