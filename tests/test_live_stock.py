"""Live stock for shop pages (issue 14, item 5): `GET /api/products/{id}/stream/` and
`GET /api/stock/stream/?ids=…` as Server-Sent Events, with a real server (uvicorn on a real
socket) and real clients reading the streams (web/live_stock.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import Engine as DatabaseEngine

from engine.engine import Engine
from engine.keys import partition_keys
from engine.models import LineRequest
from engine.settings import Settings
from persistence.drain import drain_partition
from tests.api import Server, bearer
from tests.support import ALICE, add_product
from web.live_stock import StockFeed


@dataclass
class Event:
    event: str
    id: str
    data: dict[str, Any]


class Stream:
    """One open stream, read event by event (comment lines counted apart)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.aiter_lines()
        self.comments = 0

    async def next(self, within: float = 5.0) -> Event:
        async with asyncio.timeout(within):
            return await self._next()

    async def _next(self) -> Event:
        fields: dict[str, str] = {}
        async for line in self.lines:
            if line.startswith(":"):
                self.comments += 1
            elif line == "":
                if "data" in fields:
                    return Event(fields.get("event", ""), fields.get("id", ""),
                                 json.loads(fields["data"]))  # fmt: skip
                fields = {}
            else:
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
        raise EOFError("the stream ended")


@pytest.fixture
def server_settings(settings: Settings, pg_url: str, clean_redis: None) -> Settings:
    # (the tests' many listeners come from one address: no rate limit, no cap per client)
    return dataclasses.replace(
        settings,
        database_url=pg_url,
        jwt_keys="live:" + "k" * 40,
        rate_limit_per_second=0,
        stream_max_per_client=0,
    )


@pytest.fixture
def served(server_settings: Settings) -> Iterator[tuple[str, Server]]:
    server = Server(server_settings)
    with server as url:
        yield url, server


def new_product(url: str, server: Server, sku: str, units: int) -> int:
    staff = bearer(server.app, "1", staff=True)
    body = {"name": sku, "sku": sku, "price": "5.00", "total_stock": units}
    made = httpx.post(f"{url}/api/products/", json=body, headers=staff)
    assert made.status_code == 201, made.text
    return int(made.json()["data"]["id"])


def reserve(url: str, server: Server, buyer: str, product: int, quantity: int = 1) -> str:
    got = httpx.post(
        f"{url}/api/reservations/",
        json={"product": product, "quantity": quantity},
        headers=bearer(server.app, buyer),
    )
    assert got.status_code == 201, got.text
    return str(got.json()["data"]["id"])


@asynccontextmanager
async def opened(
    client: httpx.AsyncClient, path: str, headers: dict[str, str] | None = None
) -> AsyncIterator[Stream]:
    async with client.stream("GET", path, headers=headers or {}) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        yield Stream(response)


async def test_two_hundred_listeners_each_see_a_change_within_a_second(
    served: tuple[str, Server],
) -> None:
    url, server = served
    product = new_product(url, server, "LIVE-1", 50)
    n = 200
    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=n + 10)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        streams: list[Stream] = []
        contexts = [opened(client, f"/api/products/{product}/stream/") for _ in range(n)]
        try:
            for context in contexts:
                streams.append(await context.__aenter__())
            firsts = await asyncio.gather(*(s.next() for s in streams))
            assert {(e.event, e.data["available_stock"]) for e in firsts} == {("stock", 50)}
            assert all(e.id.startswith("p0-") for e in firsts)
            # one reader of the outbox for the whole process, however many listeners
            feed = server.app.state.services.feed
            assert len(feed.listeners) == n
            watcher = redis.Redis.from_url(server.app.state.services.settings.redis_url)
            connections = len(watcher.client_list())
            watcher.close()
            assert connections < 40, connections  # not one per listener

            changed_at = time.monotonic()
            await asyncio.to_thread(reserve, url, server, "7", product, 3)

            async def seen(s: Stream) -> float:
                e = await s.next(within=5)
                assert (e.data["available_stock"], e.data["reserved_stock"]) == (47, 3)
                return time.monotonic() - changed_at

            latencies = await asyncio.gather(*(seen(s) for s in streams))
        finally:
            for context in contexts[: len(streams)]:
                await context.__aexit__(None, None, None)
    assert len(latencies) == n
    assert max(latencies) < 1.0, sorted(latencies)[-5:]
    for _ in range(100):  # each left the feed on closing
        if not feed.listeners:
            break
        await asyncio.sleep(0.05)
    assert not feed.listeners


