"""A real local Redis Cluster (scripts/redis_cluster/): three primaries cover every slot, hash
tags spread keys over all of them, and a primary killed with SIGKILL is replaced by its replica
with the data it acknowledged."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

from scripts.redis_cluster import SLOTS, RedisClusterServer
from scripts.redis_server import RedisServer


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServer]:
    with RedisClusterServer(Path(tmp_path_factory.mktemp("cluster"))) as server:
        yield server


def test_three_primaries_cover_every_slot(cluster: RedisClusterServer) -> None:
    primaries = cluster.primary_ports()
    assert len(primaries) == 3
    assert sorted(cluster.ports) == primaries
    assert cluster.replica_ports() == []
    for port in cluster.ports:  # every node sees the same map
        with redis.Redis.from_url(cluster.node_url(port)) as client:
            served: Counter[int] = Counter()
            for start, end, owner, *_ in client.execute_command("CLUSTER", "SLOTS"):
                served[int(owner[1])] += end - start + 1
        assert sum(served.values()) == SLOTS
        assert sorted(served) == primaries


def test_every_node_and_the_server_read_the_projects_settings(
    cluster: RedisClusterServer, redis_server: RedisServer
) -> None:
    """scripts/redis.conf: a partition's hashes and sorted sets are tables past 64 entries
    (redis-server's built-in 512 would keep them lists, read from the start by every command)."""
    urls = [cluster.node_url(port) for port in cluster.ports] + [redis_server.url]
    for url in urls:
        with redis.Redis.from_url(url, decode_responses=True) as client:
            assert client.config_get("hash-max-listpack-entries") == {
                "hash-max-listpack-entries": "64"
            }
            assert client.config_get("zset-max-listpack-entries") == {
                "zset-max-listpack-entries": "64"
            }


def test_hash_tags_spread_keys_over_every_primary(cluster: RedisClusterServer) -> None:
    keys = [f"inv:{{p{i}}}:x" for i in range(64)]
    with RedisCluster.from_url(cluster.url) as client:
        client.flushall(target_nodes=RedisCluster.PRIMARIES)
        for i, key in enumerate(keys):
            client.set(key, i)
        assert [client.get(key) for key in keys] == [str(i).encode() for i in range(64)]
    sizes = {}
    for port in cluster.primary_ports():
        with redis.Redis.from_url(cluster.node_url(port)) as node:
            sizes[port] = node.dbsize()
    assert sum(sizes.values()) == len(keys)
    assert all(size > 0 for size in sizes.values()), sizes


def test_a_killed_primary_is_replaced_by_its_replica_with_the_data(tmp_path: Path) -> None:
    with RedisClusterServer(tmp_path, replicas=1) as cluster:
        primaries, replicas = cluster.primary_ports(), cluster.replica_ports()
        assert len(primaries) == 3
        assert len(replicas) == 3
        key = "inv:{p0}:x"
        with RedisCluster.from_url(cluster.url) as client:
            owner = client.get_node_from_key(key).port
        # WAIT counts the writes of its own connection: one connection for both
        with redis.Redis.from_url(cluster.node_url(owner), single_connection_client=True) as node:
            node.set(key, "kept")
            assert node.execute_command("WAIT", 1, 1000) == 1

        cluster.kill(owner)
        started = time.monotonic()
        cluster.wait_ok(timeout=20)
        failover_s = time.monotonic() - started

        after = cluster.primary_ports()
        assert owner not in after
        (promoted,) = set(after) - set(primaries)
        assert promoted in replicas
        with RedisCluster.from_url(cluster.url) as client:
            assert client.get(key) == b"kept"
            assert client.get_node_from_key(key).port == promoted

        cluster.restart(owner)  # the old primary comes back as its successor's replica
        cluster.wait_ok(timeout=20)
        assert cluster.primary_ports() == after
        assert owner in cluster.replica_ports()
        assert failover_s < 15
