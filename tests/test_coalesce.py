"""Coalesced calls (engine/coalesce.py, lua/many.lua): concurrent reservations, direct orders
and commits of one process go to Redis as one function call, each answered exactly as if
alone."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
from typing import Any

import pytest
from redis.exceptions import ResponseError

from engine import coalesce, errors, specs
from engine.coalesce import Coalescer, many
from engine.engine import Engine
from engine.invariants import check_partition
from engine.keys import PartitionKeys, new_id, partition_keys
from engine.models import CallContext, LineRequest
from engine.scripts import Call, parse, prepare
from engine.settings import Settings
from tests.helpers import event_types, events
from tests.support import add_product, levels

pytestmark = pytest.mark.cluster  # on the redis-server and on a Redis Cluster


def buyer(n: int, key: str | None = None) -> CallContext:
    return CallContext(actor=f"buyer-{n}", request_id=f"req-{n}", idempotency_key=key)


def reserve_call(
    engine: Engine,
    owner: str,
    lines: list[list[Any]],
    *,
    key: str = "",
    fp: str = "",
    rid: str | None = None,
    ttl: int = 60_000,
) -> Call:
    """The very call the engine makes for a reservation of `lines` (JSON as it sends them)."""
    k = partition_keys(0)
    rid = rid or new_id(0, 1)
    return prepare(
        specs.RESERVE,
        **specs.RESERVE.partition_keys(k),
        idem=k.idempotency(owner, "reserve", key) if key else k.unused_idempotency,
        record=k.reservation(rid),
        reservation_id=rid,
        lines=json.dumps(lines, separators=(",", ":")),
        ttl=ttl,
        allow_split="1",
        owner=owner,
        actor=owner,
        request_id=f"req-{owner}",
        fingerprint=fp,
        idempotency_ttl=engine.settings.idempotency_ttl_ms,
        expiry_batch=engine.settings.expire_batch,
        retention=engine.settings.reservation_retention_ms,
        cart="",
        parts="",
        hold=0,
        max_live=0,
    )


async def test_concurrent_reservations_share_calls_and_each_gets_its_own_answer(
    engine: Engine,
) -> None:
    await add_product(engine, "hot", {"main": 25})
    assert engine.coalescer is not None
    got = await asyncio.gather(
        *(engine.reserve([LineRequest("hot", 1)], buyer(n)) for n in range(100)),
        return_exceptions=True,
    )
    made = [r for r in got if not isinstance(r, BaseException)]
    refused = [r for r in got if isinstance(r, errors.InsufficientStock)]
    assert (len(made), len(refused)) == (25, 75)
    assert len({r.id for r in made}) == 25
    assert sorted(r.owner for r in made) == sorted({r.owner for r in made})
    # each answer carries its own event (the consistency token)
    assert len({r.event_id for r in made}) == 25
    assert await levels(engine, "hot") == {"main": (0, 25)}
    assert (await event_types(engine.redis)).count("reservation_created") == 25
    assert (await check_partition(engine.redis, 0)).ok
    sizes = engine.coalescer.sizes
    assert sum(n * count for n, count in sizes.items()) == 100  # every call sent once
    assert max(sizes) > 1  # and some of them together


async def test_one_call_alone_goes_straight_through(engine: Engine) -> None:
    await add_product(engine, "p", {"main": 5})
    assert engine.coalescer is not None
    for n in range(3):
        await engine.reserve([LineRequest("p", 1)], buyer(n))
    assert engine.coalescer.sizes == {1: 3}


async def test_a_refusal_or_an_error_inside_a_batch_changes_nothing_and_the_others_go_through(
    engine: Engine,
) -> None:
    await add_product(engine, "p", {"main": 3})
    await add_product(engine, "q", {"main": 1})
    before = await engine.redis.xlen(partition_keys(0).outbox)
    calls = [
        reserve_call(engine, "a", [["p", "", 2]]),
        reserve_call(engine, "b", [["p", "", 2], ["q", "", 1]]),  # p is short: all refused
        reserve_call(engine, "c", [["nope", "", 1]]),  # no such product
        reserve_call(engine, "d", []),  # its lines made unreadable below: it raises in Lua
        reserve_call(engine, "e", [["p", "", 1], ["q", "", 1]]),
    ]
    calls[3] = dataclasses.replace(
        calls[3], args=[calls[3].args[0], "not json", *calls[3].args[2:]]
    )
    replies = await engine.scripts.raw(many(specs.RESERVE, calls))
    assert len(replies) == 5
    assert parse(replies[0])["ok"] is True
    assert parse(replies[1])["err"] == "insufficient_stock"
    assert parse(replies[2]) == {"err": "product_not_found", "product": "nope"}
    assert replies[3].startswith("!")
    assert "invalid token" in replies[3]
    assert parse(replies[4])["ok"] is True
    assert await levels(engine, "p") == {"main": (0, 3)}
    assert await levels(engine, "q") == {"main": (0, 1)}
    created = (await events(engine.redis))[before:]
    assert [e["user"] for e in created] == ["a", "e"]
    assert parse(replies[0])["event"] != parse(replies[4])["event"]
    assert (await check_partition(engine.redis, 0)).ok


async def test_a_lua_error_in_a_coalesced_call_is_that_callers_error_alone(
    engine: Engine,
) -> None:
    await add_product(engine, "p", {"main": 10})
    assert engine.coalescer is not None
    good = [reserve_call(engine, f"u{n}", [["p", "", 1]]) for n in range(4)]
    bad = dataclasses.replace(good[0], args=[good[0].args[0], "{", *good[0].args[2:]])
    got = await asyncio.gather(
        *(engine.coalescer.run(specs.RESERVE, c) for c in [good[1], bad, good[2], good[3]]),
        return_exceptions=True,
    )
    assert isinstance(got[1], ResponseError)
    assert [parse(got[i])["ok"] for i in (0, 2, 3)] == [True, True, True]  # type: ignore[arg-type]
    assert await levels(engine, "p") == {"main": (7, 3)}


async def test_a_repeat_inside_one_batch_replays_the_first_and_a_mismatch_is_refused(
    engine: Engine,
) -> None:
    await add_product(engine, "p", {"main": 10})
    first = reserve_call(engine, "a", [["p", "", 2]], key="k1", fp="f" * 32)
    again = reserve_call(engine, "a", [["p", "", 2]], key="k1", fp="f" * 32)
    other = reserve_call(engine, "a", [["p", "", 3]], key="k1", fp="e" * 32)
    replies = [
        parse(r) for r in await engine.scripts.raw(many(specs.RESERVE, [first, again, other]))
    ]
    assert replies[0]["ok"] is True
    assert "replayed" not in replies[0]
    assert replies[1]["replayed"] is True
    assert replies[1]["reservation"] == replies[0]["reservation"]
    assert replies[2] == {"err": "idempotency_mismatch"}
    assert await levels(engine, "p") == {"main": (8, 2)}


def _normal(reply: dict[str, Any]) -> dict[str, Any]:
    """A reply without what the clock and the stream decide (times, event ids)."""
    out = {k: v for k, v in reply.items() if k != "event"}
    if "reservation" in out:
        out["reservation"] = {
            k: v for k, v in out["reservation"].items() if k not in ("created_at", "expires_at")
        }
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_a_batch_answers_and_leaves_exactly_what_the_calls_one_by_one_do(
    engine: Engine, seed: int
) -> None:
    """The same random calls (carts over three products and two warehouses, shortages,
    unknown products, repeats and reuses of idempotency keys) run one by one on one set of
    products and as one batch on a twin set: the same replies, the same counters."""
    rng = random.Random(seed)
    opening = {p: rng.randint(0, 4) for p in "pqr"}
    for side in ("one", "many"):
        for p in "pqr":
            await add_product(engine, f"{side}-{p}", {"main": opening[p], "east": 2})
    plan: list[tuple[str, list[list[Any]], str, str]] = []
    for _ in range(30):
        lines = [[p, rng.choice(["", "", "main", "east"]), rng.randint(1, 3)] for p in "pq"]
        lines = lines[: rng.randint(1, 2)] if rng.random() > 0.1 else [["zz", "", 1]]
        key = rng.choice(["", "", "k1", "k2"])
        fp = str(len(lines)) * 32 if key else ""
        plan.append((f"u{rng.randint(1, 4)}", lines, key, fp))
    plan.append(next(call for call in plan if call[2]))  # a repeat: replayed if it was made

    def calls(side: str) -> list[Call]:
        def named(p: str) -> str:
            return p if p == "zz" else f"{side}-{p}"

        return [
            reserve_call(
                engine, named(owner), [[named(p), w, q] for p, w, q in lines], key=key, fp=fp
            )
            for owner, lines, key, fp in plan
        ]

    alone = [parse(await engine.scripts.raw(c)) for c in calls("one")]
    together = [parse(r) for r in await engine.scripts.raw(many(specs.RESERVE, calls("many")))]

    def unsided(reply: dict[str, Any]) -> str:
        text = json.dumps(_normal(reply), sort_keys=True)
        if "reservation" in reply:
            text = text.replace(reply["reservation"]["id"], "ID")
        return text.replace("one-", "").replace("many-", "")

    assert [unsided(r) for r in alone] == [unsided(r) for r in together]
    assert any("ok" in r for r in alone)
    assert any("err" in r for r in alone)
    for p in ("p", "q", "r"):
        assert await levels(engine, f"one-{p}") == await levels(engine, f"many-{p}")
    assert (await check_partition(engine.redis, 0)).ok


async def test_units_a_batch_releases_go_to_the_waitlist_and_its_later_calls_see_what_is_left(
    engine: Engine,
) -> None:
    """Due reservations released by a batch's first call hand their units to the waitlist's
    heads; the batch's later calls see the counters and the waitlist as they stand after each
    call before them (what the batch keeps to write once at its end, lib.lua `batch`): the same
    replies, counters and hand-offs as the same calls one by one on a twin product."""
    replies: dict[str, list[str]] = {}
    for side in ("one", "many"):
        product = f"{side}-w"
        await add_product(engine, product, {"main": 3})
        due = [reserve_call(engine, f"{side}-d{n}", [[product, "", 1]], ttl=300) for n in range(3)]
        for c in due:
            assert "ok" in parse(await engine.scripts.raw(c))
        for n in range(2):
            await engine.join_waitlist(product, 1, buyer(100 + n))
        await asyncio.sleep(0.35)  # the three are due: the first call releases them
        calls = [reserve_call(engine, f"u{n}", [[product, "", 1]]) for n in range(4)]
        if side == "one":
            got = [await engine.scripts.raw(c) for c in calls]
        else:
            got = await engine.scripts.raw(many(specs.RESERVE, calls))
        replies[side] = []
        for raw in got:
            reply = parse(raw)
            text = json.dumps(_normal(reply), sort_keys=True).replace(f"{side}-", "")
            if "reservation" in reply:
                text = text.replace(reply["reservation"]["id"], "ID")
            replies[side].append(text)
        # two units to the two who wait, the third to the next caller; nothing for the rest
        assert await levels(engine, product) == {"main": (0, 3)}

    assert replies["one"] == replies["many"]
    # the first call finds the units it released held back for those who wait (they are
    # handed off after it); the second takes the one left over (the count of those who wait,
    # read once a batch, is read again once the hand-offs changed it)
    assert ['"ok"' in r for r in replies["many"]] == [False, True, False, False]
    handed = [e for e in await events(engine.redis) if e.get("source") == "waitlist"]
    assert len(handed) == 4  # two on each side
    assert (await check_partition(engine.redis, 0)).ok


@pytest.mark.single_server  # Redis's command counts: one server's
async def test_a_batch_reads_and_writes_what_its_calls_share_once(engine: Engine) -> None:
    """A batch of reservations of one product reads its counters, its settings and its
    waitlist's count once, and writes the counters, the live entries and the expiry index once
    (lib.lua `batch`, flush_batch): each reservation's own writes are its record, its event."""
    await add_product(engine, "p", {"main": 100})
    names = ("hmget", "hget", "hset", "zadd", "hincrby", "xadd")

    async def counts() -> dict[str, int]:
        stats = await engine.redis.info("commandstats")
        return {c: stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in names}

    before = await counts()
    batch = [reserve_call(engine, f"b{n}", [["p", "", 1]]) for n in range(8)]
    replies = [parse(r) for r in await engine.scripts.raw(many(specs.RESERVE, batch))]
    after = await counts()
    assert all("ok" in r for r in replies)
    assert {c: after[c] - before[c] for c in names} == {
        "hmget": 1,  # the counters
        "hget": 2,  # the product's settings, how many wait for it
        "hset": 8 + 2,  # each record; the counters and the live entries, once
        "zadd": 1,  # the expiry index, once
        "hincrby": 0,
        "xadd": 8,
    }
    assert await levels(engine, "p") == {"main": (92, 8)}
    live = await engine.redis.hlen(partition_keys(0).live)
    assert live == 8
    assert (await check_partition(engine.redis, 0)).ok


