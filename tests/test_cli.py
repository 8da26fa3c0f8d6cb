"""The `inventory` command end to end, as a separate process against a real Redis."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis

from engine.engine import Engine
from engine.keys import partition_keys
from engine.models import SYSTEM, CallContext, LineRequest
from engine.scripts import library
from scripts.redis_server import RedisServer, free_port
from tests.helpers import event_types
from tests.support import last_json, run_cli

USER = CallContext(actor="u1")


def inventory(server: RedisServer, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env={"REDIS_URL": server.url})


async def test_sweep_releases_due_reservations(engine: Engine, redis_server: RedisServer) -> None:
    await engine.setup_product("p1", SYSTEM, price=100, stock={"main": 3})
    await engine.reserve([LineRequest("p1", 2)], USER, ttl_ms=50)
    await asyncio.sleep(0.1)

    proc = inventory(redis_server, "sweep", "--json")

    assert proc.returncode == 0, proc.stderr
    assert last_json(proc) == {
        "expired": 1,
        "still_due": 0,
        "carts": 0,
        "timed_out": 0,
        "waitlist_left": 0,
        "redis_behind": [],
    }
    stock = await engine.get_stock("p1")
    assert (stock.available, stock.reserved) == (3, 0)
    assert (await event_types(engine.redis)).count("reservation_expired") == 1


async def test_check_passes_then_reports_drift(engine: Engine, redis_server: RedisServer) -> None:
    await engine.setup_product("p1", SYSTEM, price=100, stock={"main": 3})
    await engine.reserve([LineRequest("p1", 1)], USER)

    ok = inventory(redis_server, "check", "--json")
    assert ok.returncode == 0, ok.stderr
    assert last_json(ok)["invariants_ok"] is True
    assert last_json(ok)["live_reservations"] == 1

    # drift from outside the scripts (an operator's stray HINCRBY)
    await engine.redis.hincrby(partition_keys(0).stock, "r|p1|main", 1)
    bad = inventory(redis_server, "check", "--json")
    assert bad.returncode == 1
    assert last_json(bad)["invariants_ok"] is False
    assert any("p1@main" in p for p in last_json(bad)["problems"])


async def test_serve_runs_the_api_with_the_library_loaded(
    engine: Engine, redis_server: RedisServer, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.function_flush()
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "scripts.cli", "serve", "--port", str(port)],
        env={
            **os.environ,
            "REDIS_URL": redis_server.url,
            "DATABASE_URL": f"sqlite:///{tmp_path / 'serve.db'}",
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            deadline = time.monotonic() + 20
            while True:
                try:
                    health = await http.get("/healthz", headers={"X-Request-ID": "serve-test"})
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "serve did not start listening"
                    await asyncio.sleep(0.1)
        # the library is loaded at start-up, before any request
        assert client.function_list(library=library().name)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), timeout=15)
        client.close()
    assert health.status_code == 200
    assert health.json() == {"request_id": "serve-test", "data": {"status": "ok"}}
    # uvicorn shuts down gracefully, then re-raises the signal it got
    assert proc.returncode in (0, -signal.SIGTERM), err
    assert b"Application shutdown complete" in err
    assert f"http://127.0.0.1:{port}/api/".encode() in err
    access = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    assert {"request_id": "serve-test", "path": "/healthz", "status": 200}.items() <= (
        access[-1].items()
    )


def test_bad_arguments_are_refused_clearly(redis_server: RedisServer, clean_redis: None) -> None:
    proc = inventory(redis_server, "chaos", "--processes", "0")
    assert proc.returncode == 2
    assert "processes" in proc.stderr
    assert redis.Redis.from_url(redis_server.url).dbsize() == 0  # nothing was created


@pytest.mark.parametrize("limit", ["0", "-1", "100001", "many"])
def test_a_bad_sweep_limit_is_a_usage_error(limit: str) -> None:
    """Refused by the command line (exit 2, argparse's error line after its usage), before
    anything is reached: no traceback."""
    proc = run_cli("sweep", f"--limit={limit}", env={"REDIS_URL": "redis://127.0.0.1:1/0"})
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    *_, last = proc.stderr.splitlines()
    assert last.startswith("inventory sweep: error: argument --limit: "), proc.stderr
