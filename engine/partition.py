"""A partition's live state in Redis, sans I/O: the stock counters, the live reservations and
the expiry index, read in one MULTI by the invariant check (engine/invariants.py, async) and
by reconcile's snapshot (persistence/snapshot.py, sync). What to queue and how the replies
parse are defined here once; each caller only runs the pipeline (see engine/outbox.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.keys import malformed_stock_fields, partition_keys, stock_counters

PW = tuple[str, str]  # (product, warehouse)
Pair = tuple[int, int]  # (available, reserved)


@dataclass(frozen=True, slots=True)
class PartitionState:
    counters: dict[PW, Pair]
    live: dict[str, dict[str, Any]]  # reservation id -> {"owner", "lines": [[p, w, q], ...]}
    expiry: dict[str, int]  # reservation id -> expires_at (ms), the expiry index
    malformed: list[str] = field(default_factory=list)  # stock hash fields that are no counter


STATE_REPLIES = 3  # how many replies `queue_state` adds to a pipeline


def queue_state(pipe: Any, partition: int) -> None:
    k = partition_keys(partition)
    pipe.hgetall(k.stock)
    pipe.hgetall(k.live)
    pipe.zrange(k.expiry, 0, -1, withscores=True)


def parse_state(replies: Sequence[Any]) -> PartitionState:
    stock, live, expiry = replies
    return PartitionState(
        counters=stock_counters(stock),
        live={rid: json.loads(raw) for rid, raw in live.items()},
        expiry={rid: int(score) for rid, score in expiry},
        malformed=malformed_stock_fields(stock),
    )


def time_ms(reply: Sequence[Any]) -> int:
    """A TIME reply in milliseconds: the Redis clock every expiry is measured by."""
    seconds, micros = reply
    return int(seconds) * 1000 + int(micros) // 1000
