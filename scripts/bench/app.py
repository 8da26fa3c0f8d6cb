"""The API with two extra endpoints for `inventory bench` — never served in production
(`inventory serve --bench` runs this module's `served_bench_app` instead of
`web.app:served_app`; it builds the API with `create_app` and plugs these in from outside):

- `POST /bench/rowlock/reservations/` — the baseline: the same HTTP stack as
  `POST /api/reservations/` (middleware: request id, access log, metrics, rate limit, body
  limit; JWT; the body validated by the same model; the same envelope), but the reservation
  is a PostgreSQL transaction with a row lock (`scripts/bench/rowlock.py`) through a psycopg
  connection pool of `BENCH_POOL_SIZE` connections per worker (default 10).
  `POST /bench/rowlock-async/reservations/` is the same over a pool whose sessions run with
  `synchronous_commit = off`: the answer no longer waits for the WAL's fsync (a crash may lose
  the last ~0.6 s), the like of Redis's `appendfsync everysec`.
- `POST /bench/statement/reservations/` (and `/bench/statement-async/reservations/`) — the
  second baseline, what a user choosing PostgreSQL would write: the same stack, the reservation
  one statement in autocommit (`scripts/bench/statement.py`: a CTE for one line, a PL/pgSQL
  function for a cart), over pools of their own, synchronous and asynchronous commits.
- `POST /bench/bare/reserve` — the floor of our own path: outside every middleware, no
  envelope, no request id, no idempotency, no drain request; it checks the token and the body
  size, parses `{"product", "quantity"}` and calls the same reserve script through the engine.
  201 `{"id"}`, or the API's status with `{"code"}` alone (409 `insufficient_stock`, 404
  `product_not_found`, 400 `invalid_input`).

- `POST /bench/bare/reference` — the bare endpoint calling `scripts/bench/reference.lua` (a
  reservation's minimum work in Redis) instead of the engine, on keys of its own
  (`bench:ref:*`; `reference_keys`): the reference under the same HTTP load as ours, since what
  a command costs Redis grows with the load on the machine's cores. 201 `{"id"}`, or 409
  `{"code": "insufficient_stock"}`.

Every one of them needs a staff token (401 without, 403 for a customer) and keeps the body
limit (413 over MAX_BODY_BYTES), in the API's envelope: `serve --bench` on a reachable address
must not hand strangers a way round the API's checks. The bare endpoint does both itself, at
the cost of a dictionary lookup (Keys remembers verified tokens).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio
from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from engine.errors import EngineError
from engine.keys import uuid4_hex, uuid4_str
from engine.models import CallContext, LineRequest
from engine.settings import Settings
from persistence.db import libpq_url
from scripts.bench import reference, rowlock, statement
from web.accounts import look_up
from web.app import create_app
from web.auth import require_staff
from web.bodies import parse_body
from web.errors import ApiError, from_engine
from web.responses import error, ok, request_id
from web.schemas.orders import ReserveIn
from web.services.container import Services

BARE_PATH = "/bench/bare/reserve"
REFERENCE_PATH = "/bench/bare/reference"
REFERENCE_TTL_MS = 600_000


async def rowlock_reserve(request: Request) -> Response:
    """The baseline reservation: same stack, a row-locking transaction instead of a script."""
    return await _baseline(request, "rowlock", "sync")


async def rowlock_async_reserve(request: Request) -> Response:
    """The baseline with asynchronous commits."""
    return await _baseline(request, "rowlock", "async")


async def statement_reserve(request: Request) -> Response:
    """The second baseline: same stack, one autocommit statement instead of a script."""
    return await _baseline(request, "statement", "sync")


async def statement_async_reserve(request: Request) -> Response:
    """The second baseline with asynchronous commits."""
    return await _baseline(request, "statement", "async")


DESIGNS = {"rowlock": rowlock.reserve, "statement": statement.reserve}


async def _baseline(request: Request, design: str, commit: str) -> Response:
    who = require_staff(request)
    body = await parse_body(request, ReserveIn)
    pool: AsyncConnectionPool[Any] = request.app.state.baseline_pools[design, commit]
    lines = [(line.product, line.quantity) for line in body.line_requests()]
    async with pool.connection() as conn:
        result = await DESIGNS[design](conn, lines, who.user_id, request_id(request))
    if isinstance(result, rowlock.Short):
        raise ApiError(
            409,
            "insufficient_stock",
            "not enough units for every line",
            {
                "lines": [
                    {"product": int(p) if p.isdigit() else p, "requested": r, "available": a}
                    for p, r, a in result.lines
                ]
            },
        )
    data = {
        "id": result.id,
        "lines": [
            {"product": int(p) if p.isdigit() else p, "warehouse": w, "quantity": q}
            for p, w, q in result.lines
        ],
    }
    return ok(request, data, 201)


async def _refuse(exc: ApiError, scope: Scope, receive: Receive, send: Send) -> None:
    """A refusal of the bare endpoint's checks, in the API's envelope (off the measured path)."""
    rid = uuid4_str()
    headers = {**exc.headers, "X-Request-ID": rid}
    await error(rid, exc.status, exc.code, exc.message, exc.details, headers)(scope, receive, send)


async def _bare_body(request: Request, max_bytes: int) -> bytes:
    """The request body, or ApiError 413 past `max_bytes` (declared or streamed)."""
    too_large = ApiError(
        413, "payload_too_large", f"the request body is larger than {max_bytes} bytes"
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    chunks = []
    seen = 0
    more = True
    while more:
        message = await request.receive()
        chunk = message.get("body", b"")
        seen += len(chunk)
        if seen > max_bytes:
            raise too_large
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


async def _bare(app: Starlette, scope: Scope, receive: Receive, send: Send) -> None:
    svc = services_of(app)
    scope["app"] = app  # as Starlette sets it: where the token's keys are found
    request = Request(scope, receive)
    try:
        await look_up(scope, app.state.keys)  # the account check the middleware would make
        who = require_staff(request)
        raw = await _bare_body(request, svc.settings.max_body_bytes)
    except ApiError as exc:
        await _refuse(exc, scope, receive, send)
        return
    status, payload = 400, b'{"code":"invalid_input"}'
    try:
        body = json.loads(raw)
        line = LineRequest(str(int(body["product"])), int(body["quantity"]))
    except (ValueError, KeyError, TypeError):
        pass
    else:
        if scope["path"] == REFERENCE_PATH:
            status, payload = await _reference(app, line, who.user_id)
        else:
            status, payload = await _reserve(svc, line, who.user_id)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def _reserve(svc: Services, line: LineRequest, user: str) -> tuple[int, bytes]:
    try:
        # the token's user holds it, as in the full API (MAX_LIVE_RESERVATIONS_PER_CUSTOMER)
        held = await svc.engine.reserve([line], CallContext(actor=user))
    except EngineError as exc:  # the API's status and code, without its envelope
        refused = from_engine(exc)
        return refused.status, json.dumps({"code": refused.code}).encode()
    return 201, b'{"id":"' + held.id.encode() + b'"}'


async def _reference(app: Starlette, line: LineRequest, user: str) -> tuple[int, bytes]:
    rid = uuid4_hex()
    record = json.dumps(
        {"id": rid, "owner": user, "lines": [[line.product, "main", line.quantity]]}
    )
    args = [*reference.fields(line.product), line.quantity, rid, REFERENCE_TTL_MS, record]
    held = await app.state.reference(keys=reference.keys(rid), args=args)
    if int(held) <= 0:
        return 409, b'{"code":"insufficient_stock"}'
    return 201, b'{"id":"' + rid.encode() + b'"}'


def services_of(app: Starlette) -> Services:
    found: Services = app.state.services
    return found


class BenchApp:
    """The API, with the bare endpoint answered before any middleware runs."""

    def __init__(self, app: Starlette) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] in (BARE_PATH, REFERENCE_PATH)
            and scope["method"] == "POST"
        ):
            await _bare(self.app, scope, receive, send)
            return
        await self.app(scope, receive, send)


def served_bench_app() -> BenchApp:
    """The bench's app as `inventory serve --bench` runs it: the garbage collector tuned as
    for the API (web.app.served_app), for ours and the baselines alike."""
    bench = create_bench_app()
    bench.app.state.tune_gc = True
    return bench


def create_bench_app(settings: Settings | None = None) -> BenchApp:
    """The API as `web.app.create_app` builds it, with the benchmark plugged in from outside:
    its routes after the API's, its connection pools opened inside the API's lifespan (after
    the services, closed before them), the bare endpoint in front of every middleware."""
    settings = settings or Settings.from_env()
    pool_size = int(os.environ.get("BENCH_POOL_SIZE", "10"))
    try:
        conninfo = libpq_url(settings.database_url_or_default)
    except ValueError:
        raise RuntimeError("the row-lock baseline needs DATABASE_URL to name PostgreSQL") from None

    app = create_app(settings)
    app.router.routes += [
        Route("/bench/rowlock/reservations/", rowlock_reserve, methods=["POST"]),
        Route("/bench/rowlock-async/reservations/", rowlock_async_reserve, methods=["POST"]),
        Route("/bench/statement/reservations/", statement_reserve, methods=["POST"]),
        Route("/bench/statement-async/reservations/", statement_async_reserve, methods=["POST"]),
    ]
    api_lifespan = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with api_lifespan(app), _rowlock_pools(app, conninfo, pool_size):
            # the reference script, over connections of its own (EVALSHA)
            client = redis.asyncio.Redis.from_url(settings.redis_url, decode_responses=True)
            app.state.reference = client.register_script(reference.SCRIPT.read_text())
            try:
                yield
            finally:
                await client.aclose()

    app.router.lifespan_context = lifespan
    return BenchApp(app)


@asynccontextmanager
async def _rowlock_pools(app: Starlette, conninfo: str, pool_size: int) -> AsyncIterator[None]:
    """The baselines' pools, one per design and commit setting, at `app.state.baseline_pools`
    (`app.state.rowlock_pools`: the row lock's, by commit setting). The single statement's
    connections are in autocommit: each statement is its own transaction."""
    pools: dict[tuple[str, str], AsyncConnectionPool[Any]] = {}
    for design in DESIGNS:
        for commit in ("sync", "async"):
            kwargs: dict[str, Any] = {"autocommit": design == "statement"}
            if commit == "async":
                kwargs["options"] = "-c synchronous_commit=off"
            pools[design, commit] = AsyncConnectionPool(
                conninfo, kwargs=kwargs, min_size=pool_size, max_size=pool_size, open=False
            )
    for pool in pools.values():
        await pool.open(wait=True, timeout=30)
    app.state.baseline_pools = pools
    app.state.rowlock_pools = {c: pools["rowlock", c] for c in ("sync", "async")}
    try:
        yield
    finally:
        for pool in pools.values():
            await pool.close()
