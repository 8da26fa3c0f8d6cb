"""Repairing the drift `inventory reconcile` finds (`--fix`), towards the durable record.

The caller holds the partition's drain lock, so the checkpoint stands still. The durable
record (the database plus the events still in the outbox) is the truth (persistence.drift).

In Redis, through one lua/repair.lua call whose events bring the audit rows: a Redis behind
the database gets its stream id moved past the checkpoint first; product settings,
reservations and orders are put back as the record has them, live reservations the record
says ended are ended, counters are rolled back to the ledger, the expiry index is rebuilt,
and after a restore the ended records and idempotency records Redis lost are put back. Due
reservations put back are then expired the normal way (lua/expire.lua), with their events.

In the database, each with an audit row: a projection off its expected value, a reservation
or order the database lacks or holds in another status than the history says. The ledger is
history: reported, never rewritten.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import redis
from sqlalchemy import Connection, Engine, select

from engine import snapshot, specs
from engine.keys import partition_keys
from engine.records import (
    compact,
    counted_record,
    live_entry,
    record_lines,
    reservation_fields,
)
from engine.scripts import call_sync, parse, prepare, run_sync
from engine.settings import Settings
from engine.states import TERMINAL
from persistence import schema
from persistence.apply import upsert
from persistence.drift import Drift, StockRow
from persistence.records import (
    audit,
    counts_of,
    ended_reservation_hash,
    from_ms,
    limited_products,
    order_from_event,
    order_hash,
    order_rows,
    read_lines,
    reservation_hash,
    reservation_rows,
    to_ms,
)

ACTOR = "reconcile"
CHUNK = 1000  # records or idempotency records put back per script call


@dataclass
class _Plan:
    """The arguments of one lua/repair.lua call: the plan (JSON) and the keys it names."""

    keys: list[str] = field(default_factory=list)
    body: dict[str, Any] = field(default_factory=dict)

    def key(self, name: str) -> int:
        self.keys.append(name)
        return len(self.keys)

    def add(self, section: str, item: Any) -> None:
        self.body.setdefault(section, []).append(item)

    def __bool__(self) -> bool:
        return bool(self.body)


def _flat(fields: dict[str, str | int]) -> list[str | int]:
    return [x for pair in fields.items() for x in pair]


def _fixes(drift: Sequence[Drift], *kinds: str) -> list[Drift]:
    return [d for d in drift if d.kind in kinds and d.repair == "redis"]


def _plan(
    conn: Connection,
    p: int,
    rows: Sequence[StockRow],
    drift: Sequence[Drift],
    checkpoint: str,
    settings: Settings,
) -> _Plan:
    """What to change in Redis, read from the database under the caller's drain lock."""
    k, plan = partition_keys(p), _Plan()
    rs, o = schema.reservations, schema.orders
    if _fixes(drift, "redis_behind"):
        plan.body["checkpoint"] = checkpoint
    for d in _fixes(drift, "product_missing_in_redis", "product_settings"):
        plan.add("products", [d.product, compact(d.database)])
    put_back = {str(d.record): d.database for d in _fixes(drift, "reservation_missing_in_redis")}
    made = {rid: info for rid, info in put_back.items() if isinstance(info, dict)}
    from_db = sorted(rid for rid in put_back if made.get(rid, {}).get("source") != "outbox")
    lines = read_lines(conn, schema.reservation_lines, "reservation_id", from_db)
    records = {
        row.id: reservation_hash(row, lines.get(row.id, []))
        for row in conn.execute(select(rs).where(rs.c.id.in_(from_db)))
    }
    for rid, info in made.items():
        if info.get("source") == "outbox":  # made by an event the database has yet to apply
            records[rid] = reservation_fields(
                info["user"], info["created_at"], info["expires_at"], info["lines"],
                info.get("request_id") or "",
            )  # fmt: skip
        if rid in records and info.get("expires_at") is not None:
            records[rid]["expires_at"] = int(info["expires_at"])  # extended since
    for rid, record in sorted(records.items()):
        expires_at = int(record["expires_at"])
        plan.add(
            "restore",
            [
                rid,
                plan.key(k.reservation(rid)),
                live_entry(str(record["owner"]), record_lines(None, str(record["data"]))),
                expires_at,
                _flat(record),
                expires_at + settings.reservation_retention_ms,
            ],
        )
    ended = {str(d.record): d for d in _fixes(drift, "reservation_status")}
    found = {row.id: row for row in conn.execute(select(rs).where(rs.c.id.in_(sorted(ended))))}
    for rid in sorted(ended):
        row = found.get(rid)
        if row is None or row.status == "active":  # ended by an event still in the outbox
            item = [str(ended[rid].database), "", "", settings.reservation_retention_ms]
            plan.add("end", [rid, plan.key(k.reservation(rid)), *item])
            continue
        when = to_ms(row.ended_at) if row.ended_at is not None else ""
        item = [row.status, when, row.order_id or "", settings.reservation_retention_ms]
        plan.add("end", [rid, plan.key(k.reservation(rid)), *item])
    for d in _fixes(drift, "reservation_unrecorded"):
        plan.add("end", [d.record, plan.key(k.reservation(str(d.record))), "", "", "", 0])
    missing = {str(d.record): d.database for d in _fixes(drift, "order_missing_in_redis")}
    from_db = sorted(o for o, info in missing.items() if not isinstance(info, dict)
                     or info.get("source") != "outbox")  # fmt: skip
    lines = read_lines(conn, schema.order_lines, "order_id", from_db)
    orders = {
        row.id: order_hash(row, lines.get(row.id, []))
        for row in conn.execute(select(o).where(o.c.id.in_(from_db)))
    }
    for oid, info in missing.items():
        if isinstance(info, dict) and info.get("source") == "outbox":
            orders[oid] = order_from_event(oid, info)
        if oid in orders and isinstance(info, dict) and info.get("status"):
            orders[oid]["status"] = str(info["status"])
    for oid, record in sorted(orders.items()):
        ttl = settings.order_retention_ms if record["status"] in TERMINAL else 0
        plan.add("orders", [oid, plan.key(k.order(oid)), "", _flat(record), ttl])
    for d in _fixes(drift, "order_status_in_redis"):
        oid, status = str(d.record), str(d.database)
        ttl = settings.order_retention_ms if status in TERMINAL else 0
        plan.add("orders", [oid, plan.key(k.order(oid)), d.redis, ["status", status], ttl])
    for r in rows:
        if r.unrecorded != (0, 0) and any(
            d.product == r.product and d.warehouse == r.warehouse
            for d in _fixes(drift, "unrecorded", "stock_missing_in_redis")
        ):
            plan.add("counters", [r.product, r.warehouse, *r.unrecorded])
    for d in _fixes(drift, "expiry_without_live", "live_without_expiry"):
        plan.add("reindex", [d.record, plan.key(k.reservation(str(d.record)))])
    return plan


