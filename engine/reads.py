"""The engine's typed reads (and the few bookkeeping writes outside the scripts), for callers
that must not know the Redis layout: the API's readiness, consistency, metrics and dashboard,
its login limits, the CLI. `Engine` inherits them; they need only its client and settings.

Where the worker (persistence/, sync) reads the same thing, both run the sans-I/O helpers of
engine/outbox.py and engine/partition.py: one definition of each command and its reply.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis

from engine import bookkeeping, invariants, keys, layout, outbox
from engine.connection import clock, is_cluster_client
from engine.keys import login_attempts, partition_keys, partition_of, stock_counters
from engine.outbox import OutboxEvent
from engine.partition import PW, Pair, time_ms
from engine.settings import Settings


@dataclass(frozen=True, slots=True)
class OutboxGauge:
    """A partition's numbers for GET /metrics."""

    partition: int
    backlog: int  # events not yet drained
    oldest_ms: int | None  # when the oldest of them was appended (None: none waits)
    live: int  # live reservations
    due: int  # live reservations past expires_at, not yet released


@dataclass(frozen=True, slots=True)
class Gauges:
    now_ms: int  # the Redis clock
    partitions: list[OutboxGauge]
    last_drains: dict[str, str]  # partition -> the worker's JSON record of its last drain
    expired_by_sweep: int


@dataclass(frozen=True, slots=True)
class PartitionOverview:
    """A partition's numbers for the operations dashboard."""

    partition: int
    counters: dict[PW, Pair]  # (product, warehouse) -> (available, reserved)
    dead_letter_stream: int  # dead letters not yet resolved in Redis
    behind: dict[str, Any] | None  # the drain's flag: this Redis is behind the database


@dataclass(frozen=True, slots=True)
class LoginAttempts:
    """Failed-login counters after counting one more attempt (this one included)."""

    pair: int  # this username from this address
    client: int  # from this address
    user: int  # this username, from anywhere