@pytest.mark.single_server  # Redis's command counts: one server's
async def test_a_batch_runs_at_one_instant_and_releases_what_is_due_once(engine: Engine) -> None:
    """A batch's calls read Redis's clock once (TIME) and look for due reservations once
    (ZRANGEBYSCORE), in the first call, which releases them all; the calls after it, at the
    same instant, have none to find. A call alone afterwards reads the clock again."""
    await add_product(engine, "p", {"main": 10})
    # due a millisecond after they are made: made at one instant (a batch), so that none of
    # them is due yet when the next is made
    due = [reserve_call(engine, f"d{n}", [["p", "", 1]], ttl=1) for n in range(3)]
    assert all("ok" in parse(r) for r in await engine.scripts.raw(many(specs.RESERVE, due)))
    await asyncio.sleep(0.01)

    async def counts() -> dict[str, int]:
        stats = await engine.redis.info("commandstats")
        return {c: stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("time", "zrangebyscore")}

    before = await counts()
    batch = [reserve_call(engine, f"b{n}", [["p", "", 1]]) for n in range(4)]
    replies = [parse(r) for r in await engine.scripts.raw(many(specs.RESERVE, batch))]
    after_batch = await counts()
    alone = parse(await engine.scripts.raw(reserve_call(engine, "a", [["p", "", 1]])))
    after_alone = await counts()

    assert all("ok" in r for r in replies)
    assert len({r["reservation"]["created_at"] for r in replies}) == 1
    assert {c: after_batch[c] - before[c] for c in before} == {"time": 1, "zrangebyscore": 1}
    assert {c: after_alone[c] - after_batch[c] for c in before} == {"time": 1, "zrangebyscore": 1}
    assert alone["reservation"]["created_at"] >= replies[0]["reservation"]["created_at"]
    types = [t for t in await event_types(engine.redis) if t.startswith("reservation_")]
    made, expired = ["reservation_created"] * 3, ["reservation_expired"] * 3
    assert types == made + expired + ["reservation_created"] * 5  # the due ones, then the batch
    assert await levels(engine, "p") == {"main": (5, 5)}
    assert (await check_partition(engine.redis, 0)).ok


