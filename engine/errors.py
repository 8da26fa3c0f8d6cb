"""Typed errors: every refusal a script can return, with the context a caller needs.

Each error has a stable `code` (the same word the script returns and the API shows) and
`details()` for the response body. This module imports nothing of ours.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar


class EngineError(Exception):
    code: ClassVar[str] = "engine_error"

    def details(self) -> dict[str, Any]:
        return {}


class InvalidInput(EngineError):
    code = "invalid_input"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def details(self) -> dict[str, Any]:
        return {"field": self.field}


class RedisBehind(EngineError):
    """The partition's Redis came back behind the database (an older copy): it decides
    nothing until `inventory reconcile --fix` has restored what it lost."""

    code = "redis_behind"

    def __init__(self) -> None:
        super().__init__("the stock store is being restored after an outage; try again shortly")


class RedisUnverified(EngineError):
    """The partition's Redis has started (restarted, restored, a replica promoted) and could
    not be checked against the database's record before its first write: the record could not
    be read. Nothing was changed; it decides once the check can be made."""

    code = "redis_unverified"

    def __init__(self) -> None:
        super().__init__(
            "the stock store has restarted and cannot be checked against the record yet; "
            "try again shortly"
        )


class NotReplicated(EngineError):
    """REDIS_WAIT_REPLICAS: the change was made on the primary, but not that many replicas
    confirmed it within REDIS_WAIT_TIMEOUT. Not acknowledged: a failover now could lose it.
    A retry with the same Idempotency-Key gets the change's own answer once it is there."""

    code = "not_replicated"

    def __init__(self, confirmed: int, wanted: int) -> None:
        super().__init__(
            "the change was made but not confirmed by a replica in time; retry with the "
            "same Idempotency-Key"
        )
        self.confirmed = confirmed
        self.wanted = wanted

    def details(self) -> dict[str, Any]:
        return {"replicas": self.confirmed, "wanted": self.wanted}


class ProductNotFound(EngineError):
    code = "product_not_found"

    def __init__(self, product: str) -> None:
        super().__init__(f"product {product!r} does not exist")
        self.product = product

    def details(self) -> dict[str, Any]:
        return {"product": self.product}


class ProductExists(EngineError):
    """A create (setup_product with create_only) found the product set up already."""

    code = "product_exists"

    def __init__(self, product: str) -> None:
        super().__init__(f"product {product!r} exists already")
        self.product = product

    def details(self) -> dict[str, Any]:
        return {"product": self.product}


class WarehouseNotFound(EngineError):
    code = "warehouse_not_found"

    def __init__(self, product: str, warehouse: str) -> None:
        super().__init__(f"product {product!r} is not stocked in warehouse {warehouse!r}")
        self.product = product
        self.warehouse = warehouse

    def details(self) -> dict[str, Any]:
        return {"product": self.product, "warehouse": self.warehouse}


@dataclass(frozen=True, slots=True)
class Shortage:
    product: str
    requested: int
    available: int
    warehouse: str | None = None


class InsufficientStock(EngineError):
    code = "insufficient_stock"

    def __init__(self, lines: list[Shortage]) -> None:
        described = ", ".join(
            f"{s.product}{'@' + s.warehouse if s.warehouse else ''}: "
            f"requested {s.requested}, available {s.available}"
            for s in lines
        )
        super().__init__(f"not enough stock ({described})")
        self.lines = lines

    def details(self) -> dict[str, Any]:
        return {"lines": [asdict(s) for s in self.lines]}


class ReservationNotFound(EngineError):
    code = "reservation_not_found"

    def __init__(self, reservation: str) -> None:
        super().__init__(f"reservation {reservation!r} does not exist")
        self.reservation = reservation

    def details(self) -> dict[str, Any]:
        return {"reservation": self.reservation}


class ReservationExpired(EngineError):
    code = "reservation_expired"

    def __init__(self, reservation: str, expires_at_ms: int) -> None:
        super().__init__(f"reservation {reservation!r} expired")
        self.reservation = reservation
        self.expires_at_ms = expires_at_ms

    def details(self) -> dict[str, Any]:
        return {"reservation": self.reservation, "expires_at_ms": self.expires_at_ms}


class ReservationNotLive(EngineError):
    code = "reservation_not_live"

    def __init__(self, reservation: str, status: str, order: str | None) -> None:
        super().__init__(f"reservation {reservation!r} is {status}, not active")
        self.reservation = reservation
        self.status = status
        self.order = order

    def details(self) -> dict[str, Any]:
        return {"reservation": self.reservation, "status": self.status, "order": self.order}


class ExtensionLimitReached(EngineError):
    code = "extension_limit_reached"

    def __init__(self, reservation: str, max_expires_at_ms: int) -> None:
        super().__init__(f"reservation {reservation!r} can't be held any longer")
        self.reservation = reservation
        self.max_expires_at_ms = max_expires_at_ms

    def details(self) -> dict[str, Any]:
        return {"reservation": self.reservation, "max_expires_at_ms": self.max_expires_at_ms}


