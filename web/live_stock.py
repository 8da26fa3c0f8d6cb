"""Live stock for shop pages (issue 14, item 5): a product's availability as Server-Sent
Events, the current state at once, then an event on each change.

One feed per API process, however many listeners: it reads every partition's outbox (each
change of stock is one event there, appended in the same atomic step as the change) from where
it last read, finds the products whose stock moved, reads their stock once (one engine read
for all of them) and hands each listener the products it follows. A listener keeps only the
newest state of each product, so a slow client never makes the feed wait or hold more than one
state per product.

The outbox is trimmed once the database has applied it. The feed reads the partition's applied
marker with its events: past the feed's position, events the feed never read may be gone, so
every followed product of the partition is read again (nothing is missed, something may be
sent twice).

Each event's id is `p<N>-<ms>-<seq>`: the outbox position up to which the state it carries
includes every change. A client reconnecting with `Last-Event-ID` gets the current state at
once unless the feed knows that the product has not changed since that position.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import redis

from engine import outbox
from engine.engine import Engine
from engine.keys import event_id, parse_event_id, partition_of
from engine.models import ProductStock
from engine.outbox import sid
from web.products_view import stock_json as product_stock

log = logging.getLogger("inventory.web.live")

# Events read per partition and poll; a full read polls again at once.
READ_COUNT = 1000


class TooManyListeners(Exception):
    """The process follows STREAM_MAX_LISTENERS streams already."""


class TooManyStreams(Exception):
    """The client has STREAM_MAX_PER_CLIENT streams open on this process already."""


def stock_json(product: str, stock: ProductStock) -> dict[str, Any]:
    """What one event says: the product's stock, in the product's own fields."""
    return {"product": int(product) if product.isdigit() else product, **product_stock(stock)}


@dataclass(eq=False)
class Listener:
    """One stream: the products it follows, and the newest state of each not yet sent."""

    products: frozenset[str]
    client: str = ""  # whose stream (web/routes/products.py): counted per client
    pending: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # the state of each product last sent: an event that changed nothing this stream shows
    # (a customer joined or left a waitlist) sends nothing
    sent: dict[str, dict[str, Any]] = field(default_factory=dict)

    def put(self, product: str, position: str, state: dict[str, Any]) -> None:
        self.pending[product] = (position, state)
        self.wake.set()

    async def next(self) -> list[tuple[str, dict[str, Any]]]:
        """The states waiting (position, state) that differ from those last sent, once there
        is at least one."""
        while True:
            await self.wake.wait()
            self.wake.clear()
            taken, self.pending = self.pending, {}
            changed = {p: got for p, got in taken.items() if self.sent.get(p) != got[1]}
            if changed:
                self.sent.update((p, state) for p, (_, state) in changed.items())
                return list(changed.values())


class StockFeed:
    """The process's one reader of the outboxes, and its listeners."""

    def __init__(
        self,
        engine: Engine,
        *,
        max_listeners: int,
        max_per_client: int = 0,
        poll_s: float = 0.05,
    ) -> None:
        self.engine = engine
        self.max_listeners = max_listeners
        self.max_per_client = max_per_client  # 0: no cap per client
        self._per_client: dict[str, int] = {}
        self.poll_s = poll_s
        self.listeners: set[Listener] = set()
        self._following: dict[str, set[Listener]] = {}
        self._positions: dict[int, str] = {}  # partition -> the last event read
        self._started: dict[int, str] = {}  # partition -> where this feed started reading
        self._changed: dict[str, str] = {}  # product -> the position of its last change seen
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    @property
    def partitions(self) -> int:
        return self.engine.settings.partitions

    async def subscribe(self, products: Iterable[str], client: str = "") -> Listener:
        """A listener of these products (engine ids) for `client`; TooManyStreams past the
        cap per client, TooManyListeners past the process's. The feed reads from the
        outboxes' current ends from the first listener on."""
        if self.max_per_client and self._per_client.get(client, 0) >= self.max_per_client:
            raise TooManyStreams
        if len(self.listeners) >= self.max_listeners:
            raise TooManyListeners
        listener = Listener(frozenset(products), client)
        self.listeners.add(listener)
        self._per_client[client] = self._per_client.get(client, 0) + 1
        for p in listener.products:
            self._following.setdefault(p, set()).add(listener)
        if self._task is None or self._task.done():
            self._ready.clear()
            self._task = asyncio.create_task(self._run(), name="stock-feed")
        await self._ready.wait()
        return listener

    def unsubscribe(self, listener: Listener) -> None:
        if listener in self.listeners:
            left = self._per_client.get(listener.client, 1) - 1
            if left > 0:
                self._per_client[listener.client] = left
            else:
                self._per_client.pop(listener.client, None)
        self.listeners.discard(listener)
        for p in listener.products:
            followers = self._following.get(p)
            if followers is not None:
                followers.discard(listener)
                if not followers:
                    del self._following[p]

    def position(self, product: str) -> str:
        """The event id a state of `product` read now carries."""
        p = partition_of(product, self.partitions)
        return event_id(p, self._positions.get(p, "0-0"))

    def unchanged_since(self, product: str, last_event_id: str | None) -> bool:
        """Whether `product` surely has not changed since `last_event_id` (a client's
        Last-Event-ID): the feed has read its partition from before it, and saw no change."""
        if not last_event_id:
            return False
        try:
            p, position = parse_event_id(last_event_id)
        except ValueError:
            return False
        if p != partition_of(product, self.partitions) or p not in self._started:
            return False
        if sid(self._started[p]) > sid(position) or sid(position) > sid(self._positions[p]):
            return False
        changed = self._changed.get(product)
        return changed is None or sid(changed) <= sid(position)

    async def stocks(self, products: Iterable[str]) -> dict[str, ProductStock]:
        return await self.engine.get_stocks(products)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    # -- the reader -------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._start()
        finally:
            self._ready.set()
        while self.listeners:
            try:
                full = await self._poll()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away for a moment: the listeners keep their streams
                # (a traceback only for what is not Redis being away)
                away = isinstance(
                    exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError
                )
                log.warning(
                    "live stock: reading the outbox failed (%s); retrying", exc, exc_info=not away
                )
                full = False
                await asyncio.sleep(1)
            if not full:
                await asyncio.sleep(self.poll_s)
        self._task = None

    async def _start(self) -> None:
        ends = await asyncio.gather(
            *(self.engine.outbox_last_id(p) for p in range(self.partitions))
        )
        self._positions = dict(enumerate(ends))
        self._started = dict(self._positions)
        self._changed.clear()

    async def _poll(self) -> bool:
        """One read of every partition's new events; True when some partition had more."""
        read = await self.engine.outbox_after(self._positions, READ_COUNT)
        dirty: dict[str, str] = {}
        full = False
        for p, (events, applied) in read.items():
            before = self._positions[p]
            if applied is not None and sid(str(applied)) > sid(before):
                first = events[0].id if events else None
                if first is None or sid(first) > sid(str(applied)):
                    # trimmed past the feed: what it never read may be gone
                    lost = max(str(applied), first or "0-0", key=sid)
                    for product in self._following:
                        if partition_of(product, self.partitions) == p:
                            dirty[product] = lost
            for e in events:
                for product in _products_of(e):
                    dirty[product] = e.id
            if events:
                self._positions[p] = events[-1].id
                full = full or len(events) >= READ_COUNT
        for product, at in dirty.items():
            self._changed[product] = at
        followed = [product for product in dirty if product in self._following]
        if followed:
            await self._send(followed)
        return full

    async def _send(self, products: list[str]) -> None:
        stocks = await self.stocks(products)
        for product in products:
            stock = stocks.get(product)
            followers = self._following.get(product)
            if stock is None or not followers:
                continue
            state = stock_json(product, stock)
            position = self.position(product)
            for listener in followers:
                listener.put(product, position, state)


def _products_of(event: outbox.OutboxEvent) -> set[str]:
    """The products whose stock an event moved (or whose settings it changed)."""
    found = {str(m["product"]) for m in event.data.get("movements") or [] if "product" in m}
    if "product" in event.data and isinstance(event.data["product"], str):
        found.add(event.data["product"])
    return found


async def stream(
    feed: StockFeed, listener: Listener, first: dict[str, ProductStock], last_event_id: str | None
) -> AsyncIterator[dict[str, str]]:
    """The events of one stream (sse-starlette's dicts): each followed product's state now
    (unless unchanged since `last_event_id`), then each change. Leaves the feed at the end."""
    try:
        for product, stock in first.items():
            if not feed.unchanged_since(product, last_event_id):
                state = stock_json(product, stock)
                # what the client now has (resumed unchanged, what it has is not known here:
                # nothing is noted, and the next change is sent whatever it says)
                listener.sent[product] = state
                yield _event(feed.position(product), state)
        while True:
            for position, state in await listener.next():
                yield _event(position, state)
    finally:
        feed.unsubscribe(listener)


def _event(position: str, state: dict[str, Any]) -> dict[str, str]:
    return {"event": "stock", "id": position, "data": json.dumps(state, separators=(",", ":"))}
