"""Asking for a drain after a write, from async code (the API): at most one job waits per
partition, so a burst of writes enqueues one drain, not thousands.

A write's request does not pay for the asking: `wake(partition)` only notes the partition and
returns, and one task per process asks for the noted partitions' drains (`request`) right after,
so the drain is asked within one turn of the event loop after the write, off the request's path.
Writes that land while an ask is under way are asked for together by the next turn: a process
sends at most one ask per partition at a time, however many writes it answers meanwhile.

Under load almost every ask finds a drain already waiting. So that those asks don't each pay a
Redis round trip to learn it again, a process that has just seen the flag set (within
PENDING_FRESH_S) takes that as the answer. The price: a write in that moment whose drain job
started just before it waits for the next write's ask — milliseconds under load — or, if it was
the last write, for the scheduler's periodic drain (every 2 s)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import redis
from rq import Queue

from engine.reads import EngineReads
from persistence import jobs

log = logging.getLogger("inventory.drain")

PENDING_FRESH_S = 0.01


class DrainTrigger:
    def __init__(
        self,
        engine: EngineReads,
        queue: redis.Redis | str,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`queue`: a connection to the job queue's Redis, or its URL."""
        self._engine = engine
        connection = redis.Redis.from_url(queue) if isinstance(queue, str) else queue
        self._queue = Queue(jobs.QUEUE, connection=connection)
        self._clock = clock
        self._seen_pending: dict[int, float] = {}  # partition -> when a waiting job was seen
        self._woken: set[int] = set()  # partitions written to since the last ask
        self._asker: asyncio.Task[None] | None = None

    async def request(self, partition: int) -> bool:
        """Enqueue a drain of `partition` unless one is already waiting; True if enqueued."""
        seen = self._seen_pending.get(partition)
        if seen is not None and self._clock() - seen < PENDING_FRESH_S:
            return False
        if not await self._engine.ask_drain(partition):
            self._seen_pending[partition] = self._clock()
            return False
        self._seen_pending.pop(partition, None)
        await asyncio.to_thread(jobs.enqueue_drain, self._queue, partition)
        return True

    def wake(self, partition: int) -> None:
        """A write landed in `partition`: its drain is asked for right after, off the caller's
        path (see the module's doc). Never raises; a lost ask is the periodic drain's."""
        self._woken.add(partition)
        if self._asker is None:
            self._asker = asyncio.get_running_loop().create_task(self._ask_woken())

    async def _ask_woken(self) -> None:
        try:
            while self._woken:
                partitions, self._woken = sorted(self._woken), set()
                for partition in partitions:
                    try:
                        await self.request(partition)
                    except redis.exceptions.RedisError as exc:
                        # The write is done; the periodic drain picks the event up.
                        log.warning("could not ask for a drain of partition %d: %s", partition, exc)
        finally:
            self._asker = None

    def close(self) -> None:
        if self._asker is not None:
            self._asker.cancel()
        self._queue.connection.close()