async def test_several_products_in_one_stream_and_the_refusals(
    served: tuple[str, Server],
) -> None:
    url, server = served
    a, b = new_product(url, server, "LIVE-A", 5), new_product(url, server, "LIVE-B", 8)
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        async with opened(client, f"/api/stock/stream/?ids={a},{b},{a}") as stream:
            first = {(await stream.next()).data["product"] for _ in range(2)}
            assert first == {a, b}
            await asyncio.to_thread(reserve, url, server, "8", b, 2)
            changed = await stream.next()
            assert (changed.data["product"], changed.data["available_stock"]) == (b, 6)
            assert changed.data["warehouses"] == [
                {"warehouse": "main", "priority": 0, "available": 6, "reserved": 2, "total": 8}
            ]

        missing = await client.get(f"/api/stock/stream/?ids={a},999999")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "product_not_found"
        bad = await client.get("/api/stock/stream/?ids=1,x")
        assert bad.status_code == 400
        assert bad.json()["error"]["code"] == "invalid_input"
        gone = await client.get("/api/products/424242/stream/")
        assert gone.status_code == 404


async def test_an_event_that_changed_nothing_shown_sends_nothing(
    served: tuple[str, Server],
) -> None:
    """Joining and leaving a sold-out product's waitlist are events of the product, but its
    stock is as it was: the next event a stream gets is the next real change."""
    url, server = served
    p = new_product(url, server, "LIVE-W", 1)
    held = await asyncio.to_thread(reserve, url, server, "8", p)
    waiter = bearer(server.app, "9")
    async with (
        httpx.AsyncClient(base_url=url, timeout=10) as client,
        opened(client, f"/api/products/{p}/stream/") as stream,
    ):
        assert (await stream.next()).data["available_stock"] == 0
        joined = await client.post(
            f"/api/products/{p}/waitlist/", json={"quantity": 1}, headers=waiter
        )
        assert joined.status_code == 202, joined.text
        await asyncio.sleep(0.5)  # (the feed reads each event alone)
        left = await client.delete(f"/api/products/{p}/waitlist/", headers=waiter)
        assert left.status_code == 200, left.text
        await asyncio.sleep(0.5)
        released = await client.delete(
            f"/api/reservations/{held}/", headers=bearer(server.app, "8")
        )
        assert released.status_code == 200, released.text
        assert (await stream.next()).data["available_stock"] == 1


async def a_change_after(
    stream: Stream, pause_s: float, url: str, server: Server, product: int
) -> Event:
    """The stream's first event, then after `pause_s` (heartbeats, if any, read on the way)
    a reservation of one unit, and the event of that change."""
    await stream.next()
    await asyncio.sleep(pause_s)
    await asyncio.to_thread(reserve, url, server, "9", product)
    return await stream.next()


async def test_a_heartbeat_of_0_sends_none_and_the_events_still_flow(
    server_settings: Settings,
) -> None:
    """STREAM_HEARTBEAT=0 (README): no heartbeat comments at all (sse-starlette's ping 0)."""
    settings = dataclasses.replace(server_settings, stream_heartbeat_ms=0)
    server = Server(settings)
    with server as url:
        product = new_product(url, server, "LIVE-H", 9)
        async with (
            httpx.AsyncClient(base_url=url, timeout=10) as client,
            opened(client, f"/api/products/{product}/stream/") as stream,
        ):
            changed = await a_change_after(stream, 0.3, url, server, product)
            assert changed.data["available_stock"] == 8
            assert stream.comments == 0


