"""Reading the outbox streams: every change in Redis is one event here, in order.

Sans I/O first: which commands a read queues and how its replies parse are plain functions
that the async engine (the API) and the sync worker (persistence/) both run. A redis-py
pipeline, sync or async, queues a command when its method is called; only `execute` differs
(awaited or not). So a `queue_*` function takes either kind of pipeline, its `parse_*` takes
what `execute` returned, and each caller's I/O shell is a few lines. A one-command helper
(`ask_drain`, `length`, ...) takes either kind of client and returns what the client's method
returns: the reply, or an awaitable of it. The async shells are at the end of this module.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from engine.keys import event_id, partition_keys
from engine.models import Movement

# While a partition's drain_requested flag lives, a drain is queued or running; the job
# deletes it before it reads, so a write during a drain asks for the next one.
DRAIN_REQUEST_TTL_S = 60

Entries = list[tuple[str, dict[str, str]]]


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    partition: int
    id: str  # the stream id: unique and ordered within the partition
    type: str
    data: dict[str, Any]

    @property
    def event_id(self) -> str:
        """Globally unique: partition and stream id."""
        return event_id(self.partition, self.id)

    @property
    def ts_ms(self) -> int:
        return int(self.data["ts"])

    @property
    def movements(self) -> list[Movement]:
        raw = self.data.get("movements")
        return [Movement(**m) for m in raw] if isinstance(raw, list) else []


# The type of an entry that is no event: its data no JSON object, or a field missing (a hand
# XADD, a bug). It reads as an event of this type whose data holds the entry's two fields as
# they are, which no reader acts on and the drain dead-letters (persistence/translate.py):
# refused by every decode, it would stop the partition's drain for good.
UNDECODABLE = "undecodable"


def decode(partition: int, entry_id: str, fields: dict[str, str]) -> OutboxEvent:
    kind, text = fields.get("type"), fields.get("data")
    try:
        data = orjson.loads(text) if text is not None else None
    except orjson.JSONDecodeError:
        data = None
    if not kind or not isinstance(data, dict):
        return OutboxEvent(partition, entry_id, UNDECODABLE, {"type": kind, "data": text})
    return OutboxEvent(partition, entry_id, kind, data)


def decode_all(partition: int, entries: Any) -> list[OutboxEvent]:
    """The events of an XRANGE reply."""
    return [decode(partition, i, f) for i, f in cast(Entries, entries)]


def sid(stream_id: str) -> tuple[int, int]:
    """A stream id as (ms, seq), ordered as the stream orders its entries."""
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def stream_ms(stream_id: str) -> int:
    """The milliseconds part of a stream id: when Redis appended the entry."""
    return sid(stream_id)[0]


# -- sans I/O: commands and their replies ---------------------------------------------------


def range_start(after: str) -> str:
    """XRANGE's start for the events after `after` (exclusive; '-' = from the start)."""
    return "-" if after == "-" else f"({after}"


def queue_range(pipe: Any, partition: int, after: str = "-", count: int | None = None) -> None:
    """The events after `after`, oldest first: parse with `decode_all`."""
    pipe.xrange(partition_keys(partition).outbox, range_start(after), "+", count=count)


def last_generated_id(info: Any) -> str | None:
    """The stream's last generated id from an XINFO STREAM reply, which trimming leaves where
    it is; None when the reply is the error of a stream that does not exist."""
    if isinstance(info, BaseException):
        if isinstance(info, ResponseError) and "no such key" in str(info).lower():
            return None
        raise info
    return str(info["last-generated-id"])


@dataclass(frozen=True, slots=True)
class Tail:
    """A partition's outbox after a checkpoint, read in one MULTI with what tells whether
    this Redis is behind that checkpoint (persistence/behind.py)."""

    events: list[OutboxEvent]
    at_checkpoint: bool  # the checkpoint's own event is still in the stream (not trimmed yet)
    applied: str | None  # the applied marker, moved up by each trim
    flagged: bool  # the drain found this Redis behind and paused the partition
    last_id: str | None  # the stream's last generated id (None: no stream)


TAIL_REPLIES = 5  # how many replies `queue_tail` adds to a pipeline


