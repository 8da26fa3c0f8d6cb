"""The app factory: routes, middleware, error handlers and a lifespan that owns the clients.

No I/O at import time: `create_app()` builds the parts; the lifespan opens the Redis engine,
the database engine and the drain trigger, and closes them.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.exceptions
from sqlalchemy.exc import OperationalError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import Scope

from engine import errors as engine_errors
from engine.connection import resolve
from engine.engine import Engine
from engine.settings import Settings
from persistence import behind, jobs
from persistence.db import database_engine
from persistence.db_async import SerialReader, async_database_engine
from persistence.trigger import DrainTrigger
from web import routes as all_routes
from web.accounts import AccountCache, look_up_token
from web.auth import Keys
from web.errors import ApiError, from_engine
from web.live_stock import StockFeed
from web.metrics import Metrics
from web.middleware import ApiMiddleware, allowed_methods, scope_state
from web.ratelimit import EXEMPT, Limiter, limit_check
from web.readiness import Readiness
from web.responses import error, request_id
from web.services.container import Services

# Services (web/services/container.py) is named here too for the callers that build an app.
__all__ = ["Services", "create_app", "served_app"]

log = logging.getLogger("inventory.web")


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    scope_state(request.scope)["error_code"] = exc.code  # the outcome, for the metrics
    return error(request_id(request), exc.status, exc.code, exc.message, exc.details, exc.headers)


async def _engine_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, engine_errors.EngineError)
    if isinstance(exc, engine_errors.LimitExceeded | engine_errors.InvalidQuantity):
        _count_refusal(request, exc.product)
    return await _api_error(request, from_engine(exc))


# The refusals being counted for the operations page (a reference each, until done).
_counting: set[asyncio.Task[None]] = set()


def _count_refusal(request: Request, product: str) -> None:
    """Count a purchase-limit refusal for the operations page, off the answer's path."""
    services: Services | None = getattr(request.app.state, "services", None)
    if services is None:
        return

    async def count() -> None:
        try:
            await services.engine.count_refusal(product)
        except Exception as exc:  # only a figure on a page: never the answer's problem
            log.debug("counting a refusal failed: %s", exc)

    task = asyncio.create_task(count())
    _counting.add(task)
    task.add_done_callback(_counting.discard)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    code = codes.get(exc.status_code, "http_error")
    message = "no such endpoint" if exc.status_code == 404 else str(exc.detail)
    headers = dict(exc.headers) if exc.headers else {}
    if exc.status_code == 405:
        # Starlette names the methods of the first route that matched the path, and here a
        # path has a route per method: Allow lists them all, as HTTP wants.
        headers["Allow"] = ", ".join(allowed_methods(request.scope))
    scope_state(request.scope)["error_code"] = code
    return error(request_id(request), exc.status_code, code, message, headers=headers)


async def _unavailable(request: Request, exc: Exception) -> Response:
    redis_down = (redis.exceptions.RedisError, redis.exceptions.SlotNotCoveredError)
    which = "redis" if isinstance(exc, redis_down) else "database"
    log.warning("%s unavailable: %s", which, exc)
    scope_state(request.scope)["error_code"] = "service_unavailable"
    return error(
        request_id(request),
        503,
        "service_unavailable",
        f"the {which} is unavailable; try again shortly",
        {"dependency": which},
        {"Retry-After": "1"},
    )


def tune_gc(threshold: int) -> None:
    """Python's garbage collector set for a server process, once it has started (GC_THRESHOLD;
    0: left as it is). Measured in the flash sale's API workers with Python's defaults, the
    collector took ~24% of their CPU and paused a worker for up to 140 ms: every 700 container
    objects made and not yet freed it scanned the youngest generation — with 1,000 requests
    in flight, thousands of live objects each time — and, as those requests' objects aged,
    the whole heap, start-up's ~110,000 objects (modules, the app, its routes and models)
    included. So: what start-up made is frozen (`gc.freeze`: never scanned, never freed; it
    lives as long as the process anyway), and the youngest generation is collected every
    `threshold` objects (10,000: cyclic garbage waits a little longer, a few MB at most)."""
    if threshold <= 0:
        return
    gc.collect()  # start-up's garbage, not frozen with the rest
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(threshold, middle, oldest)


def served_app() -> Starlette:
    """The app as `inventory serve` runs it in each worker: `create_app`'s, with the garbage
    collector tuned for a server once it has started (tune_gc)."""
    app = create_app()
    app.state.tune_gc = True
    return app


def create_app(
    settings: Settings | None = None,
    *,
    routes: list[BaseRoute] | None = None,
) -> Starlette:
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # one server or a cluster (engine/connection.py): asks Redis once unless told
        resolved = await asyncio.to_thread(resolve, settings)
        queue = jobs.queue_connection(resolved)  # no queue on a cluster: refused here
        db = database_engine(resolved)
        # a Redis that has started is checked against the database before its first write
        engine = Engine.from_settings(resolved, checkpoints=behind.checkpoints(db))
        if engine.coalescer is not None:
            engine.coalescer.on_send = metrics.observe_batch
        engine.shared_reads.on_read = metrics.observe_stock_read
        await engine.scripts.load()
        await engine.check_layout()  # PARTITIONS as the data's, or refuse to start
        adb = async_database_engine(resolved)
        trigger = DrainTrigger(engine, queue)
        feed = StockFeed(
            engine,
            max_listeners=resolved.stream_max_listeners,
            max_per_client=resolved.stream_max_per_client,
        )
        app.state.services = Services(resolved, engine, db, trigger, adb, feed=feed)
        accounts = AccountCache(db, resolved, reader=SerialReader.of(resolved))
        app.state.accounts = accounts
        if getattr(app.state, "tune_gc", False):
            tune_gc(resolved.gc_threshold)
        try:
            yield
        finally:
            await feed.aclose()
            await accounts.aclose()
            trigger.close()
            db.dispose()
            if adb is not None:
                await adb.dispose()
            await engine.aclose()

    keys = Keys(settings)  # a bad JWT_KEYS fails here, before anything opens
    metrics = Metrics()
    limit = None
    if settings.rate_limit_per_second:
        limiter = Limiter(settings.rate_limit_per_second, settings.rate_limit_burst)
        limit = limit_check(keys, limiter)

    async def look_up(scope: Scope, token: str | None) -> None:
        if token is not None:
            await look_up_token(scope, keys, token)

    handlers = {
        ApiError: _api_error,
        engine_errors.EngineError: _engine_error,
        HTTPException: _http_error,
        redis.exceptions.ConnectionError: _unavailable,
        redis.exceptions.TimeoutError: _unavailable,
        # a Redis Cluster between layouts (a failover, a resharding): the client has retried
        redis.exceptions.ClusterError: _unavailable,
        redis.exceptions.SlotNotCoveredError: _unavailable,
        redis.exceptions.TryAgainError: _unavailable,
        OperationalError: _unavailable,
    }
    # One layer (web/middleware.py): the request id and access log, the timing, the refusals,
    # the account of the caller's token looked up for the endpoint; and the call of a route
    # with a fixed path (the hot path), its errors answered by the same handlers.
    middleware = [
        Middleware(
            ApiMiddleware,
            observe=metrics.observe,
            look_up=look_up,
            max_bytes=settings.max_body_bytes,
            limit=limit,
            exempt=EXEMPT,
            handlers=handlers,
        )
    ]
    app = Starlette(
        routes=routes if routes is not None else all_routes.ROUTES,
        middleware=middleware,
        exception_handlers=handlers,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.keys = keys
    app.state.metrics = metrics
    app.state.readiness = Readiness()
    return app
