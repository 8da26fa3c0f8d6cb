"""Creates of one sku racing each other: exactly one product, its opening stock counted once.

The forced interleavings hold a create between its catalog insert and its engine step: the
app's engine is swapped (Services.engine, the seam the app factory hands down) for one whose
create steps wait for the test, then run the real script. Nothing about what they do changes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine as DatabaseEngine
from sqlalchemy import select
from starlette.applications import Starlette

from engine import outbox
from engine.engine import Engine
from engine.models import CallContext, Product, ProductStock
from persistence import schema
from tests.api import bearer, data, err
from tests.catalog_support import svc

OPENING = 100


class HeldEngine(Engine):
    """The app's engine (same Redis, same settings), with two holds a test opens by hand:
    a create step (setup_product) of a named request waits before its script runs, and so
    may the next get_stocks call."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine.redis, engine.settings)
        self.arrived: dict[str, asyncio.Event] = {}
        self.go: dict[str, asyncio.Event] = {}
        self.next_read: tuple[asyncio.Event, asyncio.Event] | None = None

    def hold(self, request_id: str) -> None:
        self.arrived[request_id] = asyncio.Event()
        self.go[request_id] = asyncio.Event()

    def hold_next_read(self) -> tuple[asyncio.Event, asyncio.Event]:
        self.next_read = (asyncio.Event(), asyncio.Event())
        return self.next_read

    async def setup_product(self, product: str, ctx: CallContext, **options: Any) -> Product:
        if ctx.request_id in self.go:
            self.arrived[ctx.request_id].set()
            await self.go[ctx.request_id].wait()
        return await super().setup_product(product, ctx, **options)

    async def get_stocks(self, products: Iterable[str]) -> dict[str, ProductStock]:
        held, self.next_read = self.next_read, None
        if held is not None:
            arrived, go = held
            arrived.set()
            await go.wait()
        return await super().get_stocks(products)


@pytest.fixture
def held(app: Starlette, client: httpx.AsyncClient) -> HeldEngine:
    engine = HeldEngine(svc(app).engine)
    svc(app).engine = engine
    return engine


def staff(app: Starlette, user: str, key: str | None = None) -> dict[str, str]:
    headers = bearer(app, user, staff=True)
    return {**headers, "Idempotency-Key": key} if key else headers


def body(sku: str, **fields: Any) -> dict[str, Any]:
    return {
        "name": f"Product {sku}",
        "sku": sku,
        "price": "10.00",
        "total_stock": OPENING,
        **fields,
    }


async def post(
    client: httpx.AsyncClient, headers: dict[str, str], json: dict[str, Any], request_id: str = ""
) -> httpx.Response:
    extra = {"X-Request-ID": request_id} if request_id else {}
    return await client.post("/api/products/", json=json, headers={**headers, **extra})


def rows(db: DatabaseEngine, sku: str) -> list[Any]:
    with db.connect() as conn:
        return list(conn.execute(select(schema.products).where(schema.products.c.sku == sku)))


async def events(app: Starlette, product: int) -> list[tuple[str, str]]:
    """(type, reason) of every outbox event about `product`."""
    found = await outbox.read(svc(app).engine.redis, 0)
    return [
        (e.type, str(e.data.get("reason", "")))
        for e in found
        if e.data.get("product") == str(product)
    ]


async def assert_made_once(app: Starlette, db: DatabaseEngine, sku: str) -> int:
    """One catalog row for `sku`, its opening stock counted once, one event of each kind."""
    [row] = rows(db, sku)
    live = await svc(app).engine.get_stock(str(row.id))
    assert (live.total, live.available, live.reserved) == (OPENING, OPENING, 0)
    assert await events(app, row.id) == [("product_updated", ""), ("stock_adjusted", "initial")]
    return int(row.id)


def assert_sku_taken(response: httpx.Response, sku: str, product: int) -> None:
    assert response.status_code == 409, response.text
    error = err(response)
    assert error["code"] == "sku_exists"
    assert error["details"] == {"sku": sku, "product": product}


# -- forced interleavings ------------------------------------------------------------------


async def test_a_create_that_finds_the_row_before_the_first_engine_step_adds_nothing(
    app: Starlette, client: httpx.AsyncClient, held: HeldEngine, db: DatabaseEngine
) -> None:
    # The reported case: the second create sees the row while Redis does not know the product,
    # and its engine step runs after the first one's.
    held.hold("first")
    held.hold("second")
    first = asyncio.create_task(post(client, staff(app, "1"), body("RACE-1"), "first"))
    await held.arrived["first"].wait()  # the row is in, the engine step not yet run
    second = asyncio.create_task(post(client, staff(app, "3", "k-3"), body("RACE-1"), "second"))
    await held.arrived["second"].wait()  # it found the row unknown to Redis and claimed it

    held.go["first"].set()
    made = await first
    held.go["second"].set()
    refused = await second

    assert made.status_code == 201, made.text
    assert data(made)["total_stock"] == OPENING
    assert_sku_taken(refused, "RACE-1", data(made)["id"])
    assert await assert_made_once(app, db, "RACE-1") == data(made)["id"]


