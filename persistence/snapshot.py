"""Reading both sides for `inventory reconcile`, each consistently: one atomic Redis snapshot
per partition (MULTI: counters, product settings, live reservations, expiry index, the outbox
after the database checkpoint and what tells whether Redis is behind it, candidate orders'
status), and the database in one transaction (checkpoint, stock_levels, ledger sums, product
settings, active reservations, orders and their last recorded status).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import redis
from sqlalchemy import Connection, Engine, func, select

from engine import partition, snapshot
from engine.connection import is_cluster_client
from engine.outbox import OutboxEvent
from engine.records import product_meta
from engine.states import TERMINAL
from persistence import schema

Pair = partition.Pair  # (available, reserved)
PW = partition.PW  # (product, warehouse)
# An order not yet terminal: one Redis still holds the record of.
LIVE_ORDER = schema.orders.c.status.not_in(sorted(s.value for s in TERMINAL))


@contextmanager
def consistent_read(db: Engine) -> Iterator[Connection]:
    """A read-only transaction whose queries all see one snapshot of the database."""
    with db.connect() as conn:
        if conn.dialect.name == "sqlite":
            # pysqlite opens no transaction for a SELECT: open one by hand (WAL: a snapshot)
            conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.exec_driver_sql("BEGIN")
            try:
                yield conn
            finally:
                conn.exec_driver_sql("ROLLBACK")
        else:
            conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
            with conn.begin():
                yield conn


def checkpoints(conn: Connection) -> dict[int, str]:
    """Each partition's database checkpoint: the last outbox event id applied."""
    cp = schema.outbox_checkpoints
    return {int(p): str(i) for p, i in conn.execute(select(cp.c.partition, cp.c.last_event_id))}


# -- Redis ----------------------------------------------------------------------------------


@dataclass
class Snapshot:
    now_ms: int
    counters: dict[PW, Pair]
    live: dict[str, Any]  # id -> {"owner", "lines"}
    expiry: dict[str, int]
    events: list[OutboxEvent]
    last_id: str | None  # the outbox's last generated id (None: no stream)
    dead: int
    products: dict[str, Any]  # product -> its settings (price, currency, warehouses)
    orders: dict[str, str | None]  # order -> its status in Redis (None: no record)
    applied: str | None = None  # the applied marker (persistence/behind.py)
    after: str = "0-0"  # the checkpoint the snapshot was taken after
    checkpoint_present: bool = False  # that checkpoint's event is still in the stream
    flagged: bool = False  # the drain found this Redis behind and paused
    # orders an event in the snapshot created that the order list before it did not name: read
    # just after (a record, once made, stays), without their status at the snapshot
    late_orders: set[str] = field(default_factory=set)

    def holds(self, event_id: str) -> bool:
        """Whether the stream held this event when the snapshot was taken (an event at or
        after the checkpoint the snapshot was taken after)."""
        if event_id == self.after:
            return self.checkpoint_present
        return any(e.id == event_id for e in self.events)


def redis_snapshot(client: redis.Redis, p: int, after: str, orders: Sequence[str]) -> Snapshot:
    """Partition `p` in one MULTI, with the outbox after `after` and these orders' status."""
    cluster = is_cluster_client(client)
    # On a cluster, the clock of the partition's node, read just before the MULTI: the
    # snapshot was taken at or after it (it only dates the oldest event waiting)
    before = snapshot.partition_clock(client, p) if cluster else None
    with client.pipeline(transaction=True) as pipe:
        snapshot.queue_snapshot(pipe, p, after, orders, clock=not cluster)
        replies = pipe.execute(raise_on_error=False)
    if cluster:
        replies.insert(0, before)
    snap = snapshot.parse_snapshot(p, orders, replies)
    tail = snap.tail
    made = {str(e.data.get("order")) for e in tail.events if e.type == "order_created"}
    late = {o for o in sorted(made - set(orders)) if snapshot.order_exists(client, p, o)}
    return Snapshot(
        now_ms=snap.now_ms,
        counters=snap.state.counters,
        live=snap.state.live,
        expiry=snap.state.expiry,
        events=tail.events,
        last_id=tail.last_id,
        dead=snap.dead,
        products=snap.products,
        orders=snap.orders,
        applied=tail.applied,
        after=after,
        checkpoint_present=tail.at_checkpoint,
        flagged=tail.flagged,
        late_orders=late,
    )


def redis_orders(client: redis.Redis, p: int) -> set[str]:
    """The orders partition `p` holds a record of."""
    return snapshot.order_ids(snapshot.scan_orders(client, p))


# -- the database ---------------------------------------------------------------------------


