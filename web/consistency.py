"""Read-your-writes between the hot path (Redis) and the lists (the database).

Every write response carries `X-Consistency-Token`: the outbox position of the write,
`p<partition>-<stream id>` (the id its audit row will carry). A list called with
`?consistent_with=<token>` waits, at most `WAIT_S`, until the partition's drain checkpoint
has passed that position, then answers with `X-Consistency: consistent`; if the drain is
slower (or the worker is down) it answers anyway, from what the database holds, with
`X-Consistency: stale`. A token that no write response could have carried (not of that form,
no such partition, a position past the partition's newest event) is refused at once, 400
`invalid_consistency_token`, rather than waited on in vain. This module also runs a durable
list query one keyset page at a time.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from sqlalchemy import Engine as DatabaseEngine
from starlette.requests import Request
from starlette.responses import Response

from engine.keys import event_id, partition_of
from engine.models import Order, Reservation
from engine.outbox import sid as _position
from persistence import queries_orders as queries
from persistence.queries_orders import Listing
from web.errors import ApiError
from web.pagination import Page, SortKey, paginate
from web.responses import ok
from web.services.container import Services, services

TOKEN_HEADER = "X-Consistency-Token"
STATE_HEADER = "X-Consistency"
REPLAY_HEADER = "Idempotent-Replayed"
WAIT_S = 2.0
_TOKEN_KEY = TOKEN_HEADER.lower().encode("latin-1")
_REPLAYED = (REPLAY_HEADER.lower().encode("latin-1"), b"true")
_TOKEN = re.compile(r"p(\d{1,6})-(\d{1,20})-(\d{1,20})")


async def written(
    request: Request,
    data: Any,
    status: int,
    result: Reservation | Order,
) -> Response:
    """The response to a successful write: asks for a drain of the record's partition and
    hands out the consistency token (a call that wrote no event — an extension that changed
    nothing — gets the partition's newest position)."""
    svc = services(request)
    partition = partition_of(result.id, svc.settings.partitions)
    token = result.event_id or await _newest(request, partition)
    svc.trigger.wake(partition)  # asked right after, off the request's path
    response = ok(request, data, status)
    # As `response.headers[...] = ...` would add them (in this order), without its scan.
    response.raw_headers.append((_TOKEN_KEY, token.encode("latin-1")))
    if result.replayed:
        response.raw_headers.append(_REPLAYED)
    return response


async def _newest(request: Request, partition: int) -> str:
    # An empty stream has been drained (trimmed only once applied): any position will do.
    return event_id(partition, await services(request).engine.outbox_newest_id(partition))


async def wait_for(svc: Services, token: str | None) -> str | None:
    """Wait for the drain to pass `token`: "consistent", "stale" (waited long enough), or
    None when no token was given."""
    if token is None:
        return None
    match = _TOKEN.fullmatch(token)
    if match is None or int(match[1]) >= svc.settings.partitions:
        raise ApiError(
            400,
            "invalid_consistency_token",
            f"consistent_with takes the {TOKEN_HEADER} header of a write response",
            {"consistent_with": token[:100]},
        )
    partition, wanted = int(match[1]), (int(match[2]), int(match[3]))
    if wanted == (0, 0):  # handed out for an empty (fully drained) outbox
        return "consistent"
    if _position(await svc.engine.outbox_last_id(partition)) < wanted:
        # No write has reached this position, so waiting would always end stale; unless
        # Redis came back behind the database, which then has the write already.
        reached = await asyncio.to_thread(queries.checkpoint, svc.db, partition)
        if reached is None or _position(reached) < wanted:
            raise ApiError(
                400,
                "invalid_consistency_token",
                "consistent_with names a position no write has reached: pass the "
                f"{TOKEN_HEADER} header of a write response",
                {"consistent_with": token},
            )
        return "consistent"
    deadline = time.monotonic() + WAIT_S
    pause = 0.01
    while True:
        reached = await asyncio.to_thread(queries.checkpoint, svc.db, partition)
        if reached is not None and _position(reached) >= wanted:
            return "consistent"
        if time.monotonic() >= deadline:
            return "stale"
        await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(pause * 2, 0.1)


def mark(response: Response, state: str | None) -> Response:
    """Put the outcome of `wait_for` on the list response."""
    if state is not None:
        response.headers[STATE_HEADER] = state
    return response


def _page(db: DatabaseEngine, listing: Listing, cursor: str | None, limit: int) -> Page:
    keys = [SortKey(column, descending) for column, descending in listing.sort]
    with db.connect() as conn:
        page = paginate(conn, listing.query, keys, cursor, limit, listing.boundary)
        page.rows = listing.load(conn, page.rows)
    return page


async def read_page(svc: Services, listing: Listing, cursor: str | None, limit: int) -> Page:
    """One page of a durable list, newest (or highest) first, cut by keyset."""
    return await asyncio.to_thread(_page, svc.db, listing, cursor, limit)