def _restorable(conn: Connection, p: int, settings: Settings, now_ms: int) -> list[_Plan]:
    """After Redis fell behind: the ended records still within their retention and the
    idempotency records not yet expired, as plans of at most CHUNK keys (each is written
    only where Redis lacks it)."""
    k, rs, o = partition_keys(p), schema.reservations, schema.orders
    items: list[tuple[str, str, list[Any]]] = []  # (section, key, item without the key)
    since = from_ms(now_ms - settings.reservation_retention_ms, datetime.now(UTC))
    ended = select(rs).where(rs.c.partition == p, rs.c.status != "active", rs.c.ended_at > since)
    found = list(conn.execute(ended))
    lines = read_lines(conn, schema.reservation_lines, "reservation_id", [r.id for r in found])
    limited, max_live = limited_products(conn), settings.max_live_reservations_per_customer
    for row in found:
        until = to_ms(row.ended_at) + settings.reservation_retention_ms
        held = lines.get(row.id, [])
        counted = counted_record(*counts_of(row, held, limited, max_live))
        record = _flat(ended_reservation_hash(row, held, counted))
        items.append(("records", k.reservation(row.id), [record, until]))
    since = from_ms(now_ms - settings.order_retention_ms, datetime.now(UTC))
    terminal = o.c.status.in_(sorted(s.value for s in TERMINAL))
    found = list(
        conn.execute(select(o).where(o.c.partition == p, terminal, o.c.updated_at > since))
    )
    lines = read_lines(conn, schema.order_lines, "order_id", [r.id for r in found])
    for row in found:
        until = to_ms(row.updated_at) + settings.order_retention_ms
        record = _flat(order_hash(row, lines.get(row.id, [])))
        items.append(("records", k.order(row.id), [record, until]))
    idem = schema.idempotency_records
    now = from_ms(now_ms, datetime.now(UTC))
    query = select(idem).where(idem.c.partition == p, idem.c.expires_at > now)
    for row in conn.execute(query):
        item = [row.fingerprint, row.reply, to_ms(row.expires_at)]
        items.append(("idempotency", k.idempotency_by_hash(row.key_hash), item))
    plans: list[_Plan] = []
    for start in range(0, len(items), CHUNK):
        plan = _Plan()
        for section, key, item in items[start : start + CHUNK]:
            plan.add(section, [plan.key(key), *item])
        plans.append(plan)
    return plans