async def test_a_finisher_whose_engine_step_runs_first_makes_the_product_with_its_fields(
    app: Starlette, client: httpx.AsyncClient, held: HeldEngine, db: DatabaseEngine
) -> None:
    held.hold("first")
    held.hold("second")
    first = asyncio.create_task(post(client, staff(app, "1"), body("RACE-2"), "first"))
    await held.arrived["first"].wait()
    theirs = body("RACE-2", name="Theirs", price="12.50")
    second = asyncio.create_task(post(client, staff(app, "3"), theirs, "second"))
    await held.arrived["second"].wait()

    held.go["second"].set()
    made = await second
    held.go["first"].set()
    refused = await first

    assert made.status_code == 201, made.text
    pid = data(made)["id"]
    assert (data(made)["name"], data(made)["price"], data(made)["total_stock"]) == (
        "Theirs",
        "12.50",
        OPENING,
    )
    assert_sku_taken(refused, "RACE-2", pid)  # the first create lost; its row stays
    assert await assert_made_once(app, db, "RACE-2") == pid
    assert data(await client.get(f"/api/products/{pid}/")) == data(made)
    assert (await svc(app).engine.get_stock(str(pid))).price == 1250


async def test_a_refused_inserter_leaves_a_claimed_row_to_its_finisher(
    app: Starlette, client: httpx.AsyncClient, held: HeldEngine, db: DatabaseEngine
) -> None:
    # The first create's key was spent on another product: the engine refuses it (422), and it
    # would remove its row, but another create has claimed the row meanwhile.
    spent = await post(client, staff(app, "1", "spent"), body("OTHER-1"))
    assert spent.status_code == 201
    held.hold("first")
    held.hold("second")
    first = asyncio.create_task(post(client, staff(app, "1", "spent"), body("RACE-3"), "first"))
    await held.arrived["first"].wait()
    second = asyncio.create_task(post(client, staff(app, "3"), body("RACE-3"), "second"))
    await held.arrived["second"].wait()

    held.go["first"].set()
    refused = await first
    held.go["second"].set()
    made = await second

    assert refused.status_code == 422
    assert err(refused)["code"] == "idempotency_mismatch"
    assert made.status_code == 201, made.text
    assert await assert_made_once(app, db, "RACE-3") == data(made)["id"]


async def test_a_finisher_whose_row_was_removed_meanwhile_starts_over(
    app: Starlette, client: httpx.AsyncClient, held: HeldEngine, db: DatabaseEngine
) -> None:
    # The other order: the refused inserter removes its row between the finisher's read of it
    # and its claim. The claim fails, and the finisher inserts the row itself.
    spent = await post(client, staff(app, "1", "spent"), body("OTHER-1"))
    assert spent.status_code == 201
    held.hold("first")
    first = asyncio.create_task(post(client, staff(app, "1", "spent"), body("RACE-4"), "first"))
    await held.arrived["first"].wait()
    read_arrived, read_go = held.hold_next_read()
    second = asyncio.create_task(post(client, staff(app, "3"), body("RACE-4"), "second"))
    await read_arrived.wait()  # it read the row and asks Redis whether the product exists

    held.go["first"].set()
    refused = await first
    assert rows(db, "RACE-4") == []  # nobody had claimed it: removed
    read_go.set()
    made = await second

    assert refused.status_code == 422
    assert made.status_code == 201, made.text
    assert await assert_made_once(app, db, "RACE-4") == data(made)["id"]


# -- real concurrency ----------------------------------------------------------------------


async def test_twenty_concurrent_creates_of_one_sku_make_one_product(
    app: Starlette, client: httpx.AsyncClient, db: DatabaseEngine
) -> None:
    for run in range(10):
        sku = f"BURST-{run}"
        # Two staff users; half of the requests with an Idempotency-Key of their own.
        senders = [
            staff(app, "1" if i % 2 else "3", f"k{run}-{i}" if i % 4 < 2 else None)
            for i in range(20)
        ]

        answers = await asyncio.gather(*(post(client, h, body(sku)) for h in senders))

        made = [a for a in answers if a.status_code == 201]
        assert len(made) == 1, [a.text for a in answers]
        pid = data(made[0])["id"]
        assert data(made[0])["total_stock"] == OPENING
        for answer in answers:
            if answer is not made[0]:
                assert_sku_taken(answer, sku, pid)
        assert await assert_made_once(app, db, sku) == pid
        # Retried under their keys: the one that made it gets its answer again, the rest 409.
        winner = senders[answers.index(made[0])]
        keyed = [h for h in senders if "Idempotency-Key" in h]
        again = await asyncio.gather(*(post(client, h, body(sku)) for h in keyed))
        for headers, answer in zip(keyed, again, strict=True):
            if headers is winner:
                assert answer.status_code == 201
                # A loser's claim may have moved updated_at on (web/services/products.py).
                replayed, first = dict(data(answer)), dict(data(made[0]))
                assert replayed.pop("updated_at") >= first.pop("updated_at")
                assert replayed == first
            else:
                assert_sku_taken(answer, sku, pid)
        assert await assert_made_once(app, db, sku) == pid


async def test_concurrent_creates_of_different_skus_all_succeed(
    app: Starlette, client: httpx.AsyncClient, db: DatabaseEngine
) -> None:
    senders = [
        staff(app, "1" if i % 2 else "3", f"k-{i}" if i % 4 < 2 else None) for i in range(20)
    ]

    answers = await asyncio.gather(
        *(post(client, h, body(f"MANY-{i}")) for i, h in enumerate(senders))
    )

    assert [a.status_code for a in answers] == [201] * 20, [a.text for a in answers]
    ids = [await assert_made_once(app, db, f"MANY-{i}") for i in range(20)]
    assert sorted(ids) == sorted(data(a)["id"] for a in answers)
    assert len(set(ids)) == 20
