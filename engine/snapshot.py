"""What the worker reads of a partition to hold it against the database, sans I/O:
reconcile's snapshot, the orders a partition holds, one record a repair copies.

Reconcile's snapshot is one MULTI: the Redis clock, the live state, the outbox after the
database checkpoint, the dead-letter count, the product settings and some orders' status.
The commands and the parsing of their replies are defined here once; persistence/snapshot.py
and persistence/repair.py run them (see engine/outbox.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from engine import outbox, partition
from engine.connection import clock_sync
from engine.keys import partition_keys, record_id
from engine.outbox import Tail
from engine.partition import PartitionState
from engine.records import reservation_record


@dataclass(frozen=True, slots=True)
class PartitionSnapshot:
    now_ms: int  # the Redis clock
    state: PartitionState  # counters, live reservations, expiry index
    tail: Tail  # the outbox after the checkpoint, and what tells whether Redis is behind it
    dead: int  # entries in the dead-letter stream
    products: dict[str, Any]  # product -> its settings (price, currency, warehouses)
    orders: dict[str, str | None]  # order -> its status in Redis (None: no record)


_STATE_AT = 1
_TAIL_AT = _STATE_AT + partition.STATE_REPLIES
_REST_AT = _TAIL_AT + outbox.TAIL_REPLIES


def queue_snapshot(
    pipe: Any, p: int, after: str, orders: Sequence[str], *, clock: bool = True
) -> None:
    """Queue on a MULTI pipeline; run it with `execute(raise_on_error=False)` (XINFO fails
    when there is no stream) and hand the replies to `parse_snapshot`. `clock=False` leaves
    TIME out (a Redis Cluster's MULTI can't carry it): the caller puts the partition node's
    TIME, read just before, first in the replies."""
    k = partition_keys(p)
    if clock:
        pipe.time()
    partition.queue_state(pipe, p)
    outbox.queue_tail(pipe, p, after)
    pipe.xlen(k.dead_letters)
    pipe.hgetall(k.products)
    for o in orders:
        pipe.hget(k.order(o), "status")


def partition_clock(client: Any, p: int) -> Any:
    """TIME of the node holding partition `p` (sync client)."""
    return clock_sync(client, partition_keys(p).stock)


def parse_snapshot(p: int, orders: Sequence[str], replies: Sequence[Any]) -> PartitionSnapshot:
    for r in (*replies[:_TAIL_AT], *replies[_REST_AT:]):
        if isinstance(r, BaseException):
            raise r
    dead, products, *statuses = replies[_REST_AT:]
    return PartitionSnapshot(
        now_ms=partition.time_ms(replies[0]),
        state=partition.parse_state(replies[_STATE_AT:_TAIL_AT]),
        tail=outbox.parse_tail(p, replies[_TAIL_AT:_REST_AT]),
        dead=int(dead),
        products={product: json.loads(meta) for product, meta in products.items()},
        orders=dict(zip(orders, statuses, strict=True)),
    )


def order_exists(client: Any, p: int, order: str) -> Any:
    """Whether the partition holds a record of the order (1/0; awaitable on an async client)."""
    return client.exists(partition_keys(p).order(order))


def scan_orders(client: Any, p: int) -> Any:
    """SCAN over the keys of the partition's order records: an iterator (async on an async
    client) of keys; `order_ids` turns them into ids."""
    return client.scan_iter(match=partition_keys(p).any_order, count=1000)


def order_ids(keys: Iterable[Any]) -> set[str]:
    return {record_id(str(key)) for key in keys}


# -- one record, as a database-side repair copies it ----------------------------------------


def queue_reservation(pipe: Any, p: int, reservation: str) -> None:
    """A reservation's live entry and record hash: parse with `parse_reservation`."""
    k = partition_keys(p)
    pipe.hget(k.live, reservation)
    pipe.hgetall(k.reservation(reservation))


def parse_reservation(
    reservation: str, replies: Sequence[Any]
) -> tuple[dict[str, str], dict[str, Any]]:
    """(the record hash, its 'data' unpacked: engine/records.py reservation_record; the live
    entry {"owner", "lines"}); each empty when absent."""
    live, record = replies
    return reservation_record(reservation, record or {}), (json.loads(live) if live else {})


def order_record(client: Any, p: int, order: str) -> Any:
    """An order's record hash ({} when absent; awaitable on an async client)."""
    return client.hgetall(partition_keys(p).order(order))
