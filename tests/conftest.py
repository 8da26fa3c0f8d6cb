"""Fixtures: a real redis-server for the session, an engine per test on a flushed database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis

from engine.engine import Engine
from engine.settings import Settings
from tests.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(Path(tmp_path_factory.mktemp("redis")))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def settings(redis_server: RedisServer) -> Settings:
    # Short TTLs are allowed so that expiry can be watched in real time.
    return Settings(
        redis_url=redis_server.url,
        reservation_ttl_min_ms=50,
        reservation_max_lifetime_ms=3_600_000,
    )


@pytest.fixture
def clean_redis(redis_server: RedisServer) -> None:
    # The test server belongs to the tests alone; `inventory chaos` never flushes.
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()


@pytest.fixture
async def engine(settings: Settings, clean_redis: None) -> AsyncIterator[Engine]:
    e = Engine.from_settings(settings)
    yield e
    await e.aclose()
