"""Typed inputs and results of the engine. Times are Redis-clock milliseconds (UTC);
money is integer minor units."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from engine.states import OrderStatus


def ms_to_datetime(ms: int) -> datetime:
    """Exact to the ms: `ms / 1000` as a float loses the last ms of some times past 2100."""
    seconds, milli = divmod(ms, 1000)
    return datetime.fromtimestamp(seconds, tz=UTC).replace(microsecond=milli * 1000)


class ReservationStatus(StrEnum):
    ACTIVE = "active"
    RELEASED = "released"
    EXPIRED = "expired"
    COMMITTED = "committed"


class StockReason(StrEnum):
    """Why stock was adjusted by hand; the word lands in the ledger."""

    INITIAL = "initial"
    RECEIVED = "received"
    RETURNED = "returned"
    DAMAGED = "damaged"
    LOST = "lost"
    CORRECTION = "correction"
    # a deleted product's remaining units leave sale
    WITHDRAWN = "withdrawn"


@dataclass(frozen=True, slots=True)
class CallContext:
    """Who makes a call and under which request. Staff act on any record; anyone else sees
    only their own reservations and orders."""

    actor: str
    request_id: str = ""
    idempotency_key: str | None = None
    staff: bool = False

    @property
    def scope(self) -> str:
        return "" if self.staff else self.actor


SYSTEM = CallContext(actor="system", staff=True)


@dataclass(frozen=True, slots=True)
class LineRequest:
    product: str
    quantity: int
    warehouse: str | None = None


@dataclass(frozen=True, slots=True)
class ReservedLine:
    product: str
    warehouse: str
    quantity: int


@dataclass(frozen=True, slots=True)
class Reservation:
    id: str
    owner: str
    status: ReservationStatus
    created_at_ms: int
    expires_at_ms: int
    lines: tuple[ReservedLine, ...]
    order_id: str | None = None
    replayed: bool = False
    # 'request': a customer reserved it; 'waitlist': a waitlist handed it over (lua/wait.lua)
    source: str = "request"
    # The outbox event of the call that returned this ("p<partition>-<stream id>"), if it
    # wrote one: where the durable record must have drained to for the change to show.
    event_id: str | None = field(default=None, compare=False)

    @property
    def expires_at(self) -> datetime:
        return ms_to_datetime(self.expires_at_ms)

    @property
    def created_at(self) -> datetime:
        return ms_to_datetime(self.created_at_ms)

    @property
    def quantity(self) -> int:
        return sum(line.quantity for line in self.lines)


@dataclass(frozen=True, slots=True)
class OrderLine:
    product: str
    warehouse: str
    quantity: int
    unit_price: int

    @property
    def subtotal(self) -> int:
        return self.quantity * self.unit_price


@dataclass(frozen=True, slots=True)
class Order:
    id: str
    owner: str
    status: OrderStatus
    reservation_id: str | None
    lines: tuple[OrderLine, ...]
    total: int
    currency: str
    created_at_ms: int
    updated_at_ms: int
    replayed: bool = False
    event_id: str | None = field(default=None, compare=False)  # as Reservation.event_id

    @property
    def created_at(self) -> datetime:
        return ms_to_datetime(self.created_at_ms)

    @property
    def updated_at(self) -> datetime:
        return ms_to_datetime(self.updated_at_ms)


@dataclass(frozen=True, slots=True)
class Movement:
    """One product x warehouse's counters before and after a change."""

    product: str
    warehouse: str
    available_before: int
    available_after: int
    reserved_before: int
    reserved_after: int

    @property
    def total_delta(self) -> int:
        return (self.available_after + self.reserved_after) - (
            self.available_before + self.reserved_before
        )

    @property
    def reserved_delta(self) -> int:
        return self.reserved_after - self.reserved_before


class Movements(list[Movement]):
    """The movements of one stock adjustment, in warehouse order; `replayed` when a retry
    under the same idempotency key got the first adjustment's answer again."""

    replayed: bool = False


@dataclass(frozen=True, slots=True)
class ProductLimits:
    """What one customer may buy of a product (lua/limits.lua); None: no such limit.
    max_per_customer: units held in live reservations and orders not cancelled, all of them
    together; min_quantity, quantity_increment, max_per_order: one reservation's or order's
    units of the product."""

    max_per_customer: int | None = None
    min_quantity: int | None = None
    quantity_increment: int | None = None
    max_per_order: int | None = None

    NAMES: ClassVar[tuple[str, ...]] = (
        "max_per_customer",
        "min_quantity",
        "quantity_increment",
        "max_per_order",
    )

    @classmethod
    def from_json(cls, raw: Any) -> ProductLimits:
        """From the meta's "limits" (an object; cjson writes an empty one as {} or [])."""
        if not isinstance(raw, dict):
            return NO_LIMITS
        return cls(**{n: int(raw[n]) for n in cls.NAMES if raw.get(n) is not None})

    def as_json(self) -> dict[str, int]:
        """The limits that are set, as the meta holds them."""
        return {n: value for n in self.NAMES if (value := getattr(self, n)) is not None}


NO_LIMITS = ProductLimits()


@dataclass(frozen=True, slots=True)
class Product:
    id: str
    price: int
    currency: str
    warehouses: tuple[tuple[str, int], ...]
    limits: ProductLimits = NO_LIMITS
    created: bool = False
    replayed: bool = field(default=False, compare=False)  # the first answer, given again


@dataclass(frozen=True, slots=True)
class StockLevel:
    warehouse: str
    priority: int
    available: int
    reserved: int

    @property
    def total(self) -> int:
        return self.available + self.reserved


@dataclass(frozen=True, slots=True)
class ProductStock:
    product: str
    price: int
    currency: str
    levels: tuple[StockLevel, ...] = field(default_factory=tuple)
    limits: ProductLimits = NO_LIMITS

    @property
    def available(self) -> int:
        return sum(level.available for level in self.levels)

    @property
    def reserved(self) -> int:
        return sum(level.reserved for level in self.levels)

    @property
    def total(self) -> int:
        return self.available + self.reserved


@dataclass(frozen=True, slots=True)
class ExpiryResult:
    expired: int
    still_due: int
    carts: int = 0  # steps of carts across partitions the sweep made their parts follow
    timed_out: int = 0  # direct orders still pending past ORDER_PENDING_TTL, cancelled
    waitlist_left: int = 0  # waitlist entries past WAITLIST_TTL, gone unserved
    # partitions whose Redis is behind the database (the drain raised the flag): their sweep
    # refused, nothing done there (their `still_due` counted all the same)
    redis_behind: list[int] = dataclasses.field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """What `inventory sweep --json` and the periodic job report."""
        return dataclasses.asdict(self)
