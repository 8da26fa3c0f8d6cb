"""Asking for a drain after a write, from async code (the API): at most one job waits per
partition, so a burst of writes enqueues one drain, not thousands."""

from __future__ import annotations

import asyncio

import redis
from redis.asyncio import Redis as AsyncRedis
from rq import Queue

from engine.keys import partition_keys
from persistence import jobs


class DrainTrigger:
    def __init__(self, client: AsyncRedis, redis_url: str) -> None:
        self._client = client
        self._queue = Queue(jobs.QUEUE, connection=redis.Redis.from_url(redis_url))

    async def request(self, partition: int) -> bool:
        """Enqueue a drain of `partition` unless one is already waiting; True if enqueued."""
        flag = partition_keys(partition).drain_requested
        if not await self._client.set(flag, "1", nx=True, ex=jobs.DRAIN_REQUEST_TTL_S):
            return False
        await asyncio.to_thread(jobs.enqueue_drain, self._queue, partition)
        return True

    def close(self) -> None:
        self._queue.connection.close()