class OrderNotFound(EngineError):
    code = "order_not_found"

    def __init__(self, order: str) -> None:
        super().__init__(f"order {order!r} does not exist")
        self.order = order

    def details(self) -> dict[str, Any]:
        return {"order": self.order}


class InvalidTransition(EngineError):
    code = "invalid_transition"

    def __init__(self, order: str, current: str, requested: str, allowed: list[str]) -> None:
        moves = ", ".join(allowed) if allowed else "none: it is final"
        super().__init__(
            f"order {order!r} can't go from {current} to {requested} (allowed: {moves})"
        )
        self.order = order
        self.current = current
        self.requested = requested
        self.allowed = allowed

    def details(self) -> dict[str, Any]:
        return {
            "order": self.order,
            "current": self.current,
            "requested": self.requested,
            "allowed": self.allowed,
        }


class StatusChanged(EngineError):
    """The order moved between a caller's read and its transition."""

    code = "status_changed"

    def __init__(self, order: str, current: str, expected: str) -> None:
        super().__init__(f"order {order!r} is {current} now, no longer {expected}")
        self.order = order
        self.current = current
        self.expected = expected

    def details(self) -> dict[str, Any]:
        return {"order": self.order, "current": self.current, "expected": self.expected}


class IdempotencyMismatch(EngineError):
    code = "idempotency_mismatch"

    def __init__(self) -> None:
        super().__init__("this Idempotency-Key was used before with a different request")


class CurrencyMismatch(EngineError):
    code = "currency_mismatch"

    def __init__(self, currencies: list[str]) -> None:
        super().__init__(f"one order can't mix currencies ({', '.join(currencies)})")
        self.currencies = currencies

    def details(self) -> dict[str, Any]:
        return {"currencies": self.currencies}


class OrderTotalTooLarge(EngineError):
    code = "order_total_too_large"

    def __init__(self) -> None:
        super().__init__("the order total is too large")


class CartTimeout(EngineError):
    """A cart across partitions took longer than CART_HOLD_TTL between two of its steps (a
    stalled process, a slow shard): nothing of it was kept; a retry starts afresh."""

    code = "cart_timeout"

    def __init__(self, reservation: str) -> None:
        super().__init__("the cart's partitions did not all answer in time; try again")
        self.reservation = reservation

    def details(self) -> dict[str, Any]:
        return {"reservation": self.reservation}


class LimitExceeded(EngineError):
    """The request would take a customer past a product's limit (lua/limits.lua): its
    max_per_order, or its max_per_customer counting what they hold already."""

    code = "limit_exceeded"

    def __init__(self, product: str, rule: str, limit: int, held: int, requested: int) -> None:
        super().__init__(
            f"product {product!r} allows {limit} per {rule.removeprefix('max_per_')}: "
            f"{held} held, {requested} requested"
        )
        self.product = product
        self.rule = rule
        self.limit = limit
        self.held = held
        self.requested = requested

    def details(self) -> dict[str, Any]:
        return {
            "product": self.product,
            "rule": self.rule,
            "limit": self.limit,
            "held": self.held,
            "requested": self.requested,
        }


class InvalidQuantity(EngineError):
    """A product's quantity rule refuses the request's units of it: fewer than its
    min_quantity, or not a multiple of its quantity_increment."""

    code = "invalid_quantity"

    def __init__(self, product: str, rule: str, value: int, requested: int) -> None:
        said = "at least" if rule == "min_quantity" else "a multiple of"
        super().__init__(f"product {product!r} is sold in {said} {value} units, not {requested}")
        self.product = product
        self.rule = rule
        self.value = value
        self.requested = requested

    def details(self) -> dict[str, Any]:
        return {"product": self.product, "rule": self.rule, self.rule: self.value,
                "requested": self.requested}  # fmt: skip


class TooManyReservations(EngineError):
    """The customer holds MAX_LIVE_RESERVATIONS_PER_CUSTOMER live reservations already."""

    code = "too_many_reservations"

    def __init__(self, limit: int, live: int) -> None:
        super().__init__(
            f"at most {limit} live reservations per customer; release or commit one first"
        )
        self.limit = limit
        self.live = live

    def details(self) -> dict[str, Any]:
        return {"limit": self.limit, "live": self.live}


class InStock(EngineError):
    """A waitlist join for units that are there and that nobody waits for: reserve them."""

    code = "in_stock"

    def __init__(self, product: str, available: int) -> None:
        super().__init__(f"product {product!r} has {available} units available: reserve them")
        self.product = product
        self.available = available

    def details(self) -> dict[str, Any]:
        return {"product": self.product, "available": self.available}


class AlreadyWaiting(EngineError):
    code = "already_waiting"

    def __init__(self, entry: str) -> None:
        super().__init__("you are on this product's waitlist already")
        self.entry = entry

    def details(self) -> dict[str, Any]:
        return {"entry": self.entry}


class NotWaiting(EngineError):
    code = "not_waiting"

    def __init__(self, product: str) -> None:
        super().__init__(f"you are not on the waitlist of product {product!r}")
        self.product = product

    def details(self) -> dict[str, Any]:
        return {"product": self.product}


class IdCollision(EngineError):
    """A freshly drawn id already exists: a bug or a broken random source, never a user error."""

    code = "id_collision"
