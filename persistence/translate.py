"""From outbox events to rows: a pure function per event type, no database in sight.

`translate(event)` returns the rows one event means — its audit row, its ledger rows (one per
movement), projection upserts and record inserts or updates. `persistence.apply` writes the
rows of a whole batch at once. An event it can't translate raises `BadEvent`. Each handler
reads its event's data as the body engine/events.py declares for that type.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, TypeVar, cast

from engine import events
from engine.keys import idempotency_hash
from engine.models import ms_to_datetime
from engine.outbox import UNDECODABLE, OutboxEvent
from engine.validation import compact_json
from persistence.event_replies import created_reply

# A batch's events share their times (made in the same ms, kept for the same TTL): a datetime
# made once serves them all (they are immutable).
ts = lru_cache(maxsize=4096)(ms_to_datetime)

# Ledger reason per event type; stock_adjusted carries its own.
REASONS = {
    "reservation_created": "reserved",
    "reservation_released": "released",
    "reservation_expired": "expired",
    "order_created": "ordered",
    "order_status_changed": "order_cancelled",
    "reservation_committed": "ordered",
    "order_part_returned": "order_cancelled",
}


class BadEvent(ValueError):
    """An event that can't be applied: malformed, or of a type nobody knows."""


@dataclass
class Rows:
    audit: list[dict[str, Any]] = field(default_factory=list)
    ledger: list[dict[str, Any]] = field(default_factory=list)
    # stock_levels: each movement's change, added to its row (persistence.apply add_stock)
    stock: list[dict[str, Any]] = field(default_factory=list)
    product_settings: list[dict[str, Any]] = field(default_factory=list)
    reservations_new: list[dict[str, Any]] = field(default_factory=list)
    reservation_lines: list[dict[str, Any]] = field(default_factory=list)
    reservation_updates: list[dict[str, Any]] = field(default_factory=list)
    orders_new: list[dict[str, Any]] = field(default_factory=list)
    order_lines: list[dict[str, Any]] = field(default_factory=list)
    order_updates: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    idempotency: list[dict[str, Any]] = field(default_factory=list)


def _movements(event: OutboxEvent, rows: Rows, reason: str, ref_type: str, ref_id: str) -> None:
    at = ts(event.ts_ms)
    for seq, m in enumerate(event.movements):
        rows.ledger.append(
            {
                "event_id": event.event_id,
                "seq": seq,
                "product": m.product,
                "warehouse": m.warehouse,
                "delta_available": m.available_after - m.available_before,
                "delta_reserved": m.reserved_delta,
                "delta_total": m.total_delta,
                "available_after": m.available_after,
                "reserved_after": m.reserved_after,
                "reason": reason,
                "reference_type": ref_type,
                "reference_id": ref_id,
                "actor": event.data.get("actor") or "system",
                "request_id": event.data.get("request_id") or "",
                "at": at,
            }
        )
        rows.stock.append(
            {
                "product": m.product,
                "warehouse": m.warehouse,
                "available": m.available_after - m.available_before,
                "reserved": m.reserved_delta,
                "last_event_id": event.event_id,
                "updated_at": at,
            }
        )


def _audit(
    event: OutboxEvent, rows: Rows, object_type: str, object_id: str, old: Any, new: Any
) -> None:
    rows.audit.append(
        {
            "event_id": event.event_id,
            "actor": event.data.get("actor") or "system",
            "action": event.type,
            "object_type": object_type,
            "object_id": object_id,
            "old_value": old,
            "new_value": new,
            "at": ts(event.ts_ms),
            "request_id": event.data.get("request_id") or "",
        }
    )


