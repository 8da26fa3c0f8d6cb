"""Operations: liveness and readiness."""

from __future__ import annotations

import asyncio

from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engine import outbox
from web.app import services
from web.errors import ApiError
from web.responses import ok


async def healthz(request: Request) -> Response:
    """The process is up."""
    return ok(request, {"status": "ok"})


def _database_ok(request: Request) -> None:
    with services(request).db.connect() as conn:
        conn.execute(text("SELECT 1"))


async def readyz(request: Request) -> Response:
    """Redis and the database answer, and the outbox backlog is under its limit."""
    svc = services(request)
    problems: dict[str, str] = {}
    backlog = 0
    try:
        await svc.engine.redis.ping()
        for p in range(svc.settings.partitions):
            backlog += await outbox.backlog(svc.engine.redis, p)
    except Exception as exc:
        problems["redis"] = f"{type(exc).__name__}: {exc}"[:300]
    try:
        await asyncio.to_thread(_database_ok, request)
    except Exception as exc:
        problems["database"] = f"{type(exc).__name__}: {exc}"[:300]
    if backlog > svc.settings.outbox_backlog_limit:
        problems["outbox"] = (
            f"backlog {backlog} over the limit {svc.settings.outbox_backlog_limit}: "
            "is the worker running?"
        )
    if problems:
        raise ApiError(
            503,
            "not_ready",
            "; ".join(problems),
            {"problems": problems, "outbox_backlog": backlog},
            {"Retry-After": "5"},
        )
    return ok(request, {"status": "ready", "outbox_backlog": backlog})


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
]
