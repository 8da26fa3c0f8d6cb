"""Shared reads (engine/shared_reads.py): concurrent reads of the same products cost one Redis
call, and every answer is read after its caller asked — a caller never sees a state older than
its request (a reservation it made, or saw made, is in what it reads)."""

from __future__ import annotations

import asyncio

import pytest

from engine.engine import Engine
from engine.models import CallContext, LineRequest
from engine.shared_reads import SharedReads
from tests.support import add_product


class Reads:
    """A read that counts its calls and waits to be let go: which read answered whom."""

    def __init__(self) -> None:
        self.started = 0
        self.go = asyncio.Event()
        self.fail: BaseException | None = None

    async def __call__(self) -> int:
        self.started += 1
        n = self.started
        await self.go.wait()
        if self.fail is not None:
            raise self.fail
        return n


async def test_callers_while_a_read_is_on_the_wire_share_the_next_one() -> None:
    shared, read = SharedReads(), Reads()
    first = asyncio.create_task(shared.read("p", read))
    await asyncio.sleep(0)
    assert read.started == 1  # alone: straight through
    waiting = [asyncio.create_task(shared.read("p", read)) for _ in range(5)]
    other = asyncio.create_task(shared.read("q", read))  # another key: its own read
    await asyncio.sleep(0)
    assert read.started == 2  # "q" only: the five wait for the read after "p"'s first
    read.go.set()
    assert await first == 1
    assert await other == 2
    assert [await w for w in waiting] == [3] * 5  # one read, sent after all of them asked
    assert (shared.calls, shared.served) == (3, 7)
    assert await shared.read("p", read) == 4  # nothing on the wire: straight through again


async def test_a_failed_read_is_each_waiters_error_and_the_next_read_goes_on() -> None:
    shared, read = SharedReads(), Reads()
    first = asyncio.create_task(shared.read("p", read))
    await asyncio.sleep(0)
    waiting = [asyncio.create_task(shared.read("p", read)) for _ in range(3)]
    await asyncio.sleep(0)
    waiting[0].cancel()  # one caller gives up: the others still get the read
    read.fail = ConnectionError("Redis went away")
    read.go.set()
    with pytest.raises(ConnectionError):
        await first
    for w in waiting[1:]:
        with pytest.raises(ConnectionError):
            await w
    assert waiting[0].cancelled()
    read.fail = None
    assert await shared.read("p", read) == 3


async def test_each_shared_read_shows_what_was_reserved_before_it_was_asked(
    engine: Engine,
) -> None:
    """100 buyers at once, each reserving a unit and then reading the product page: every read
    shows at least the reservations finished before it was asked, though reads are shared."""
    await add_product(engine, "hot", {"main": 1000})
    finished = 0
    seen: list[tuple[int, int]] = []  # (reservations finished when asked, available read)

    async def buyer(i: int) -> None:
        nonlocal finished
        ctx = CallContext(actor=f"buyer-{i}", request_id=f"req-{i}")
        for _ in range(6):
            await engine.reserve([LineRequest("hot", 1)], ctx)
            finished += 1
            before = finished
            stock = (await engine.get_stocks(["hot"]))["hot"]
            seen.append((before, stock.available))

    await asyncio.gather(*(buyer(i) for i in range(100)))
    assert len(seen) == 600
    assert all(available <= 1000 - before for before, available in seen)
    final = (await engine.get_stocks(["hot"]))["hot"]
    assert (final.available, final.reserved) == (400, 600)
    shared = engine.shared_reads
    assert shared.served == 601
    assert shared.calls < shared.served  # buyers waiting on the wire shared reads
