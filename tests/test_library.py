"""The Functions library against a real Redis: loaded once, recovered when Redis lost it (a
restart with no data, FUNCTION FLUSH, a restore from an older copy), two versions side by
side, and no state carried from one call into the next."""

from __future__ import annotations

import asyncio
from importlib import resources

import redis

from engine import specs
from engine.engine import Engine
from engine.keys import partition_keys
from engine.models import SYSTEM, CallContext, LineRequest
from engine.scripts import Call, assemble, library, prepare, run_sync
from tests.helpers import events

USER = CallContext(actor="u1")


def _lua(name: str) -> str:
    return resources.files("lua").joinpath(f"{name}.lua").read_text(encoding="utf-8")


def _libraries(client: redis.Redis) -> set[str]:
    # RESP2: each library is a flat list: name, value, name, value, ...
    return {str(lib[lib.index("library_name") + 1]) for lib in client.function_list()}


async def test_load_puts_the_library_in_once(engine: Engine, sync_redis: redis.Redis) -> None:
    sync_redis.function_flush()
    assert await engine.scripts.load() == library().name
    assert await engine.scripts.load() == library().name  # already there: fine
    assert _libraries(sync_redis) == {library().name}


async def test_a_reserve_after_redis_lost_the_library_loads_it_and_succeeds(
    engine: Engine, sync_redis: redis.Redis
) -> None:
    await engine.setup_product("p1", SYSTEM, price=100, stock={"main": 3})
    sync_redis.function_flush()  # as a Redis restarted empty would be, data apart

    r = await engine.reserve([LineRequest("p1", 2)], USER)

    assert _libraries(sync_redis) == {library().name}
    stock = await engine.get_stock("p1")
    assert (stock.available, stock.reserved) == (1, 2)  # retried once, applied once
    created = [e for e in await events(engine.redis) if e["type"] == "reservation_created"]
    assert [e["reservation"] for e in created] == [r.id]


async def test_the_worker_recovers_too(engine: Engine, sync_redis: redis.Redis) -> None:
    await engine.setup_product("p1", SYSTEM, price=100, stock={"main": 3})
    await engine.reserve([LineRequest("p1", 1)], USER, ttl_ms=50)
    await asyncio.sleep(0.1)
    sync_redis.function_flush()
    k = partition_keys(0)

    reply = run_sync(
        sync_redis,
        specs.EXPIRE,
        **specs.EXPIRE.partition_keys(k),
        limit=10,
        hold=1000,
        retention=60_000,
    )

    assert reply["expired"] == 1
    assert _libraries(sync_redis) == {library().name}


async def test_two_versions_of_the_library_run_side_by_side(
    engine: Engine, sync_redis: redis.Redis
) -> None:
    # the next release: reserve.lua changed (here, by a comment), so every name changes
    other = assemble(lambda name: _lua(name) + ("\n-- the next release\n" * (name == "reserve")))
    assert other.version != library().version
    await engine.scripts.load()
    sync_redis.function_load(other.source)
    assert _libraries(sync_redis) == {library().name, other.name}
    await engine.setup_product("p1", SYSTEM, price=100, stock={"main": 5})

    mine = await engine.reserve([LineRequest("p1", 1)], USER)  # this version's functions
    k = partition_keys(0)
    call = prepare(
        specs.RESERVE,
        **specs.RESERVE.partition_keys(k),
        idem=k.unused_idempotency,
        record=k.reservation("r-next"),
        reservation_id="r-next",
        lines='[["p1","",2]]',
        ttl=60_000,
        allow_split="1",
        owner="u2",
        actor="u2",
        request_id="",
        fingerprint="",
        idempotency_ttl=60_000,
        expiry_batch=10,
        retention=60_000,
        cart="",
        parts="",
        hold=0,
        max_live=0,
    )
    theirs = Call(other.function("reserve"), call.keys, call.args)
    assert '"ok":true' in await engine.scripts.raw(theirs)  # the other version's, alongside

    stock = await engine.get_stock("p1")
    assert (stock.available, stock.reserved) == (2, 3)
    assert {e["reservation"] for e in await events(engine.redis) if "reservation" in e} == {
        mine.id,
        "r-next",
    }
    # the old version goes once its last process has; this one goes on
    sync_redis.function_delete(other.name)
    await engine.release(mine.id, USER)
    assert (await engine.get_stock("p1")).reserved == 2


async def test_no_call_inherits_the_state_of_the_one_before(engine: Engine) -> None:
    # a library's locals outlive a call: the idempotency record and the last event id that
    # one call set must not reach the next call's event or reply
    await engine.setup_product("p1", SYSTEM, price=100, stock={"main": 3})
    keyed = CallContext(actor="u1", idempotency_key="k-1")
    await engine.reserve([LineRequest("p1", 1)], keyed, ttl_ms=50)
    await asyncio.sleep(0.1)
    k = partition_keys(0)
    params: dict[str, str | int] = {
        **specs.EXPIRE.partition_keys(k),
        "limit": 10,
        "hold": 1000,
        "retention": 60_000,
    }

    swept = await engine.scripts.run(specs.EXPIRE, **params)
    idle = await engine.scripts.run(specs.EXPIRE, **params)

    assert swept["expired"] == 1
    assert "event" in swept
    # wrote nothing: no "event" (and nothing else due: cjson writes an empty list as {})
    assert idle == {
        "ok": True,
        "expired": 0,
        "left_waitlist": 0,
        "due": 0,
        "claimed": {},
        "orders_due": {},
    }
    (expired,) = [e for e in await events(engine.redis) if e["type"] == "reservation_expired"]
    assert "idempotency" not in expired