class EngineReads:
    redis: Redis
    settings: Settings

    async def ping(self) -> None:
        await self.redis.ping()

    async def check_layout(self) -> None:
        """Record PARTITIONS as the count the data is laid out in, or raise
        layout.PartitionsMismatch when another one is recorded (engine/layout.py)."""
        await layout.check(self.redis, self.settings.partitions)

    # -- the outbox -------------------------------------------------------------------------

    async def outbox_range(
        self, partition: int, *, after: str = "-", count: int | None = None
    ) -> list[OutboxEvent]:
        """The events after stream id `after` (exclusive; '-' = from the start), oldest
        first, at most `count`."""
        return await outbox.read(self.redis, partition, after=after, count=count)

    async def outbox_backlog(self, partition: int) -> int:
        """How many events wait in the partition's outbox (not yet drained)."""
        return await outbox.backlog(self.redis, partition)

    async def outbox_last_id(self, partition: int) -> str:
        """The stream id of the newest event ever appended to the partition ('0-0': none)."""
        return await outbox.last_id(self.redis, partition)

    async def outbox_newest_id(self, partition: int) -> str:
        """The stream id of the newest event still in the partition's outbox ('0-0' when it
        is empty: trimmed only once drained)."""
        entries = await self.redis.xrevrange(partition_keys(partition).outbox, count=1)
        return str(entries[0][0]) if entries else "0-0"

    async def drains_paused(self) -> list[int]:
        """The partitions whose drain is paused: their Redis came back behind the database."""
        return await outbox.paused(self.redis, self.settings.partitions)

    async def ask_drain(self, partition: int) -> bool:
        """Set the partition's drain-requested flag; True if it was not set (enqueue then)."""
        return bool(await outbox.ask_drain(self.redis, partition))

    # -- partitions -------------------------------------------------------------------------

    async def check_partition(self, partition: int) -> invariants.InvariantReport:
        """DESIGN.md's invariants on one atomic snapshot of the partition."""
        return await invariants.check_partition(self.redis, partition)

    async def check_invariants(self) -> list[invariants.InvariantReport]:
        return await invariants.check(self.redis, self.settings.partitions)

    async def gauges(self) -> Gauges:
        """What GET /metrics reads from Redis, in two round trips."""
        parts = [partition_keys(p) for p in range(self.settings.partitions)]
        cluster = is_cluster_client(self.redis)  # no TIME in a cluster's pipeline: alone
        async with self.redis.pipeline(transaction=False) as pipe:
            if not cluster:
                pipe.time()
            for k in parts:
                pipe.xlen(k.outbox)
                outbox.queue_range(pipe, k.partition, count=1)
                pipe.hlen(k.live)
            pipe.hgetall(keys.LAST_DRAIN)
            pipe.get(keys.SWEEP_EXPIRED)
            replies = await pipe.execute()
        if cluster:
            replies.insert(0, await clock(self.redis))
        now = time_ms(replies[0])
        async with self.redis.pipeline(transaction=False) as pipe:
            for k in parts:
                pipe.zcount(k.expiry, "-inf", now)
            due = cast(list[int], await pipe.execute())
        found: list[OutboxGauge] = []
        for p in range(len(parts)):
            backlog, oldest, live = replies[1 + 3 * p : 4 + 3 * p]
            oldest_ms = outbox.stream_ms(oldest[0][0]) if oldest else None
            found.append(OutboxGauge(p, int(backlog), oldest_ms, int(live), int(due[p])))
        return Gauges(now, found, dict(replies[-2] or {}), int(replies[-1] or 0))

    async def overview(self) -> tuple[int, list[PartitionOverview]]:
        """The Redis clock (ms) and each partition's stock counters, dead letters and behind
        flag, in one round trip."""
        parts = [partition_keys(p) for p in range(self.settings.partitions)]
        cluster = is_cluster_client(self.redis)  # no TIME in a cluster's pipeline: alone
        async with self.redis.pipeline(transaction=False) as pipe:
            if not cluster:
                pipe.time()
            for k in parts:
                pipe.hgetall(k.stock)
                pipe.xlen(k.dead_letters)
                pipe.get(k.behind)
            replies = await pipe.execute()
        if cluster:
            replies.insert(0, await clock(self.redis))
        stock, dead, behind = replies[1::3], replies[2::3], replies[3::3]
        found = [
            PartitionOverview(
                p,
                stock_counters(stock[p]),
                int(dead[p]),
                json.loads(behind[p]) if behind[p] else None,
            )
            for p in range(len(parts))
        ]
        return time_ms(replies[0]), found

    async def outbox_after(
        self, positions: Mapping[int, str], count: int
    ) -> dict[int, tuple[list[OutboxEvent], str | None]]:
        """Each partition's events after its position (at most `count`, oldest first) and its
        applied marker (the drain trims the outbox up to it), in one round trip: the live
        stock feed's read (web/live_stock.py)."""
        parts = list(positions)
        async with self.redis.pipeline(transaction=False) as pipe:
            for p in parts:
                outbox.queue_range(pipe, p, positions[p], count=count)
                pipe.get(partition_keys(p).applied)
            replies = await pipe.execute()
        return {
            p: (
                outbox.decode_all(p, replies[2 * i]),
                None if replies[2 * i + 1] is None else str(replies[2 * i + 1]),
            )
            for i, p in enumerate(parts)
        }

    async def product_activity(
        self, products: list[str], now_ms: int
    ) -> tuple[dict[str, int], dict[str, int]]:
        """For the operations page: how many customers wait for each product (its waitlist:
        lua/wait.lua), and how many requests its purchase limits refused in the last minute
        (engine/bookkeeping.py count_refusal), in one round trip."""
        if not products:
            return {}, {}
        minutes = [keys.refusals_minute(now_ms), keys.refusals_minute(now_ms - 60_000)]
        n = self.settings.partitions
        async with self.redis.pipeline(transaction=False) as pipe:
            for p in products:
                pipe.zlexcount(partition_keys(partition_of(p, n)).waitlist, f"[{p}|", f"[{p}|~")
            for minute in minutes:
                pipe.hmget(minute, products)
            replies = await pipe.execute()
        waiting = {p: int(count) for p, count in zip(products, replies, strict=False)}
        # the minute so far, and the one before in proportion to what is left of it
        share = 1 - (now_ms % 60_000) / 60_000
        current, before = replies[len(products)], replies[len(products) + 1]
        refused = {
            p: int(a or 0) + round(int(b or 0) * share)
            for p, a, b in zip(products, current, before, strict=True)
        }
        return waiting, refused

    async def trends(self, now_ms: int, minutes: int = 15) -> list[tuple[int, int, int | None]]:
        """The operations page's trend: per SERIES_BUCKET_S seconds over the last `minutes`,
        (bucket start, s), events the drains applied, the highest drain lag p99 (ms) of any
        partition (None: no drain then)), oldest first."""
        step = keys.SERIES_BUCKET_S
        last = now_ms // 1000 // step * step
        starts = [last - i * step for i in range(minutes * 60 // step - 1, -1, -1)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for start in starts:
                pipe.hgetall(keys.series_bucket(start * 1000))
            found: list[dict[str, str]] = await pipe.execute()
        out: list[tuple[int, int, int | None]] = []
        for start, bucket in zip(starts, found, strict=True):
            lags = [int(v) for f, v in bucket.items() if f.startswith("lag|")]
            out.append((start, int(bucket.get("events", 0)), max(lags) if lags else None))
        return out

    async def count_refusal(self, product: str) -> None:
        """A request a product's purchase limits refused (for the operations page)."""
        at_ms = int(time.time() * 1000)
        async with self.redis.pipeline(transaction=False) as pipe:
            bookkeeping.count_refusal(pipe, product, at_ms)
            await pipe.execute()

    # -- the worker's records ---------------------------------------------------------------

    async def last_reconcile_written(self) -> tuple[int, int]:
        """(PTTL, length) of the last reconcile report the worker kept (PTTL -2: none)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.pttl(keys.LAST_RECONCILE)
            pipe.strlen(keys.LAST_RECONCILE)
            pttl, length = await pipe.execute()
        return int(pttl), int(length)

    async def last_reconcile(self) -> str | None:
        """The last reconcile report (JSON text), if one is kept."""
        raw = await self.redis.get(keys.LAST_RECONCILE)
        return None if raw is None else str(raw)

    # -- failed logins ----------------------------------------------------------------------

    async def count_login_attempt(
        self,
        username: str,
        client: str,
        *,
        pair_window_s: int,
        client_window_s: int,
        user_window_s: int,
    ) -> LoginAttempts:
        """Count one login attempt for the username, from the address, and for both; each
        counter's window runs from its first attempt (it does not slide)."""
        counters = [
            (login_attempts("user-ip", username, client), pair_window_s),
            (login_attempts("ip", client), client_window_s),
            (login_attempts("user", username), user_window_s),
        ]
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, window_s in counters:
                pipe.incr(key)
                pipe.expire(key, window_s, nx=True)
            replies = await pipe.execute()
        return LoginAttempts(*(int(n) for n in replies[0::2]))

    async def login_attempts_ttl_s(self, username: str, client: str, *, pair: bool) -> int:
        """Seconds until the pair's (else the address's) counter expires."""
        key = login_attempts("user-ip", username, client) if pair else login_attempts("ip", client)
        return int(await self.redis.ttl(key))

    async def forget_login_attempts(
        self, username: str, client: str, *, client_window_s: int
    ) -> None:
        """A success: the username starts afresh, from everywhere and from this address, and
        the address's attempt is taken back."""
        key = login_attempts("ip", client)
        pair = login_attempts("user-ip", username, client)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(login_attempts("user", username), pair)
            pipe.decr(key)
            # Should the counter have expired meanwhile, DECR made it anew: let it expire too.
            pipe.expire(key, client_window_s, nx=True)
            await pipe.execute()
