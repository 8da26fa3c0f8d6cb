"""Repairing the drift `inventory reconcile` finds (`--fix`), from the side that is right.

The caller holds the partition's drain lock, so the checkpoint stands still. Redis is the
system of record for counters and live records. In Redis, through lua/repair_stock.lua and
its events (so the ledger and the audit log get their rows): a counter that disagrees with
the live reservations, a change of the counters no event recorded, the expiry index. In the
database, each with an audit row: a projection off its expected value, a reservation or order
the database lacks or holds in another status. The ledger is history: reported, never
rewritten.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, cast

import redis
from sqlalchemy import Connection, Engine, select

from engine.keys import partition_keys
from engine.scripts import source
from persistence import schema
from persistence.apply import upsert
from persistence.drift import Drift, StockRow
from persistence.records import audit, from_ms, order_rows, reservation_rows

ACTOR = "reconcile"


def repair_redis(
    client: redis.Redis, p: int, rows: Sequence[StockRow], drift: Sequence[Drift], run: str
) -> list[dict[str, Any]]:
    """The Redis-side repairs of partition `p`, in one repair_stock.lua call."""
    counters = [
        [r.product, r.warehouse, *r.unrecorded]
        for r in rows
        if {"counter", "unrecorded"} & set(r.drift)
    ]
    expiry = ("expiry_without_live", "live_without_expiry")
    ids = sorted({str(d.record) for d in drift if d.kind in expiry})
    if not counters and not ids:
        return []
    k = partition_keys(p)
    script = client.register_script(source("repair_stock"))
    keys = [k.stock, k.live, k.expiry, k.outbox, *(k.reservation(i) for i in ids)]
    raw = script(keys=keys, args=[json.dumps(counters), json.dumps(ids), ACTOR, run])
    reply = json.loads(cast(str, raw))
    done = [{"kind": "stock_reconciled", **m} for m in reply["movements"] or []]
    done += [{"kind": "expiry_reconciled", **x} for x in reply["reindexed"] or []]
    return [{"side": "redis", "partition": p, **d} for d in done]


def _fix(conn: Connection, client: redis.Redis, p: int, d: Drift, event_id: str) -> Any:
    """One database-side repair: returns the audited (object type, id), old and new value,
    or None when Redis no longer holds what to repair from."""
    k, rid, now = partition_keys(p), str(d.record), datetime.now(UTC)
    rs, o = schema.reservations, schema.orders
    if d.kind == "projection":
        row = {"product": d.product, "warehouse": d.warehouse, **d.redis}
        row |= {"last_event_id": event_id, "updated_at": now}
        upsert(conn, schema.stock_levels, [row], ["product", "warehouse"])
        w = {"warehouse": d.warehouse}
        return ("product", str(d.product)), d.database and {**w, **d.database}, {**w, **d.redis}
    if d.kind == "reservation_missing_in_database":
        raw = cast(str | None, client.hget(k.live, rid))
        rec = cast(dict[str, str], client.hgetall(k.reservation(rid)))
        rows = reservation_rows(rid, rec, json.loads(raw) if raw else {}, p, now)
        if rows is None:
            return None
        upsert(conn, rs, [rows[0]], ["id"])
        rl = schema.reservation_lines
        conn.execute(rl.delete().where(rl.c.reservation_id == rid))
        conn.execute(rl.insert(), rows[1])
        return ("reservation", rid), d.database and {"status": d.database}, {"status": "active"}
    if d.kind == "reservation_missing_in_redis":
        # ended in Redis: as its record says, else expired (what Redis answers a commit)
        rec = cast(dict[str, str], client.hgetall(k.reservation(rid)))
        status = rec["status"] if rec.get("status", "active") != "active" else "expired"
        ended = from_ms(rec.get("ended_at"), now)
        values = {"status": status, "ended_at": ended, "order_id": rec.get("order_id") or None}
        conn.execute(rs.update().where(rs.c.id == rid).values(values))
        return ("reservation", rid), {"status": "active"}, {"status": status}
    if d.kind == "order_status":
        conn.execute(o.update().where(o.c.id == rid).values(status=d.redis, updated_at=now))
        return ("order", rid), {"status": d.database}, {"status": d.redis}
    rec = cast(dict[str, str], client.hgetall(k.order(rid)))  # order_missing_in_database
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
