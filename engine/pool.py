"""The engine's Redis connection pool: bounded, serves waiting callers first come, first
served, and encodes commands in C.

redis-py's `BlockingConnectionPool` bounds the connections too, but a connection released
while callers wait goes back on the shelf, and whoever asks next — often a request that has
just finished its previous command — takes it before the woken waiter gets there. Under a
flash sale (hundreds of requests per process, two or three Redis calls each) some requests
lose that race again and again: the median stays low while the slowest requests wait seconds.
Here a released connection is handed straight to the caller that has waited longest; a caller
only takes a free connection itself when nobody is waiting.

redis-py's asyncio connections also encode every command in Python, argument by argument (a
reserve call has ~20: a third of a call's client-side CPU); the pool's connections encode with
hiredis in C, byte for byte the same.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, cast

import hiredis
from redis.asyncio import ConnectionPool
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError


class _HiredisPacking:
    """Command names of several words ('SCRIPT LOAD') and anything hiredis refuses take
    redis-py's own way."""

    def pack_command(self, *args: Any) -> list[bytes]:
        name = args[0]
        if not (isinstance(name, str | bytes) and " " not in str(name)):
            return cast(list[bytes], super().pack_command(*args))  # type: ignore[misc]
        try:
            return [hiredis.pack_command(args)]
        except TypeError:
            return cast(list[bytes], super().pack_command(*args))  # type: ignore[misc]


_packing: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def with_hiredis_packing(base: type[AbstractConnection]) -> type[AbstractConnection]:
    if base not in _packing:
        _packing[base] = type(f"Hiredis{base.__name__}", (_HiredisPacking, base), {})
    return _packing[base]


class FairConnectionPool(ConnectionPool):
    """At most `max_connections`; callers past it wait (at most `timeout` seconds, then
    `ConnectionError`, as `BlockingConnectionPool`) in arrival order."""

    def __init__(self, *, timeout: float | None = 20, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # the URL chose the class (TCP, TLS, Unix socket): keep it, with C encoding
        self.connection_class = with_hiredis_packing(self.connection_class)
        self.timeout = timeout
        self._waiters: deque[asyncio.Future[AbstractConnection]] = deque()

    async def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> Any:
        if not self._someone_waits() and self.can_get_connection():
            connection = self.get_available_connection()  # type: ignore[no-untyped-call]
        else:
            connection = await self._wait()
        try:
            await self.ensure_connection(connection)
        except BaseException:
            await self.release(connection)
            raise
        return connection

    def _someone_waits(self) -> bool:
        while self._waiters and self._waiters[0].done():  # gave up (timed out, cancelled)
            self._waiters.popleft()
        return bool(self._waiters)

    async def _wait(self) -> AbstractConnection:
        waiter: asyncio.Future[AbstractConnection] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self.timeout):
                return await waiter  # release() hands one over, still counted as in use
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                await self.release(waiter.result())  # it came as we gave up: pass it on
            else:
                waiter.cancel()  # release() skips it
            if isinstance(exc, TimeoutError):
                raise RedisConnectionError("No connection available.") from exc
            raise

    async def release(self, connection: AbstractConnection) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                if connection.should_reconnect():  # type: ignore[no-untyped-call]
                    await connection.disconnect()
                waiter.set_result(connection)
                return
        await super().release(connection)
