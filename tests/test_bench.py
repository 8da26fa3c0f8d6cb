"""The benchmark's parts: the row-lock baseline never oversells under contention, the bench
endpoints refuse bad input, and `inventory bench` runs every scenario end to end on services
it starts itself, with exact counts (a small run: the figures themselves are not asserted)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis
from psycopg_pool import AsyncConnectionPool

from engine.keys import partition_keys
from engine.models import SYSTEM
from engine.settings import PROJECT_ROOT, Settings
from persistence.db import libpq_url
from scripts.bench import reference, rowlock, statement
from scripts.bench.app import BARE_PATH, REFERENCE_PATH, create_bench_app
from scripts.bench.cost import median_ratio, pool
from scripts.bench.harness import exact_counts
from scripts.redis_server import RedisServer, free_port
from tests.api import bearer, err
from tests.support import run_cli, wait_until_serving
from web.app import create_app

RUNNING_KEYS = "run:" + "r" * 40


@pytest.fixture
def rowlock_db(pg_url: str) -> str:
    with psycopg.connect(libpq_url(pg_url), autocommit=True) as conn:
        rowlock.create_tables(conn)
        statement.create_tables(conn)
    return libpq_url(pg_url)


@pytest.mark.parametrize("design", [rowlock, statement], ids=["row-lock", "single-statement"])
async def test_baselines_sell_each_unit_once(rowlock_db: str, design: Any) -> None:
    """Both PostgreSQL designs: the row lock's transaction, and the single statement in
    autocommit (a CTE for one line, the PL/pgSQL function for a cart)."""
    prefix = "rowlock_" if design is rowlock else "statement_"
    with psycopg.connect(rowlock_db, autocommit=True) as conn:
        design.stock(conn, {"hot": 10, "a": 5, "b": 1})
    kwargs = {"autocommit": design is statement}
    async with AsyncConnectionPool(rowlock_db, min_size=8, max_size=8, kwargs=kwargs) as pool:

        async def buy(lines: list[tuple[str, int]], user: str) -> Any:
            async with pool.connection() as conn:
                return await design.reserve(conn, lines, user, f"req-{user}")

        results = await asyncio.gather(*(buy([("hot", 1)], f"u{i}") for i in range(40)))
        # carts: all lines or none; b has one unit, so only one cart with b succeeds
        carts = await asyncio.gather(*(buy([("a", 1), ("b", 1)], f"c{i}") for i in range(4)))

    assert Counter(type(r).__name__ for r in results) == {"Held": 10, "Short": 30}
    assert all(r.lines == [("hot", 1, 0)] for r in results if isinstance(r, rowlock.Short))
    assert Counter(type(r).__name__ for r in carts) == {"Held": 1, "Short": 3}
    with psycopg.connect(rowlock_db) as conn:
        assert design.counters(conn, ["hot", "a", "b"]) == {
            "hot": (0, 10),
            "a": (4, 1),
            "b": (0, 1),
        }
        tables = ("reservations", "reservation_lines", "ledger", "audit")
        count = conn.execute(
            "SELECT " + ", ".join(f"(SELECT count(*) FROM {prefix}{t})" for t in tables)
        ).fetchone()
    assert count == (11, 12, 12, 11)  # a refusal writes nothing


@pytest.fixture
async def bench_client(
    settings: Settings, clean_redis: None, pg_url: str, rowlock_db: str
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    app_settings = dataclasses.replace(settings, database_url=pg_url, jwt_keys="t:" + "k" * 40)
    bench_app = create_bench_app(app_settings)
    app = bench_app.app
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=bench_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield c, app


def test_the_production_app_has_no_bench_endpoints(settings: Settings) -> None:
    """The benchmark plugs its endpoints into the app from outside: `create_app` alone (what
    `inventory serve` runs) has none of them."""
    app_settings = dataclasses.replace(
        settings, database_url="postgresql://nobody@127.0.0.1/x", jwt_keys="t:" + "k" * 40
    )  # nothing is opened: the apps are only built
    paths = [getattr(route, "path", "") for route in create_app(app_settings).router.routes]
    bench = [getattr(r, "path", "") for r in create_bench_app(app_settings).app.router.routes]
    assert not [path for path in paths if path.startswith("/bench")]
    assert sorted(set(bench) - set(paths)) == [
        "/bench/rowlock-async/reservations/",
        "/bench/rowlock/reservations/",
        "/bench/statement-async/reservations/",
        "/bench/statement/reservations/",
    ]


async def test_bench_endpoints_refuse_bad_input(
    bench_client: tuple[httpx.AsyncClient, Any],
) -> None:
    client, app = bench_client
    path = "/bench/rowlock/reservations/"
    one = {"product": 1, "quantity": 1}

    async def code(response: Any) -> str:
        found: str = err(await response)["code"]
        return found

    # the baseline sits behind the API's checks: a staff token, JSON, a valid body
    assert await code(client.post(path, json=one)) == "not_authenticated"
    assert await code(client.post(path, json=one, headers=bearer(app, "7"))) == "forbidden"
    user = bearer(app, "8", staff=True)
    as_json = {**user, "content-type": "application/json"}
    assert await code(client.post(path, content=b"{", headers=as_json)) == "malformed_json"
    huge = b'{"product": 1, "quantity": 1, "pad": "' + b"x" * 70_000 + b'"}'
    assert await code(client.post(path, content=huge, headers=as_json)) == "payload_too_large"
    zero = {"product": 1, "quantity": 0}
    assert await code(client.post(path, json=zero, headers=user)) == "invalid_input"
    short = await client.post(path, json=one, headers=user)
    assert short.status_code == 409
    assert err(short)["code"] == "insufficient_stock"
    # the bare endpoint: no envelope, but a clean 400 for anything it can't read
    for body in (b"", b"[]", b'{"product": "x", "quantity": 1}', b'{"product": 1}'):
        answer = await client.post(BARE_PATH, content=body, headers=user)
        assert (answer.status_code, answer.json()) == (400, {"code": "invalid_input"})
    missing = await client.post(BARE_PATH, json={"product": 424242, "quantity": 1}, headers=user)
    assert (missing.status_code, missing.json()) == (404, {"code": "product_not_found"})


async def test_the_bare_endpoint_serves_staff_within_the_body_limit(
    bench_client: tuple[httpx.AsyncClient, Any],
) -> None:
    client, app = bench_client
    engine = app.state.services.engine
    await engine.setup_product("5", SYSTEM, price=100, stock={"main": 3})
    outbox = partition_keys(0).outbox
    events = await engine.redis.xlen(outbox)
    one = {"product": 5, "quantity": 1}
    staff = bearer(app, "1", staff=True)

    async def streamed() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
        for _ in range(8):
            yield b" " * 10_000
        yield b'{"product": 5, "quantity": 1}'

    anonymous = await client.post(BARE_PATH, json=one)
    forged = await client.post(BARE_PATH, json=one, headers={"Authorization": "Bearer forged"})
    customer = await client.post(BARE_PATH, json=one, headers=bearer(app, "2"))
    declared = await client.post(
        BARE_PATH, content=b" " * 70_000 + json.dumps(one).encode(), headers=staff
    )
    chunked = await client.post(BARE_PATH, content=streamed(), headers=staff)

    # refused in the API's envelope, with a request id of their own; nothing reserved
    expected = [
        (anonymous, 401, "not_authenticated"),
        (forged, 401, "invalid_token"),
        (customer, 403, "forbidden"),
        (declared, 413, "payload_too_large"),
        (chunked, 413, "payload_too_large"),
    ]
    for answer, status, code in expected:
        assert (answer.status_code, err(answer)["code"]) == (status, code)
    assert anonymous.headers["www-authenticate"] == "Bearer"
    assert err(declared)["message"] == "the request body is larger than 65536 bytes"
    stock = await engine.get_stock("5")
    assert (stock.available, stock.reserved) == (3, 0)
    assert await engine.redis.xlen(outbox) == events

    held = await client.post(BARE_PATH, json=one, headers=staff)
    assert held.status_code == 201
    assert set(held.json()) == {"id"}
    assert (await engine.get_stock("5")).reserved == 1


async def test_the_reference_endpoint_runs_the_reference_script_on_keys_of_its_own(
    bench_client: tuple[httpx.AsyncClient, Any],
) -> None:
    client, app = bench_client
    engine = app.state.services.engine
    stock = reference.keys("")[0]
    available, reserved = reference.fields(9)
    await engine.redis.hset(stock, mapping={available: 1, reserved: 0})
    events = await engine.redis.xlen(partition_keys(0).outbox)
    one = {"product": 9, "quantity": 1}
    staff = bearer(app, "1", staff=True)
    customer = await client.post(REFERENCE_PATH, json=one, headers=bearer(app, "2"))
    assert (customer.status_code, err(customer)["code"]) == (403, "forbidden")
    held = await client.post(REFERENCE_PATH, json=one, headers=staff)
    short = await client.post(REFERENCE_PATH, json=one, headers=staff)
    assert held.status_code == 201
    assert (short.status_code, short.json()) == (409, {"code": "insufficient_stock"})
    rid = held.json()["id"]
    assert await engine.redis.hmget(stock, available, reserved) == ["0", "1"]
    record = json.loads(await engine.redis.get(reference.keys(rid)[1]))
    assert record == {"id": rid, "owner": "1", "lines": [["9", "main", 1]]}
    assert await engine.redis.xlen(reference.keys(rid)[3]) == 1
    # the engine's own keys are untouched
    assert await engine.redis.xlen(partition_keys(0).outbox) == events


async def test_row_lock_endpoint_reserves(bench_client: tuple[httpx.AsyncClient, Any]) -> None:
    client, app = bench_client
    pool = app.state.rowlock_pools["sync"]
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO rowlock_stock VALUES ('5', 'main', 2, 0) "
            "ON CONFLICT (product, warehouse) DO UPDATE SET available = 2, reserved = 0"
        )
    user = bearer(app, "7", staff=True)
    path, one = "/bench/rowlock/reservations/", {"product": 5, "quantity": 1}
    answers = [await client.post(path, json=one, headers=user) for _ in range(2)]
    # the same over the pool with asynchronous commits, on the same row
    path_async = "/bench/rowlock-async/reservations/"
    answers.append(await client.post(path_async, json=one, headers=user))
    assert [a.status_code for a in answers] == [201, 201, 409]
    async with app.state.rowlock_pools["async"].connection() as conn:
        setting = await (await conn.execute("SHOW synchronous_commit")).fetchone()
    assert setting == ("off",)
    lines = answers[0].json()["data"]["lines"]
    assert lines == [{"product": 5, "warehouse": "main", "quantity": 1}]


async def test_single_statement_endpoint_reserves(
    bench_client: tuple[httpx.AsyncClient, Any],
) -> None:
    client, app = bench_client
    pool = app.state.baseline_pools["statement", "sync"]
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO statement_stock VALUES ('5', 'main', 2, 0), ('6', 'main', 1, 0) "
            "ON CONFLICT (product, warehouse) DO UPDATE SET available = 2, reserved = 0"
        )
    user = bearer(app, "7", staff=True)
    path, one = "/bench/statement/reservations/", {"product": 5, "quantity": 1}
    answers = [await client.post(path, json=one, headers=user)]
    answers.append(
        await client.post("/bench/statement-async/reservations/", json=one, headers=user)
    )
    answers.append(await client.post(path, json=one, headers=user))
    assert [a.status_code for a in answers] == [201, 201, 409]
    assert err(answers[2])["details"]["lines"] == [{"product": 5, "requested": 1, "available": 0}]
    cart = {"lines": [{"product": 6, "quantity": 1}, {"product": 5, "quantity": 1}]}
    short_cart = await client.post(path, json=cart, headers=user)
    assert short_cart.status_code == 409
    async with app.state.baseline_pools["statement", "async"].connection() as conn:
        setting = await (await conn.execute("SHOW synchronous_commit")).fetchone()
        left = await (
            await conn.execute(
                "SELECT available, reserved FROM statement_stock WHERE product = '6'"
            )
        ).fetchone()
    assert setting == ("off",)
    assert left == (1, 0)  # the short cart took nothing


def inventory(
    *args: str, timeout: float = 240, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env={"COLUMNS": "200", **(env or {})}, timeout=timeout)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scenario", "nope"], "unknown scenario nope"),
        (["--scenario", ""], "name a scenario"),
        (["--fsync", "sometimes"], "--fsync takes"),
        (["--baseline-commit", "maybe"], "--baseline-commit takes"),
        (["--buyers", "0"], "--buyers must be"),
        (["--baselines", "sqlite"], "--baselines takes"),
        (["--cost-connections", "0"], "--cost-connections must be"),
        (["--stock", "5", "--buyers", "3"], "--stock must be"),
        (
            ["--scenario", "fair-sale", "--buyers", "5", "--stock", "5"],
            "--buyers must be at least twice --stock for the fair-sale scenario",
        ),
        (["--scenario", "all", "--buyers", "19", "--stock", "10"], "at least twice --stock"),
    ],
)
def test_bench_refuses_bad_options(args: list[str], message: str) -> None:
    done = inventory("bench", *args)
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()  # one line, no traceback
    assert message in line


def test_instructions_counts_what_redis_executes_per_reservation() -> None:
    """scripts/bench/instructions.py: Redis under callgrind, counting only the reservations
    made after the warm-up, alone or coalesced; the same calls count the same."""

    def counted(*args: str) -> dict[str, Any]:
        done = subprocess.run(
            [sys.executable, "-m", "scripts.bench.instructions", *args],
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=240, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-4000:]
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result

    batched = counted("--batch", "16", "--reservations", "64", "--warm", "16")
    again = counted("--batch", "16", "--reservations", "64", "--warm", "16")
    alone = counted("--batch", "1", "--reservations", "64", "--warm", "16", "--idempotency")
    assert (batched["batch"], batched["reservations"], batched["warm"]) == (16, 64, 16)
    assert (alone["batch"], alone["idempotency"]) == (1, True)
    for result in (batched, alone):  # a reservation is tens of Redis commands' worth of work
        assert 50_000 < result["instructions_per_reservation"] < 5_000_000
        assert result["instructions_per_reservation"] == round(result["instructions"] / 64)
    # the count hardly moves from run to run (the new ids and the clock's digits differ), also
    # on a busy machine: Redis's timer ticks (serverCron, ~150k instructions each) are apart
    assert all(r["timer_instructions"] >= 0 for r in (batched, again, alone))
    assert abs(again["instructions"] - batched["instructions"]) < batched["instructions"] / 50
    # the rate limiter's settles instead: per bucket settled (one request each)
    settled = counted("--settle", "--batch", "16", "--reservations", "64", "--warm", "16")
    assert (settled["settle"], settled["batch"]) == (True, 16)
    assert 5_000 < settled["instructions_per_reservation"] < batched["instructions_per_reservation"]
    assert settled["settle_age_ms"] == 0  # (admitted at the settle: the bucket is written)
    # a sold-out product's: every call refused for stock, each refusal counted (less than a sale)
    sold = counted("--sold-out", "--batch", "16", "--reservations", "64", "--warm", "16")
    assert (sold["sold_out"], batched["sold_out"]) == (True, False)
    assert 5_000 < sold["instructions_per_reservation"] < batched["instructions_per_reservation"]
    # the commits of reservations made before counting, each alone: per commit
    committed = counted("--commit", "--batch", "1", "--reservations", "64", "--warm", "16")
    assert (committed["commit"], batched["commit"]) == (True, False)
    assert 50_000 < committed["instructions_per_reservation"] < 5_000_000
    # ...coalesced, as the engine sends concurrent commits: each costs less
    together = counted("--commit", "--batch", "16", "--reservations", "64", "--warm", "16")
    assert together["batch"] == 16
    assert together["instructions_per_reservation"] > 50_000
    assert together["instructions_per_reservation"] < committed["instructions_per_reservation"]
    # direct orders instead of reservations, coalesced: per order
    ordered = counted("--orders", "--batch", "16", "--reservations", "64", "--warm", "16")
    assert (ordered["orders"], batched["orders"]) == (True, False)
    assert 50_000 < ordered["instructions_per_reservation"] < 5_000_000
    refused = subprocess.run(
        [sys.executable, "-m", "scripts.bench.instructions", "--batch", "16",
         "--reservations", "40"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert refused.returncode == 2
    assert "multiple of --batch" in refused.stderr
    ageless = subprocess.run(
        [sys.executable, "-m", "scripts.bench.instructions", "--settle-age", "25"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert ageless.returncode == 2
    assert "--settle-age: 0 or more ms, with --settle" in ageless.stderr


def test_exact_counts_is_false_on_any_miscount() -> None:
    """What makes `inventory bench` exit 1: a sale that sold a wrong count, a broken invariant,
    or a database copy that differs from Redis after a scenario."""
    good: dict[str, dict[str, Any]] = {
        "flash-sale": {
            "rows": [{"exact_counts": True}, {"mode": "saturation"}],
            "invariants_ok": True,
            "database_copy_ok": True,
        },
        "drain": {"rows": []},
    }
    assert exact_counts(good) is True
    sold_wrong: dict[str, dict[str, Any]] = {
        "flash-sale": {**good["flash-sale"], "rows": [{"exact_counts": False}]}
    }
    broken = {"catalog": {"rows": [], "invariants_ok": False, "database_copy_ok": True}}
    copy_differs = {"cost": {"rows": [], "invariants_ok": True, "database_copy_ok": False}}
    for bad in (sold_wrong, broken, copy_differs):
        assert exact_counts({**good, **bad}) is False


# Rows of half a second and one round of the cost scenario: the run proves every scenario runs
# with exact counts (the figures come from `inventory bench` itself), in half the suite time.
# The durabilities measured: the normal run takes one like-for-like pair (ours at appendfsync
# always, the baselines at synchronous_commit on) through every scenario; `-m slow` takes both
# pairs (ours at each appendfsync setting, each baseline at each synchronous_commit setting).
DURABILITIES = [
    pytest.param(("always",), ("sync",), id="always-vs-sync"),
    pytest.param(
        ("everysec", "always"), ("sync", "async"), id="every-durability", marks=pytest.mark.slow
    ),
]


@pytest.mark.parametrize(("fsyncs", "commits"), DURABILITIES)
def test_bench_runs_every_scenario_with_exact_counts(
    tmp_path: Path, fsyncs: tuple[str, ...], commits: tuple[str, ...]
) -> None:
    plot, tables = tmp_path / "bench.png", tmp_path / "bench.md"
    done = inventory(
        "bench",
        # cluster: its own test
        "--scenario", "flash-sale,catalog,lifecycle,engine,drain,cost,fair-sale",
        "--buyers", "60", "--stock", "10", "--rounds", "2",
        "--seconds", "0.5", "--rate", "100", "--products", "300", "--connections", "16",
        "--cost-rounds", "1",
        "--fsync", ",".join(fsyncs), "--baseline-commit", ",".join(commits),
        "--events", "400", "--drain-rate", "200",
        "--plot", str(plot), "--markdown", str(tables),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    scenarios = report["scenarios"]
    assert set(scenarios) == {
        "flash-sale", "catalog", "lifecycle", "engine", "drain", "cost", "fair-sale"
    }  # fmt: skip
    (fair,) = scenarios["fair-sale"]["rows"]  # every unit once, the line served in order
    assert (fair["sold"], fair["held_first"], fair["refused_by_limit"]) == (10, 10, 10)
    assert (fair["waitlisted"], fair["walked_away"], fair["handed_off"]) == (50, 5, 5)
    assert fair["handed_in_join_order"] is True
    assert fair["exact_counts"] is True
    assert report["exact_counts"] is True
    for scenario in scenarios.values():  # Redis's invariants, and the database copy drained
        assert scenario["invariants_ok"] is True
        assert scenario["database_copy_ok"] is True
    assert scenarios["catalog"]["database_copy_compared"] >= 300  # and the earlier ones

    sales = [r for r in scenarios["flash-sale"]["rows"] if r["mode"] == "sale"]
    assert {(r["system"], r["fsync"]) for r in sales} == {
        *(("ours", fsync) for fsync in fsyncs),
        *((b, f"{c} commit") for b in ("row-lock", "single-statement") for c in commits),
    }
    for row in sales:  # 2 sales of 10 units to 60 buyers each: exactly 20 sold, 100 refused
        assert (row["ok"], row["refused"], row["errors"], row["oversold"]) == (20, 100, 0, 0)
        assert row["exact_counts"] is True
    for scenario in ("flash-sale", "catalog", "lifecycle", "engine", "cost"):
        for row in scenarios[scenario]["rows"]:
            assert row.get("errors", 0) == 0, (scenario, row)
    cost = scenarios["cost"]
    full, bare, reference, reference_http, read, *statements = cost["rows"]
    systems = [r["system"] for r in cost["rows"]]
    assert systems[:5] == [
        "full API", "bare endpoint", "reference", "reference over HTTP", "product read"
    ]  # fmt: skip
    assert systems[5:] == ["single-statement"] * len(commits)  # at each durability
    for row in (full, bare, reference_http, read, *statements):  # per request: /proc, INFO cpu
        assert row["ok"] > 0
        assert row["api_cpu_us"] > 0
        assert row["redis_cpu_us"] > 0
    for row in (reference, reference_http):
        assert row["redis_cpu_us"] > 0
        assert row["redis_commands"]["xadd"]["calls"] == 1  # one event per call
    assert reference_http["redis_commands"]["evalsha"]["calls"] == 1  # each call alone
    assert cost["redis_cpu_full_vs_reference_http"] > 0
    assert cost["api_cpu_full_vs_bare"] > 0
    assert cost["redis_cpu_full_vs_reference"] > 0
    assert cost["drained"] == cost["backlog_events"] > 0
    assert cost["worker_cpu_us_per_event"] > 0
    assert cost["pg_rows_per_event"] > 0
    assert set(cost["cpu_all_in_us"]) == {
        "full API",
        *(f"single-statement ({c} commit)" for c in commits),
    }
    assert all(v > 0 for v in cost["cpu_all_in_us"].values())
    steps = {r["mode"]: r for r in scenarios["lifecycle"]["rows"]}
    assert steps["reserve"]["ok"] > 0
    assert steps["delivered"]["ok"] > 0
    assert steps["commit"]["ok"] >= steps["delivered"]["ok"]
    engine_rows = {r["system"]: r for r in scenarios["engine"]["rows"]}
    assert set(engine_rows) == {"redis-py", "engine", "engine, coalesced", "row-lock"}
    together = engine_rows["engine, coalesced"]  # every call sent, alone or in a batch
    assert together["calls_per_fcall"] >= 1
    assert sum(int(size) * n for size, n in together["batch_sizes"].items()) >= together["ok"]
    assert engine_rows["engine"]["redis_cpu_us"] > 0
    assert scenarios["drain"]["drained"] > 0
    targets = report["targets"]
    assert targets["flash_sale_oversold"] == {
        "value": 0,
        "target": 0,
        "higher_is_better": False,
        "met": True,
    }
    like = {"always": "sync", "everysec": "async"}  # the pairs at like durability
    paired = [f" [{f} vs {c} commit]" for f, c in like.items() if f in fsyncs and c in commits]
    assert paired
    for name in (
        *(
            name + pair
            for pair in paired
            for name in (
                "flash_sale_throughput_x",
                "flash_sale_burst_p99_fraction",
                "catalog_throughput_x",
                "flash_sale_vs_statement_throughput_x",
                "flash_sale_vs_statement_p99_fraction",
            )
        ),
        "redis_cpu_full_vs_reference",
        "redis_cpu_full_vs_reference_http",
        "api_cpu_full_vs_bare",
        "api_cpu_read_vs_bare",
        "drain_vs_api_events_x",
        "engine_vs_redis_py",
        "engine_coalesced_vs_alone",
        "api_vs_bare_endpoint",
    ):
        assert targets[name]["value"] > 0, name
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = tables.read_text()
    assert "### flash-sale" in text
    assert "| flash_sale_oversold | 0 | <= 0 | yes |" in text
    assert "### cost" in text
    assert "bench: flash-sale" in done.stderr
    assert "against the targets" in done.stderr
    assert "flash_sale_throughput_x [always vs sync commit]" in done.stderr
    assert "exact_counts = true" in done.stderr


CLUSTER_ROWS = [
    "1 shard",
    "3 shards",
    "3 shards, carts of 2 lines in 1 partition",
    "3 shards, carts of 2 lines across partitions",
    "catalog over HTTP, 1 shard",
    "catalog over HTTP, 3 shards",
    "3 shards + replicas, no WAIT",
    "3 shards + replicas, REDIS_WAIT_REPLICAS=1",
]


def redis_servers_on(ports: set[int]) -> list[str]:
    """The command lines of the running redis-server processes of one of `ports` (a node
    titles itself "redis-server 127.0.0.1:PORT [cluster]")."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        words = cmdline.decode(errors="replace").replace("\0", " ").split()
        if (
            words
            and Path(words[0]).name == "redis-server"
            and any(w == str(p) or w.endswith(f":{p}") for w in words[1:] for p in ports)
        ):
            found.append(" ".join(words))
    return found


