"""The rate limit through HTTP against the real app and Redis: a token bucket per user (or per
address without a valid token), 429 with `Retry-After` and the envelope, nothing changed by a
refused request, exact under concurrency in one process, within its stated bound across
processes (each process decides from its copy and settles with Redis off the request's path)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import cast

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engine.engine import Engine
from engine.keys import partition_keys, rate_limit_bucket
from engine.models import SYSTEM
from engine.settings import Settings
from persistence.db import database_engine
from persistence.trigger import DrainTrigger
from scripts.redis_server import free_port
from tests.api import bearer, err, running
from web.app import create_app
from web.errors import ApiError
from web.ratelimit import SETTLE_S, RateLimitMiddleware, settle, take
from web.responses import ok
from web.services.container import Services

RESERVE = "/api/reservations/"


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    # The limit sits in front of the endpoints: one database is enough.
    return sqlite_url


def limited(app_settings: Settings, per_second: float, burst: int) -> Starlette:
    return create_app(
        dataclasses.replace(app_settings, rate_limit_per_second=per_second, rate_limit_burst=burst)
    )


@pytest.fixture
def slow(app_settings: Settings, clean_redis: None) -> Starlette:
    """3 requests at once, then one every 100 s: what a test can use up and watch."""
    return limited(app_settings, 0.01, 3)


def svc(app: Starlette) -> Services:
    found: Services = app.state.services
    return found


async def test_over_the_limit_is_429_with_retry_after(slow: Starlette) -> None:
    me = bearer(slow, "1")
    async with running(slow) as client:
        allowed = [await client.get(f"{RESERVE}{'a' * 32}/", headers=me) for _ in range(3)]
        refused = await client.get(
            f"{RESERVE}{'a' * 32}/", headers={**me, "X-Request-ID": "too-many"}
        )

    assert [r.status_code for r in allowed] == [404, 404, 404]
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/json"
    assert refused.headers["x-request-id"] == "too-many"
    error = err(refused)
    assert error["code"] == "rate_limited"
    assert error["message"] == "too many requests; try again in 100 s"
    assert error["details"] == {"retry_after": 100, "per_second": 0.01, "burst": 3}
    assert refused.headers["retry-after"] == "100"


async def test_each_user_has_a_bucket_and_anonymous_callers_share_the_address(
    slow: Starlette,
) -> None:
    async with running(slow) as client:
        first = [(await client.get("/api/products/", headers=bearer(slow, "1"))).status_code]
        first += [(await client.get("/api/products/", headers=bearer(slow, "1"))).status_code]
        first += [(await client.get("/api/products/", headers=bearer(slow, "1"))).status_code]
        spent = await client.get("/api/products/", headers=bearer(slow, "1"))
        other = await client.get("/api/products/", headers=bearer(slow, "2"))
        anonymous = [(await client.get("/api/products/")).status_code for _ in range(4)]

    assert first == [200, 200, 200]
    assert spent.status_code == 429
    assert other.status_code == 200  # user 2's bucket is untouched
    assert anonymous == [200, 200, 200, 429]  # the address has a bucket of its own


async def test_a_forged_token_counts_for_the_address_not_the_user(slow: Starlette) -> None:
    real = bearer(slow, "7")["Authorization"]
    head, claims, signature = real.split(".")
    forged = {"Authorization": f"{head}.{claims}.{signature[::-1]}"}
    async with running(slow) as client:
        refusals = [await client.get("/api/products/", headers=forged) for _ in range(3)]
        spent = await client.get("/api/products/")
        victim = await client.get("/api/products/", headers={"Authorization": real})

    assert [r.status_code for r in refusals] == [200, 200, 200]  # catalog reads are open
    assert spent.status_code == 429  # the forged calls spent the address's bucket
    assert victim.status_code == 200  # and not user 7's


async def test_a_refused_reservation_changes_nothing_and_is_counted(
    app_settings: Settings, clean_redis: None
) -> None:
    app = limited(app_settings, 0.01, 1)
    me = bearer(app, "1")
    async with running(app) as client:
        await svc(app).engine.setup_product("1", SYSTEM, price=100, stock={"main": 5})
        made = await client.post(RESERVE, json={"product": 1, "quantity": 1}, headers=me)
        outbox = await svc(app).engine.redis.xlen(partition_keys(0).outbox)
        refused = await client.post(RESERVE, json={"product": 1, "quantity": 1}, headers=me)
        stock = await svc(app).engine.get_stock("1")
        after = await svc(app).engine.redis.xlen(partition_keys(0).outbox)
        metrics = (await client.get("/metrics")).text  # exempt from the limit

    assert made.status_code == 201, made.text
    assert (refused.status_code, err(refused)["code"]) == (429, "rate_limited")
    assert (stock.available, stock.reserved) == (4, 1)
    assert after == outbox
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(metrics)
        for s in f.samples
    }
    outcome = (("operation", "reserve"), ("outcome", "rate_limited"))
    assert samples[("inventory_reservation_requests_total", outcome)] == 1
    # a request stopped before routing still gets its route template
    labels = (("method", "POST"), ("route", RESERVE), ("status", "429"))
    assert samples[("inventory_http_request_duration_seconds_count", labels)] == 1


async def test_operations_endpoints_are_not_limited(slow: Starlette) -> None:
    async with running(slow) as client:
        statuses = {
            (await client.get(path)).status_code for path in ["/healthz", "/readyz", "/metrics"] * 5
        }
    assert statuses == {200}


async def redis_ms(app: Starlette) -> int:
    seconds, micros = await svc(app).engine.redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def test_the_bucket_refills_at_the_rate(app_settings: Settings, clean_redis: None) -> None:
    """Two requests inside one refill period: the second is refused; once the period has
    passed on the Redis clock (which the bucket counts by), one more goes through. Whether
    two requests fell inside one period is read from the Redis clock around them, not
    assumed; a pair a busy machine spread wider is tried again with a fresh bucket."""
    app = limited(app_settings, 4, 1)  # one request per 250 ms
    async with running(app) as client:
        for attempt in range(50):
            me = bearer(app, str(700 + attempt))  # a bucket of its own
            t0 = await redis_ms(app)
            first = await client.get("/api/products/", headers=me)
            second = await client.get("/api/products/", headers=me)
            t1 = await redis_ms(app)
            if t1 - t0 < 250:
                break
        assert t1 - t0 < 250, "no two requests fell inside one refill period"
        # the first took the only token no later than t1: by t1 + 250 ms one has come back
        await asyncio.sleep(max(0, t1 + 255 - await redis_ms(app)) / 1000)
        assert await redis_ms(app) >= t1 + 250
        third = await client.get("/api/products/", headers=me)

    assert first.status_code == 200
    assert second.status_code == 429
    assert second.headers["retry-after"] == "1"  # under 250 ms, rounded up to whole seconds
    assert third.status_code == 200


async def test_zero_turns_the_limit_off(app_settings: Settings, clean_redis: None) -> None:
    app = limited(app_settings, 0, 1)
    async with running(app) as client:
        statuses = {(await client.get("/api/products/")).status_code for _ in range(20)}

    assert statuses == {200}
    assert RateLimitMiddleware not in [cast(object, m.cls) for m in app.user_middleware]


async def test_without_redis_each_process_limits_alone_and_one_warning_says_so(
    app_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """The limit is decided from the process's copy, so it holds without Redis (exact for the
    process); the settle that cannot reach Redis says so once, and keeps what it admitted."""
    gone = dataclasses.replace(
        app_settings,
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        rate_limit_per_second=0.01,
        rate_limit_burst=2,
    )

    async def ping(request: Request) -> Response:
        return ok(request, {"pong": True})

    app = create_app(gone, routes=[Route("/api/ping/", ping)])
    # No lifespan: it would load the scripts into a Redis that is not there.
    engine = Engine.from_settings(gone)
    db = database_engine(gone)
    trigger = DrainTrigger(engine, gone.redis_url)
    app.state.services = Services(gone, engine, db, trigger)
    transport = httpx.ASGITransport(app=app)

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "inventory.ratelimit"]

    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            statuses = [(await client.get("/api/ping/")).status_code for _ in range(3)]
            for _ in range(100):  # the settle, SETTLE_S later, finds no Redis
                if warnings():
                    break
                await asyncio.sleep(SETTLE_S)
            later = [(await client.get("/api/ping/")).status_code for _ in range(2)]
            await asyncio.sleep(2 * SETTLE_S)
    finally:
        trigger.close()
        db.dispose()
        await engine.aclose()

    assert statuses == [200, 200, 429]
    assert later == [429, 429]  # still limited, from the copy
    assert len(warnings()) == 1
    assert "rate limits not settled with Redis" in warnings()[0]


async def test_concurrent_requests_take_exactly_the_burst(
    app_settings: Settings, clean_redis: None
) -> None:
    app = limited(app_settings, 0.001, 10)
    me = bearer(app, "1")
    async with running(app) as client:
        responses = await asyncio.gather(
            *(client.get("/api/products/", headers=me) for _ in range(50))
        )

    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 10 + [429] * 40


async def test_a_check_is_one_round_trip_and_the_bucket_expires(
    engine: Engine, settings: Settings
) -> None:
    await engine.scripts.load()
    bucket = rate_limit_bucket("user", "42")
    watcher = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    marker = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    marker.ping()  # connected before the watch starts
    try:
        with watcher.monitor() as monitor:  # type: ignore[no-untyped-call]
            left = await take(engine.scripts, bucket, 2.0, 5)
            marker.echo("checked")
            sent: list[str] = []
            while (seen := monitor.next_command())["command"] != "ECHO checked":
                if seen["client_type"] != "lua":  # what the script itself runs
                    sent.append(seen["command"].split()[0])
        ttl_ms = int(marker.pttl(bucket))
    finally:
        watcher.close()
        marker.close()

    assert left == 4
    assert sent == ["FCALL"]
    assert 0 < ttl_ms <= 501  # one request refills in 500 ms: then the key can go


async def test_the_wrapper_raises_the_429_with_the_wait(engine: Engine) -> None:
    bucket = rate_limit_bucket("ip", "10.0.0.1")
    await take(engine.scripts, bucket, 0.5, 1)
    with pytest.raises(ApiError) as refused:
        await take(engine.scripts, bucket, 0.5, 1)

    assert refused.value.status == 429
    assert refused.value.headers == {"Retry-After": "2"}  # 2 s for one request at 0.5/s


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RATE_LIMIT_PER_SECOND": "-1"}, "RATE_LIMIT_PER_SECOND must be a finite number"),
        ({"RATE_LIMIT_PER_SECOND": "inf"}, "RATE_LIMIT_PER_SECOND must be a finite number"),
        ({"RATE_LIMIT_PER_SECOND": "0.0001"}, "RATE_LIMIT_PER_SECOND must be 0 .no limit. or"),
        ({"RATE_LIMIT_BURST": "-1"}, "RATE_LIMIT_BURST must be at least 0"),
        ({"RATE_LIMIT_BURST": "2000000"}, "RATE_LIMIT_BURST must be between 1 and 1000000"),
    ],
)
def test_bad_rate_limit_settings_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings.from_env(env)


def test_rate_limit_settings_from_the_environment() -> None:
    found = Settings.from_env({"RATE_LIMIT_PER_SECOND": "2.5", "RATE_LIMIT_BURST": "7"})
    assert (found.rate_limit_per_second, found.rate_limit_burst) == (2.5, 7)
    assert Settings.from_env({"RATE_LIMIT_PER_SECOND": "0"}).rate_limit_per_second == 0
    # either at 0 turns the limit off (README), whatever the other says
    for off in ({"RATE_LIMIT_BURST": "0"}, {"RATE_LIMIT_BURST": "0", "RATE_LIMIT_PER_SECOND": "0"}):
        assert Settings.from_env(off).rate_limit_per_second == 0


async def settled(app: Starlette, bucket: str, below: float) -> float:
    """The Redis bucket's tokens once a settle has brought them under `below` (polled)."""
    for _ in range(200):
        (tokens,) = await settle(svc(app).engine.scripts, 0.001, 5, [(bucket, 0, 0)])
        if tokens < below:
            return tokens
        await asyncio.sleep(SETTLE_S / 2)
    raise AssertionError("the process never settled its bucket with Redis")


