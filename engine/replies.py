"""Decoding script replies: results into dataclasses, refusals into typed errors.

A reply is the JSON object a script returns (lua/lib.lua `ok` and `refuse`): its top level
differs by script and outcome, so it stays a dict; the records inside it have the shapes
below, as the scripts' headers describe them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NotRequired, TypedDict

from engine import errors, keys
from engine.events import MovementJSON, OrderLineJSON, ReservedLineJSON
from engine.models import (
    Movement,
    Movements,
    Order,
    OrderLine,
    Product,
    ProductLimits,
    Reservation,
    ReservationStatus,
    ReservedLine,
)
from engine.states import OrderStatus


class ReservationView(TypedDict):
    """A reservation in a reply (lib.lua reservation_view)."""

    id: str
    owner: str
    status: str
    created_at: int  # ms
    expires_at: int  # ms
    lines: list[ReservedLineJSON]
    order: str  # '' until committed
    source: NotRequired[str]  # 'waitlist' for a waitlist's hand-off; absent: a request's


class OrderView(TypedDict):
    """An order in a reply (lib.lua write_order), or read from its record."""

    id: str
    owner: str
    status: str
    reservation: str  # '' for a direct order
    lines: list[OrderLineJSON]
    total: int  # minor units
    currency: str
    created_at: int  # ms
    updated_at: int  # ms


class ProductView(TypedDict):
    """A product in setup_product's reply."""

    id: str
    price: int
    currency: str
    warehouses: list[tuple[str, int]]  # [name, priority]


def as_list(value: Any) -> list[Any]:
    # cjson encodes an empty Lua table as {}.
    return value if isinstance(value, list) else []


def movement(m: MovementJSON) -> Movement:
    return Movement(
        product=m["product"],
        warehouse=m["warehouse"],
        available_before=m["available_before"],
        available_after=m["available_after"],
        reserved_before=m["reserved_before"],
        reserved_after=m["reserved_after"],
    )


def movements(reply: dict[str, Any]) -> Movements:
    moved = Movements(movement(m) for m in as_list(reply["movements"]))
    moved.replayed = bool(reply.get("replayed"))
    return moved


def event_id(partition: int, reply: dict[str, Any]) -> str | None:
    """The global id of the last event a script wrote (as OutboxEvent.event_id), if any."""
    stream_id = reply.get("event")
    return keys.event_id(partition, stream_id) if stream_id else None


# the statuses by their text: a dict lookup, where calling the enum (EnumMeta.__call__) costs
# about a microsecond on the hot path; an unknown text still takes the enum's way (ValueError)
_RESERVATION_STATUS = {s.value: s for s in ReservationStatus}
_ORDER_STATUS = {s.value: s for s in OrderStatus}


def reservation(
    view: ReservationView, *, replayed: bool = False, event: str | None = None
) -> Reservation:
    status = view["status"]
    return Reservation(
        id=view["id"],
        owner=view["owner"],
        status=_RESERVATION_STATUS.get(status) or ReservationStatus(status),
        created_at_ms=int(view["created_at"]),
        expires_at_ms=int(view["expires_at"]),
        lines=tuple([ReservedLine(p, w, int(q)) for p, w, q in as_list(view["lines"])]),
        order_id=view.get("order") or None,
        source=view.get("source") or "request",
        replayed=replayed,
        event_id=event,
    )


def order(view: OrderView, *, replayed: bool = False, event: str | None = None) -> Order:
    return Order(
        id=view["id"],
        owner=view["owner"],
        status=_ORDER_STATUS.get(view["status"]) or OrderStatus(view["status"]),
        reservation_id=view.get("reservation") or None,
        lines=tuple(
            OrderLine(p, w, int(q), int(price)) for p, w, q, price in as_list(view["lines"])
        ),
        total=int(view["total"]),
        currency=view["currency"],
        created_at_ms=int(view["created_at"]),
        updated_at_ms=int(view["updated_at"]),
        replayed=replayed,
        event_id=event,
    )


