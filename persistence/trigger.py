"""Asking for a drain after a write, from async code (the API): at most one job waits per
partition, so a burst of writes enqueues one drain, not thousands.

Under load almost every write finds a drain already waiting. So that those writes don't each
pay a Redis round trip to learn it again, a process that has just seen the flag set (within
PENDING_FRESH_S) takes that as the answer. The price: a write in that moment whose drain job
started just before it waits for the next write's request — milliseconds under load — or, if
it was the last write, for the scheduler's periodic drain (every 2 s)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import redis
from rq import Queue

from engine.reads import EngineReads
from persistence import jobs

PENDING_FRESH_S = 0.01


class DrainTrigger:
    def __init__(
        self, engine: EngineReads, redis_url: str, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._engine = engine
        self._queue = Queue(jobs.QUEUE, connection=redis.Redis.from_url(redis_url))
        self._clock = clock
        self._seen_pending: dict[int, float] = {}  # partition -> when a waiting job was seen

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

    def close(self) -> None:
        self._queue.connection.close()
