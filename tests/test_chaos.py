"""`inventory chaos` end to end: many OS processes, real contention, exact counts afterwards."""

from __future__ import annotations

from typing import Any

import pytest

from scripts.redis_server import RedisServer
from tests.support import last_json, run_cli

pytestmark = pytest.mark.chaos


def run_chaos(
    server: RedisServer, *args: str, env: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    env = {"REDIS_URL": server.url, **(env or {})}
    proc = run_cli("chaos", "--json", *args, env=env, timeout=240)
    result: dict[str, Any] = last_json(proc)
    return proc.returncode, result


@pytest.mark.parametrize("attempt", range(3))
def test_fifty_buyers_five_units_exactly_five_succeed(
    redis_server: RedisServer, clean_redis: None, attempt: int
) -> None:
    code, result = run_chaos(redis_server, "--processes", "50", "--stock", "5")

    assert code == 0
    assert result["succeeded"] == 5
    assert result["failed"] == 45
    assert result["crashed"] == 0
    assert (result["available"], result["reserved"], result["total"]) == (0, 5, 5)
    assert result["oversold"] == 0
    assert result["invariants_ok"] is True
    assert result["events_ok"] is True
    assert result["events"] == {"product_updated": 1, "stock_adjusted": 1, "reservation_created": 5}


def test_chaos_touches_only_its_own_products(redis_server: RedisServer, clean_redis: None) -> None:
    code, first = run_chaos(redis_server, "--processes", "10", "--stock", "3")
    code2, second = run_chaos(redis_server, "--processes", "10", "--stock", "3")

    assert code == code2 == 0
    assert first["products"] != second["products"]
    # the second run read the outbox only from where it started
    assert second["events"]["reservation_created"] == 3
    assert second["reserved"] == 3


def coalesced(result: dict[str, Any]) -> tuple[int, int]:
    """(reservations sent, the most that shared one Redis call) in a chaos run."""
    sizes = {int(size): n for size, n in result["coalesced"].items()}
    return sum(size * n for size, n in sizes.items()), max(sizes)


def test_fifty_buyers_five_units_with_their_calls_coalesced(
    redis_server: RedisServer, clean_redis: None
) -> None:
    """Ten processes of five buyers each: each process's engine coalesces its buyers' calls
    (the first alone, the rest in one call), and exactly five units are sold."""
    code, result = run_chaos(
        redis_server, "--processes", "10", "--buyers-per-process", "5", "--stock", "5"
    )

    assert code == 0, result
    assert (result["buyers"], result["succeeded"], result["failed"]) == (50, 5, 45)
    assert (result["crashed"], result["oversold"]) == (0, 0)
    assert (result["available"], result["reserved"], result["total"]) == (0, 5, 5)
    assert result["invariants_ok"] is True
    assert result["events_ok"] is True
    sent, most = coalesced(result)
    assert sent == 50
    assert most > 1


@pytest.mark.parametrize(
    "layout",
    [
        pytest.param(("--processes", "200"), id="200-processes"),
        pytest.param(("--processes", "50", "--buyers-per-process", "4"), id="coalesced"),
    ],
)
def test_two_hundred_buyers_carts_over_products_and_warehouses_then_settle(
    redis_server: RedisServer, clean_redis: None, layout: tuple[str, ...]
) -> None:
    code, result = run_chaos(
        redis_server,
        *layout,
        "--stock", "40",
        "--products", "3",
        "--warehouses", "2",
        "--max-lines", "3",
        "--settle",
        "--seed", "7",
    )  # fmt: skip

    assert code == 0, result
    assert result["buyers"] == 200
    assert coalesced(result)[0] == 200
    if "--buyers-per-process" in layout:
        assert coalesced(result)[1] > 1
    assert result["crashed"] == 0
    assert result["succeeded"] + result["failed"] == 200
    assert result["succeeded"] > 0
    assert result["failed"] > 0
    assert result["oversold"] == 0
    # never more units out at once than there are (a 1 s reservation may expire while a slow
    # burst still runs, and its units go to a later buyer: granted can exceed the stock)
    assert result["units_out_max"] <= 3 * 40
    # every success either became an order or expired; nothing is left reserved
    assert result["committed"] + result["expired"] == result["succeeded"]
    assert result["reserved"] == 0
    assert result["available"] == result["total"]
    assert result["invariants_ok"] is True
    # one event per change: the replayed chain of movements lands exactly on the counters
    assert result["events_ok"] is True
    assert result["events"]["reservation_created"] == result["succeeded"]
    assert result["events"]["order_created"] == result["committed"]
    assert result["events"]["reservation_expired"] == result["expired"]


def test_carts_across_partitions_of_one_server_settle_exactly(
    redis_server: RedisServer, clean_redis: None
) -> None:
    """PARTITIONS=8 on one redis-server: the carts span partitions (engine/carts.py), each
    held, made live, committed or expired part by part; the totals are exact all the same."""
    code, result = run_chaos(
        redis_server,
        "--processes", "100",
        "--stock", "20",
        "--products", "8",
        "--max-lines", "3",
        "--settle",
        "--seed", "11",
        env={"PARTITIONS": "8"},
    )  # fmt: skip
    assert code == 0, result
    assert (result["crashed"], result["oversold"], result["problems"]) == (0, 0, [])
    assert result["carts_across_partitions"] > 10
    assert result["succeeded"] + result["failed"] == 100
    assert result["committed"] + result["expired"] == result["succeeded"]
    assert result["reserved"] == 0
    assert result["invariants_ok"] is True
    assert result["events_ok"] is True
