"""The waitlists (issue 14, item 4): a customer waits for units of a sold-out product.

- `POST /api/products/{id}/waitlist/` `{"quantity", "allow_partial"?}` → 202 with the entry
  and its `position` (1: first in line); 409 `in_stock` when the units are there and nobody
  waits (reserve them), `already_waiting`, `limit_exceeded`; 422 `invalid_quantity`.
- `DELETE /api/products/{id}/waitlist/` → 200, the entry left; 404 `not_waiting`.
- `GET /api/waitlist/` → the caller's entries, oldest first, each with its position.

When units come back, the call that gives them back hands them to the head of the queue as
a reservation with the entry's id (`GET /api/reservations/{entry id}/`, `"source":
"waitlist"`); the entry leaves the list.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from engine.models import ms_to_datetime
from engine.waitlist import WaitlistEntry
from web.auth import require_user
from web.bodies import parse_body
from web.products_view import product_id
from web.responses import iso, ok
from web.schemas.orders import WaitlistJoin, api_product
from web.services import catalog
from web.services.container import services


def entry_json(e: WaitlistEntry) -> dict[str, Any]:
    return {
        "id": e.id,
        "product": api_product(e.product),
        "quantity": e.quantity,
        "allow_partial": e.partial,
        "joined_at": iso(ms_to_datetime(e.joined_at_ms)),
        "expires_at": iso(ms_to_datetime(e.expires_at_ms)),
    }


async def join_waitlist(request: Request) -> Response:
    principal = require_user(request)
    pid = product_id(request.path_params["id"])
    body = await parse_body(request, WaitlistJoin)
    svc = services(request)
    await catalog.live_product(svc, pid)  # in the catalog, not deleted: else 404
    entry = await svc.engine.join_waitlist(
        str(pid), body.quantity, principal.context(request), partial=body.allow_partial
    )
    await svc.trigger.request(svc.engine.partition_of_product(str(pid)))
    return ok(request, {"entry": entry_json(entry), "position": entry.position}, 202)


async def leave_waitlist(request: Request) -> Response:
    principal = require_user(request)
    pid = product_id(request.path_params["id"])
    svc = services(request)
    entry = await svc.engine.leave_waitlist(str(pid), principal.context(request))
    await svc.trigger.request(svc.engine.partition_of_product(str(pid)))
    return ok(request, {"entry": entry_json(entry)})


async def list_waitlist(request: Request) -> Response:
    principal = require_user(request)
    entries = await services(request).engine.waitlist_entries(principal.context(request))
    items = [{**entry_json(e), "position": e.position} for e in entries]
    return ok(request, items, next=None, previous=None)  # a list: one page, the cursors null


routes: list[BaseRoute] = [
    Route("/api/products/{id}/waitlist/", join_waitlist, methods=["POST"]),
    Route("/api/products/{id}/waitlist/", leave_waitlist, methods=["DELETE"]),
    Route("/api/waitlist/", list_waitlist, methods=["GET"]),
]