@dataclass
class Database:
    checkpoints: dict[int, str]
    projection: dict[PW, Pair]
    ledger: dict[PW, Pair]
    active: dict[str, int]  # active reservation -> partition
    reservations: dict[str, str]  # status of the other reservations asked about
    orders: dict[str, str]  # status of every live order and of those asked about
    dead: dict[int, int]  # unresolved dead letters per partition
    partitions: int
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)  # product_settings
    history: dict[str, str] = field(default_factory=dict)  # order -> last status recorded
    # reservations asked about with no row, whose movements the ledger has all the same
    referenced: set[str] = field(default_factory=set)


def _dict(conn: Connection, query: Any) -> dict[Any, Any]:
    return {k: v for k, v in conn.execute(query)}  # noqa: C416 (rows are Row objects)


def _counters(conn: Connection, query: Any) -> dict[PW, Pair]:
    return {(p, w): (int(a), int(r)) for p, w, a, r in conn.execute(query)}


def _statuses(conn: Connection, table: Any, ids: set[str]) -> dict[str, str]:
    wanted, found = sorted(ids), {}
    for start in range(0, len(wanted), 500):
        chunk = table.c.id.in_(wanted[start : start + 500])
        found.update(_dict(conn, select(table.c.id, table.c.status).where(chunk)))
    return found


def pre_read(db: Engine) -> tuple[dict[int, str], dict[str, int]]:
    """What to take the Redis snapshots after: the checkpoints, and each live order's
    partition."""
    o = schema.orders
    with db.connect() as conn:
        at = checkpoints(conn)
        live = _dict(conn, select(o.c.id, o.c.partition).where(LIVE_ORDER))
    return at, {i: int(p) for i, p in live.items()}


def read_database(conn: Connection, snaps: dict[int, Snapshot], partitions: int) -> Database:
    """The database side, with the status of every record the snapshots mention."""
    t = schema
    sl, lg, rs, o, dl = t.stock_levels, t.stock_ledger, t.reservations, t.orders, t.dead_letters
    sums = select(lg.c.product, lg.c.warehouse, func.sum(lg.c.delta_available))
    sums = sums.add_columns(func.sum(lg.c.delta_reserved)).group_by(lg.c.product, lg.c.warehouse)
    active = _dict(conn, select(rs.c.id, rs.c.partition).where(rs.c.status == "active"))
    asked = {r for s in snaps.values() for r in s.live}
    asked |= {
        str(e.data["reservation"])
        for s in snaps.values()
        for e in s.events
        if e.data.get("reservation")
    }
    orders = _dict(conn, select(o.c.id, o.c.status).where(LIVE_ORDER))
    orders |= _statuses(conn, o, {i for s in snaps.values() for i in s.orders} - set(orders))
    dead = select(dl.c.partition, func.count()).where(dl.c.resolved_at.is_(None))
    statuses = _statuses(conn, rs, asked - set(active))
    settings = {
        row.product: product_meta(row.price, row.currency, row.warehouses, row.limits)
        for row in conn.execute(select(t.product_settings))
    }
    return Database(
        checkpoints=checkpoints(conn),
        projection=_counters(
            conn, select(sl.c.product, sl.c.warehouse, sl.c.available, sl.c.reserved)
        ),
        ledger=_counters(conn, sums),
        active={r: int(p) for r, p in active.items()},
        reservations=statuses,
        orders=orders,
        dead=_dict(conn, dead.group_by(dl.c.partition)),
        partitions=partitions,
        settings=settings,
        history=_last_statuses(conn, set(orders)),
        referenced=_referenced(conn, asked - set(active) - set(statuses)),
    )


def _last_statuses(conn: Connection, ids: set[str]) -> dict[str, str]:
    """Each order's last status in its recorded history (order_status_history)."""
    h = schema.order_status_history
    wanted, found = sorted(ids), {}
    for start in range(0, len(wanted), 500):
        last = (
            select(func.max(h.c.id))
            .where(h.c.order_id.in_(wanted[start : start + 500]))
            .group_by(h.c.order_id)
        )
        found.update(_dict(conn, select(h.c.order_id, h.c.to_status).where(h.c.id.in_(last))))
    return found


def _referenced(conn: Connection, ids: set[str]) -> set[str]:
    """Those of these reservations the ledger has movements of."""
    lg, wanted, found = schema.stock_ledger, sorted(ids), set[str]()
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        query = select(lg.c.reference_id).where(
            lg.c.reference_type == "reservation", lg.c.reference_id.in_(chunk)
        )
        found.update(str(r) for r in conn.scalars(query.distinct()))
    return found