def restore_lost(
    client: redis.Redis, db: Engine, settings: Settings, p: int, run: str
) -> dict[str, int]:
    """Put back the ended records and idempotency records partition `p` lost (each only where
    Redis lacks it); returns how many of each."""
    seconds, micros = client.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    with db.connect() as conn:
        plans = _restorable(conn, p, settings, now_ms)
    counts = {"records": 0, "idempotency": 0}
    for plan in plans:
        reply = _run(client, p, plan, run)
        for kind in counts:
            counts[kind] += int(reply[kind])
    return counts


def _run(client: redis.Redis, p: int, plan: _Plan, run: str) -> dict[str, Any]:
    k = partition_keys(p)
    return run_sync(
        client,
        specs.REPAIR,
        *plan.keys,
        stock=k.stock,
        products=k.products,
        live=k.live,
        expiry=k.expiry,
        outbox=k.outbox,
        applied=k.applied,
        behind=k.behind,
        held=k.held,
        plan=json.dumps(plan.body),
        actor=ACTOR,
        request_id=run,
    )


def _expire_due(client: redis.Redis, p: int, batch: int, retention: int, checkpoint: str) -> int:
    """Release the due reservations now, the normal way (with reservation_expired events).
    A Redis that has started is checked against the database's `checkpoint` first (what
    the repair has just made it agree with: engine/scripts.py)."""
    k, expired = partition_keys(p), 0
    while True:
        call = prepare(
            specs.EXPIRE,
            **specs.EXPIRE.partition_keys(k),
            limit=batch,
            # (a cart step it claims is finished by the sweep, its deadline this much later)
            hold=0,
            retention=retention,
        )
        reply = parse(call_sync(client, call, lambda _: checkpoint))
        expired += int(reply["expired"])
        if not int(reply["expired"]) or not int(reply["due"]):
            return expired


@dataclass
class RedisRepairs:
    done: list[dict[str, Any]] = field(default_factory=list)
    # counters whose roll-back would go below zero: units promised twice, left to an operator
    conflicts: list[dict[str, Any]] = field(default_factory=list)


def repair_redis(
    client: redis.Redis,
    db: Engine,
    settings: Settings,
    p: int,
    rows: Sequence[StockRow],
    drift: Sequence[Drift],
    checkpoint: str,
    run: str,
) -> RedisRepairs:
    """The Redis-side repairs of partition `p`: one lua/repair.lua call (more when a restore
    puts back many records), then the due reservations it put back are expired."""
    out = RedisRepairs()
    seconds, micros = client.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    with db.connect() as conn:
        plans = [_plan(conn, p, rows, drift, checkpoint, settings)]
        if _fixes(drift, "redis_behind"):
            plans += _restorable(conn, p, settings, now_ms)
    plans = [plan for plan in plans if plan]
    for plan in plans:
        reply = _run(client, p, plan, run)
        side = {"side": "redis", "partition": p}
        if reply["moved_to"]:
            out.done.append({**side, "kind": "stream_id_moved", "to": reply["moved_to"]})
        out.done += [{**side, "kind": "product_restored", "product": x} for x in reply["products"]]
        out.done += [
            {**side, "kind": "reservation_restored", "reservation": x} for x in reply["restored"]
        ]
        out.done += [
            {**side, "kind": "reservation_ended", "reservation": x} for x in reply["ended"]
        ]
        out.done += [{**side, "kind": "order_restored", "order": x} for x in reply["orders"]]
        out.done += [{**side, "kind": "stock_reconciled", **m} for m in reply["movements"]]
        out.done += [{**side, "kind": "expiry_reconciled", **x} for x in reply["reindexed"]]
        for kind in ("records", "idempotency"):
            if reply[kind]:
                out.done.append({**side, "kind": f"{kind}_restored", "count": reply[kind]})
        out.conflicts += [{"partition": p, **c} for c in reply["conflicts"]]
    if any(fix["kind"] == "reservation_restored" for fix in out.done):
        expired = _expire_due(
            client, p, settings.sweep_batch, settings.reservation_retention_ms, checkpoint
        )
        if expired:
            out.done.append(
                {"side": "redis", "partition": p, "kind": "due_expired", "count": expired}
            )
    return out


