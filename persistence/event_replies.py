"""The first reply of a call whose event holds it whole, rebuilt by the drain from the event.

A reservation's and an order's event (lua/reserve.lua, lua/commit.lua, lua/place_order.lua)
carry everything their call answered; their idempotency copy leaves the reply out (lua/lib.lua
idempotency_json), and persistence/translate.py keeps the reply this module rebuilds.
"""

from __future__ import annotations

from typing import Any, cast

from engine import events
from engine.outbox import OutboxEvent


def created_reply(e: OutboxEvent) -> dict[str, Any]:
    """The reply of the call that wrote event `e` and answered with what it made, without "ok"
    and "event": a reservation_created event's reservation (lua/reserve.lua), an
    order_created event's order (lua/commit.lua) — as the call answered it."""
    ts = int(e.data["ts"])
    if e.type == "reservation_created":
        r = cast(events.ReservationCreated, e.data)
        return {
            "reservation": {
                "id": r["reservation"],
                "owner": r["user"],
                "status": "active",
                "created_at": ts,
                "expires_at": int(r["expires_at"]),
                "lines": r["lines"],
            }
        }
    if e.type == "order_created":
        o = cast(events.OrderCreated, e.data)
        return {
            "order": {
                "id": o["order"],
                "owner": o["user"],
                "status": o["status"],
                "reservation": o["reservation"],
                "lines": o["lines"],
                "total": int(o["total"]),
                "currency": o["currency"],
                "created_at": ts,
                "updated_at": ts,
            }
        }
    raise ValueError(f"an idempotency copy without its reply on a {e.type} event")
