"""The engine: one async method per Lua script, typed in and typed out.

Each write is one FCALL. The engine validates its inputs, picks the partition, builds
the call from the script's spec (engine/specs.py), runs it and turns its reply into a
result or a typed error (engine/replies.py). The calls live by area — products and stock
(engine/stock.py), reservations (engine/reservations.py), orders (engine/orders.py), carts
across partitions (engine/carts.py), the sweep (engine/sweep.py) — on
what they share (engine/base.py); this module puts them together and opens the client.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType

from redis.asyncio import Redis

from engine.connection import connect_async, resolve
from engine.keys import new_id
from engine.reads import EngineReads
from engine.scripts import Checkpoints
from engine.settings import Settings
from engine.stock import StockOps
from engine.sweep import SweepOps
from engine.waitlist import WaitlistOps


def connect(settings: Settings) -> Redis:
    """The engine's client (engine/connection.py): over an explicit, bounded pool on one
    server, the cluster client on a cluster; callers past the limit wait, first come first
    served, never pile up."""
    return connect_async(resolve(settings))


class Engine(EngineReads, StockOps, SweepOps, WaitlistOps):
    """`Engine(redis, settings, ids=...)`: `ids` is where new reservation and order ids come
    from, (partition, partitions) -> id."""

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        ids: Callable[[int, int], str] = new_id,
        checkpoints: Checkpoints | None = None,
    ) -> Engine:
        """`checkpoints`: the database's (persistence.behind.checkpoints), against which a
        Redis that has started is checked before its first write; None: Redis is taken as it
        is (no record: a test, a bench)."""
        settings = resolve(settings)  # one server or a cluster: asks Redis once if not told
        return cls(connect_async(settings), settings, ids=ids, checkpoints=checkpoints)

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