async def test_a_bucket_spent_in_one_process_is_spent_in_the_others(
    app_settings: Settings, clean_redis: None
) -> None:
    """Two API processes (two apps over one Redis): what one admits reaches the Redis bucket
    in the background. The other, new to the client, admits from a full bucket until its own
    settle (within SETTLE_S) tells it what Redis has left: then it refuses, with the wait the
    Redis bucket owes."""
    first, second = limited(app_settings, 0.001, 5), limited(app_settings, 0.001, 5)
    me = bearer(first, "1")
    async with running(first) as a, running(second) as b:
        spent = [(await a.get("/api/products/", headers=me)).status_code for _ in range(6)]
        left = await settled(first, rate_limit_bucket("user", "1"), 1)
        new = await b.get("/api/products/", headers=me)
        debt = await settled(second, rate_limit_bucket("user", "1"), 0)
        await asyncio.sleep(2 * SETTLE_S)  # the second has settled and adopted the debt
        other = await b.get("/api/products/", headers=me)

    assert spent == [200] * 5 + [429]
    assert 0 <= left < 0.01  # the five taken, a few ms of refill at 1/1000 s
    assert new.status_code == 200  # within the stated bound: one burst per process
    assert -1 <= debt < -0.99  # the second's request is owed
    assert other.status_code == 429
    assert other.headers["retry-after"] == "2000"  # two tokens to refill at 1/1000 s


