"""The engine: one async method per Lua script, typed in and typed out.

Each write is one FCALL. The engine validates its inputs, picks the partition, builds
the call from the script's spec (engine/specs.py), runs it and turns its reply into a
result or a typed error (engine/replies.py). The calls live by area — products and stock
(engine/stock.py), reservations (engine/reservations.py), orders (engine/orders.py) — on
what they share (engine/base.py); this module puts them together and opens the client.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType

from redis._parsers import _AsyncHiredisParser
from redis.asyncio import Redis

from engine.keys import new_id
from engine.orders import OrderOps
from engine.pool import FairConnectionPool
from engine.reads import EngineReads
from engine.reservations import ReservationOps
from engine.settings import Settings
from engine.stock import StockOps


def connect(settings: Settings) -> Redis:
    """A client over an explicit, bounded pool (engine/pool.py): callers past the limit wait,
    first come first served, never pile up."""
    pool = FairConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_pool_timeout_s,
        decode_responses=True,
        parser_class=_AsyncHiredisParser,
        health_check_interval=30,
    )
    return Redis.from_pool(pool)


class Engine(EngineReads, StockOps, ReservationOps, OrderOps):
    """`Engine(redis, settings, ids=...)`: `ids` is where new reservation and order ids come
    from, (partition, partitions) -> id."""

    @classmethod
    def from_settings(
        cls, settings: Settings, *, ids: Callable[[int, int], str] = new_id
    ) -> Engine:
        return cls(connect(settings), settings, ids=ids)

    async def aclose(self) -> None:
        await self.redis.aclose()

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
