"""Asking for a drain after a write, from async code (the API): at most one job waits per
partition, so a burst of writes enqueues one drain, not thousands."""

from __future__ import annotations

import asyncio

import redis
from redis.asyncio import Redis as AsyncRedis
from rq import Queue

from engine.keys import partition_keys
from persistence import jobs

# While this key lives, a drain of the partition is queued or running; the job deletes it
# before it reads, so a write that lands during a drain asks for the next one.
REQUEST_TTL_S = 60


class DrainTrigger:
    def __init__(self, client: AsyncRedis, redis_url: str) -> None:
        self._client = client
        self._queue = Queue(jobs.QUEUE, connection=redis.Redis.from_url(redis_url))

    async def request(self, partition: int) -> bool:
        """Enqueue a drain of `partition` unless one is already waiting; True if enqueued."""
        flag = partition_keys(partition).drain_requested
        if not await self._client.set(flag, "1", nx=True, ex=REQUEST_TTL_S):
            return False
        await asyncio.to_thread(self._enqueue, partition)
        return True

    def _enqueue(self, partition: int) -> None:
        self._queue.enqueue(
            jobs.drain,
            partition,
            retry=jobs.DRAIN_RETRY,
            result_ttl=jobs.JOB_RESULT_TTL,
            failure_ttl=86_400,
        )

    def close(self) -> None:
        self._queue.connection.close()