def test_bench_cluster_runs_on_clusters_of_its_own() -> None:
    """`--cluster`: local clusters started and stopped by the run itself (no Stack), the engine
    in-process on each layout, every row's reservations exact, each primary's CPU measured."""
    done = inventory("bench", "--cluster", "--seconds", "0.5", "--products", "200", timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert list(report["scenarios"]) == ["cluster"]
    assert report["exact_counts"] is True
    result = report["scenarios"]["cluster"]
    assert [r["system"] for r in result["rows"]] == CLUSTER_ROWS
    rows = [r for r in result["rows"] if r["mode"] == "in-process"]
    over_http = [r for r in result["rows"] if r["mode"] == "http"]
    assert [r["partitions"] for r in rows] == [1, 64, 64, 64, 64, 64]
    assert [r["wait_replicas"] for r in rows] == [0, 0, 0, 0, 0, 1]
    assert [r["lines_per_reservation"] for r in rows] == [1, 1, 2, 2, 1, 1]
    assert result["invariants_ok"] is True
    ports: set[int] = set()
    for row in rows:
        assert row["exact_counts"] is True, row
        assert row["ok"] > 0
        assert row["errors"] == row["not_replicated"], row["error_kinds"]  # nothing else failed
        assert row["made"] == row["ok"] + row["not_replicated"] + 64
        # the units: the timed reservations' lines, and the warm-up's one each
        lines = row["lines_per_reservation"]
        assert row["reserved_in_redis"] == (row["made"] - 64) * lines + 64
        assert len(row["primary_ports"]) == 3
        assert len(row["redis_cpu_us_per_primary"]) == 3
        assert len(row["primary_cpu_share"]) == 3
        # the timed ones' units, by the shard of their product
        units = (row["made"] - 64) * row["lines_per_reservation"]
        assert sum(row["reservations_per_primary"]) == units
        assert row["redis_cpu_us"] > 0
        assert row["calls_per_fcall"] >= 1
        ports.update(row["primary_ports"])
    one, spread, _, _, replicated, _ = rows
    assert sorted(one["reservations_per_primary"])[:2] == [0, 0]  # one shard did all the work
    assert all(n > 0 for n in spread["reservations_per_primary"])
    assert one["replica_cpu_us"] is None
    assert replicated["replica_cpu_us"] > 0
    assert result["cluster_spread"] == max(spread["primary_cpu_share"])
    assert result["wait_cost"]["throughput_x"] > 0
    assert result["wait_cost"]["p50_x"] > 0
    cost = result["cart_across_cost"]
    assert cost["redis_cpu_x"] > 1  # a cart across partitions costs more calls than in one
    assert cost["client_cpu_x"] > 0
    informative = report["targets"]["cluster_spread"]
    assert (informative["target"], informative["met"]) == (None, None)
    assert "bench: cluster" in done.stderr
    assert "exact_counts = true" in done.stderr
    assert not redis_servers_on(ports)  # every node stopped
    # the catalog over HTTP, served by `inventory serve` on the cluster: 1 shard, then 3
    one_http, spread_http = over_http
    assert [r["partitions"] for r in over_http] == [1, 64]
    for row in over_http:
        assert row["exact_counts"] is True, row
        assert row["ok"] > 0
        assert row["errors"] == 0
        assert row["redis_cpu_us"] > 0
    # (the rate limiter's buckets and the catalog's version live on every node in both)
    assert max(one_http["primary_cpu_share"]) > 0.5
    assert all(share > 0.15 for share in spread_http["primary_cpu_share"])


@pytest.fixture
def bench_server(redis_server: RedisServer, clean_redis: None, pg_url: str, tmp_path: Path) -> Any:
    """`inventory serve --bench` running on its own, as an operator would start it."""
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    env = {
        **os.environ,
        "REDIS_URL": redis_server.url,
        "DATABASE_URL": pg_url,
        "JWT_KEYS": RUNNING_KEYS,
        "RATE_LIMIT_PER_SECOND": "0",
    }
    command = [sys.executable, "-m", "scripts.cli", "serve", "--bench", "--no-access-log"]
    proc = subprocess.Popen(
        [*command, "--port", str(port)],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=log,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(f"{url}/healthz", proc, "inventory serve --bench")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


def test_bench_against_running_services(
    bench_server: str, redis_server: RedisServer, pg_url: str
) -> None:
    args = ["--api-url", bench_server, "--redis-url", redis_server.url, "--database-url", pg_url]
    done = inventory(
        "bench", *args,
        "--scenario", "flash-sale,catalog",
        "--buyers", "30", "--stock", "5", "--rounds", "1", "--seconds", "1",
        "--rate", "50", "--products", "50", "--connections", "8",
        "--baseline-commit", "sync",  # the baselines' asynchronous pools: every-durability, above
        env={"JWT_KEYS": RUNNING_KEYS},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    sales = [r for r in report["scenarios"]["flash-sale"]["rows"] if r["mode"] == "sale"]
    # measured at the Redis's own setting, which the bench leaves as it found it
    assert {(r["system"], r["fsync"]) for r in sales} >= {("ours", "everysec")}
    for row in sales:
        assert (row["ok"], row["refused"], row["oversold"]) == (5, 25, 0)
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        fields: list[str] = client.hkeys(partition_keys(0).stock)  # type: ignore[assignment]
        products = {f.split("|")[1] for f in fields}
    finally:
        client.close()
    assert products
    assert all(int(p) >= 1_000_000_000 for p in products)  # far from real products' ids


def test_bench_against_running_services_needs_their_keys(
    bench_server: str, redis_server: RedisServer, pg_url: str
) -> None:
    args = ["--api-url", bench_server, "--redis-url", redis_server.url, "--database-url", pg_url]
    no_keys = inventory("bench", *args, env={"JWT_KEYS": ""})
    assert no_keys.returncode == 2
    assert "JWT_KEYS" in no_keys.stderr
    drain = inventory("bench", *args, "--scenario", "drain", env={"JWT_KEYS": RUNNING_KEYS})
    assert drain.returncode == 2
    assert "drain scenario" in drain.stderr
    plain = inventory("bench", "--api-url", "http://127.0.0.1:1", "--redis-url", redis_server.url,
                      "--database-url", pg_url, "--scenario", "flash-sale",
                      env={"JWT_KEYS": RUNNING_KEYS})  # fmt: skip
    assert plain.returncode != 0
    assert "readyz" in plain.stderr


def test_cost_rows_pool_over_rounds_and_ratios_take_the_median() -> None:
    """A row measured in rounds: counts summed, CPU per operation weighted by the operations
    each round counted, the rate over all the time; a ratio is the median of its rounds'."""
    one = {"system": "full API", "requests": 100, "ok": 100, "refused": 0, "errors": 0}
    one |= {"ops_per_s": 100.0, "p50_ms": 10.0, "p95_ms": 20.0, "p99_ms": 30.0, "max_ms": 40.0}
    one |= {"api_cpu_us": 1000.0, "redis_cpu_us": 100.0, "postgres_cpu_us": None}
    one["redis_commands"] = {"fcall": {"calls": 1.0, "usec": 90.0}}
    two = one | {"requests": 300, "ok": 300, "ops_per_s": 300.0, "p50_ms": 12.0, "max_ms": 90.0}
    two |= {"api_cpu_us": 600.0, "redis_cpu_us": 60.0}
    two["redis_commands"] = {
        "fcall": {"calls": 1.0, "usec": 50.0},
        "get": {"calls": 1.0, "usec": 4.0},
    }
    three = one | {"p50_ms": 50.0}
    row = pool([one, two, three])
    assert (row["requests"], row["ok"], row["rounds"]) == (500, 500, 3)
    assert row["api_cpu_us"] == 760.0  # (100 x 1000 + 300 x 600 + 100 x 1000) / 500
    assert row["redis_cpu_us"] == 76.0
    assert row["postgres_cpu_us"] is None
    assert row["ops_per_s"] == 166.7  # 500 requests over 1 s + 1 s + 1 s
    assert (row["p50_ms"], row["max_ms"]) == (12.0, 90.0)
    assert row["redis_commands"]["fcall"] == {"calls": 1.0, "usec": 66.0}
    assert row["redis_commands"]["get"] == {"calls": 0.6, "usec": 2.4}
    assert pool([one]) is one
    assert median_ratio([(300, 100), (100, 100), (200, 100)]) == (2.0, [3.0, 1.0, 2.0])
    assert median_ratio([(None, 100)]) == (None, [])
