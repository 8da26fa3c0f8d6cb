"""Driving the real app in-process: its lifespan, real Redis, a real database, httpx."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette

from engine.settings import Settings
from persistence import users
from persistence.db import database_engine
from scripts.redis_server import free_port
from web.app import create_app
from web.auth import Principal
from web.http_protocol import CorkedHttpToolsProtocol


@asynccontextmanager
async def running(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield c


def bearer(app: Starlette, user_id: str, *, staff: bool = False, name: str = "") -> dict[str, str]:
    """An access token of account `user_id` (a number), made in the app's database if missing
    (and made staff if `staff`): a token counts only while its account exists."""
    name = name or f"user-{user_id}"
    services = getattr(app.state, "services", None)
    db = services.db if services is not None else database_engine(app.state.settings)
    try:
        users.ensure_synthetic(db, {int(user_id): name}, staff=staff)
    finally:
        if services is None:
            db.dispose()
    token = app.state.keys.issue(Principal(user_id, name, staff), "access")
    return {"Authorization": f"Bearer {token}"}


def data(response: httpx.Response) -> Any:
    body = response.json()
    assert "error" not in body, body
    return body["data"]


def newest_first(*items: dict[str, Any]) -> list[str]:
    """The ids in a list's order: newest first, and by id between records made in the same
    millisecond (the order a list promises; calls made one after another can share one)."""
    at = {item["id"]: datetime.fromisoformat(item["created_at"]) for item in items}
    return sorted(at, key=lambda id_: (at[id_], id_), reverse=True)


def err(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert "data" not in body, body
    assert body["request_id"] == response.headers["x-request-id"]
    error: dict[str, Any] = body["error"]
    assert error["code"]
    assert error["message"]
    return error


def assert_invalid_body(response: httpx.Response, field: str, problem: str) -> None:
    """A 400 for a body its model refused, naming the field and the problem."""
    assert response.status_code == 400
    error = err(response)
    assert (error["code"], error["message"]) == ("invalid_input", "the request body is not valid")
    assert any(
        e["field"] == field and problem in e["problem"] for e in error["details"]["errors"]
    ), error


class Server:
    """uvicorn serving the app in a thread of this process, lifespan and all (a real socket:
    for what the in-process transport can't do, a stream that never ends)."""

    def __init__(self, settings: Settings | None = None, *, app: Starlette | None = None) -> None:
        if app is None:  # the API on these settings, else the app given
            assert settings is not None, "Server needs settings or an app"
            app = create_app(settings)
        self.app = app
        self.port = free_port()
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            http=CorkedHttpToolsProtocol,  # as `inventory serve` runs it
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