def reservation_reply(partition: int, reply: dict[str, Any]) -> Reservation:
    """The reservation a call on partition `partition` answered with."""
    return reservation(
        reply["reservation"],
        replayed=bool(reply.get("replayed")),
        event=event_id(partition, reply),
    )


def order_reply(partition: int, reply: dict[str, Any]) -> Order:
    """The order a call on partition `partition` answered with."""
    return order(
        reply["order"],
        replayed=bool(reply.get("replayed")),
        event=event_id(partition, reply),
    )


def product_reply(reply: dict[str, Any]) -> Product:
    """setup_product's answer."""
    p: ProductView = reply["product"]
    return Product(
        id=p["id"],
        price=p["price"],
        currency=p["currency"],
        warehouses=tuple((w[0], w[1]) for w in p["warehouses"]),
        limits=ProductLimits.from_json(p.get("limits")),
        created=bool(reply["created"]),
        replayed=bool(reply.get("replayed")),
    )


def _shortage(s: dict[str, Any]) -> errors.Shortage:
    return errors.Shortage(
        product=s["product"],
        requested=int(s["requested"]),
        available=int(s["available"]),
        warehouse=s.get("warehouse"),
    )


# Every refusal code a script returns, and the typed error it becomes.
REFUSALS: dict[str, Callable[[dict[str, Any]], errors.EngineError]] = {
    "insufficient_stock": lambda r: errors.InsufficientStock(
        [_shortage(s) for s in as_list(r["lines"])]
    ),
    "product_not_found": lambda r: errors.ProductNotFound(r["product"]),
    "product_exists": lambda r: errors.ProductExists(r["product"]),
    "warehouse_not_found": lambda r: errors.WarehouseNotFound(r["product"], r["warehouse"]),
    "reservation_not_found": lambda r: errors.ReservationNotFound(r["reservation"]),
    "reservation_expired": lambda r: errors.ReservationExpired(
        r["reservation"], int(r["expires_at"])
    ),
    "reservation_not_live": lambda r: errors.ReservationNotLive(
        r["reservation"], r["status"], r.get("order") or None
    ),
    "extension_limit_reached": lambda r: errors.ExtensionLimitReached(
        r["reservation"], int(r["max_expires_at"])
    ),
    "order_not_found": lambda r: errors.OrderNotFound(r["order"]),
    "invalid_transition": lambda r: errors.InvalidTransition(
        r["order"], r["current"], r["requested"], as_list(r["allowed"])
    ),
    "status_changed": lambda r: errors.StatusChanged(r["order"], r["current"], r["expected"]),
    "idempotency_mismatch": lambda r: errors.IdempotencyMismatch(),
    "redis_behind": lambda r: errors.RedisBehind(),
    "currency_mismatch": lambda r: errors.CurrencyMismatch(as_list(r["currencies"])),
    "order_total_too_large": lambda r: errors.OrderTotalTooLarge(),
    "reservation_exists": lambda r: errors.IdCollision(f"reservation {r['reservation']}"),
    "order_exists": lambda r: errors.IdCollision(f"order {r['order']}"),
    "cart_timeout": lambda r: errors.CartTimeout(r["reservation"]),
    "limit_exceeded": lambda r: errors.LimitExceeded(
        r["product"], r["rule"], int(r["limit"]), int(r["held"]), int(r["requested"])
    ),
    "invalid_quantity": lambda r: errors.InvalidQuantity(
        r["product"], r["rule"], int(r[r["rule"]]), int(r["requested"])
    ),
    "too_many_reservations": lambda r: errors.TooManyReservations(int(r["limit"]), int(r["live"])),
    "in_stock": lambda r: errors.InStock(r["product"], int(r["available"])),
    "already_waiting": lambda r: errors.AlreadyWaiting(r["entry"]),
    "not_waiting": lambda r: errors.NotWaiting(r["product"]),
}


def raise_for(reply: dict[str, Any]) -> None:
    """Raise the typed error for a refusal; return quietly for a success."""
    code = reply.get("err")
    if code is None:
        return
    make = REFUSALS.get(code)
    if make is None:
        raise errors.EngineError(f"unknown refusal from script: {reply!r}")
    raise make(reply)
