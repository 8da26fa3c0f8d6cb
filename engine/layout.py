"""The partition count the data in Redis is laid out in, recorded by the first process that
starts on it: a process started with another PARTITIONS refuses to start, rather than look for
every product, reservation and order in the wrong partition.

A product's partition is `crc32(product) mod PARTITIONS` (engine/keys.py): with another count
the same product is looked for under other keys, its stock seems gone, and units held under
the old keys are never released. So the count, once data exists, is part of the data.

`claim` is one command (SET NX GET, Redis >= 7.0) on a key outside the partitions; it takes
a sync or an async client and returns what the client's method returns (the count recorded
before, or None when this claim recorded it); `judge` turns that into the refusal.
"""

from __future__ import annotations

import json
from typing import Any

from engine import keys


class PartitionsMismatch(ValueError):
    """PARTITIONS differs from the count the data in Redis is laid out in."""

    def __init__(self, recorded: int, configured: int) -> None:
        super().__init__(
            f"this Redis holds data laid out in {recorded} partitions, but PARTITIONS is "
            f"{configured}: start with PARTITIONS={recorded} (see the README, 'Redis "
            "Cluster', on changing it)"
        )
        self.recorded = recorded
        self.configured = configured


def claim(client: Any, partitions: int) -> Any:
    """Record `partitions` unless a count is recorded already; the reply is the one recorded
    before (None: none was)."""
    return client.set(keys.LAYOUT, json.dumps({"partitions": partitions}), nx=True, get=True)


def judge(previous: str | bytes | None, partitions: int) -> None:
    """Raise PartitionsMismatch when the count recorded before differs from `partitions`."""
    if previous is None:
        return
    recorded = int(json.loads(previous)["partitions"])
    if recorded != partitions:
        raise PartitionsMismatch(recorded, partitions)


def check_sync(client: Any, partitions: int) -> None:
    """`claim` then `judge`, for a synchronous client (the worker, the CLI)."""
    judge(claim(client, partitions), partitions)


async def check(client: Any, partitions: int) -> None:
    """`claim` then `judge`, for an asynchronous client (the API)."""
    judge(await claim(client, partitions), partitions)
