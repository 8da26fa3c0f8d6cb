"""Which Redis the service speaks to, and the clients it speaks with: one server, or a Redis
Cluster.

`resolve(settings)` answers once whether REDIS_URL names a cluster node (REDIS_CLUSTER, or
asked: `cluster_enabled:1` in INFO cluster) and, on a cluster, gives PARTITIONS its cluster
default (CLUSTER_PARTITIONS) unless it was set. `connect_async` and `connect_sync` then build
the matching client: redis-py's own cluster clients on a cluster, which follow MOVED and ASK
and find a node that went away; the bounded fair pool (engine/pool.py) on one server.

Two things the cluster clients are given here:
- **FCALL's keys are read from the call.** redis-py asks a node (`COMMAND GETKEYS`) for the
  keys of every command whose keys move, FCALL among them: one more round trip per call. A
  function call names its keys itself (`FCALL fn numkeys key...`), as EVAL does, and every key
  of ours carries its partition's hash tag, so the slot is computed here, as redis-py does for
  EVAL.
- **Callers past the limit wait.** The async cluster client refuses a command when a node has
  no free connection (`MaxConnectionsError`); a gate admits at most REDIS_MAX_CONNECTIONS
  commands or pipelines at once, first come first served, so that no node is asked for more.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis._parsers import _AsyncHiredisParser, helpers
from redis.asyncio.cluster import PipelineCommand
from redis.client import CaseInsensitiveDict
from redis.exceptions import RedisClusterException
from redis.maint_notifications import MaintNotificationsConfig

from engine.pool import FairConnectionPool, with_hiredis_packing
from engine.settings import Settings

log = logging.getLogger("inventory.redis")

# PARTITIONS on a cluster when it is not set: many more partitions than shards, so that
# resharding moves slots (each partition is one slot), and the load spreads evenly.
CLUSTER_PARTITIONS = 64

AsyncClient = redis.asyncio.Redis  # what the engine's code is typed against; a cluster
# client answers the same commands it uses (engine/connection.py's subclasses)
T = TypeVar("T")


def is_cluster_node(url: str) -> bool:
    """Whether the Redis at `url` runs in cluster mode (INFO cluster: cluster_enabled:1)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
    try:
        info = client.info("cluster")
    finally:
        client.close()
    return bool(int(info.get("cluster_enabled", 0)))


def resolve(settings: Settings, *, warn: bool = True) -> Settings:
    """`settings` with `redis_cluster` decided (asking Redis when REDIS_CLUSTER is unset) and,
    on a cluster, PARTITIONS at CLUSTER_PARTITIONS unless it was set (PARTITIONS in the
    environment, or a value other than 1 given directly). A Redis that can't be reached is
    taken for a single server (the API starts, and says it is not ready; a command fails on
    its first use of Redis and says so in one line), with a warning if `warn`."""
    if settings.redis_cluster is not None:
        return with_cluster(settings, settings.redis_cluster)
    try:
        cluster = is_cluster_node(settings.redis_url)
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        if not warn:
            return with_cluster(settings, False)
        # Started while Redis is away (readiness says so until it is back): a single server,
        # the default, unless REDIS_CLUSTER says otherwise.
        log.warning(
            "could not ask %s whether it is a Redis Cluster (%s): taking it for a single "
            "server; set REDIS_CLUSTER to say",
            settings.describe()["redis_url"],
            exc,
        )
        cluster = False
    return with_cluster(settings, cluster)


def with_cluster(settings: Settings, cluster: bool) -> Settings:
    """`settings` for a Redis known to be a cluster (or not), without asking it."""
    partitions = settings.partitions
    if cluster and settings.partitions == 1 and not settings.partitions_given:
        partitions = CLUSTER_PARTITIONS
    return dataclasses.replace(settings, redis_cluster=cluster, partitions=partitions)


