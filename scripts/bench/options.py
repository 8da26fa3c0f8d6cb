"""What a run of `inventory bench` is asked to do: its options, the systems it compares
and the paths they answer on."""

from __future__ import annotations

import dataclasses

SCENARIOS = (
    "flash-sale",
    "catalog",
    "lifecycle",
    "engine",
    "drain",
    "cost",
    "cluster",
    "fair-sale",
)
JWT_KEYS = "bench:" + "b" * 40
OURS, BASELINE, BARE = "ours", "row-lock", "bare"
# the reference script behind the bare endpoint's stack (cost scenario; scripts/bench/app.py)
REFERENCE_HTTP = "reference over HTTP"


STATEMENT = "single-statement"  # the second baseline: one SQL statement per reservation
BASELINES = (BASELINE, STATEMENT)  # the PostgreSQL designs, each behind the same HTTP stack
SYNC, ASYNC = "sync commit", "async commit"  # the baselines' durability settings
PATHS = {
    OURS: "/api/reservations/",
    BASELINE: "/bench/rowlock/reservations/",
    STATEMENT: "/bench/statement/reservations/",
    BARE: "/bench/bare/reserve",
    REFERENCE_HTTP: "/bench/bare/reference",
}
BASELINE_PATHS = {SYNC: PATHS[BASELINE], ASYNC: "/bench/rowlock-async/reservations/"}
STATEMENT_PATHS = {SYNC: PATHS[STATEMENT], ASYNC: "/bench/statement-async/reservations/"}
DURABLE_PATHS = {BASELINE: BASELINE_PATHS, STATEMENT: STATEMENT_PATHS}
# like for like: a reservation durable before the answer, or one that may be lost in a crash
# within about a second (Redis fsyncs the AOF every second; PostgreSQL's WAL writer within
# 3 x wal_writer_delay = 0.6 s)
PAIRS = {"always": SYNC, "everysec": ASYNC}
HUGE = 100_000_000  # units of a hot product that must not run out during saturation


@dataclasses.dataclass
class Options:
    scenarios: list[str]
    buyers: int = 1000
    stock: int = 100
    rounds: int = 3
    seconds: float = 5.0
    rate: float = 500.0
    products: int = 10_000
    connections: int = 256
    workers: int = 2
    load_procs: int = 1
    fsync: tuple[str, ...] = ("everysec", "always")
    baseline_commit: tuple[str, ...] = (SYNC, ASYNC)
    pool_size: int = 10
    load_cpus: set[int] | None = None
    server_cpus: str | None = None
    target: Target | None = None
    drain_events: int = 20_000
    drain_rate: float = 5000.0
    baselines: tuple[str, ...] = BASELINES
    cost_connections: int = 64
    cost_rounds: int = 3


@dataclasses.dataclass(frozen=True)
class Target:
    """Services already running: `inventory serve --bench` at `api_url` over this Redis and
    this PostgreSQL, signing tokens with `jwt_keys` (the server's JWT_KEYS)."""

    api_url: str
    redis_url: str
    database_url: str
    jwt_keys: str


EXTERNAL_IDS = 1_000_000_000  # products and buyers of a run against running services
