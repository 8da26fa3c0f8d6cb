"""Test helpers that read Redis as it is: snapshots for "nothing changed", outbox events."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from engine import outbox


async def snapshot(client: Redis, match: str | None = None) -> dict[str, Any]:
    """Every key (or those matching the glob `match`) with its type and value (streams as
    their entries)."""
    out: dict[str, Any] = {}
    async for key in client.scan_iter(match=match, count=1000):
        kind = await client.type(key)
        value: Any
        if kind == "string":
            value = await client.get(key)
        elif kind == "hash":
            value = await client.hgetall(key)
        elif kind == "zset":
            value = await client.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            value = await client.xrange(key)
        elif kind == "set":
            value = sorted(await client.smembers(key))
        elif kind == "list":
            value = await client.lrange(key, 0, -1)
        else:
            value = None
        out[key] = (kind, value)
    return out


async def events(client: Redis, partition: int = 0) -> list[dict[str, Any]]:
    """The partition's outbox, oldest first, each event's data decoded."""
    out = []
    for event in await outbox.read(client, partition):
        data = dict(event.data)
        assert data["type"] == event.type
        data["_id"] = event.id
        for key in ("movements", "lines"):
            if data.get(key) == {}:
                data[key] = []
        out.append(data)
    return out


async def event_types(client: Redis, partition: int = 0) -> list[str]:
    return [e["type"] for e in await events(client, partition)]
