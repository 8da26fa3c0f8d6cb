"""The reservation engine: typed async calls over the Lua scripts in Redis.

Imports only `redis` and the standard library.
"""

from engine.engine import Engine, connect
from engine.models import (
    SYSTEM,
    CallContext,
    LineRequest,
    Order,
    Product,
    ProductStock,
    Reservation,
    ReservationStatus,
    StockReason,
)
from engine.settings import Settings
from engine.states import OrderStatus

__all__ = [
    "SYSTEM",
    "CallContext",
    "Engine",
    "LineRequest",
    "Order",
    "OrderStatus",
    "Product",
    "ProductStock",
    "Reservation",
    "ReservationStatus",
    "Settings",
    "StockReason",
    "connect",
]
