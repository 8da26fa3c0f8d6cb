"""Shared pieces of the engine tests: who calls, the Redis clock, products, counters, events."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any

import httpx

from engine.engine import Engine
from engine.models import CallContext, LineRequest, Reservation
from engine.settings import PROJECT_ROOT, Settings
from tests.helpers import events

ALICE = CallContext(actor="alice", request_id="req-alice")
BOB = CallContext(actor="bob", request_id="req-bob")
STAFF = CallContext(actor="staff-1", request_id="req-staff", staff=True)
ADMIN = CallContext(actor="admin", request_id="req-admin", staff=True)

# short enough to watch expire, long enough to act on before it does
SHORT_TTL_MS = 100

# DESIGN.md's order table, written out here rather than read from engine/states.py (the table
# the scripts are rendered from), so that a change to that table fails the tests instead of
# carrying them along. Row: the order's status; column: the status asked for; 1 = allowed.
ORDER_STATUSES = ("pending", "confirmed", "processing", "shipped", "delivered", "cancelled")
# fmt: off
ORDER_MOVES: dict[str, tuple[int, ...]] = {
    #              pending  confirmed  processing  shipped  delivered  cancelled
    "pending":    (0,       1,         0,          0,       0,         1),
    "confirmed":  (0,       0,         1,          0,       0,         1),
    "processing": (0,       0,         0,          1,       0,         0),
    "shipped":    (0,       0,         0,          0,       1,         0),
    "delivered":  (0,       0,         0,          0,       0,         0),
    "cancelled":  (0,       0,         0,          0,       0,         0),
}
# how an order placed as pending reaches each status
ORDER_PATHS: dict[str, tuple[str, ...]] = {
    "pending":    (),
    "confirmed":  ("confirmed",),
    "processing": ("confirmed", "processing"),
    "shipped":    ("confirmed", "processing", "shipped"),
    "delivered":  ("confirmed", "processing", "shipped", "delivered"),
    "cancelled":  ("cancelled",),
}
# fmt: on


def moves_from(status: str) -> list[str]:
    """The statuses an order in `status` may move to, in the table's column order."""
    return [s for s, ok in zip(ORDER_STATUSES, ORDER_MOVES[status], strict=True) if ok]


def redis_env(settings: Settings) -> dict[str, str]:
    """The environment that points a process of ours (the worker, the CLI) at the Redis of
    `settings`: REDIS_URL, and on a cluster REDIS_CLUSTER, QUEUE_REDIS_URL and PARTITIONS."""
    env = {"REDIS_URL": settings.redis_url}
    if settings.redis_cluster:
        env |= {
            "REDIS_CLUSTER": "1",
            "QUEUE_REDIS_URL": settings.queue_redis_url,
            "PARTITIONS": str(settings.partitions),
        }
    return env


async def redis_now_ms(engine: Engine) -> int:
    """The Redis clock, which stamps every record and event."""
    seconds, micros = await engine.redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def add_product(
    engine: Engine,
    product: str,
    stock: Mapping[str, int],
    *,
    price: int = 250,
    currency: str | None = None,
    priorities: Mapping[str, int] | None = None,
) -> None:
    """A product stocked in `stock`'s warehouses, prioritised in the mapping's order unless
    `priorities` says otherwise."""
    warehouses = dict(priorities) if priorities else {w: i for i, w in enumerate(stock)}
    await engine.setup_product(
        product, ADMIN, price=price, currency=currency, warehouses=warehouses, stock=stock
    )


async def levels(engine: Engine, product: str) -> dict[str, tuple[int, int]]:
    """warehouse -> (available, reserved), read back through the engine."""
    found = await engine.get_stock(product)
    return {lv.warehouse: (lv.available, lv.reserved) for lv in found.levels}


def movement(
    product: str, warehouse: str, available: tuple[int, int], reserved: tuple[int, int]
) -> dict[str, Any]:
    """A movement as an outbox event carries it: counters before and after."""
    return {
        "product": product,
        "warehouse": warehouse,
        "available_before": available[0],
        "available_after": available[1],
        "reserved_before": reserved[0],
        "reserved_after": reserved[1],
    }


def assert_stamped(
    event: dict[str, Any], *, actor: str, request_id: str, low_ms: int, high_ms: int
) -> None:
    """The common fields every event carries: who, under which request, and when."""
    assert event["actor"] == actor
    assert event["request_id"] == request_id
    assert low_ms <= event["ts"] <= high_ms


async def hold(engine: Engine, quantity: int = 3, *, ttl_ms: int = 60_000) -> Reservation:
    """Alice holds `quantity` of sku-1, which has 10 units in main."""
    await add_product(engine, "sku-1", {"main": 10})
    return await engine.reserve([LineRequest("sku-1", quantity)], ALICE, ttl_ms=ttl_ms)


async def wait_until_due(engine: Engine, *reservations: Reservation) -> None:
    """Sleep until the Redis clock has reached every reservation's expires_at."""
    due = max(r.expires_at_ms for r in reservations)
    await asyncio.sleep(max(0, due - await redis_now_ms(engine) + 5) / 1000)
    assert await redis_now_ms(engine) >= due


async def of_type(engine: Engine, etype: str) -> list[dict[str, Any]]:
    return [e for e in await events(engine.redis) if e["type"] == etype]


def wait_until_serving(
    url: str, proc: subprocess.Popen[Any], what: str, timeout: float = 30
) -> None:
    """Until `url` answers at all (any status), while the process that should serve it lives."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.TransportError:
            assert proc.poll() is None, f"{what} exited with {proc.returncode}"
            assert time.monotonic() < deadline, f"{what} did not start"
            time.sleep(0.1)


def run_cli(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 60, **run: Any
) -> subprocess.CompletedProcess[str]:
    """`inventory ARGS` as a process of its own: this environment plus `env`, text captured."""
    return subprocess.run(
        [sys.executable, "-m", "scripts.cli", *args],
        cwd=PROJECT_ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **run,
    )


def last_json(proc: subprocess.CompletedProcess[str]) -> Any:
    """The JSON line a command prints last."""
    return json.loads(proc.stdout.strip().splitlines()[-1])
