"""Comparing the two sides' readings of a partition (see persistence.snapshot): what each
product x warehouse and each record should be, the drift, and which side is right.

The durable record is the truth: the database's ledger, records and history, plus the events
still in the outbox (the database has yet to apply them; so the comparison is exact with a
backlog). Redis is brought back to it; it is never the other way round for stock. So:

- Counters are measured against the ledger plus the pending movements. A difference no event
  explains (a hand edit, a bug, a Redis restored from an older copy) is rolled back, never
  recorded: recording it would legitimise units nobody received, or sell again units the
  record says are sold. That is measured only while the ledger and the projection agree (when
  they don't, one of them is damaged and Redis is the witness) and no dead letter is
  unresolved (then the record itself is incomplete, and nothing is rolled back).
- Live reservations the record holds are put back in Redis with their own expires_at (due
  ones are then expired the normal way, with their events); live ones the record says ended
  are ended; live ones nobody recorded are removed. Units are never moved to do it: the
  counters' roll-back does that, from the ledger.
- Orders missing in Redis, or in another status than the record's, are put back.
- A Redis that never had the event the database's checkpoint names is behind the database
  (persistence/behind.py): `redis_behind`. Its repair also moves the stream's id past the
  checkpoint and puts back the idempotency records and ended records it lost.
- The database side keeps its own repairs: a projection (stock_levels, a reservation's or
  order's row) that disagrees with the ledger, the history and Redis is rewritten; the ledger
  is history: reported, never rewritten.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from engine.keys import partition_of
from engine.outbox import OutboxEvent, sid
from engine.states import TERMINAL
from persistence.behind import is_behind
from persistence.snapshot import PW, Database, Pair, Snapshot


@dataclass
class StockRow:
    partition: int
    product: str
    warehouse: str
    redis: Pair  # the counters
    live_reserved: int  # the sum of the live reservations' lines
    database: Pair | None  # the projection (None: no row)
    expected: Pair  # the counters in Redis at the database checkpoint
    ledger: Pair  # the ledger's sums
    pending: int  # movements the database has yet to apply
    # How far the counters stand from the durable record (ledger + pending movements): what
    # --fix rolls back. Only measured while projection and ledger agree and no dead letter is
    # unresolved.
    unrecorded: Pair
    recorded: Pair = (0, 0)  # the durable record: the ledger's sums + the pending movements
    drift: list[str] = field(default_factory=list)


@dataclass
class Drift:
    kind: str
    partition: int
    redis: Any
    database: Any
    right: str  # the side that is right: 'database' (the durable record), 'redis' or 'unknown'
    repair: str  # what --fix changes: 'redis', 'database' or 'none'
    product: str | None = None
    warehouse: str | None = None
    record: str | None = None  # reservation or order id


@dataclass
class PartitionState:
    partition: int
    checkpoint: str
    backlog: int  # outbox events the database has yet to apply
    oldest_pending_age_ms: int | None
    live_reservations: int
    dead_letters_redis: int  # entries in the dead-letter stream
    dead_letters_unresolved: int  # rows of dead_letters not resolved
    behind: bool = False  # Redis never had the checkpoint's event (persistence/behind.py)
    drain_paused: bool = False  # the drain found it behind and waits for a repair


def _pair(x: Pair) -> dict[str, int]:
    return {"available": x[0], "reserved": x[1]}


@dataclass
class _Pending:
    """What the snapshot's events after the database checkpoint say: what the database lacks
    (the state before them) and what Redis should hold (the state after them)."""

    first: dict[PW, Pair] = field(default_factory=dict)  # 'before' of the first movement
    delta: dict[PW, Pair] = field(default_factory=dict)  # sum of the movements
    count: dict[PW, int] = field(default_factory=lambda: defaultdict(int))
    reservations: dict[str, str] = field(default_factory=dict)  # id -> 'active' | 'absent' before
    orders: dict[str, str | None] = field(default_factory=dict)  # id -> status before
    products: set[str] = field(default_factory=set)  # settings changed
    # after them: reservations made (as the event has them, expires_at kept up to date), ended,
    # extended; each order's status and the event that made it
    created: dict[str, dict[str, Any]] = field(default_factory=dict)
    ended: dict[str, str] = field(default_factory=dict)  # id -> released | expired | committed
    extended: dict[str, int] = field(default_factory=dict)
    status: dict[str, str] = field(default_factory=dict)
    new_orders: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, e: OutboxEvent) -> None:
        for m in e.movements:
            pw = (m.product, m.warehouse)
            self.first.setdefault(pw, (m.available_before, m.reserved_before))
            a, r = self.delta.get(pw, (0, 0))
            self.delta[pw] = (a + m.available_after - m.available_before, r + m.reserved_delta)
            self.count[pw] += 1
        d = e.data
        rid = d.get("reservation")
        if rid and e.type != "expiry_reconciled":
            prior = "absent" if e.type == "reservation_created" else "active"
            self.reservations.setdefault(str(rid), prior)
        if e.type == "reservation_created":
            self.created[str(rid)] = {**d, "created_at": e.ts_ms}
        elif e.type == "reservation_extended":
            self.extended[str(rid)] = int(d["expires_at_after"])
        elif e.type in ("reservation_released", "reservation_expired"):
            self.ended[str(rid)] = e.type.removeprefix("reservation_")
        elif e.type in ("order_created", "reservation_committed") and rid:
            self.ended[str(rid)] = "committed"
        if e.type in ("order_created", "order_status_changed"):
            self.orders.setdefault(str(d["order"]), d.get("from"))
            self.status[str(d["order"])] = str(d.get("to") or d["status"])
        if e.type == "order_created":
            self.new_orders[str(d["order"])] = {**d, "created_at": e.ts_ms}
        if e.type == "product_updated":
            self.products.add(str(d["product"]))
        # (record_reconciled: a repair that made Redis hold what the database holds already)

    def live_after(self, rid: str) -> bool | None:
        """Whether the events leave the reservation live (None: they don't touch it)."""
        if rid in self.ended:
            return False
        return True if rid in self.created else None


def _classify(
    r: StockRow, in_redis: bool, trusted: bool
) -> Iterator[tuple[str, Any, Any, str, str]]:
    """One product x warehouse's drift: kind, Redis value, database value, the side that is
    right, the side --fix changes. `trusted`: the durable record is complete (no dead letter)."""
    c, dv = r.redis, r.database or (0, 0)
    fixable = ("database", "redis") if trusted and dv == r.ledger else ("unknown", "none")
    counter = {**_pair(c), "live_reserved": r.live_reserved}
    if not in_redis and (dv, r.ledger) != ((0, 0), (0, 0)):
        # counters the scripts never delete are gone: put back from the record
        yield "stock_missing_in_redis", None, _pair(r.recorded), *fixable
        return
    if r.unrecorded != (0, 0):
        yield "unrecorded", _pair(c), _pair(r.recorded), *fixable
        if c[1] != r.live_reserved:
            yield "counter", counter, None, *fixable
        return  # the roll-back brings the counters back to the ledger
    if c[1] != r.live_reserved or min(c) < 0:
        # the counters agree with the record; the live reservations don't (see _records)
        right, repair = ("database", "redis") if trusted else ("unknown", "none")
        yield "counter", counter, None, right, repair
    if dv != r.ledger:
        # The drain adds each movement to both (persistence.apply add_stock): one of the two
        # was changed since, by hand. Redis, at the database's checkpoint, is the witness: a
        # projection that disagrees with the ledger and Redis is rewritten; a ledger that
        # disagrees with both is reported, never rewritten.
        if r.expected == r.ledger:
            right, repair = ("redis", "database") if trusted else ("unknown", "none")
            yield "projection", _pair(r.ledger), r.database and _pair(r.database), right, repair
        else:
            yield "ledger", _pair(r.expected), _pair(r.ledger), "redis", "none"


def _stock(
    p: int, snap: Snapshot, db: Database, todo: _Pending, dead: int, drift: list[Drift]
) -> list[StockRow]:
    held: dict[PW, int] = defaultdict(int)
    for entry in snap.live.values():
        for product, warehouse, quantity in entry["lines"]:
            held[(product, warehouse)] += int(quantity)
    ours = {pw for pw in {*db.projection, *db.ledger} if partition_of(pw[0], db.partitions) == p}
    rows: list[StockRow] = []
    for pw in sorted({*snap.counters, *held, *ours, *todo.first}):
        c, d, s = snap.counters.get(pw, (0, 0)), db.projection.get(pw), db.ledger.get(pw, (0, 0))
        dv, delta, expected = d or (0, 0), todo.delta.get(pw, (0, 0)), todo.first.get(pw, c)
        u = (c[0] - s[0] - delta[0], c[1] - s[1] - delta[1]) if dv == s and not dead else (0, 0)
        recorded = (s[0] + delta[0], s[1] + delta[1])
        row = StockRow(p, *pw, c, held[pw], d, expected, s, todo.count[pw], u, recorded)
        rows.append(row)
        for kind, redis_value, db_value, right, repair in _classify(
            row, pw in snap.counters, not dead
        ):
            row.drift.append(kind)
            drift.append(Drift(kind, p, redis_value, db_value, right, repair, *pw))
    return rows


def _records(
    p: int, snap: Snapshot, db: Database, todo: _Pending, trusted: bool, drift: list[Drift]
) -> None:
    def report(
        kind: str, redis_value: Any, db_value: Any, right: str, repair: str, record: str
    ) -> None:
        if repair == "redis" and not trusted:  # the record is incomplete: touch nothing
            right, repair = "unknown", "none"
        drift.append(Drift(kind, p, redis_value, db_value, right, repair, record=record))

    live = set(snap.live)
    # what the database should hold active at its checkpoint, by Redis's account
    want_active = {r for r in live if r not in todo.reservations}
    want_active |= {r for r, prior in todo.reservations.items() if prior == "active"}
    active = {r for r, part in db.active.items() if part == p}
    for r in sorted(want_active - active):
        status = db.reservations.get(r)
        if r in todo.reservations or (status is None and r in db.referenced):
            # the database lost what the events recorded: write it from Redis
            report("reservation_missing_in_database", "active", status, "redis", "database", r)
        elif status is not None:  # the record says it ended: Redis missed that
            report("reservation_status", "active", status, "database", "redis", r)
        else:  # no event made it: the record knows no such reservation
            report("reservation_unrecorded", "active", None, "database", "redis", r)
    for r in sorted(active - want_active - set(todo.reservations)):
        report("reservation_missing_in_redis", None, "active", "database", "redis", r)
    # the events still in the outbox: what they leave live must be live, the rest not
    for r in sorted(todo.reservations):
        after = todo.live_after(r)
        if after is None and r in active:  # extended only: live as the database has it
            after = True
        if after and r not in live:
            made = todo.created.get(r)
            source: dict[str, Any] = (
                {"source": "database"} if made is None else {"source": "outbox", **made}
            )
            if r in todo.extended:
                source["expires_at"] = todo.extended[r]
            report("reservation_missing_in_redis", None, source, "database", "redis", r)
        elif after is False and r in live:
            report("reservation_status", "active", todo.ended[r], "database", "redis", r)
    for r in sorted(set(snap.expiry) - live):
        report("expiry_without_live", snap.expiry[r], None, "redis", "redis", r)
    for r in sorted(live - set(snap.expiry)):
        report("live_without_expiry", None, None, "redis", "redis", r)
    for o, status in sorted({**dict.fromkeys(todo.new_orders), **snap.orders}.items()):
        in_db, recorded = db.orders.get(o), db.history.get(o)
        if o in snap.late_orders:
            continue  # made while the snapshot was taken: no status to compare with
        if o in todo.orders:
            want = todo.orders[o]  # the status before the pending events
            if want is not None and in_db != want:
                kind = "order_status" if in_db else "order_missing_in_database"
                report(kind, want, in_db, "redis", "database", o)
            final = todo.status[o]  # and after them, what Redis must hold
            if status is None:
                made = todo.new_orders.get(o)
                origin = {"source": "database"} if made is None else {"source": "outbox", **made}
                report("order_missing_in_redis", None, {**origin, "status": final}, "database",
                       "redis", o)  # fmt: skip
            elif status != final:
                report("order_status_in_redis", status, final, "database", "redis", o)
        elif status is None:
            if in_db is not None and in_db not in TERMINAL:
                report("order_missing_in_redis", None, in_db, "database", "redis", o)
        elif in_db is None:
            report("order_missing_in_database", status, None, "redis", "database", o)
        elif in_db != status:
            if recorded == status:  # the history agrees with Redis: the row is off
                report("order_status", status, in_db, "redis", "database", o)
            elif recorded in (None, in_db):  # the record says otherwise: Redis missed it
                report("order_status_in_redis", status, in_db, "database", "redis", o)
            else:
                report("order_status", status, in_db, "unknown", "none", o)


def _products(
    p: int, snap: Snapshot, db: Database, todo: _Pending, trusted: bool, drift: list[Drift]
) -> None:
    for product, meta in sorted(db.settings.items()):
        if partition_of(product, db.partitions) != p or product in todo.products:
            continue
        found = snap.products.get(product)
        if found != meta:
            kind = "product_missing_in_redis" if found is None else "product_settings"
            right, repair = ("database", "redis") if trusted else ("unknown", "none")
            drift.append(Drift(kind, p, found, meta, right, repair, product=product))


def compare(
    p: int, snap: Snapshot, db: Database
) -> tuple[PartitionState, list[StockRow], list[Drift]]:
    """Partition `p`'s state, its product x warehouse rows and its drift."""
    checkpoint = db.checkpoints.get(p, "0-0")
    pending = [e for e in snap.events if sid(e.id) > sid(checkpoint)]
    todo = _Pending()
    for e in pending:
        with suppress(KeyError, TypeError, ValueError, AttributeError):
            todo.add(e)  # malformed: the drain dead-letters it
    dead = db.dead.get(p, 0)
    ages = [snap.now_ms - e.ts_ms for e in pending[:1] if "ts" in e.data]
    # (the drain may have moved the checkpoint between the two reads: the snapshot's events
    # after the checkpoint it was taken at tell whether this Redis had the new one)
    behind = is_behind(checkpoint, snap.last_id, snap.applied, snap.holds(checkpoint))
    state = PartitionState(
        p,
        checkpoint,
        len(pending),
        ages[0] if ages else None,
        len(snap.live),
        snap.dead,
        dead,
        behind,
        snap.flagged,
    )
    drift: list[Drift] = []
    rows = _stock(p, snap, db, todo, dead, drift)
    active = sum(1 for part in db.active.values() if part == p)
    if not (snap.counters or snap.products or snap.live or snap.last_id) and (rows or active):
        # Redis lost the partition: nothing to repair from, everything to restore
        known = {"stock_levels": len(rows), "active_reservations": active}
        lost = Drift("redis_lost_data", p, None, known, "database", "none")
        return state, [dataclasses.replace(r, drift=[]) for r in rows], [lost]
    if behind:
        found = {"last_id": snap.last_id, "applied": snap.applied}
        right, repair = ("database", "redis") if not dead else ("unknown", "none")
        drift.insert(0, Drift("redis_behind", p, found, {"checkpoint": checkpoint}, right, repair))
    _products(p, snap, db, todo, not dead, drift)
    _records(p, snap, db, todo, not dead, drift)
    return state, rows, drift
