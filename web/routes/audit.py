"""The audit log (staff): one row per outbox event, read from the database, newest first.

It trails the writes by the drain lag: a change shows here once the worker has applied it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import Engine, Select, select
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from persistence import schema
from web.auth import require_staff
from web.bodies import parse_query
from web.pagination import Page, SortKey, paginate
from web.responses import iso, ok
from web.schemas.catalog import AuditQuery
from web.services.container import services

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


def _row(r: Any) -> dict[str, Any]:
    return {
        "id": r.id,
        "event_id": r.event_id,
        "at": iso(r.at),
        "actor": r.actor,
        "action": r.action,
        "object_type": r.object_type,
        "object_id": r.object_id,
        "old_value": r.old_value,
        "new_value": r.new_value,
        "request_id": r.request_id,
    }


async def list_audit_logs(request: Request) -> Response:
    """Staff: filter by action, object_type, object_id, actor, request_id, since/until."""
    require_staff(request)
    q = parse_query(request, AuditQuery)
    page = await asyncio.to_thread(_page, services(request).db, q)
    return ok(request, [_row(r) for r in page.rows], next=page.next, previous=page.previous)


routes: list[BaseRoute] = [Route("/api/audit-logs/", list_audit_logs, methods=["GET"])]
