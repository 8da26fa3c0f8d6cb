"""The bodies of the outbox events, by type: what each script's `emit` writes (lua/lib.lua)
and what the drain's `persistence/translate.py` reads.

An outbox entry holds 'type' and 'data', a JSON object; these are the shapes of 'data'.
`emit` adds the fields of `EventBody` to every event; each type adds its own. JSON has no
tuples: a line is a JSON array, typed here by its items. An empty Lua table encodes as `{}`,
so a list that may be empty (movements, a product's old settings) may arrive as `{}` —
readers guard. tests/test_units_events.py checks each type's fields against the scripts'
`emit` calls.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

# A value whose shape depends on what it describes (a product's settings, a record's
# status, ...): reconcile's before-and-after pictures.
JSONValue = Any

ReservedLineJSON = tuple[str, str, int]  # [product, warehouse, quantity]
OrderLineJSON = tuple[str, str, int, int]  # [product, warehouse, quantity, unit price]


class MovementJSON(TypedDict):
    """One product x warehouse's counters before and after (engine.models.Movement)."""

    product: str
    warehouse: str
    available_before: int
    available_after: int
    reserved_before: int
    reserved_after: int


class _Limited(TypedDict, total=False):
    # (total=False, not NotRequired[...]: see _Idempotent)
    limits: dict[str, int]  # the purchase limits set (lua/limits.lua), when any


class ProductMeta(_Limited):
    """A product's settings, as the products hash holds them."""

    price: int  # minor units
    currency: str
    warehouses: list[tuple[str, int]]  # [name, priority], by priority


class _Replied(TypedDict, total=False):
    # the first reply, as the script stored it (without "ok" and "event"); left out where the
    # event holds it whole — the reply of reserve is its reservation_created event's
    # reservation, commit's its order_created event's order (persistence/event_replies.py
    # created_reply)
    reply: dict[str, Any]


class IdempotencyCopy(_Replied):
    """The call's idempotency record, carried by its last event for the drain to keep."""

    key: str  # the record's Redis key
    fp: str  # the request's fingerprint
    expires_at: int  # ms


class _Idempotent(TypedDict, total=False):
    # (not NotRequired[...]: Python 3.11 counts that as required under string annotations)
    idempotency: IdempotencyCopy  # on the last event of a call made with an idempotency key


class EventBody(_Idempotent):
    """What `emit` adds to every event."""

    type: str
    ts: int  # ms, Redis clock
    actor: str  # 'system' for the sweep and the expiries a call makes on its way
    request_id: str


# -- products and stock ---------------------------------------------------------------------


class ProductUpdated(EventBody):
    product: str
    before: ProductMeta | dict[str, Any]  # {} when the product is new
    after: ProductMeta


class StockAdjusted(EventBody):
    product: str
    reason: str  # engine.models.StockReason
    movements: list[MovementJSON]


# -- reservations ---------------------------------------------------------------------------


class _OfCart(TypedDict, total=False):
    # a part of a cart across partitions (engine/carts.py): the cart's id (its home's)
    cart: str


class _Handed(TypedDict, total=False):
    # a reservation a waitlist handed over (lua/wait.lua): 'waitlist', and the entry's id
    source: Literal["waitlist"]
    entry: str


class ReservationCreated(EventBody, _OfCart, _Handed):
    reservation: str
    user: str
    expires_at: int  # ms
    lines: list[ReservedLineJSON]
    movements: list[MovementJSON]


class WaitlistJoined(EventBody):
    """A customer waits for units of a product (lua/waitlist.lua)."""

    entry: str
    product: str
    user: str
    quantity: int
    partial: bool
    expires_at: int  # ms: it leaves unserved then


class WaitlistLeft(EventBody):
    """An entry left a waitlist unserved: its customer left, its time ran out, or its customer
    could hold no more of the product (lua/wait.lua)."""

    entry: str
    product: str
    user: str
    quantity: int
    reason: Literal["left", "expired", "limit_exceeded"]


class ReservationEnded(EventBody, _OfCart):
    """Released by its owner, or expired: its units are available again."""

    reservation: str
    user: str
    movements: list[MovementJSON]


class ReservationReleased(ReservationEnded):
    pass


class ReservationExpired(ReservationEnded):
    expires_at: int  # ms
    trigger: Literal["sweep", "reserve", "access"]  # what released it


class ReservationExtended(EventBody, _OfCart):
    reservation: str
    user: str
    expires_at_before: int  # ms
    expires_at_after: int


class ReservationCommitted(EventBody):
    """A cart's part (not its home) whose units went into the cart's order, made in the home
    (order_created): reserved -> gone here."""

    reservation: str  # the part's id
    order: str
    cart: str
    user: str
    movements: list[MovementJSON]


# -- orders ---------------------------------------------------------------------------------


class OrderCreated(EventBody):
    order: str
    reservation: str  # '' for a direct order (place_order)
    user: str
    status: str  # 'pending'
    lines: list[OrderLineJSON]
    total: int  # minor units
    currency: str
    movements: list[MovementJSON]


# "from" is a Python keyword, so this one body is declared by a dict.
_StatusChange = TypedDict("_StatusChange", {"from": str, "to": str})


class _Reason(TypedDict, total=False):
    reason: str  # 'timeout': the sweep cancelled a direct order still pending (ORDER_PENDING_TTL)


class OrderStatusChanged(_StatusChange, EventBody, _Reason):
    order: str
    user: str
    movements: list[MovementJSON]  # units back to available when cancelled, else empty


class OrderPartReturned(EventBody):
    """A cancelled cart order: the units of one of its other parts back to available here
    (the home's are in its order_status_changed)."""

    order: str
    part: str  # the part's reservation id
    cart: str
    user: str
    movements: list[MovementJSON]


# -- reconcile's repairs (lua/repair.lua) ---------------------------------------------------


class Counters(TypedDict):
    available: int
    reserved: int


class StockReconciled(EventBody):
    product: str
    warehouse: str
    found: Counters  # the counters as Redis had them
    live_reserved: int  # what its live reservations hold
    movements: list[MovementJSON]  # one: from the recorded counters to the rolled-back ones


class ExpiryReconciled(EventBody):
    reservation: str
    expires_at_before: int | None  # None: it was missing from the expiry index
    expires_at_after: int | None  # None: removed, it was not live


class RecordReconciled(EventBody):
    object_type: Literal["product", "reservation", "order"]
    object_id: str
    found: JSONValue
    restored: JSONValue


class RedisRestored(EventBody):
    records: int
    idempotency_records: int


# Every event type and its body.
BODIES: dict[str, type[EventBody]] = {
    "product_updated": ProductUpdated,
    "stock_adjusted": StockAdjusted,
    "reservation_created": ReservationCreated,
    "reservation_released": ReservationReleased,
    "reservation_expired": ReservationExpired,
    "reservation_extended": ReservationExtended,
    "reservation_committed": ReservationCommitted,
    "order_created": OrderCreated,
    "order_status_changed": OrderStatusChanged,
    "order_part_returned": OrderPartReturned,
    "stock_reconciled": StockReconciled,
    "expiry_reconciled": ExpiryReconciled,
    "record_reconciled": RecordReconciled,
    "redis_restored": RedisRestored,
    "waitlist_joined": WaitlistJoined,
    "waitlist_left": WaitlistLeft,
}