def queue_tail(pipe: Any, partition: int, after: str, count: int | None = None) -> None:
    """Run with `execute(raise_on_error=False)`: XINFO fails when there is no stream."""
    k = partition_keys(partition)
    queue_range(pipe, partition, after, count)
    pipe.xrange(k.outbox, after, after)  # the checkpoint's own event, if not trimmed yet
    pipe.get(k.applied)
    pipe.exists(k.behind)
    pipe.xinfo_stream(k.outbox)


def parse_tail(partition: int, replies: Sequence[Any]) -> Tail:
    entries, at_checkpoint, applied, flagged, info = replies
    for r in (entries, at_checkpoint, applied, flagged):
        if isinstance(r, BaseException):
            raise r
    return Tail(
        events=decode_all(partition, entries),
        at_checkpoint=bool(at_checkpoint),
        applied=applied,
        flagged=bool(flagged),
        last_id=last_generated_id(info),
    )


def ask_drain(client: Any, partition: int) -> Any:
    """Set the partition's drain-requested flag unless it is set: true (awaitable on an async
    client) when this caller should enqueue the drain job. At most one job waits per
    partition, so a burst of writes enqueues one drain, not thousands."""
    flag = partition_keys(partition).drain_requested
    return client.set(flag, "1", nx=True, ex=DRAIN_REQUEST_TTL_S)


def flag_behind(client: Any, partition: int, found: Mapping[str, Any]) -> Any:
    """Pause the partition's drain: this Redis is behind the database. `found` says what
    showed it (JSON; EngineReads.overview hands it back). True when newly set."""
    return client.set(partition_keys(partition).behind, json.dumps(found), nx=True)


def clear_behind(client: Any, partition: int) -> Any:
    return client.delete(partition_keys(partition).behind)


def length(client: Any, partition: int) -> Any:
    """How many events wait in the partition's outbox (an int, awaitable on an async client)."""
    return client.xlen(partition_keys(partition).outbox)


def drain_started(client: Any, partition: int) -> Any:
    """Clear the flag as a drain starts, so that a write landing meanwhile asks for another."""
    return client.delete(partition_keys(partition).drain_requested)


def drain_lock(client: Any, partition: int, **options: Any) -> Any:
    """The lease of the one worker draining the partition's outbox: a redis-py Lock (sync or
    async after its client), `options` as `Redis.lock` takes them (timeout, blocking, ...)."""
    return client.lock(partition_keys(partition).drain_lock, **options)


# -- the dead-letter stream: the events the database refused, while unresolved ---------------


def dead_letter(client: Any, partition: int, event: OutboxEvent, error: str) -> Any:
    """Add an event the database refused (the dead_letters row is its durable record)."""
    fields = {"event_id": event.event_id, "type": event.type, "data": json.dumps(event.data)}
    return client.xadd(partition_keys(partition).dead_letters, {**fields, "error": error})


def dead_letter_entries(client: Any, partition: int) -> Any:
    """The stream's entries [(entry id, fields)] (awaitable on an async client)."""
    return client.xrange(partition_keys(partition).dead_letters)


def drop_dead_letters(client: Any, partition: int, entry_ids: Sequence[str]) -> Any:
    return client.xdel(partition_keys(partition).dead_letters, *entry_ids)


# -- the async shells -----------------------------------------------------------------------


async def read(
    client: Redis, partition: int, *, after: str = "-", count: int | None = None
) -> list[OutboxEvent]:
    """Events after `after` (exclusive; '-' = from the start), oldest first."""
    async with client.pipeline(transaction=False) as pipe:
        queue_range(pipe, partition, after, count)
        (entries,) = await pipe.execute()
    return decode_all(partition, entries)


async def backlog(client: Redis, partition: int) -> int:
    return int(await length(client, partition))


async def last_id(client: Redis, partition: int) -> str:
    """The stream id of the newest event ever appended to the partition's outbox ('0-0' when
    none was): the stream's last-generated id, which trimming leaves where it is."""
    info: Any
    try:
        info = await client.xinfo_stream(partition_keys(partition).outbox)
    except ResponseError as exc:
        info = exc
    return last_generated_id(info) or "0-0"


async def paused(client: Redis, partitions: int) -> list[int]:
    """The partitions whose drain is paused because their Redis came back behind the
    database (the flag persistence/behind.py leaves until `reconcile --fix` restores it)."""
    async with client.pipeline(transaction=False) as pipe:
        for p in range(partitions):
            pipe.exists(partition_keys(p).behind)
        flags: list[int] = await pipe.execute()
    return [p for p, flagged in enumerate(flags) if flagged]