def _fix(conn: Connection, client: redis.Redis, p: int, d: Drift, event_id: str) -> Any:
    """One database-side repair: returns the audited (object type, id), old and new value,
    or None when Redis no longer holds what to repair from."""
    rid, now = str(d.record), datetime.now(UTC)
    rs, o = schema.reservations, schema.orders
    if d.kind == "projection":
        row = {"product": d.product, "warehouse": d.warehouse, **d.redis}
        row |= {"last_event_id": event_id, "updated_at": now}
        upsert(conn, schema.stock_levels, [row], ["product", "warehouse"])
        w = {"warehouse": d.warehouse}
        return ("product", str(d.product)), d.database and {**w, **d.database}, {**w, **d.redis}
    if d.kind == "reservation_missing_in_database":
        with client.pipeline(transaction=False) as pipe:
            snapshot.queue_reservation(pipe, p, rid)
            rec, live = snapshot.parse_reservation(rid, pipe.execute())
        rows = reservation_rows(rid, rec, live, p, now)
        if rows is None:
            return None
        upsert(conn, rs, [rows[0]], ["id"])
        rl = schema.reservation_lines
        conn.execute(rl.delete().where(rl.c.reservation_id == rid))
        conn.execute(rl.insert(), rows[1])
        return ("reservation", rid), d.database and {"status": d.database}, {"status": "active"}
    if d.kind == "order_status":
        conn.execute(o.update().where(o.c.id == rid).values(status=d.redis, updated_at=now))
        return ("order", rid), {"status": d.database}, {"status": d.redis}
    rec = cast(dict[str, str], snapshot.order_record(client, p, rid))  # order_missing_in_database
    if not rec:
        return None
    row, lines = order_rows(rid, rec, str(d.redis), p, now)
    conn.execute(o.insert(), row)
    conn.execute(schema.order_lines.insert(), lines)
    return ("order", rid), None, {"status": d.redis, "total": row["total"]}


def repair_database(
    client: redis.Redis, db: Engine, p: int, drift: Sequence[Drift], checkpoint: str, run: str
) -> list[dict[str, Any]]:
    """The database-side repairs of partition `p`, in one transaction, each with an audit
    row; `checkpoint` is the one the check saw, which must not have moved."""
    done: list[dict[str, Any]] = []
    todo = [d for d in drift if d.repair == "database"]
    if not todo:
        return done
    with db.begin() as conn:
        cp = schema.outbox_checkpoints
        at = conn.scalar(select(cp.c.last_event_id).where(cp.c.partition == p)) or "0-0"
        if at != checkpoint:
            raise RuntimeError(f"partition {p}: the checkpoint moved under the drain lock")
        for d in todo:
            event_id = f"{ACTOR}-{uuid.uuid4().hex}"
            fixed = _fix(conn, client, p, d, event_id)
            if fixed is not None:
                obj, old, new = fixed
                audit(conn, ACTOR, "reconcile_fix", obj, old, new, run, event_id)
                done.append(
                    {
                        "side": "database",
                        "partition": p,
                        "kind": d.kind,
                        "object": obj[1],
                        "old": old,
                        "new": new,
                    }
                )
    return done