async def test_across_processes_a_client_gets_at_most_a_burst_per_process_then_owes_it(
    app_settings: Settings, clean_redis: None
) -> None:
    """The stated bound with N = 2: both processes know the bucket full and spend it at
    once, at most 2 x burst in all; the overdraft is a debt in Redis that both then see."""
    first, second = limited(app_settings, 0.001, 5), limited(app_settings, 0.001, 5)
    me = bearer(first, "1")
    async with running(first) as a, running(second) as b:
        await asyncio.gather(
            a.get("/api/products/", headers=me), b.get("/api/products/", headers=me)
        )
        burst = await asyncio.gather(
            *(c.get("/api/products/", headers=me) for c in (a, b) for _ in range(10))
        )
        admitted = 2 + sum(r.status_code == 200 for r in burst)
        debt = await settled(first, rate_limit_bucket("user", "1"), 5 - admitted + 0.5)
        await asyncio.sleep(4 * SETTLE_S)  # both have settled and heard the other's spending
        after = [(await c.get("/api/products/", headers=me)).status_code for c in (a, b)]

    assert 5 <= admitted <= 2 * 5
    assert debt == pytest.approx(5 - admitted, abs=0.05)
    assert after == [429, 429]


async def test_one_settle_counts_many_buckets_and_may_overdraw(engine: Engine) -> None:
    await engine.scripts.load()
    a, b = rate_limit_bucket("user", "settle-a"), rate_limit_bucket("user", "settle-b")
    await engine.redis.delete(a, b)
    left = await settle(engine.scripts, 0.001, 5, [(a, 3, 0), (b, 0, 0)])
    owed = await settle(engine.scripts, 0.001, 5, [(a, 4, 0)])

    assert left == [pytest.approx(2, abs=0.01), 5.0]
    assert owed == [pytest.approx(-2, abs=0.01)]  # a debt the refill pays back first
    assert await engine.redis.exists(b) == 0  # reading a bucket writes nothing
    assert 0 < await engine.redis.pttl(a) <= 7_000_001  # gone once it would be full again


