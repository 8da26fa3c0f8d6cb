"""`inventory chaos`: many OS processes reserve the same scarce stock at the same moment.

Each run creates its own products (`chaos-<run>-<n>`) and touches nothing else: it never
flushes, and it reads the outbox only from the entry that was last when it started. It holds
the partitions' drain locks while it runs, so that a drainer running beside it (a served
stack's worker) leaves the run's events in the outbox until they are read back. The
processes connect first, wait on a barrier, then each sends one reservation — or, with
--buyers-per-process N, N reservations at once from N buyers sharing the process's engine, so
that its calls are coalesced (engine/coalesce.py) as an API process's are. Afterwards the
coordinator checks the counters, the invariants and the outbox: the events of this run's
products, replayed in stream order from zero, must chain (each movement's 'before' equals
the previous 'after') and land exactly on the counters — one event per change, none missing.

With --settle, half of the successful reservations (those made with a short TTL) are left to
expire and the sweep releases them; the rest are committed into orders.

With PARTITIONS > 1 (a Redis Cluster's default) the products spread over the partitions, so
a cart of several lines may span them (engine/carts.py): each partition's outbox is read and
replayed, every partition's invariants checked, and no product may ever have more units out
than its stock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing
import os
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier
from typing import Any, cast

from sqlalchemy import Engine as DatabaseEngine

from engine import errors, outbox
from engine.engine import Engine
from engine.keys import partition_of
from engine.models import SYSTEM, CallContext, LineRequest
from engine.settings import Settings
from persistence import behind
from persistence.db import database_engine

SHORT_TTL_MS = 1_000


@dataclass(frozen=True, slots=True)
class ChaosPlan:
    run: str
    processes: int
    stock: int
    products: tuple[str, ...]
    warehouses: tuple[str, ...]
    max_lines: int
    settle: bool
    seed: int
    per_process: int = 1

    @property
    def buyers(self) -> int:
        return self.processes * self.per_process

    def cart(self, index: int) -> list[LineRequest]:
        """The cart of buyer `index`: deterministic for a seed."""
        if len(self.products) == 1 and len(self.warehouses) == 1 and self.max_lines == 1:
            return [LineRequest(self.products[0], 1)]
        rnd = random.Random(self.seed * 100_003 + index)
        lines = []
        for _ in range(rnd.randint(1, self.max_lines)):
            warehouse = rnd.choice([None, *self.warehouses])
            lines.append(LineRequest(rnd.choice(self.products), rnd.randint(1, 2), warehouse))
        return lines

    def ttl_ms(self, index: int) -> int | None:
        # With --settle, odd buyers hold their units briefly: those are the ones to expire.
        return SHORT_TTL_MS if self.settle and index % 2 else None


def _chaos_settings(settings: Settings) -> Settings:
    return dataclasses.replace(
        settings, reservation_ttl_min_ms=min(settings.reservation_ttl_min_ms, SHORT_TTL_MS)
    )


def _engine(settings: Settings) -> Engine:
    """The engine of a chaos run, which checks a Redis that has started against the database
    before its first write, as the API's does — when there is a database set up: a run on a
    bare Redis (no schema in DATABASE_URL's database) has no record to check it against. The
    database is opened only then (the run's set-up checks; its many buyers don't connect)."""

    async def checkpoint(partition: int) -> str | None:
        # one database engine per process: a buyer is a forked process, and a pool's
        # connections must not cross a fork
        which = (settings.database_url_or_default, os.getpid())
        db = _databases.get(which) or _databases.setdefault(which, database_engine(settings))
        if not await asyncio.to_thread(behind.holds_a_record, db):
            return None
        return await behind.checkpoints(db)(partition)

    return Engine.from_settings(settings, checkpoints=checkpoint)


_databases: dict[tuple[str, int], DatabaseEngine] = {}


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


async def _prepare(settings: Settings, plan: ChaosPlan) -> list[str]:
    """Create the run's products; return each partition's outbox id to read after."""
    async with _engine(settings) as engine:
        await engine.check_layout()  # PARTITIONS as the data's (refused: exit 2)
        start = [await engine.outbox_newest_id(p) for p in range(settings.partitions)]
        for product in plan.products:
            await engine.setup_product(
                product,
                SYSTEM,
                price=1000,
                warehouses={w: i for i, w in enumerate(plan.warehouses)},
                stock=dict(
                    zip(plan.warehouses, _split(plan.stock, len(plan.warehouses)), strict=True)
                ),
            )
        return start


Outcome = tuple[int, str, str | None, int]  # buyer, "ok" | refusal | crash, reservation, units


def _buyers(
    settings: Settings, plan: ChaosPlan, process: int, barrier: Barrier, results: Any
) -> None:
    """Process `process`: its buyers' reservations, all at once; puts (outcomes, the sizes of
    the Redis calls they went in)."""
    first = process * plan.per_process
    buyers = range(first, first + plan.per_process)

    async def one(engine: Engine, index: int) -> Outcome:
        ctx = CallContext(actor=f"chaos-buyer-{index}", request_id=f"{plan.run}-{index}")
        try:
            r = await engine.reserve(plan.cart(index), ctx, ttl_ms=plan.ttl_ms(index))
        except errors.InsufficientStock:
            return index, "insufficient_stock", None, 0
        except Exception as exc:  # a crash is reported, never hidden as a refusal
            return index, f"crash: {exc!r}", None, 0
        return index, "ok", r.id, r.quantity

    async def run() -> tuple[list[Outcome], dict[int, int]]:
        async with _engine(settings) as engine:
            await engine.ping()
            await asyncio.to_thread(barrier.wait)
            got = await asyncio.gather(*(one(engine, i) for i in buyers))
            sizes = dict(engine.coalescer.sizes) if engine.coalescer else {}
            return list(got), sizes

    try:
        results.put(asyncio.run(run()))
    except Exception as exc:  # a crash is reported, never hidden as a refusal
        results.put(([(i, f"crash: {exc!r}", None, 0) for i in buyers], {}))


def _check_events(
    events: list[outbox.OutboxEvent], products: set[str]
) -> tuple[bool, dict[str, int], dict[tuple[str, str], tuple[int, int]], dict[str, int]]:
    """Replay the run's events from zero (each partition's in its stream order: a product's
    are all in one); return (chained, counts by type, final counters, the most units of each
    product ever out at once: granted by reservations and not yet given back)."""
    state: dict[tuple[str, str], tuple[int, int]] = {}
    counts: Counter[str] = Counter()
    chained = True
    out: Counter[str] = Counter()
    most_out: dict[str, int] = {}
    for event in events:
        mine = [m for m in event.movements if m.product in products]
        if not mine and event.data.get("product") not in products:
            continue
        counts[event.type] += 1
        for m in mine:
            key = (m.product, m.warehouse)
            if state.get(key, (0, 0)) != (m.available_before, m.reserved_before):
                chained = False
            state[key] = (m.available_after, m.reserved_after)
            if event.type in ("reservation_created", "reservation_expired", "reservation_released"):
                out[m.product] += m.available_before - m.available_after
                most_out[m.product] = max(most_out.get(m.product, 0), out[m.product])
    return chained, dict(counts), state, most_out


async def _settle_and_verify(
    settings: Settings,
    plan: ChaosPlan,
    start: list[str],
    outcomes: list[Outcome],
) -> dict[str, Any]:
    async with _engine(settings) as engine:
        committed = 0
        if plan.settle:
            for index, status, reservation_id, _ in outcomes:
                if status == "ok" and reservation_id and plan.ttl_ms(index) is None:
                    await engine.commit(reservation_id, SYSTEM)
                    committed += 1
            await asyncio.sleep(SHORT_TTL_MS / 1000 + 0.05)
            while (swept := await engine.expire()).still_due and not swept.redis_behind:
                pass
        stocks = await engine.get_stocks(plan.products)
        reports = await engine.check_invariants()
        events = [
            e for p, after in enumerate(start) for e in await engine.outbox_range(p, after=after)
        ]
    chained, counts, replayed, most_out_of = _check_events(events, set(plan.products))
    most_out = sum(most_out_of.values())
    counters = {
        (p, level.warehouse): (level.available, level.reserved)
        for p, s in stocks.items()
        for level in s.levels
    }
    succeeded = [o for o in outcomes if o[1] == "ok"]
    granted_ids = {o[2] for o in succeeded}
    crashed = [o for o in outcomes if o[1].startswith("crash")]
    units_granted = sum(o[3] for o in succeeded)
    available = sum(s.available for s in stocks.values())
    reserved = sum(s.reserved for s in stocks.values())
    total = sum(s.total for s in stocks.values())
    initial = plan.stock * len(plan.products)
    units_committed = sum(o[3] for o in succeeded if plan.settle and plan.ttl_ms(o[0]) is None)
    expected_events = {
        "reservation_created": len(succeeded),
        "stock_adjusted": len(plan.products),
        "product_updated": len(plan.products),
    }
    if committed:
        expected_events["order_created"] = committed
    n_expired_expected = len([o for o in succeeded if plan.settle and plan.ttl_ms(o[0])])
    if n_expired_expected:
        expected_events["reservation_expired"] = n_expired_expected
    if settings.partitions > 1:
        # a cart across partitions writes an event per part and step (holds, the home made
        # live, the parts following, a refused cart's holds given back): the replay must
        # still chain and land on the counters, with one order per commit
        counts_ok = counts.get("order_created", 0) == committed
    else:
        counts_ok = counts == expected_events
    events_ok = chained and replayed == counters and counts_ok
    # (a short-TTL reservation that expires while the burst still runs gives its units back to
    # the next buyer: what may never exceed a product's stock is its units out at one time)
    oversold = sum(max(0, n - plan.stock) for n in most_out_of.values())
    if plan.settle:
        exact = reserved == 0 and total == initial - units_committed and available == total
    else:
        exact = reserved == units_granted and available == initial - units_granted
    return {
        "succeeded": len(succeeded),
        "failed": len(outcomes) - len(succeeded) - len(crashed),
        "crashed": len(crashed),
        "available": available,
        "reserved": reserved,
        "total": total,
        "invariants_ok": all(r.ok for r in reports) and exact and oversold == 0,
        "oversold": oversold,
        "units_granted": units_granted,
        # successful carts whose lines live in more than one partition (engine/carts.py)
        "carts_across_partitions": sum(
            1
            for o in succeeded
            if len({partition_of(x.product, settings.partitions) for x in plan.cart(o[0])}) > 1
        ),
        "units_out_max": most_out,
        "committed": committed,
        # the buyers' reservations that expired (a cart's other parts expire each in its own
        # partition, under ids of their own: the cart is counted once, by its home's)
        "expired": sum(
            1
            for e in events
            if e.type == "reservation_expired" and e.data.get("reservation") in granted_ids
        ),
        "events": counts,
        "events_ok": events_ok,
        "processes": plan.processes,
        "buyers": plan.buyers,
        "stock": plan.stock,
        "products": list(plan.products),
        "warehouses": list(plan.warehouses),
        "problems": [f"partition {r.partition}: {p}" for r in reports for p in r.problems],
    }


def run(
    settings: Settings,
    *,
    processes: int,
    stock: int,
    products: int = 1,
    warehouses: int = 1,
    max_lines: int = 1,
    settle: bool = False,
    seed: int | None = None,
    per_process: int = 1,
) -> dict[str, Any]:
    if min(processes, products, warehouses, max_lines, per_process) < 1 or stock < 0:
        raise ValueError(
            "processes, products, warehouses, max lines, buyers per process >= 1; stock >= 0"
        )
    settings = _chaos_settings(settings)
    run_id = uuid.uuid4().hex[:8]
    plan = ChaosPlan(
        run=run_id,
        processes=processes,
        stock=stock,
        products=tuple(f"chaos-{run_id}-{i}" for i in range(products)),
        warehouses=tuple(f"chaos-w{i}" for i in range(warehouses)),
        max_lines=max_lines,
        settle=settle,
        seed=random.randrange(1 << 30) if seed is None else seed,
        per_process=per_process,
    )
    with _drains_held(settings):
        return _run(settings, plan)


@contextmanager
def _drains_held(settings: Settings) -> Iterator[None]:
    """Hold every partition's drain lock while the run goes (persistence.drain drain_locks,
    renewed every third of the lease): a drainer running meanwhile (the worker's, the
    scheduler's) waits, so the run's events stay in the outbox until it has read them back."""
    from engine.connection import connect_sync, resolve
    from persistence.drain import drain_locks

    client = connect_sync(resolve(settings, warn=False))
    done = threading.Event()
    try:
        with drain_locks(client, settings, range(settings.partitions)) as locks:

            def renew() -> None:
                while not done.wait(settings.drain_lease_ms / 3000):
                    for lock in locks:
                        lock.reacquire()

            renewer = threading.Thread(target=renew, name="chaos-drain-locks", daemon=True)
            renewer.start()
            try:
                yield
            finally:
                done.set()
                renewer.join()
    finally:
        client.close()


def _run(settings: Settings, plan: ChaosPlan) -> dict[str, Any]:
    start = asyncio.run(_prepare(settings, plan))
    # fork: the buyers start in milliseconds; no event loop is running at this point.
    mp = multiprocessing.get_context("fork")
    barrier = mp.Barrier(plan.processes)
    results = mp.Queue()
    workers = [
        mp.Process(target=_buyers, args=(settings, plan, i, barrier, results))
        for i in range(plan.processes)
    ]
    started = time.monotonic()
    for w in workers:
        w.start()
    outcomes: list[Outcome] = []
    sizes: Counter[int] = Counter()
    for _ in workers:
        got, sent = cast(tuple[list[Outcome], dict[int, int]], results.get(timeout=120))
        outcomes += got
        sizes.update(sent)
    for w in workers:
        w.join(timeout=30)
    elapsed = time.monotonic() - started
    result = asyncio.run(_settle_and_verify(settings, plan, start, sorted(outcomes)))
    # the Redis calls the reservations went in, by the reservations each carried (1: alone)
    result["coalesced"] = {str(size): n for size, n in sorted(sizes.items())}
    result["elapsed_s"] = round(elapsed, 3)
    result["seed"] = plan.seed
    return result
