"""Reservations and orders live in Redis while they matter and in the database for good: a
read asks Redis first (fresh, read-your-writes) and the database once Redis has let the record
go. Also whose records a list may show, and what a list answers (`Listed`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import Engine as DatabaseEngine

from engine.errors import EngineError
from engine.models import CallContext
from engine.validation import RECORD_ID
from web.auth import Principal
from web.errors import ApiError
from web.pagination import Page
from web.services.container import Services

T = TypeVar("T")
# A database read of one record: (database, record id, scope) → the record, or None.
KeptRead = Callable[[DatabaseEngine, str, str], T | None]


async def kept(svc: Services, read: KeptRead[T], record_id: str, ctx: CallContext) -> T | None:
    """The database's copy of a record Redis does not hold (None: there is none the caller
    may see, or the id is no record's)."""
    if not RECORD_ID.fullmatch(record_id):  # no record has such an id: don't ask
        return None
    return await asyncio.to_thread(read, svc.db, record_id, ctx.scope)


async def redis_first(
    svc: Services,
    fresh: Callable[[], Awaitable[T]],
    read: KeptRead[T],
    record_id: str,
    ctx: CallContext,
    missing: type[EngineError],
) -> T:
    """The record from Redis (`fresh`), or from the database once Redis has let it go. Redis's
    `missing` error stands when the database has no copy either."""
    try:
        return await fresh()
    except missing:
        found = await kept(svc, read, record_id, ctx)
        if found is None:
            raise
        return found


def owner_filter(who: Principal, requested: str | None) -> str | None:
    """Whose records a list shows: staff choose (None = everyone's); a customer sees their
    own and may not ask for anyone else's."""
    if who.staff:
        return requested
    if requested is not None and requested != who.user_id:
        raise ApiError(403, "forbidden", "only staff can list another user's records")
    return who.user_id


@dataclass(frozen=True)
class Listed:
    """A page of a durable list, and how it stands to the write the caller named
    (`consistent_with`): "consistent", "stale", or None when none was named."""

    page: Page
    state: str | None