async def test_a_settle_that_leaves_a_bucket_full_writes_nothing(engine: Engine) -> None:
    """A client well within its rate: the refill since its requests were admitted made up for
    them, and its bucket is full again — which a missing bucket is: nothing is written, and a
    stored bucket that is full again goes."""
    await engine.scripts.load()
    calm, busy = rate_limit_bucket("user", "calm"), rate_limit_bucket("user", "busy")
    await engine.redis.delete(calm, busy)
    # 100/s: one request admitted 50 ms ago was refilled 40 ms ago
    assert await settle(engine.scripts, 100, 5, [(calm, 1, 50)]) == [5.0]
    assert await engine.redis.exists(calm) == 0
    # 3 admitted just now leave 2: stored, until it would be full again (30 ms)
    (left,) = await settle(engine.scripts, 100, 5, [(busy, 3, 0)])
    assert left == pytest.approx(2, abs=0.2)
    assert 0 < await engine.redis.pttl(busy) <= 31
    # a stored bucket a settle finds full again (counted 10 s ago, kept longer) is deleted
    seconds, _ = await engine.redis.time()
    await engine.redis.set(busy, f"2 {(int(seconds) - 10) * 1000}", px=60_000)
    assert await settle(engine.scripts, 100, 5, [(busy, 1, 50)]) == [5.0]
    assert await engine.redis.exists(busy) == 0


