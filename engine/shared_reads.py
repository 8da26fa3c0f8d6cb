"""Shared reads: concurrent identical reads in one process cost one Redis call, and each is
still read after it was asked.

A sale's product page is read by every buyer, many times a second each: the same product's
stock, asked for by dozens of requests at once. Each read alone pays a round trip, the
client's encoding and decoding (~60 µs of the API's CPU under load) and Redis's commands; a
shared one pays them once for all its callers. The rule, per read (its key: what it reads):
- **Not on the wire**: the read goes straight through (no added latency at low load).
- **On the wire**: the caller waits for the *next* read of the same key, sent as soon as the
  one on the wire is answered, and shared by every caller that asked meanwhile. A read already
  sent may have been read before the caller asked (a write the caller just made, or saw, could
  be missing from it): the next one is read after every caller waiting for it asked, so each
  answer is at least as new as its request — the same guarantee as a read of its own.
- Its failure is each waiting caller's error, as it would have been for each alone. A caller
  that gives up leaves the read to the others.

`SharedReads.calls` and `.served` count the reads sent and the answers given, for the bench;
`on_read` is told of each caller (whether it waited for a shared read), for the API's metrics
(`inventory_stock_reads`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class _Slot(Generic[T]):
    __slots__ = ("next", "running")

    def __init__(self) -> None:
        self.running = False  # a read of the key is on the wire
        self.next: asyncio.Future[T] | None = None  # the callers waiting for the next one


class SharedReads:
    """Reads by key, shared by the rule above. Used from one event loop."""

    def __init__(self) -> None:
        self._slots: dict[Hashable, _Slot[Any]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.calls = 0
        self.served = 0
        # told of every caller: whether it waited for a read shared with others
        self.on_read: Callable[[bool], None] | None = None

    async def read(self, key: Hashable, read: Callable[[], Awaitable[T]]) -> T:
        """`read()`'s answer, or that of a read of the same `key` sent after this call."""
        self.served += 1
        slot: _Slot[T] | None = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = _Slot()
        if not slot.running:
            slot.running = True
            self.calls += 1
            if self.on_read is not None:
                self.on_read(False)
            try:
                return await read()
            finally:
                self._answered(key, slot, read)
        if self.on_read is not None:
            self.on_read(True)
        if slot.next is None:
            slot.next = asyncio.get_running_loop().create_future()
            # a waiter may be gone (its client hung up): nobody else reads the outcome
            slot.next.add_done_callback(lambda f: f.cancelled() or f.exception())
        return await asyncio.shield(slot.next)

    def _answered(self, key: Hashable, slot: _Slot[T], read: Callable[[], Awaitable[T]]) -> None:
        """The read on the wire is answered: the next one goes now, for those waiting."""
        waiting, slot.next = slot.next, None
        if waiting is None:
            slot.running = False
            del self._slots[key]
            return
        self.calls += 1
        task = asyncio.get_running_loop().create_task(self._next(key, slot, read, waiting))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _next(
        self,
        key: Hashable,
        slot: _Slot[T],
        read: Callable[[], Awaitable[T]],
        waiting: asyncio.Future[T],
    ) -> None:
        try:
            found = await read()
        except BaseException as exc:
            if not waiting.done():
                if isinstance(exc, asyncio.CancelledError):
                    waiting.cancel()
                else:
                    waiting.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            if not waiting.done():
                waiting.set_result(found)
        finally:
            self._answered(key, slot, read)
