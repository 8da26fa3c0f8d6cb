"""A live record's two shapes, shared by `inventory rebuild` and `inventory reconcile --fix`:
a reservation's or order's Redis hash (built by engine/records.py, from its database rows
here), its database rows, and the audit row an operator command writes directly. With the
conversions between the sides: stream ids, epoch milliseconds.
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, Table, select

from engine.keys import partition_of
from engine.records import compact, order_fields, reservation_fields
from persistence import schema

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_ms(at: datetime) -> int:
    # SQLite hands back naive datetimes; everything stored is UTC
    return ((at if at.tzinfo else at.replace(tzinfo=UTC)) - EPOCH) // timedelta(milliseconds=1)


def from_ms(value: str | int | None, default: datetime) -> datetime:
    return EPOCH + timedelta(milliseconds=int(value)) if value not in (None, "") else default


def audit(
    conn: Connection,
    actor: str,
    action: str,
    obj: tuple[str, str],
    old: Any,
    new: Any,
    request_id: str,
    event_id: str | None = None,
) -> str:
    """An audit row written directly (not from an outbox event); returns its event id."""
    event_id = event_id or f"{actor}-{uuid.uuid4().hex}"
    row = {
        "event_id": event_id,
        "actor": actor,
        "action": action,
        "object_type": obj[0],
        "object_id": obj[1],
        "old_value": old,
        "new_value": new,
        "at": datetime.now(UTC),
        "request_id": request_id,
    }
    conn.execute(schema.audit_log.insert(), row)
    return event_id


# -- in Redis -------------------------------------------------------------------------------


def limited_products(conn: Connection) -> set[str]:
    """The products with a max_per_customer (product_settings.limits; lua/limits.lua)."""
    ps = schema.product_settings
    rows = conn.execute(select(ps.c.product, ps.c.limits).where(ps.c.limits.is_not(None)))
    return {
        str(product)
        for product, limits in rows
        if isinstance(limits, dict) and limits.get("max_per_customer") is not None
    }


def counts_of(
    row: Any, lines: list[Any], limited: set[str], max_live: int
) -> tuple[tuple[str, ...], bool]:
    """What a reservation counts against its customer's limits, as reserve.lua counts it: its
    products with a max_per_customer (`limited`), and whether it is one of the customer's live
    reservations (MAX_LIVE_RESERVATIONS_PER_CUSTOMER set; not a cart's part, whose home
    counts, nor a waitlist's hand-off: lua/wait.lua)."""
    held = tuple(dict.fromkeys(str(line[0]) for line in lines if str(line[0]) in limited))
    cart = getattr(row, "cart_id", None)
    capped = max_live > 0 and cart in (None, row.id) and getattr(row, "source", None) is None
    return held, capped


def reservation_hash(
    row: Any, lines: list[Any], parts: list[int] | None = None, counted: str = "{}"
) -> dict[str, str | int]:
    """The record hash of a live reservation's database row; a part of a cart across
    partitions names its cart, and the cart's home its `parts` (engine/carts.py). `counted`:
    what it counts against its customer's limits (engine/records.py counted_record)."""
    record = reservation_fields(
        row.user_id,
        to_ms(row.created_at),
        to_ms(row.expires_at),
        lines,
        row.request_id or "",
        counted,
    )
    if getattr(row, "cart_id", None):
        record["cart"] = row.cart_id
        if row.cart_id == row.id and parts:
            record["parts"] = compact(parts)
    if getattr(row, "source", None):
        record["source"] = row.source
    return record


def order_from_event(oid: str, made: dict[str, Any]) -> dict[str, str | int]:
    """An order's record hash from its order_created event's data (with "created_at", ms)."""
    return order_fields(
        oid,
        owner=str(made["user"]),
        status=str(made["status"]),
        reservation=str(made.get("reservation") or ""),
        lines=made["lines"],
        total=int(made["total"]),
        currency=str(made["currency"]),
        created_at=int(made["created_at"]),
        updated_at=int(made["created_at"]),
    )


def ended_reservation_hash(row: Any, lines: list[Any], counted: str) -> dict[str, str | int]:
    """An ended reservation's record hash, as release.lua or commit.lua leave it."""
    record = reservation_hash(row, lines, counted=counted)
    record["status"] = row.status
    if row.ended_at is not None:
        record["ended_at"] = to_ms(row.ended_at)
    if row.order_id:
        record["order_id"] = row.order_id
    return record


def order_hash(
    row: Any, lines: list[Any], parts: list[int] | None = None, partitions: int = 1
) -> dict[str, str | int]:
    """The record hash of a live order's database row; the order of a cart across partitions
    (`parts`: its partitions) keeps which lines its own partition holds."""
    record = order_fields(
        row.id,
        owner=row.user_id,
        status=row.status,
        reservation=row.reservation_id or "",
        lines=lines,
        total=int(row.total),
        currency=row.currency,
        created_at=to_ms(row.created_at),
        updated_at=to_ms(row.updated_at),
    )
    if parts:
        own = [line for line in lines if partition_of(str(line[0]), partitions) == parts[0]]
        record["own_lines"], record["parts"] = compact(own), compact(parts)
    return record


# -- in the database ------------------------------------------------------------------------


def cart_parts(conn: Connection, carts: Any) -> dict[str, list[int]]:
    """The partitions of each of these carts across partitions (a list of cart ids, or a
    query that selects them), from its parts' rows."""
    rs = schema.reservations
    out: dict[str, set[int]] = defaultdict(set)
    query = select(rs.c.cart_id, rs.c.partition).where(rs.c.cart_id.in_(carts))
    for cart, partition in conn.execute(query):
        out[str(cart)].add(int(partition))
    return {cart: sorted(ps) for cart, ps in out.items()}


def read_lines(conn: Connection, table: Table, key: str, ids: Any) -> dict[str, list[list[Any]]]:
    """Each record's lines in order, without the key and line number; `ids` is a list of
    record ids or a query that selects them."""
    columns = [c for c in table.c if c.name not in (key, "line")]
    out: dict[str, list[list[Any]]] = defaultdict(list)
    chunks = [ids[i : i + 500] for i in range(0, len(ids), 500)] if isinstance(ids, list) else [ids]
    for chunk in chunks:
        query = select(table.c[key], *columns).where(table.c[key].in_(chunk))
        for record, *values in conn.execute(query.order_by(table.c[key], table.c.line)):
            out[record].append([v if isinstance(v, str) else int(v) for v in values])
    return out


def reservation_rows(
    rid: str, rec: dict[str, str], live: dict[str, Any], partition: int, now: datetime
) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """The database rows of a live reservation, from its record hash or else its live entry."""
    owner = rec.get("owner") or live.get("owner")
    lines = json.loads(rec["lines"]) if rec.get("lines") else live.get("lines")
    if owner is None or lines is None:
        return None
    row = {
        "id": rid,
        "user_id": owner,
        "status": "active",
        "ended_at": None,
        "order_id": None,
        "created_at": from_ms(rec.get("created_at"), now),
        "expires_at": from_ms(rec.get("expires_at"), now),
        "request_id": rec.get("request_id", ""),
        "partition": partition,
    }
    return row, [
        {"reservation_id": rid, "line": i, "product": p, "warehouse": w, "quantity": q}
        for i, (p, w, q) in enumerate(lines)
    ]


def order_rows(
    oid: str, rec: dict[str, str], status: str, partition: int, now: datetime
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The database rows of an order, from its record hash."""
    row = {
        "id": oid,
        "user_id": rec["owner"],
        "status": status,
        "total": int(rec["total"]),
        "reservation_id": rec.get("reservation_id") or None,
        "currency": rec["currency"],
        "created_at": from_ms(rec.get("created_at"), now),
        "updated_at": from_ms(rec.get("updated_at"), now),
        "request_id": "",
        "partition": partition,
    }
    return row, [
        {
            "order_id": oid,
            "line": i,
            "product": p,
            "warehouse": w,
            "quantity": q,
            "unit_price": price,
        }
        for i, (p, w, q, price) in enumerate(json.loads(rec["lines"]))
    ]


def purge_idempotency(db: Engine, now: datetime | None = None) -> int:
    """Delete the idempotency records that have expired; returns how many."""
    t = schema.idempotency_records
    with db.begin() as conn:
        done = conn.execute(t.delete().where(t.c.expires_at <= (now or datetime.now(UTC))))
    return int(done.rowcount or 0)
