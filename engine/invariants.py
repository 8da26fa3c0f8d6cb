"""The invariants of DESIGN.md, checked against one atomic snapshot of a partition.

1. available >= 0, reserved >= 0 (total = available + reserved by construction).
2. reserved equals the sum of the live reservations' lines for that product x warehouse.
   And the expiry index holds exactly the live reservations.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from redis.asyncio import Redis

from engine.keys import malformed_stock_fields, stock_counters
from engine.partition import PartitionState, parse_state, queue_state


@dataclass(frozen=True, slots=True)
class Counter:
    available: int
    reserved: int

    @property
    def total(self) -> int:
        return self.available + self.reserved


@dataclass(frozen=True, slots=True)
class InvariantReport:
    partition: int
    counters: dict[tuple[str, str], Counter]
    live_reservations: int
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def evaluate(
    partition: int, stock: Mapping[str, str], live: Mapping[str, str], expiry: Iterable[str]
) -> InvariantReport:
    """Pure check of a snapshot: the stock hash, the live hash and the expiry members."""
    state = PartitionState(
        counters=stock_counters(stock),
        live={rid: json.loads(entry) for rid, entry in live.items()},
        expiry=dict.fromkeys(expiry, 0),
        malformed=malformed_stock_fields(stock),
    )
    return judge(partition, state)


def judge(partition: int, state: PartitionState) -> InvariantReport:
    """Pure check of a partition's state as engine/partition.py reads it."""
    counters = {pw: Counter(a, r) for pw, (a, r) in state.counters.items()}
    held: dict[tuple[str, str], int] = defaultdict(int)
    for entry in state.live.values():
        for product, warehouse, quantity in entry["lines"]:
            held[(product, warehouse)] += int(quantity)
    problems: list[str] = []
    for (product, warehouse), c in sorted(counters.items()):
        where = f"{product}@{warehouse}"
        if c.available < 0:
            problems.append(f"{where}: available is {c.available} < 0")
        if c.reserved < 0:
            problems.append(f"{where}: reserved is {c.reserved} < 0")
        if c.reserved != held.get((product, warehouse), 0):
            problems.append(
                f"{where}: reserved is {c.reserved} but live reservations hold "
                f"{held.get((product, warehouse), 0)}"
            )
    for pw in sorted(set(held) - set(counters)):
        problems.append(f"{pw[0]}@{pw[1]}: live reservations hold {held[pw]} of unknown stock")
    for name in state.malformed:
        problems.append(f"the stock hash's field {name!r} is no counter (a|product|warehouse)")
    live, expiry = set(state.live), set(state.expiry)
    if expiry != live:
        problems.append(f"expiry index and live reservations differ: {len(expiry ^ live)} ids")
    return InvariantReport(partition, counters, len(live), problems)


async def check_partition(client: Redis, partition: int) -> InvariantReport:
    async with client.pipeline(transaction=True) as pipe:
        queue_state(pipe, partition)
        state = parse_state(await pipe.execute())
    return judge(partition, state)


async def check(client: Redis, partitions: int) -> list[InvariantReport]:
    return [await check_partition(client, p) for p in range(partitions)]
