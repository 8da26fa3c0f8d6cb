"""The order state machine: the one table, read by Python and rendered into the Lua prelude."""

from __future__ import annotations

from enum import StrEnum


class OrderStatus(StrEnum):
    PENDING = "pending"
    CONFIRMED = "confirmed"
    PROCESSING = "processing"
    SHIPPED = "shipped"
    DELIVERED = "delivered"
    CANCELLED = "cancelled"


TRANSITIONS: dict[OrderStatus, tuple[OrderStatus, ...]] = {
    OrderStatus.PENDING: (OrderStatus.CONFIRMED, OrderStatus.CANCELLED),
    OrderStatus.CONFIRMED: (OrderStatus.PROCESSING, OrderStatus.CANCELLED),
    OrderStatus.PROCESSING: (OrderStatus.SHIPPED,),
    OrderStatus.SHIPPED: (OrderStatus.DELIVERED,),
    OrderStatus.DELIVERED: (),
    OrderStatus.CANCELLED: (),
}

TERMINAL: frozenset[OrderStatus] = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)

# Entering this status gives the order's units back to 'available'.
STOCK_RETURNING = OrderStatus.CANCELLED


def allowed(current: OrderStatus) -> tuple[OrderStatus, ...]:
    return TRANSITIONS[current]


def lua_prelude() -> str:
    """Lua constants for the library, rendered from the table above as table constructors:
    at FUNCTION LOAD Redis gives the code no globals (no cjson), only its own locals."""
    table = ", ".join(
        f"[{_lua_string(s.value)}] = {{{', '.join(_lua_string(n.value) for n in nxt)}}}"
        for s, nxt in TRANSITIONS.items()
    )
    terminal = ", ".join(f"[{_lua_string(s.value)}] = true" for s in sorted(TERMINAL))
    return (
        "-- rendered from engine/states.py: do not edit\n"
        f"local TRANSITIONS = {{{table}}}\n"
        f"local TERMINAL = {{{terminal}}}\n"
        f"local STOCK_RETURNING = {_lua_string(STOCK_RETURNING.value)}\n"
    )


def _lua_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
