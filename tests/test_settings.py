"""Settings: read from the environment in one place; bad values refused; secrets hidden."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from engine.connection import CLUSTER_PARTITIONS, resolve, with_cluster
from engine.settings import PROJECT_ROOT, Settings


def test_settings_defaults() -> None:
    s = Settings.from_env({})
    assert s == Settings()
    assert (s.partitions, s.reservation_ttl_ms, s.default_warehouse) == (1, 600_000, "main")
    assert s.data_dir == PROJECT_ROOT / "data"
    # empty values count as unset
    assert Settings.from_env({"PARTITIONS": "", "RESERVATION_TTL": "", "REDIS_URL": ""}) == s


def test_settings_overrides() -> None:
    s = Settings.from_env(
        {
            "REDIS_URL": "redis://10.0.0.5:6380/2",
            "REDIS_MAX_CONNECTIONS": "8",
            "REDIS_POOL_TIMEOUT": "0.5",
            "PARTITIONS": "4",
            "REDIS_CLUSTER": "1",
            "QUEUE_REDIS_URL": "redis://10.0.0.6:6379/0",
            "RESERVATION_TTL": "30",
            "RESERVATION_TTL_MIN": "0.25",
            "RESERVATION_TTL_MAX": "120",
            "RESERVATION_MAX_LIFETIME": "600",
            "RESERVATION_RETENTION": "60",
            "ORDER_RETENTION": "3600",
            "IDEMPOTENCY_TTL": "1.5",
            "EXPIRE_BATCH": "7",
            "SWEEP_BATCH": "70",
            "DEFAULT_WAREHOUSE": "berlin",
            "DEFAULT_CURRENCY": "EUR",
            "DATA_DIR": "/srv/inventory",
        }
    )
    assert s == Settings(
        redis_url="redis://10.0.0.5:6380/2",
        redis_max_connections=8,
        redis_pool_timeout_s=0.5,
        partitions=4,
        partitions_given=True,
        redis_cluster=True,
        queue_redis_url="redis://10.0.0.6:6379/0",
        reservation_ttl_ms=30_000,
        reservation_ttl_min_ms=250,
        reservation_ttl_max_ms=120_000,
        reservation_max_lifetime_ms=600_000,
        reservation_retention_ms=60_000,
        order_retention_ms=3_600_000,
        idempotency_ttl_ms=1_500,
        expire_batch=7,
        sweep_batch=70,
        default_warehouse="berlin",
        default_currency="EUR",
        data_dir=Path("/srv/inventory"),
    )


@pytest.mark.parametrize(
    "env",
    [
        {"PARTITIONS": "0"},
        {"REDIS_CLUSTER": "maybe"},
        {"PARTITIONS": "two"},
        {"PARTITIONS": "1.5"},
        {"REDIS_MAX_CONNECTIONS": "0"},
        {"EXPIRE_BATCH": "-1"},
        {"SWEEP_BATCH": "0"},
        {"REDIS_POOL_TIMEOUT": "soon"},
        {"RESERVATION_TTL": "-1"},
        {"RESERVATION_TTL": "ten"},
        {"RESERVATION_TTL": "nan"},
        {"IDEMPOTENCY_TTL": "-0.001"},
        {"RESERVATION_TTL_MIN": "0"},
        {"RESERVATION_TTL_MIN": "20", "RESERVATION_TTL": "10"},
        {"RESERVATION_TTL": "7200"},
        {"RESERVATION_TTL_MAX": "300", "RESERVATION_TTL": "600"},
        {"RESERVATION_MAX_LIFETIME": "1800"},
        {"GC_THRESHOLD": "-1"},
        {"GC_THRESHOLD": "often"},
    ],
)
def test_bad_settings_raise_value_error(env: dict[str, str]) -> None:
    # the message names the variable (for a value that is no number too, not Python's own
    # "invalid literal for int()"), which the CLI prints as its one line
    with pytest.raises(ValueError, match="|".join(env)):
        Settings.from_env(env)


def test_infinite_duration_raises_value_error() -> None:
    with pytest.raises(ValueError, match="RESERVATION_TTL"):
        Settings.from_env({"RESERVATION_TTL": "inf"})


@pytest.mark.parametrize("timeout", ["-1", "nan"])
def test_bad_pool_timeout_raises_value_error(timeout: str) -> None:
    with pytest.raises(ValueError, match="REDIS_POOL_TIMEOUT"):
        Settings.from_env({"REDIS_POOL_TIMEOUT": timeout})


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@cache:6379/0", "redis://***@cache:6379/0"),
        ("rediss://app:s3cret@cache.example:6380/1", "rediss://***@cache.example:6380/1"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ],
)
def test_describe_hides_the_password(url: str, shown: str) -> None:
    described = Settings(redis_url=url).describe()
    assert described["redis_url"] == shown
    assert "s3cret" not in json.dumps(described)
    assert set(described) == set(Settings.__dataclass_fields__)
    assert described["reservation_ttl_ms"] == "600000"


def test_describe_hides_a_password_containing_at() -> None:
    described = Settings(redis_url="redis://app:pa@ss@cache:6379/0").describe()
    assert described["redis_url"] == "redis://***@cache:6379/0"


def test_account_cache_and_login_delay_settings() -> None:
    s = Settings.from_env(
        {
            "ACCOUNT_CACHE_TTL": "0.5",
            "LOGIN_DELAY_BASE": "0.05",
            "LOGIN_DELAY_MAX": "2",
        }
    )

    assert s.account_cache_ttl_ms == 500
    assert (s.login_delay_base_ms, s.login_delay_max_ms) == (50, 2_000)
    with pytest.raises(ValueError, match="LOGIN_DELAY_BASE must be <= LOGIN_DELAY_MAX"):
        Settings.from_env({"LOGIN_DELAY_BASE": "5", "LOGIN_DELAY_MAX": "1"})


def test_a_cluster_spreads_over_partitions_unless_told_how_many() -> None:
    # PARTITIONS unset: a cluster gets CLUSTER_PARTITIONS, a single server keeps 1; PARTITIONS
    # set (even to 1) is kept on both. The queue lives on REDIS_URL unless QUEUE_REDIS_URL.
    unset = Settings.from_env({"REDIS_URL": "redis://10.0.0.5:7000/0"})
    assert with_cluster(unset, True).partitions == CLUSTER_PARTITIONS == 64
    assert with_cluster(unset, True).redis_cluster is True
    assert with_cluster(unset, False).partitions == 1
    for given in ("1", "8"):
        told = Settings.from_env({"PARTITIONS": given})
        assert with_cluster(told, True).partitions == int(given)
    assert Settings(partitions=8).partitions_given is False
    assert with_cluster(Settings(partitions=8), True).partitions == 8
    assert unset.queue_url == "redis://10.0.0.5:7000/0"
    queued = Settings.from_env({"QUEUE_REDIS_URL": "redis://q:6379/0"})
    assert queued.queue_url == "redis://q:6379/0"


def test_told_it_is_a_cluster_or_not_it_asks_nobody() -> None:
    # REDIS_CLUSTER decides without a round trip (nothing listens at this address).
    far = Settings(redis_url="redis://127.0.0.1:1/0")
    assert resolve(dataclasses.replace(far, redis_cluster=True)).partitions == 64
    assert resolve(dataclasses.replace(far, redis_cluster=False)).partitions == 1
    # Not told, and Redis away: taken for a single server (the app starts, readiness waits).
    assert resolve(far).redis_cluster is False


def test_gc_threshold_zero_leaves_python_s_own_settings() -> None:
    assert Settings.from_env({"GC_THRESHOLD": "0"}).gc_threshold == 0
    assert Settings.from_env({}).gc_threshold == 10_000