async def test_last_event_id_resumes_without_a_repeat_and_heartbeats_flow(
    server_settings: Settings,
) -> None:
    settings = dataclasses.replace(server_settings, stream_heartbeat_ms=200)
    server = Server(settings)
    with server as url:
        product = new_product(url, server, "LIVE-R", 9)
        path = f"/api/products/{product}/stream/"
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            async with opened(client, path) as stream:
                last = await a_change_after(stream, 0.5, url, server, product)
                assert last.data["available_stock"] == 8
                assert stream.comments >= 1

            # nothing changed since: no state is sent again, only the next change
            async with opened(client, path, {"Last-Event-ID": last.id}) as resumed:
                await asyncio.to_thread(reserve, url, server, "9", product)
                after = await resumed.next()
                assert after.data["available_stock"] == 7

            # a change while away: its state comes at once
            await asyncio.to_thread(reserve, url, server, "9", product)
            async with opened(client, path, {"Last-Event-ID": after.id}) as behind:
                assert (await behind.next(within=2)).data["available_stock"] == 6


async def refused_a_third(client: httpx.AsyncClient, path: str, status: int, code: str) -> None:
    """A third stream past a cap of 2: refused, to come back in 5 s."""
    third = await client.get(path)
    assert third.status_code == status
    assert third.json()["error"]["code"] == code
    assert third.json()["error"]["details"] == {"limit": 2}
    assert third.headers["retry-after"] == "5"


async def test_past_the_cap_is_503(server_settings: Settings) -> None:
    server = Server(dataclasses.replace(server_settings, stream_max_listeners=2))
    with server as url:
        product = new_product(url, server, "LIVE-C", 3)
        path = f"/api/products/{product}/stream/"
        async with (
            httpx.AsyncClient(base_url=url, timeout=10) as client,
            opened(client, path) as one,
            opened(client, path) as two,
        ):
            await one.next()
            await two.next()
            await refused_a_third(client, path, 503, "too_many_listeners")


async def test_one_client_has_at_most_its_share_of_the_streams(server_settings: Settings) -> None:
    # One anonymous client took every stream of a process (1000 in 19 s, within its rate
    # limit); then everyone was 503. Each client (a user, else an address) has at most
    # STREAM_MAX_PER_CLIENT.
    settings = dataclasses.replace(
        server_settings, stream_max_listeners=10, stream_max_per_client=2
    )
    server = Server(settings)
    with server as url:
        product = new_product(url, server, "LIVE-D", 3)
        path = f"/api/products/{product}/stream/"
        user = bearer(server.app, "31")
        async with (
            httpx.AsyncClient(base_url=url, timeout=10) as client,
            opened(client, path) as one,
            opened(client, path) as two,
        ):
            await one.next()
            await two.next()
            await refused_a_third(client, path, 429, "too_many_streams")
            # a user is a client of their own, whatever address they come from
            async with opened(client, path, user) as mine:
                await mine.next()
        # the address's streams closed: it may open again
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            for _ in range(50):  # (the server notices the closed streams within moments)
                async with client.stream("GET", path) as again:
                    if again.status_code == 200:
                        await Stream(again).next()
                        break
                    assert again.status_code == 429
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the closed streams were never let go")


async def test_a_change_trimmed_before_the_feed_read_it_is_still_sent(
    settings: Settings, clean_redis: None, db: DatabaseEngine, sync_redis: redis.Redis
) -> None:
    """The drain trims the outbox once the database has the events: a feed that reads after
    the trim reads the stock of every product it follows in that partition again."""
    async with Engine.from_settings(settings) as engine:
        await add_product(engine, "sku-1", {"main": 10})
        drain_partition(sync_redis, db, engine.settings, 0)
        feed = StockFeed(engine, max_listeners=10, poll_s=3600)  # polls only when told here
        listener = await feed.subscribe(["sku-1"])
        await asyncio.sleep(0.05)  # its first poll: nothing new
        assert not listener.pending
        await engine.reserve([LineRequest("sku-1", 4)], ALICE)
        drain_partition(sync_redis, db, engine.settings, 0)
        assert await engine.redis.xlen(partition_keys(0).outbox) == 0  # trimmed, unread

        await feed._poll()

        (position, state), *_ = await asyncio.wait_for(listener.next(), 1)
        assert (state["available_stock"], state["reserved_stock"]) == (6, 4)
        assert position.startswith("p0-")
        feed.unsubscribe(listener)
        await feed.aclose()