async def test_a_caller_that_gives_up_before_its_batch_is_sent_is_left_out(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (the window held open: on a loaded machine the waiting calls' first steps can lie more
    # than 200 µs apart, and the batch would close between them; not what this is about)
    monkeypatch.setattr(coalesce, "WINDOW_S", 10.0)
    await add_product(engine, "p", {"main": 10})
    assert engine.coalescer is not None
    calls = [reserve_call(engine, f"u{n}", [["p", "", 1]]) for n in range(5)]
    tasks = [asyncio.create_task(engine.coalescer.run(specs.RESERVE, c)) for c in calls]
    await asyncio.sleep(0)  # each has started: the first went straight, the others wait
    tasks[3].cancel()
    got = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(got[3], asyncio.CancelledError)
    assert engine.coalescer.sizes == {1: 1, 3: 1}
    assert await levels(engine, "p") == {"main": (6, 4)}


# Keeps Redis busy for ARGV[1] µs: every call sent meanwhile waits on the wire.
BUSY = """local t = redis.call('TIME')
local start = t[1] * 1000000 + t[2]
repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - start > tonumber(ARGV[1])
return 1"""


async def test_while_two_batches_are_on_the_wire_the_next_gathers_until_one_is_answered(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Group commit: a batch isn't sent while `max_inflight` (2) of its group's calls are
    waiting on Redis (it would only queue behind them); it gathers every call that comes
    meanwhile, over any number of the loop's passes, and goes as soon as one is answered."""
    monkeypatch.setattr(coalesce, "WINDOW_S", 10.0)  # (the time bound is not what this is about)
    await add_product(engine, "p", {"main": 20})
    coalescer = engine.coalescer
    assert coalescer is not None
    calls = [reserve_call(engine, f"u{n}", [["p", "", 1]]) for n in range(16)]

    def run(batch: list[Call]) -> list[asyncio.Task[Any]]:
        return [asyncio.create_task(coalescer.run(specs.RESERVE, c)) for c in batch]

    k = partition_keys(0)
    # 2 s of Redis in a script: the test's steps below take ~0.1 s, and a busy machine's
    # pauses (two test workers on two cores) must not outlast it (0.6 s once did)
    busy: asyncio.Future[Any] = asyncio.ensure_future(
        engine.redis.eval(BUSY, 1, k.stock, 2_000_000)
    )

    async def in_the_script() -> bool:  # a command then waits: no answer within 50 ms
        try:
            await asyncio.wait_for(engine.redis.exists(k.stock), 0.05)
        except TimeoutError:
            return True
        return False

    # Redis is in the script now: waited for, not slept for (on a busy machine the script
    # may reach Redis late, and the calls answered meanwhile would go alone)
    for _ in range(40):
        if await in_the_script():
            break
    else:
        raise AssertionError("Redis never ran the busy script")
    tasks = run(calls[:1])  # nothing waiting: straight through (1 on the wire)
    await asyncio.sleep(0)
    tasks += run(calls[1:4])  # sent together at the end of this pass (2 on the wire)
    await asyncio.sleep(0.01)
    for start in (4, 8, 12):  # in three later passes: all wait, together
        tasks += run(calls[start : start + 4])
        await asyncio.sleep(0.01)
    assert coalescer.sizes == {1: 1, 3: 1}  # nothing more sent while Redis is busy
    got = await asyncio.gather(*tasks)
    assert await busy == 1
    assert coalescer.sizes == {1: 1, 3: 1, 12: 1}
    assert all(parse(r)["ok"] for r in got)
    assert await levels(engine, "p") == {"main": (4, 16)}


async def test_coalesce_off_sends_every_call_alone(settings: Settings, clean_redis: None) -> None:
    off = dataclasses.replace(settings, coalesce=False)
    assert Settings.from_env({"COALESCE": "0"}).coalesce is False
    assert Settings.from_env({}).coalesce is True
    async with Engine.from_settings(off) as engine:
        assert engine.coalescer is None
        await add_product(engine, "p", {"main": 3})
        got = await asyncio.gather(
            *(engine.reserve([LineRequest("p", 1)], buyer(n)) for n in range(6)),
            return_exceptions=True,
        )
        assert sum(not isinstance(r, BaseException) for r in got) == 3


async def test_direct_orders_are_coalesced_too(engine: Engine) -> None:
    await add_product(engine, "p", {"main": 7})
    assert engine.coalescer is not None
    got = await asyncio.gather(
        *(engine.place_order([LineRequest("p", 1)], buyer(n)) for n in range(20)),
        return_exceptions=True,
    )
    orders = [o for o in got if not isinstance(o, BaseException)]
    assert len(orders) == 7
    assert all(isinstance(o, errors.InsufficientStock) for o in got if o not in orders)
    assert len({o.id for o in orders}) == 7
    assert max(engine.coalescer.sizes) > 1
    assert (await check_partition(engine.redis, 0)).ok


async def test_commits_are_coalesced_too(engine: Engine) -> None:
    """A sale's checkouts: concurrent commits share calls, each its own order."""
    await add_product(engine, "p", {"main": 30})
    assert engine.coalescer is not None
    held = [await engine.reserve([LineRequest("p", 1)], buyer(n)) for n in range(20)]
    engine.coalescer.sizes.clear()
    orders = await asyncio.gather(*(engine.commit(r.id, buyer(n)) for n, r in enumerate(held)))
    assert [o.reservation_id for o in orders] == [r.id for r in held]
    assert [o.owner for o in orders] == [f"buyer-{n}" for n in range(20)]
    assert len({o.id for o in orders}) == 20
    assert max(engine.coalescer.sizes) > 1
    assert sum(size * n for size, n in engine.coalescer.sizes.items()) == 20
    assert await levels(engine, "p") == {"main": (10, 0)}
    assert (await check_partition(engine.redis, 0)).ok


def commit_call(engine: Engine, owner: str, rid: str, *, key: str = "", fp: str = "") -> Call:
    """The very call the engine makes to commit `owner`'s reservation `rid` (partition 0)."""
    k = partition_keys(0)
    oid = new_id(0, 1)
    return prepare(
        specs.COMMIT,
        **specs.COMMIT.partition_keys(k),
        record=k.reservation(rid),
        order=k.order(oid),
        idem=k.idempotency(owner, "commit", key) if key else k.unused_idempotency,
        reservation_id=rid,
        order_id=oid,
        scope=owner,
        actor=owner,
        request_id=f"req-{owner}",
        fingerprint=fp,
        idempotency_ttl=engine.settings.idempotency_ttl_ms,
        retention=engine.settings.reservation_retention_ms,
        foreign_lines="",
        deadline="",
        hold=engine.settings.cart_hold_ms,
        pending_ttl=0,
        foreign_held="",
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_a_batch_of_commits_answers_and_leaves_exactly_what_they_do_one_by_one(
    engine: Engine, seed: int
) -> None:
    """The same random commits (of reservations made alike on twin products: some of another
    customer's, some made twice, one expired, of no reservation, keyed, replayed and
    mismatched) one by one
    and as one batch: the same replies, the same counters, the same orders' count."""
    rng = random.Random(seed)
    owners = [f"u{rng.randint(1, 3)}" for _ in range(8)]
    made: dict[str, list[str]] = {"one": [], "many": []}

    async def reserve(side: str, owner: str, ttl: int) -> None:
        call = reserve_call(engine, owner, [[f"{side}-p", "", 2]], ttl=ttl)
        made[side].append(parse(await engine.scripts.raw(call))["reservation"]["id"])

    for side in ("one", "many"):
        await add_product(engine, f"{side}-p", {"main": 20})
        for owner in owners[:7]:
            await reserve(side, owner, 60_000)
    # the last one due before the commits (and after every reserve, whose sweep would end it)
    for side in ("one", "many"):
        await reserve(side, owners[7], 100)
    await asyncio.sleep(0.12)
    plan: list[tuple[int, str, str, str]] = []  # (reservation index, -1: none; owner, key, fp)
    for _ in range(16):
        i = rng.choice([*range(8), -1])
        owner = owners[i] if i >= 0 and rng.random() > 0.15 else f"u{rng.randint(1, 3)}"
        key = rng.choice(["", "", "k1", "k2"])
        plan.append((i, owner, key, (str(i % 3) * 32) if key else ""))
    plan.append(next(call for call in plan if call[2]))  # a repeat: replayed if it was made
    plan.insert(rng.randrange(len(plan)), (7, owners[7], "", ""))  # the expired one's

    def calls(side: str) -> list[Call]:
        return [
            commit_call(
                engine,
                owner,
                made[side][i] if i >= 0 else "f" * 32,
                key=f"{side}-{key}" if key else "",  # (a key is its customer's: one per side)
                fp=fp,
            )
            for i, owner, key, fp in plan
        ]

    alone = [parse(await engine.scripts.raw(c)) for c in calls("one")]
    together = [parse(r) for r in await engine.scripts.raw(many(specs.COMMIT, calls("many")))]

    def unsided(side: str, replies: list[dict[str, Any]]) -> list[str]:
        """The replies with each side's ids as their order of making, times and events left
        out."""
        ids = made[side] + [r["order"]["id"] for r in replies if "ok" in r]
        out = []
        for reply in replies:
            reply = {k: v for k, v in reply.items() if k not in ("event", "expires_at")}
            order = reply.get("order")
            if isinstance(order, dict):
                reply["order"] = {
                    k: v for k, v in order.items() if k not in ("created_at", "updated_at")
                }
            text = json.dumps(reply, sort_keys=True)
            for n, known in enumerate(ids):
                text = text.replace(known, f"ID{n}")
            out.append(text.replace(f"{side}-", ""))
        return out

    assert unsided("one", alone) == unsided("many", together)
    assert any("ok" in r for r in alone)
    assert any("err" in r for r in alone)
    assert await levels(engine, "one-p") == await levels(engine, "many-p")
    assert (await check_partition(engine.redis, 0)).ok


def test_a_batch_sends_shared_keys_and_batch_args_once_and_each_calls_own() -> None:
    k = partition_keys(0)
    names = specs.RESERVE.keys  # ... idem, record (its own), behind, ...
    settings = specs.RESERVE.batch_args  # idempotency_ttl, ... max_live

    def args(n: int, retention: str = "retention") -> list[str | int]:
        out: list[str | int] = []
        for a in specs.RESERVE.args:
            if a not in settings:
                out.append(f"{a}-{n}")
            else:
                out.append(retention if a == "retention" else a)
        return out

    calls = [
        Call("reserve_x", [k.stock, *names[1:5], f"i{n}", f"r{n}", *names[7:]], args(n))
        for n in range(3)
    ]
    batch = many(specs.RESERVE, calls)
    shared = [k.stock, *names[1:5], *names[7:]]
    assert batch.keys == [*shared, "i0", "r0", "i1", "r1", "i2", "r2"]
    own_args = [a for a in specs.RESERVE.args if a not in settings]
    assert own_args == [
        "reservation_id", "lines", "ttl", "allow_split", "owner", "actor", "request_id",
        "fingerprint",
    ]  # fmt: skip
    assert batch.args == [
        3,
        *[a for a in specs.RESERVE.args if a in settings],  # once, in ARGV's order
        *[f"{a}-{n}" for n in range(3) for a in own_args],
    ]
    assert batch.function.startswith("reserve_many_")
    other = Call("reserve_x", calls[0].keys, args(3, retention="other"))
    with pytest.raises(ValueError, match="batch args"):
        many(specs.RESERVE, [*calls, other])
    assert isinstance(Coalescer, type)


async def test_calls_with_other_ttls_share_a_call_and_other_settings_do_not(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Concurrent reservations with two TTLs (a request's choice) share calls, each with its
    own TTL; calls under another retention (an engine's setting, sent once per batch) are
    coalesced apart, each keeping its own."""
    # (the time bound is not what this is about: on a busy machine a pause between two of the
    # calls made at once could close a batch early)
    monkeypatch.setattr(coalesce, "WINDOW_S", 10.0)
    await add_product(engine, "p", {"main": 20})
    coalescer = engine.coalescer
    assert coalescer is not None

    def ttl_of(n: int) -> int:
        return 60_000 if n % 2 else 120_000

    def call(n: int, retention: int | None = None) -> Call:
        made = reserve_call(engine, f"u{n}", [["p", "", 1]], ttl=ttl_of(n))
        if retention is None:
            return made
        names = specs.RESERVE.args
        values = [
            retention if a == "retention" else v for a, v in zip(names, made.args, strict=True)
        ]
        return dataclasses.replace(made, args=values)

    calls = [call(n) for n in range(10)] + [call(n, retention=5_000) for n in range(10, 14)]
    coalescer.sizes.clear()
    replies = [
        parse(r) for r in await asyncio.gather(*(coalescer.run(specs.RESERVE, c) for c in calls))
    ]
    # each group's first alone (nothing of its group waits yet), then the other nine of the
    # first retention in one call, the other three of the second in another
    assert sorted(coalescer.sizes.elements()) == [1, 1, 3, 9]
    for n, reply in enumerate(replies):
        made = reply["reservation"]
        assert made["expires_at"] - made["created_at"] == ttl_of(n)
    assert await levels(engine, "p") == {"main": (6, 14)}
    assert (await check_partition(engine.redis, 0)).ok


async def test_calls_for_different_partitions_never_share_a_call(
    settings: Settings, clean_redis: None
) -> None:
    """Two partitions' products reserved at once: each partition's calls are coalesced apart
    (a batch carries one partition's keys), and every count is exact."""
    two = dataclasses.replace(settings, partitions=2)
    async with Engine.from_settings(two) as engine:
        names: dict[int, list[str]] = {0: [], 1: []}
        for n in range(40):
            p = f"sku-{n}"
            names[engine.partition_of_product(p)].append(p)
        mine = {part: names[part][0] for part in (0, 1)}
        for product in mine.values():
            await add_product(engine, product, {"main": 10})
        got = await asyncio.gather(
            *(engine.reserve([LineRequest(mine[n % 2], 1)], buyer(n)) for n in range(40)),
            return_exceptions=True,
        )
        assert sum(not isinstance(r, BaseException) for r in got) == 20
        for part, product in mine.items():
            assert await levels(engine, product) == {"main": (0, 10)}
            assert (await check_partition(engine.redis, part)).ok
        assert engine.coalescer is not None
        assert max(engine.coalescer.sizes) > 1
    k0, k1 = partition_keys(0), partition_keys(1)

    def call(k: PartitionKeys, n: int) -> Call:
        keys = {**specs.RESERVE.partition_keys(k), "idem": f"i{n}", "record": f"r{n}"}
        return Call("f", [keys[name] for name in specs.RESERVE.keys], [n] * len(specs.RESERVE.args))

    with pytest.raises(ValueError, match="same keys"):
        many(specs.RESERVE, [call(k0, 0), call(k1, 1)])
