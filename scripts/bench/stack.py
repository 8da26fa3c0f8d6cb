"""The services a run measures: Redis, PostgreSQL and `inventory serve --bench`, started
here or already running. With `cluster`, the data lives on that Redis Cluster (started by the
caller, scripts/bench/cluster.py) and the Redis started here holds only the job queue."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
import redis
from sqlalchemy import select

from engine import outbox
from engine.connection import connect_sync
from engine.engine import Engine
from engine.models import SYSTEM
from engine.settings import Settings
from persistence import behind, migrate, schema, users
from persistence.db import database_engine, libpq_url
from persistence.drain import drain_partition
from scripts.bench import rowlock, statement
from scripts.bench.options import (
    BARE,
    BASELINE,
    EXTERNAL_IDS,
    JWT_KEYS,
    PATHS,
    STATEMENT,
    Options,
    Target,
)
from scripts.pg_server import PostgresServer
from scripts.redis_cluster import RedisClusterServer
from scripts.redis_server import RedisServer, free_port
from web.auth import Keys, Principal


class Stack:
    """Redis, PostgreSQL and the API server (`inventory serve --bench`), on 127.0.0.1 — started
    here, or already running (`Options.target`)."""

    def __init__(
        self, opts: Options, *, cluster: RedisClusterServer | None = None, partitions: int = 1
    ) -> None:
        self.opts = opts
        self.cluster, self.partitions = cluster, partitions
        self.target = opts.target
        self.tmp = Path(tempfile.mkdtemp(prefix="ire-bench-"))
        self.redis: RedisServer | None = None
        self.pg: PostgresServer | None = None
        self.server: subprocess.Popen[bytes] | None = None
        if self.target is None:
            self.redis = RedisServer(self.tmp / "redis", appendfsync=opts.fsync[0])
            self.pg = PostgresServer(database="bench", durable=True)
            self.connect = ("127.0.0.1", 0)  # its port chosen in start()
            self.redis_url, self.database_url = self.redis.url, self.pg.url
            if cluster is not None:
                self.redis_url = cluster.url
        else:
            api = urllib.parse.urlsplit(self.target.api_url)
            if api.scheme != "http" or not api.hostname:
                raise ValueError("--api-url must be http://host[:port] (the bench speaks HTTP/1.1)")
            self.connect = (api.hostname, api.port or 80)
            self.redis_url, self.database_url = self.target.redis_url, self.target.database_url
        self._use_port(self.connect[1])
        self.settings = Settings()
        self.keys: Keys | None = None
        # against running services, far from the ids real products and users have
        first = 1 if self.target is None else EXTERNAL_IDS + random.randrange(EXTERNAL_IDS)
        self._ids = iter(range(first, 1 << 62))
        self.user_base = 0 if self.target is None else EXTERNAL_IDS
        self.ours: set[str] = set()  # the products this run put in Redis

    def _use_port(self, port: int) -> None:
        self.connect = (self.connect[0], port)
        self.host = f"{self.connect[0]}:{port}"
        self.port = port

    def start(self) -> None:
        if self.target is not None:
            self._attach(self.target)
            return
        assert self.redis is not None
        assert self.pg is not None
        self.redis.start()
        self.pg.start()
        # the API's port, chosen once Redis and PostgreSQL hold theirs: a free port picked
        # before they started could be the one either of them then took
        self._use_port(free_port())
        migrate.upgrade(self.pg.url)
        with psycopg.connect(libpq_url(self.database_url), autocommit=True) as conn:
            rowlock.create_tables(conn)
            statement.create_tables(conn)
        self.settings = Settings(
            redis_url=self.redis_url,
            database_url=self.pg.url,
            jwt_keys=JWT_KEYS,
            reservation_ttl_min_ms=1000,
            redis_cluster=self.cluster is not None,
            queue_redis_url=self.redis.url,
            partitions=self.partitions,
            partitions_given=True,
        )
        self.keys = Keys(self.settings)
        env = {
            **os.environ,
            "REDIS_URL": self.redis_url,
            "QUEUE_REDIS_URL": self.redis.url,
            "PARTITIONS": str(self.partitions),
            "DATABASE_URL": self.pg.url,
            "JWT_KEYS": JWT_KEYS,
            # on, as in production, but roomy: each buyer is a user of their own
            "RATE_LIMIT_PER_SECOND": "1000",
            "RATE_LIMIT_BURST": "1000",
            # the live-reservation cap checked on every reservation, but out of reach: at
            # saturation a buyer makes far more than 20 reservations, and refusals past the
            # cap (cheaper than a reservation) would flatter ours against the baselines
            "MAX_LIVE_RESERVATIONS_PER_CUSTOMER": "1000000",
            "RESERVATION_TTL_MIN": "1",
            "BENCH_POOL_SIZE": str(self.opts.pool_size),
        }
        command = [sys.executable, "-m", "scripts.cli", "serve", "--bench", "--no-access-log"]
        command += ["--port", str(self.port), "--workers", str(self.opts.workers)]
        if self.opts.server_cpus:
            command = ["taskset", "-c", self.opts.server_cpus, *command]
        log = (self.tmp / "serve.log").open("wb")
        self.server = subprocess.Popen(command, env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://{self.host}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if self.server.poll() is not None or time.monotonic() > deadline:
                tail = (self.tmp / "serve.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the API server did not start:\n{tail}")
            time.sleep(0.2)

    def _attach(self, target: Target) -> None:
        """Running services: check that the server is ready and serves the bench endpoints;
        measure ours at the Redis's own appendfsync setting (never changed here), and let the
        service's worker drain (no lag measured here)."""
        self.settings = Settings(
            redis_url=target.redis_url,
            database_url=target.database_url,
            jwt_keys=target.jwt_keys,
        )
        self.keys = Keys(self.settings)
        try:
            with urllib.request.urlopen(f"http://{self.host}/readyz", timeout=5) as r:
                ready = r.status == 200
        except OSError as exc:
            raise RuntimeError(f"{target.api_url}/readyz: {exc}") from None
        if not ready:
            raise RuntimeError(f"{target.api_url} is not ready")
        # an empty body: 400 from the bench endpoint, if it is there and takes our token
        staff = {"Authorization": f"Bearer {self.token(1, staff=True)}"}
        probe = urllib.request.Request(
            f"http://{self.host}{PATHS[BARE]}", b"", staff, method="POST"
        )
        try:
            urllib.request.urlopen(probe, timeout=5).close()
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise RuntimeError(
                    f"{target.api_url} has no bench endpoints: start it with "
                    "`inventory serve --bench`"
                ) from None
            if exc.code == 401:
                raise RuntimeError(
                    f"{target.api_url} refuses our tokens: JWT_KEYS must be the server's"
                ) from None
        with psycopg.connect(libpq_url(target.database_url), autocommit=True) as conn:
            rowlock.create_tables(conn)
            statement.create_tables(conn)
        client = self.redis_client()
        try:
            current = client.config_get("appendfsync").get("appendfsync") or "unknown"
        except redis.ResponseError:  # CONFIG may be renamed away
            current = "unknown"
        finally:
            client.close()
        self.opts.fsync = (current,)

    def close(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)
            try:
                self.server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.server.kill()
        if self.redis is not None:
            self.redis.stop()
        if self.pg is not None:
            self.pg.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def settle(self) -> None:
        """Before each scenario, as pgbench does: a CHECKPOINT now, so that the one the earlier
        scenarios' writes call for doesn't land in the middle of the next measurement."""
        if self.target is not None:
            return  # someone else's database
        with psycopg.connect(libpq_url(self.database_url), autocommit=True) as conn:
            conn.execute("CHECKPOINT")

    def redis_client(self) -> redis.Redis:
        """A client of the data's Redis (the cluster client on a cluster)."""
        return connect_sync(self.settings)

    def set_fsync(self, mode: str) -> None:
        if self.target is not None or self.cluster is not None:
            return  # someone else's Redis, or a cluster started at its own: measured as it is
        client = self.redis_client()
        client.config_set("appendfsync", mode)
        client.close()

    def product_id(self) -> int:
        return next(self._ids)

    def token(self, user: int, *, staff: bool = False) -> str:
        return self.tokens([user], staff=staff)[0]

    def tokens(self, buyers: Sequence[int], *, staff: bool = False) -> list[str]:
        """Access tokens of these buyers, their accounts made first (in one transaction): a
        token counts only while its account exists."""
        assert self.keys is not None
        ids = [user + self.user_base for user in buyers]
        db = database_engine(self.settings)
        try:
            users.ensure_synthetic(db, {i: f"buyer-{i}" for i in ids}, staff=staff)
        finally:
            db.dispose()
        return [self.keys.issue(Principal(str(i), f"buyer-{i}", staff), "access") for i in ids]

    def stock(self, system: str, products: dict[int, int]) -> None:
        """Put units on products, in Redis (ours, bare) or in a baseline's tables."""
        if system in (BASELINE, STATEMENT):
            put = rowlock.stock if system == BASELINE else statement.stock
            with psycopg.connect(libpq_url(self.database_url), autocommit=True) as conn:
                put(conn, {str(p): n for p, n in products.items()})
            return
        self.ours.update(str(p) for p in products)

        async def setup() -> None:
            # (a Redis that has started is checked against the database first, as the API's
            # engine checks it: against a service's Redis, the bench's write may be the first)
            db = database_engine(self.settings)
            checked = behind.checkpoints(db)
            async with Engine.from_settings(self.settings, checkpoints=checked) as engine:
                items = list(products.items())
                for i in range(0, len(items), 500):
                    await asyncio.gather(
                        *(
                            engine.setup_product(str(p), SYSTEM, price=1999, stock={"main": n})
                            for p, n in items[i : i + 500]
                        )
                    )
            db.dispose()

        asyncio.run(setup())

    def reserved(self, system: str, product: int) -> tuple[int, int]:
        """(available, reserved) of a product (the bench stocks one warehouse)."""
        if system in (BASELINE, STATEMENT):
            counters = rowlock.counters if system == BASELINE else statement.counters
            with psycopg.connect(libpq_url(self.database_url)) as conn:
                return counters(conn, [str(product)]).get(str(product), (0, 0))

        async def read() -> tuple[int, int]:
            async with Engine.from_settings(self.settings) as engine:
                stock = await engine.get_stock(str(product))
            return stock.available, stock.reserved

        return asyncio.run(read())

    def check_invariants(self) -> bool:
        async def check() -> bool:
            async with Engine.from_settings(self.settings) as engine:
                reports = await engine.check_invariants()
            return all(r.ok for r in reports)

        return asyncio.run(check())

    def drain_to_end(self, timeout: float = 120) -> bool:
        """Every event in the outboxes applied to the database, drained here (under each
        partition's drain lock, so a running service's worker may drain alongside: one at a time).
        False if it did not get there."""
        client = self.redis_client()
        db = database_engine(self.settings)
        deadline = time.monotonic() + timeout
        try:
            for p in range(self.settings.partitions):
                while outbox.length(client, p) > 0:
                    if time.monotonic() > deadline:
                        return False
                    result = drain_partition(client, db, self.settings, p)
                    if result.behind:
                        return False
                    if result.applied == 0:
                        time.sleep(0.05)  # another drainer holds the partition
        finally:
            client.close()
            db.dispose()
        return True

    def copy_matches(self) -> dict[str, Any]:
        """The database copy against Redis after a scenario: drain to the end, then compare the
        counters (available, reserved per product and warehouse) of every product this run put
        in Redis with their rows in `stock_levels`."""
        drained = self.drain_to_end()
        products = sorted(self.ours)

        async def live() -> dict[tuple[str, str], tuple[int, int]]:
            async with Engine.from_settings(self.settings) as engine:
                found = {}
                for i in range(0, len(products), 1000):
                    stocks = await engine.get_stocks(products[i : i + 1000])
                    for p, stock in stocks.items():
                        for level in stock.levels:
                            found[p, level.warehouse] = (level.available, level.reserved)
                return found

        in_redis = asyncio.run(live())
        t = schema.stock_levels
        db = database_engine(self.settings)
        try:
            with db.connect() as conn:
                rows = conn.execute(
                    select(t.c.product, t.c.warehouse, t.c.available, t.c.reserved).where(
                        t.c.product.in_(products)
                    )
                ).all()
        finally:
            db.dispose()
        in_database = {(p, w): (int(a), int(r)) for p, w, a, r in rows}
        differ = sorted(
            k for k in in_redis.keys() | in_database.keys() if in_redis.get(k) != in_database.get(k)
        )
        return {
            "database_copy_ok": drained and not differ,
            "database_copy_compared": len(in_redis),
            "database_copy_differ": [f"{p}|{w}" for p, w in differ[:5]],
        }

    def checks(self) -> dict[str, Any]:
        """After a scenario: Redis's invariants, and the database copy drained to the end and
        compared with Redis."""
        return {"invariants_ok": self.check_invariants(), **self.copy_matches()}

    def server_pid(self) -> int | None:
        """The API server's process (its workers are its children), when started here."""
        return self.server.pid if self.server is not None else None

    def postgres_pid(self) -> int | None:
        """PostgreSQL's postmaster (its backends are its children), when started here."""
        if self.pg is None:
            return None
        try:
            return int((self.pg.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
