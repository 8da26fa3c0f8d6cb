"""The audit log: one row per outbox event, read from the database, newest first, filtered.

It trails the writes by the drain lag: a change shows here once the worker has applied it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import Engine, Select, select

from persistence import schema
from web.pagination import Page, SortKey, paginate
from web.schemas.catalog import AuditQuery
from web.services.container import Services

A = schema.audit_log
KEYS = [SortKey(A.c.at, descending=True), SortKey(A.c.id, descending=True)]
EXACT = ("action", "object_type", "object_id", "actor", "request_id")


def _query(q: AuditQuery) -> Select[Any]:
    query = select(A)
    for name in EXACT:
        value = getattr(q, name)
        if value is not None:
            query = query.where(A.c[name] == value)
    if q.since is not None:
        query = query.where(A.c.at >= q.since)
    if q.until is not None:
        query = query.where(A.c.at <= q.until)
    return query


def _page(db: Engine, q: AuditQuery) -> Page:
    with db.connect() as conn:
        return paginate(conn, _query(q), KEYS, q.cursor, q.limit, lambda r: (r.at, r.id))


async def audit_page(svc: Services, q: AuditQuery) -> Page:
    """One keyset page of the rows `q` asks for (by action, object_type, object_id, actor,
    request_id, since/until)."""
    return await asyncio.to_thread(_page, svc.db, q)