def _fcall_slot(client: Any, args: tuple[Any, ...]) -> int | None:
    """The slot of an FCALL/FCALL_RO from its own keys; None for any other command."""
    if str(args[0]).upper() not in ("FCALL", "FCALL_RO") or len(args) < 3:
        return None
    keys = args[3 : 3 + int(args[2])]
    if not keys:
        return None
    slots = {client.keyslot(k) for k in keys}
    if len(slots) != 1:
        raise RedisClusterException(f"{args[0]} - all keys must map to the same key slot")
    return cast(int, slots.pop())


class _Gate:
    """At most `limit` holders at once; the others wait in arrival order."""

    def __init__(self, limit: int, timeout: float | None) -> None:
        self._semaphore = asyncio.Semaphore(limit)
        self._timeout = timeout

    async def run(self, work: Callable[[], Awaitable[T]]) -> T:
        try:
            async with asyncio.timeout(self._timeout):
                await self._semaphore.acquire()
        except TimeoutError as exc:
            raise redis.exceptions.ConnectionError("No connection available.") from exc
        try:
            return await work()
        finally:
            self._semaphore.release()


class AsyncCluster(redis.asyncio.cluster.RedisCluster):
    """redis-py's async cluster client, with the FCALL slot computed locally and callers
    past the connection limit waiting (see the module's docstring)."""

    _gate: _Gate

    async def _determine_slot(self, command: str, *args: Any) -> int:
        slot = _fcall_slot(self, (command, *args))
        if slot is not None:
            return slot
        return await super()._determine_slot(command, *args)

    async def call_then_wait(
        self, args: tuple[Any, ...], key: str, replicas: int, timeout_ms: int
    ) -> tuple[Any, int]:
        """`call_then_wait` on a cluster: the command and WAIT on one connection to the
        primary of `key`'s slot (WAIT counts the writes of the connection it comes on)."""
        for _ in range(3):
            if self._initialize:
                await self.initialize()
            node = self.get_node_from_key(key)
            if node is None:
                raise redis.exceptions.SlotNotCoveredError(f"no node serves the slot of {key!r}")
            commands = [PipelineCommand(0, *args), PipelineCommand(1, "WAIT", replicas, timeout_ms)]
            try:
                await self._gate.run(lambda: node.execute_pipeline(commands))  # noqa: B023
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                self._initialize = True  # the node went away: learn the layout again next time
                raise
            reply, confirmed = commands[0].result, commands[1].result
            if isinstance(reply, redis.exceptions.MovedError | redis.exceptions.AskError):
                self._initialize = True  # not run there: the slot moved; go again
                continue
            if isinstance(reply, Exception):
                raise reply
            if isinstance(confirmed, Exception):
                raise confirmed
            return reply, int(confirmed)
        raise redis.exceptions.ClusterError(f"the slot of {key!r} kept moving")

    async def _known(self) -> None:
        """Learn the cluster's layout before the first command. redis-py 8.1 sends a command
        made before its client knows any node to whichever node it starts from (no slot is
        computed without a default node), so the first calls of a new client, made at once,
        mostly come back MOVED; after 5 MOVED it closes every connection, those other calls
        are using too (AttributeError on a connection being set up)."""
        if self.get_default_node() is None:
            await self.initialize()

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        await self._known()
        run = super().execute_command
        return await self._gate.run(lambda: run(*args, **kwargs))

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
        pipe = super().pipeline(transaction, shard_hint)
        execute, gate, known = pipe.execute, self._gate, self._known

        async def gated(*args: Any, **kwargs: Any) -> Any:
            await known()
            return await gate.run(lambda: execute(*args, **kwargs))

        pipe.execute = gated  # type: ignore[method-assign]
        return pipe


# What a sync client (RESP2) parses each command's reply with.
_RESP2_CALLBACKS: dict[str, Any] = helpers.get_response_callbacks(  # type: ignore[attr-defined]
    user_protocol=None, legacy_responses=True
)


