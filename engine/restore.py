"""Writing a partition back into a Redis that lost it (`inventory rebuild`), sans I/O: a
typed `RestorePlan` in, the MULTI that writes its keys, fields and values out.

persistence/rebuild.py fills the plan from the database and runs these in a WATCHed
transaction: `occupied` and `events_after` (its refusals), `read_position` (under WATCH),
then `queue_restore` after MULTI, with `watched(p)` as the keys to watch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

from engine import records
from engine.keys import partition_keys, stock_fields
from engine.outbox import last_generated_id, range_start, sid
from engine.partition import PW, Pair, PartitionState


@dataclass(frozen=True, slots=True)
class LiveReservation:
    owner: str
    lines: list[Any]  # [[product, warehouse, quantity], ...]
    record: dict[str, str | int]  # the record hash (engine/records.py reservation_fields)
    # what it counts against its customer's limits (lua/limits.lua): products, live count
    counted: tuple[str, ...] = ()
    capped: bool = False

    @property
    def expires_at(self) -> int:
        return int(self.record["expires_at"])


@dataclass
class RestorePlan:
    """What one partition gets back."""

    products: dict[str, dict[str, Any]] = field(default_factory=dict)  # product -> its meta
    counters: dict[PW, Pair] = field(default_factory=dict)  # (available, reserved)
    reservations: dict[str, LiveReservation] = field(default_factory=dict)
    orders: dict[str, dict[str, str | int]] = field(default_factory=dict)  # record hashes
    # direct orders still pending -> when they time out (ms; ORDER_PENDING_TTL)
    pending: dict[str, int] = field(default_factory=dict)
    # what each customer holds, counted for their limits (lua/limits.lua `held`)
    held: dict[str, int] = field(default_factory=dict)

    def add_product(self, product: str, meta: dict[str, Any]) -> None:
        """A product's settings (engine/records.py product_meta); as setup_product.lua does,
        each of its warehouses gets counters."""
        self.products[product] = meta
        for w, _ in meta["warehouses"]:
            self.counters[(product, str(w))] = (0, 0)

    def state(self) -> PartitionState:
        """The plan as the invariant check reads a partition (engine/invariants.py judge)."""
        return PartitionState(
            counters=dict(self.counters),
            live={
                rid: {"owner": r.owner, "lines": r.lines} for rid, r in self.reservations.items()
            },
            expiry={rid: r.expires_at for rid, r in self.reservations.items()},
        )


def watched(p: int) -> tuple[str, ...]:
    """The keys to WATCH while a partition is restored."""
    k = partition_keys(p)
    return k.stock, k.products, k.live, k.expiry, k.outbox, k.applied


def occupied(client: Any, p: int) -> list[str]:
    """The keys of the partition's live state that exist (sync client or pipeline in
    immediate mode): a Redis holding any is not empty."""
    k = partition_keys(p)
    return [key for key in (k.stock, k.products, k.live, k.expiry) if client.exists(key)]


def events_after(client: Any, p: int, checkpoint: str) -> bool:
    """Whether the outbox holds an event after the checkpoint (one the database lacks)."""
    return bool(client.xrange(partition_keys(p).outbox, range_start(checkpoint), "+", count=1))


def read_position(pipe: Any, p: int) -> tuple[str, str | None]:
    """Under WATCH (immediate mode): the outbox's last generated id ('0-0' when none) and the
    applied marker."""
    k = partition_keys(p)
    last = last_generated_id(pipe.xinfo_stream(k.outbox)) if pipe.exists(k.outbox) else None
    return last or "0-0", pipe.get(k.applied)


def _hset(pipe: Any, key: str, fields: Mapping[str, Any]) -> None:
    pipe.hset(key, items=list(chain.from_iterable(fields.items())))


def queue_restore(
    pipe: Any,
    p: int,
    plan: RestorePlan,
    checkpoint: str,
    position: tuple[str, str | None],
    retention_ms: int,
) -> None:
    """After MULTI: replace the partition's live state with the plan's, put its records back,
    make new events sort after the checkpoint and move the applied marker up to it, and
    lift the behind flag. `position` is what `read_position` returned."""
    k = partition_keys(p)
    last, applied = position
    pipe.delete(k.stock, k.products, k.live, k.expiry, k.pending, k.held)
    pipe.delete(k.waitlist, k.wait_due, k.wait_data)  # waitlists are not restored
    products = {product: records.compact(meta) for product, meta in plan.products.items()}
    stock: dict[str, int] = {}
    for (product, warehouse), (a, r) in plan.counters.items():
        available, reserved = stock_fields(product, warehouse)
        stock[available], stock[reserved] = a, r
    live = {
        rid: records.live_entry(x.owner, x.lines, x.counted, x.capped)
        for rid, x in plan.reservations.items()
    }
    held = {f: n for f, n in plan.held.items() if n > 0}
    for key, fields in (
        (k.products, products),
        (k.stock, stock),
        (k.live, live),
        (k.held, held),
    ):
        if fields:
            _hset(pipe, key, fields)
    if plan.reservations:
        pipe.zadd(k.expiry, {rid: x.expires_at for rid, x in plan.reservations.items()})
    for rid, x in plan.reservations.items():
        pipe.delete(k.reservation(rid))
        _hset(pipe, k.reservation(rid), x.record)
        pipe.pexpireat(k.reservation(rid), x.expires_at + retention_ms)
    for oid, record in plan.orders.items():
        pipe.delete(k.order(oid))
        _hset(pipe, k.order(oid), record)
    if plan.pending:
        pipe.zadd(k.pending, plan.pending)
    if sid(last) < sid(checkpoint):
        # New events must sort after the checkpoint, or the drain would skip them: an
        # entry trimmed as it is added (MAXLEN 0) moves the stream's last id there.
        pipe.xadd(k.outbox, {"type": "rebuild"}, id=checkpoint, maxlen=0, approximate=False)
    if checkpoint != "0-0" and (applied is None or sid(str(applied)) < sid(checkpoint)):
        pipe.set(k.applied, checkpoint)
    pipe.delete(k.behind)