def _lines(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def translate(event: OutboxEvent) -> Rows:
    rows = Rows()
    translate_into(event, rows)
    return rows


def translate_into(event: OutboxEvent, rows: Rows) -> None:
    """`translate`, adding to a batch's `rows`; a bad event (BadEvent) leaves them unchanged."""
    try:
        handler = HANDLERS[event.type]
    except KeyError:
        if event.type == UNDECODABLE:
            raise BadEvent(f"no event: type and data as written {event.data!r:.300}") from None
        raise BadEvent(f"unknown event type {event.type!r}") from None
    lists = [getattr(rows, name) for name in rows.__dataclass_fields__]
    marks = [len(found) for found in lists]
    try:
        handler(event, rows)
        body = cast(events.EventBody, event.data)
        if "idempotency" in body:
            _idempotency(event, body["idempotency"], rows)
    except (KeyError, TypeError, ValueError) as exc:
        for found, mark in zip(lists, marks, strict=True):
            del found[mark:]
        raise BadEvent(f"{event.type} {event.event_id}: {exc!r}") from exc


def _idempotency(e: OutboxEvent, d: events.IdempotencyCopy, rows: Rows) -> None:
    """The first answer of a write made with an Idempotency-Key, carried by the call's last
    event: the reply as the script stored it in Redis, whose 'event' is this event (a
    reservation or an order made: its event holds it whole, event_replies.created_reply)."""
    reply = {**(d["reply"] if "reply" in d else created_reply(e)), "ok": True, "event": e.id}
    rows.idempotency.append(
        {
            "partition": e.partition,
            "key_hash": idempotency_hash(str(d["key"])),
            "fingerprint": str(d["fp"]),
            "reply": compact_json(reply),
            "expires_at": ts(int(d["expires_at"])),
            "event_id": e.event_id,
        }
    )


def _product_updated(e: OutboxEvent, d: events.ProductUpdated, rows: Rows) -> None:
    after = d["after"]
    rows.product_settings.append(
        {
            "product": d["product"],
            "price": int(after["price"]),
            "currency": after["currency"],
            "warehouses": [[w, int(p)] for w, p in _lines(after["warehouses"])],
            "limits": after.get("limits") or None,
            "last_event_id": e.event_id,
            "updated_at": ts(e.ts_ms),
        }
    )
    _audit(e, rows, "product", d["product"], d["before"] or None, d["after"])


def _stock_adjusted(e: OutboxEvent, d: events.StockAdjusted, rows: Rows) -> None:
    _movements(e, rows, str(d["reason"]), "product", d["product"])
    _audit(
        e,
        rows,
        "product",
        d["product"],
        [{"warehouse": m.warehouse, "available": m.available_before} for m in e.movements],
        [{"warehouse": m.warehouse, "available": m.available_after} for m in e.movements],
    )


def _reservation_created(e: OutboxEvent, d: events.ReservationCreated, rows: Rows) -> None:
    rid = d["reservation"]
    rows.reservations_new.append(
        {
            "id": rid,
            "user_id": d["user"],
            "status": "active",
            "created_at": ts(e.ts_ms),
            "expires_at": ts(int(d["expires_at"])),
            "ended_at": None,
            "order_id": None,
            "request_id": d.get("request_id") or "",
            "partition": e.partition,
            # a cart across partitions: every part names it, its home (the cart's id) too
            "cart_id": d.get("cart"),
            "source": d.get("source"),  # 'waitlist': a waitlist's hand-off (lua/wait.lua)
        }
    )
    for i, (product, warehouse, quantity) in enumerate(_lines(d["lines"])):
        rows.reservation_lines.append(
            {
                "reservation_id": rid,
                "line": i,
                "product": product,
                "warehouse": warehouse,
                "quantity": int(quantity),
            }
        )
    _movements(e, rows, REASONS[e.type], "reservation", rid)
    new = {"status": "active", "expires_at": d["expires_at"], "lines": _lines(d["lines"])}
    if d.get("source"):  # a hand-off: the audit row says which entry it served
        new |= {"source": d["source"], "entry": d.get("entry")}
    _audit(e, rows, "reservation", rid, None, new)


def _reservation_ended(e: OutboxEvent, d: events.ReservationEnded, rows: Rows) -> None:
    rid = d["reservation"]
    status = "released" if e.type == "reservation_released" else "expired"
    rows.reservation_updates.append({"id": rid, "status": status, "ended_at": ts(e.ts_ms)})
    _movements(e, rows, REASONS[e.type], "reservation", rid)
    _audit(e, rows, "reservation", rid, {"status": "active"}, {"status": status})


def _reservation_extended(e: OutboxEvent, d: events.ReservationExtended, rows: Rows) -> None:
    rid = d["reservation"]
    rows.reservation_updates.append({"id": rid, "expires_at": ts(int(d["expires_at_after"]))})
    _audit(
        e,
        rows,
        "reservation",
        rid,
        {"expires_at": d["expires_at_before"]},
        {"expires_at": d["expires_at_after"]},
    )


def _reservation_committed(e: OutboxEvent, d: events.ReservationCommitted, rows: Rows) -> None:
    """A cart's other part whose units went into the cart's order (made in the home)."""
    rid, oid = d["reservation"], d["order"]
    at = ts(e.ts_ms)
    rows.reservation_updates.append(
        {"id": rid, "status": "committed", "ended_at": at, "order_id": oid}
    )
    _movements(e, rows, REASONS[e.type], "order", oid)
    _audit(e, rows, "reservation", rid, {"status": "active"}, {"status": "committed"})


def _order_part_returned(e: OutboxEvent, d: events.OrderPartReturned, rows: Rows) -> None:
    """A cancelled cart order's units of one other part, back to available."""
    _movements(e, rows, REASONS[e.type], "order", d["order"])
    _audit(e, rows, "order", d["order"], None, {"part": d["part"], "returned": True})


def _waitlist_joined(e: OutboxEvent, d: events.WaitlistJoined, rows: Rows) -> None:
    new = {"product": d["product"], "user": d["user"], "quantity": int(d["quantity"]),
           "partial": bool(d["partial"]), "expires_at": int(d["expires_at"])}  # fmt: skip
    _audit(e, rows, "waitlist_entry", d["entry"], None, new)


def _waitlist_left(e: OutboxEvent, d: events.WaitlistLeft, rows: Rows) -> None:
    _audit(e, rows, "waitlist_entry", d["entry"], None, {"left": d["reason"]})


def _order_created(e: OutboxEvent, d: events.OrderCreated, rows: Rows) -> None:
    oid = d["order"]
    at = ts(e.ts_ms)
    rows.orders_new.append(
        {
            "id": oid,
            "user_id": d["user"],
            "status": d["status"],
            "reservation_id": d.get("reservation") or None,
            "total": int(d["total"]),
            "currency": d["currency"],
            "created_at": at,
            "updated_at": at,
            "request_id": d.get("request_id") or "",
            "partition": e.partition,
        }
    )
    for i, (product, warehouse, quantity, unit_price) in enumerate(_lines(d["lines"])):
        rows.order_lines.append(
            {
                "order_id": oid,
                "line": i,
                "product": product,
                "warehouse": warehouse,
                "quantity": int(quantity),
                "unit_price": int(unit_price),
            }
        )
    rows.history.append(
        {
            "order_id": oid,
            "from_status": None,
            "to_status": d["status"],
            "actor": d.get("actor") or "system",
            "request_id": d.get("request_id") or "",
            "at": at,
            "event_id": e.event_id,
        }
    )
    if d.get("reservation"):
        rows.reservation_updates.append(
            {"id": d["reservation"], "status": "committed", "ended_at": at, "order_id": oid}
        )
    _movements(e, rows, REASONS[e.type], "order", oid)
    new = {"status": d["status"], "total": d["total"], "currency": d["currency"]}
    _audit(e, rows, "order", oid, None, new)


def _order_status_changed(e: OutboxEvent, d: events.OrderStatusChanged, rows: Rows) -> None:
    oid = d["order"]
    at = ts(e.ts_ms)
    rows.order_updates.append({"id": oid, "status": d["to"], "updated_at": at})
    rows.history.append(
        {
            "order_id": oid,
            "from_status": d["from"],
            "to_status": d["to"],
            "actor": d.get("actor") or "system",
            "request_id": d.get("request_id") or "",
            "at": at,
            "event_id": e.event_id,
        }
    )
    _movements(e, rows, REASONS[e.type], "order", oid)
    new = {"status": d["to"], **({"reason": d["reason"]} if d.get("reason") else {})}
    _audit(e, rows, "order", oid, {"status": d["from"]}, new)


def _stock_reconciled(e: OutboxEvent, d: events.StockReconciled, rows: Rows) -> None:
    """A counter `inventory reconcile --fix` rolled back: its movement starts as recorded."""
    _movements(e, rows, "reconciled", "product", d["product"])
    m, w = e.movements[0], d["warehouse"]
    old = {"warehouse": w, **d["found"], "live_reserved": d["live_reserved"]}
    new = {"warehouse": w, "available": m.available_after, "reserved": m.reserved_after}
    _audit(e, rows, "product", d["product"], old, new)
    rows.audit[-1]["action"] = "reconcile_fix"


def _expiry_reconciled(e: OutboxEvent, d: events.ExpiryReconciled, rows: Rows) -> None:
    """An expiry index entry `inventory reconcile --fix` put right in Redis."""
    before, after = d["expires_at_before"], d["expires_at_after"]
    _audit(e, rows, "reservation", d["reservation"], {"expiry": before}, {"expiry": after})
    rows.audit[-1]["action"] = "reconcile_fix"


def _record_reconciled(e: OutboxEvent, d: events.RecordReconciled, rows: Rows) -> None:
    """A product, reservation or order `inventory reconcile --fix` put back in Redis as the
    durable record has it: the database holds it already, so only the audit row is new."""
    _audit(e, rows, str(d["object_type"]), str(d["object_id"]), d["found"], d["restored"])
    rows.audit[-1]["action"] = "reconcile_fix"


def _redis_restored(e: OutboxEvent, d: events.RedisRestored, rows: Rows) -> None:
    """Ended records and idempotency records put back in a Redis that had lost them."""
    new = {"records": int(d["records"]), "idempotency_records": int(d["idempotency_records"])}
    _audit(e, rows, "partition", str(e.partition), None, new)


Handler = Callable[[OutboxEvent, Rows], None]
B = TypeVar("B", bound=events.EventBody)


def _reads(body: type[B], handler: Callable[[OutboxEvent, B, Rows], None]) -> Handler:
    """`handler`, given the event's data as the body of its type (engine/events.py). Nothing
    is checked here: a field missing or of the wrong kind fails in the handler, as BadEvent."""

    def handle(e: OutboxEvent, rows: Rows) -> None:
        handler(e, cast(B, e.data), rows)

    return handle


HANDLERS: dict[str, Handler] = {
    "product_updated": _reads(events.ProductUpdated, _product_updated),
    "stock_adjusted": _reads(events.StockAdjusted, _stock_adjusted),
    "reservation_created": _reads(events.ReservationCreated, _reservation_created),
    "reservation_released": _reads(events.ReservationReleased, _reservation_ended),
    "reservation_expired": _reads(events.ReservationExpired, _reservation_ended),
    "reservation_extended": _reads(events.ReservationExtended, _reservation_extended),
    "order_created": _reads(events.OrderCreated, _order_created),
    "order_status_changed": _reads(events.OrderStatusChanged, _order_status_changed),
    "reservation_committed": _reads(events.ReservationCommitted, _reservation_committed),
    "order_part_returned": _reads(events.OrderPartReturned, _order_part_returned),
    "waitlist_joined": _reads(events.WaitlistJoined, _waitlist_joined),
    "waitlist_left": _reads(events.WaitlistLeft, _waitlist_left),
    "stock_reconciled": _reads(events.StockReconciled, _stock_reconciled),
    "expiry_reconciled": _reads(events.ExpiryReconciled, _expiry_reconciled),
    "record_reconciled": _reads(events.RecordReconciled, _record_reconciled),
    "redis_restored": _reads(events.RedisRestored, _redis_restored),
}