async def test_a_bucket_kept_as_a_hash_before_is_read_as_it_was(engine: Engine) -> None:
    # a bucket is one string '<tokens> <at>' with a TTL (lua/lib.lua read_bucket); one the
    # previous version kept as a hash {tokens, at} still counts: read as it was, then replaced
    await engine.scripts.load()
    bucket = rate_limit_bucket("user", "from-before")
    seconds, micros = await engine.redis.time()
    now = int(seconds) * 1000 + int(micros) // 1000
    await engine.redis.hset(bucket, mapping={"tokens": "1.5", "at": str(now)})
    await engine.redis.pexpire(bucket, 60_000)

    assert await settle(engine.scripts, 0.001, 5, [(bucket, 0, 0)]) == [
        pytest.approx(1.5, abs=0.01)
    ]
    assert await take(engine.scripts, bucket, 0.001, 5) == 0  # 1.5 - 1 left: 0 whole
    assert await engine.redis.type(bucket) == "string"
    tokens, at = str(await engine.redis.get(bucket)).split(" ")
    assert float(tokens) == pytest.approx(0.5, abs=0.01)
    assert int(at) >= now
    with pytest.raises(ApiError):  # under one token now
        await take(engine.scripts, bucket, 0.001, 5)


async def test_one_settle_reads_stored_missing_and_hash_buckets_each_as_it_is(
    engine: Engine,
) -> None:
    # the settle reads its buckets with one MGET, where a bucket kept as a hash reads as none:
    # then (and only then) each bucket it found none of is read on its own
    await engine.scripts.load()
    stored, missing, old = (rate_limit_bucket("user", f"mixed-{n}") for n in ("s", "m", "h"))
    await engine.redis.delete(stored, missing, old)
    seconds, micros = await engine.redis.time()
    now = int(seconds) * 1000 + int(micros) // 1000
    await engine.redis.set(stored, f"2.5 {now}", px=60_000)
    await engine.redis.hset(old, mapping={"tokens": "1.5", "at": str(now)})
    await engine.redis.pexpire(old, 60_000)

    left = await settle(engine.scripts, 0.001, 5, [(stored, 1, 0), (missing, 2, 0), (old, 1, 0)])

    assert left == [
        pytest.approx(1.5, abs=0.01),
        pytest.approx(3, abs=0.01),
        pytest.approx(0.5, abs=0.01),
    ]
    assert await engine.redis.type(old) == "string"  # replaced by the write
    for bucket, tokens in ((stored, 1.5), (missing, 3), (old, 0.5)):
        assert float(str(await engine.redis.get(bucket)).split(" ")[0]) == pytest.approx(
            tokens, abs=0.01
        )
