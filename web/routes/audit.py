"""The audit log (staff): one row per outbox event, read from the database, newest first
(web/services/audit.py).

It trails the writes by the drain lag: a change shows here once the worker has applied it.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from web.auth import require_staff
from web.bodies import parse_query
from web.responses import iso, ok
from web.schemas.catalog import AuditQuery
from web.services import audit
from web.services.container import services


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
    page = await audit.audit_page(services(request), q)
    return ok(request, [_row(r) for r in page.rows], next=page.next, previous=page.previous)


routes: list[BaseRoute] = [Route("/api/audit-logs/", list_audit_logs, methods=["GET"])]