class SyncCluster(redis.cluster.RedisCluster):
    """redis-py's sync cluster client with the FCALL slot computed locally, and replies of a
    MULTI parsed as everywhere else: redis-py 8.1's sync cluster transaction applies only the
    cluster's own reply callbacks, so XRANGE, HGETALL, XINFO... would come back raw."""

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
        pipe: Any = super().pipeline(transaction, shard_hint)  # type: ignore[no-untyped-call]
        if transaction:
            callbacks: Any = CaseInsensitiveDict(_RESP2_CALLBACKS)
            callbacks.update(pipe.cluster_response_callbacks)
            pipe.cluster_response_callbacks = callbacks
        return pipe

    def determine_slot(self, *args: Any) -> int | None:
        slot = _fcall_slot(self, args)
        if slot is not None:
            return slot
        found: int | None = super().determine_slot(*args)
        return found


def connect_async(settings: Settings) -> AsyncClient:
    """The engine's client: over the bounded fair pool on one server; the cluster client on a
    cluster (`settings` resolved, see `resolve`)."""
    if settings.redis_cluster:
        client = cast(
            AsyncCluster,
            AsyncCluster.from_url(
                settings.redis_url,
                max_connections=settings.redis_max_connections,
                decode_responses=True,
                health_check_interval=30,
            ),
        )
        client._gate = _Gate(settings.redis_max_connections, settings.redis_pool_timeout_s)
        # every node's connections encode commands in C, as the single server's pool does
        packing = with_hiredis_packing(client.nodes_manager.connection_kwargs["connection_class"])
        client.nodes_manager.connection_kwargs["connection_class"] = packing
        for node in client.nodes_manager.startup_nodes.values():
            node.connection_class = packing  # type: ignore[assignment]
        return cast(AsyncClient, client)
    pool = FairConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_pool_timeout_s,
        decode_responses=True,
        parser_class=_AsyncHiredisParser,
        health_check_interval=30,
        # Off, as they are for RESP2: while on (redis-py's default is the truthy "auto"), the
        # pool hands out a connection the server has closed (a Redis restart) without the
        # check that replaces it, and its next command fails.
        maint_notifications_config=MaintNotificationsConfig(enabled=False),
    )
    return redis.asyncio.Redis.from_pool(pool)


def connect_sync(settings: Settings, *, decode_responses: bool = True) -> redis.Redis:
    """A synchronous client (the worker, the CLI): the cluster client on a cluster."""
    if settings.redis_cluster:
        return cast(
            redis.Redis, SyncCluster.from_url(settings.redis_url, decode_responses=decode_responses)
        )
    return redis.Redis.from_url(settings.redis_url, decode_responses=decode_responses)


def is_cluster_client(client: object) -> bool:
    """Whether `client` (async or sync) speaks to a Redis Cluster."""
    return isinstance(client, redis.asyncio.cluster.RedisCluster | redis.cluster.RedisCluster)


async def clock(client: AsyncClient, key: str | None = None) -> Any:
    """TIME of the Redis holding `key` (on a cluster each node has its own clock: the one that
    decides a key's expiry is its node's); any node's when `key` is None."""
    if key is not None and isinstance(client, redis.asyncio.cluster.RedisCluster):
        node = client.get_node_from_key(key)
        return await client.execute_command("TIME", target_nodes=node)
    return await client.time()


def clock_sync(client: redis.Redis, key: str) -> Any:
    """`clock` for a synchronous client."""
    any_client: Any = client
    if isinstance(client, redis.cluster.RedisCluster):
        return any_client.execute_command("TIME", target_nodes=any_client.get_node_from_key(key))
    return client.time()


async def call_then_wait(
    client: AsyncClient, args: tuple[Any, ...], key: str, replicas: int, timeout_ms: int
) -> tuple[Any, int]:
    """Run one write command (`args`, whose keys include `key`), then WAIT for `replicas`
    replicas (at most `timeout_ms`) on the same connection: its reply, and how many replicas
    confirmed it."""
    if isinstance(client, AsyncCluster):
        return await client.call_then_wait(args, key, replicas, timeout_ms)
    async with client.pipeline(transaction=False) as pipe:
        pipe.execute_command(*args)
        pipe.execute_command("WAIT", replicas, timeout_ms)
        reply, confirmed = await pipe.execute(raise_on_error=False)
    if isinstance(reply, Exception):
        raise reply
    if isinstance(confirmed, Exception):
        raise confirmed
    return reply, int(confirmed)
