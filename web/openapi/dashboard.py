"""The operations table, part three: the operations page and the JSON it polls
(web/openapi/document.py builds the document from it)."""

from __future__ import annotations

from web.openapi.document import Operation
from web.schemas.dashboard import DashboardOut

TEXT = {"type": "string"}

OPERATIONS: list[Operation] = [
    Operation(
        "GET", "/dashboard", "dashboard_page", "The operations page (staff sign in on it)",
        "operations", "open", TEXT, raw="text/html", backend=False,
        description="Plain HTML served by the app, with its script and stylesheet below: "
        "nothing from another host. It holds no data; it polls `GET /api/ops/dashboard/`.",
    ),
    Operation(
        "GET", "/dashboard/static/dashboard.js", "dashboard_script",
        "The operations page's script", "operations", "open", TEXT,
        raw="text/javascript", backend=False,
    ),
    Operation(
        "GET", "/dashboard/static/dashboard.css", "dashboard_stylesheet",
        "The operations page's stylesheet", "operations", "open", TEXT,
        raw="text/css", backend=False,
    ),
    Operation(
        "GET", "/api/ops/dashboard/", "ops_dashboard",
        "Staff: outbox, dead letters, workers and queues, reservations, low stock, reconcile",
        "operations", "staff", DashboardOut,
        description="Read at the call: Redis numbers are exact now; the database's trail the "
        "writes by the drain lag. With the database down (or RQ's registries unreadable) "
        "their panels are null and `problems` says why; Redis down is 503.",
    ),
]  # fmt: skip
