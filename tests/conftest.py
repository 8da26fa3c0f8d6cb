"""Fixtures: a real redis-server for the session, an engine per test on a flushed database;
a real PostgreSQL cluster for the session with a fresh migrated database per test, and the
same for SQLite.

A test (or module) marked `cluster` runs twice: on the redis-server and on a real local Redis
Cluster (3 primaries, scripts/redis_cluster/, started once for the session), with the job
queue on the redis-server (QUEUE_REDIS_URL) and PARTITIONS as the test sets it (1 unless it
says otherwise), so that its exact expectations hold on both."""

from __future__ import annotations

import dataclasses
import itertools
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy import Engine as DatabaseEngine
from starlette.applications import Starlette

from engine.connection import connect_sync
from engine.engine import Engine
from engine.settings import Settings
from persistence import jobs, migrate
from persistence.db import database_engine
from scripts.pg_server import PostgresServer
from scripts.redis_cluster import RedisClusterServer
from scripts.redis_server import RedisServer
from tests.api import running
from web.app import create_app


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(Path(tmp_path_factory.mktemp("redis")))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServer]:
    """A real Redis Cluster on 127.0.0.1: 3 primaries, no replicas, for the session."""
    cluster = RedisClusterServer(Path(tmp_path_factory.mktemp("redis-cluster")))
    cluster.start()
    yield cluster
    cluster.stop()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    mark = metafunc.definition.get_closest_marker
    if mark("cluster") and not mark("single_server") and "redis_kind" in metafunc.fixturenames:
        metafunc.parametrize("redis_kind", ["server", "cluster"], indirect=True)


@pytest.fixture
def redis_kind(request: pytest.FixtureRequest) -> str:
    """'server', or 'cluster' for the second run of a test marked `cluster`."""
    return str(getattr(request, "param", "server"))


@pytest.fixture
def settings(
    redis_server: RedisServer, redis_kind: str, request: pytest.FixtureRequest
) -> Settings:
    # Short TTLs are allowed so that expiry can be watched in real time.
    base = Settings(
        redis_url=redis_server.url,
        reservation_ttl_min_ms=50,
        reservation_max_lifetime_ms=3_600_000,
    )
    if redis_kind != "cluster":
        return base
    cluster: RedisClusterServer = request.getfixturevalue("redis_cluster")
    return dataclasses.replace(
        base,
        redis_url=cluster.url,
        redis_cluster=True,
        queue_redis_url=redis_server.url,
        partitions_given=True,
    )


@pytest.fixture
def clean_redis(redis_server: RedisServer, settings: Settings) -> None:
    # The test servers belong to the tests alone; `inventory chaos` never flushes.
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    if settings.redis_cluster:
        cluster = connect_sync(settings)
        cluster.flushall()  # every primary
        cluster.close()


@pytest.fixture
async def engine(settings: Settings, clean_redis: None) -> AsyncIterator[Engine]:
    e = Engine.from_settings(settings)
    yield e
    await e.aclose()


# --- databases ---------------------------------------------------------------------------------

PG_TEMPLATE = "inventory_template"
_pg_databases = itertools.count(1)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """One PostgreSQL cluster for the session (127.0.0.1, a free port, a temporary folder).
    A test may stop() and start() it; the per-test fixtures start it again if needed."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def pg_template(pg_server: PostgresServer) -> str:
    """A database migrated to head once per session, frozen as the template of pg_url's."""
    pg_server.start()
    pg_server.create_database(PG_TEMPLATE)
    migrate.upgrade(pg_server.url_for(PG_TEMPLATE))
    pg_server.make_template(PG_TEMPLATE)
    return PG_TEMPLATE


@pytest.fixture
def pg_url(pg_server: PostgresServer, pg_template: str) -> Iterator[str]:
    """A fresh Postgres database at the newest migration, dropped after the test."""
    pg_server.start()  # in case an earlier test left it stopped
    name = f"test_{next(_pg_databases)}"
    pg_server.create_database(name, template=pg_template)
    yield pg_server.url_for(name)
    pg_server.start()
    pg_server.drop_database(name)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    migrate.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    """A fresh SQLite file in tmp_path at the newest migration (a copy of a migrated one)."""
    path = tmp_path / "inventory.db"
    # The backup API copies a consistent image whatever is left in the template's WAL.
    with closing(sqlite3.connect(sqlite_template)) as src, closing(sqlite3.connect(path)) as dst:
        src.backup(dst)
    return f"sqlite:///{path}"


@pytest.fixture(params=["postgres", "sqlite"])
def db_url(request: pytest.FixtureRequest) -> str:
    """For tests that must hold on both databases: a fresh migrated database of each kind."""
    url: str = request.getfixturevalue("pg_url" if request.param == "postgres" else "sqlite_url")
    return url


# -- database and synchronous Redis handles for the write-through tests ----------------------


@pytest.fixture
def db(db_url: str, settings: Settings) -> Iterator[DatabaseEngine]:
    engine = database_engine(dataclasses.replace(settings, database_url=db_url))
    yield engine
    engine.dispose()


@pytest.fixture
def pg(pg_url: str, settings: Settings) -> Iterator[DatabaseEngine]:
    engine = database_engine(dataclasses.replace(settings, database_url=pg_url))
    yield engine
    engine.dispose()


@pytest.fixture
def sync_redis(settings: Settings) -> Iterator[redis.Redis]:
    client = connect_sync(settings)
    yield client
    client.close()


# -- the HTTP app ----------------------------------------------------------------------------


@pytest.fixture
def app_settings(settings: Settings, db_url: str) -> Settings:
    # Failed logins slow a username's next login (seconds, by default): milliseconds here, so
    # that tests of the limits don't wait; tests of the delay set their own.
    return dataclasses.replace(
        settings,
        database_url=db_url,
        jwt_keys="test:" + "k" * 40 + ",old:" + "o" * 40,
        login_delay_base_ms=1,
        login_delay_max_ms=20,
    )


@pytest.fixture
def app(app_settings: Settings, clean_redis: None) -> Starlette:
    return create_app(app_settings)


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with running(app) as c:
        yield c


@pytest.fixture
def job_env(app_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The worker's jobs, run here against the app's Redis and database."""
    monkeypatch.setenv("REDIS_URL", app_settings.redis_url)
    monkeypatch.setenv("DATABASE_URL", app_settings.database_url)
    if app_settings.redis_cluster:
        monkeypatch.setenv("REDIS_CLUSTER", "1")
        monkeypatch.setenv("QUEUE_REDIS_URL", app_settings.queue_redis_url)
        monkeypatch.setenv("PARTITIONS", str(app_settings.partitions))
    for cached in (jobs.settings, jobs.redis_client, jobs.database):
        cached.cache_clear()
    yield
    jobs.database().dispose()
    for cached in (jobs.settings, jobs.redis_client, jobs.database):
        cached.cache_clear()
