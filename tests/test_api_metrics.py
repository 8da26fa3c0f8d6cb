"""`GET /metrics` through HTTP against the real app and Redis: request latencies by route
template, reservation outcomes, and the gauges read from Redis (outbox, drain lag, expiry),
and who may read it."""

from __future__ import annotations

import asyncio
import dataclasses

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

from engine.engine import Engine
from engine.keys import partition_keys
from engine.models import SYSTEM
from engine.settings import Settings
from persistence import jobs
from scripts.redis_server import free_port
from tests.api import bearer, data, err, running
from web.app import create_app
from web.metrics import snapshot
from web.services.container import Services

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
RESERVE = "/api/reservations/"
METRICS_TOKEN = "m" * 40


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    # What is measured does not depend on the database: SQLite alone is enough here.
    return sqlite_url


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(client: httpx.AsyncClient, headers: dict[str, str] | None = None) -> Samples:
    response = await client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return parse(response.text)


def svc(app: Starlette) -> Services:
    found: Services = app.state.services
    return found


async def product(app: Starlette, pid: int, units: int) -> None:
    await svc(app).engine.setup_product(str(pid), SYSTEM, price=100, stock={"main": units})


async def test_latency_is_labelled_by_route_template_not_path(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    me = bearer(app, "1")
    for rid in ("a" * 32, "b" * 32, "c" * 32):
        assert (await client.get(f"/api/reservations/{rid}/", headers=me)).status_code == 404
    await client.get("/healthz")
    await client.get("/no/such/path/42")
    await client.request("BREW", "/healthz")

    samples = await scrape(client)

    detail = {"route": "/api/reservations/{reservation_id}/", "method": "GET", "status": "404"}
    assert value(samples, "inventory_http_request_duration_seconds_count", **detail) == 3
    ok = {"route": "/healthz", "method": "GET", "status": "200"}
    assert value(samples, "inventory_http_request_duration_seconds_count", **ok) == 1
    assert value(samples, "inventory_http_request_duration_seconds_bucket", le="10.0", **ok) == 1
    nowhere = {"route": "<unmatched>", "method": "GET", "status": "404"}
    assert value(samples, "inventory_http_request_duration_seconds_count", **nowhere) == 1
    brew = {"route": "/healthz", "method": "other", "status": "405"}
    assert value(samples, "inventory_http_request_duration_seconds_count", **brew) == 1
    routes = {dict(labels).get("route") for _, labels in samples}
    assert not any(r and ("aaaa" in r or "42" in r) for r in routes)  # no raw paths


async def test_reservation_outcomes_are_counted_once_each(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    await product(app, 1, units=3)
    me = bearer(app, "1")
    retry = {**me, "Idempotency-Key": "k-1"}
    made = data(await client.post(RESERVE, json={"product": 1, "quantity": 1}, headers=retry))
    again = await client.post(RESERVE, json={"product": 1, "quantity": 1}, headers=retry)
    short = await client.post(RESERVE, json={"product": 1, "quantity": 5}, headers=me)
    bad = await client.post(RESERVE, json={"product": 1, "quantity": 0}, headers=me)
    anonymous = await client.post(RESERVE, json={"product": 1, "quantity": 1})
    second = data(await client.post(RESERVE, json={"product": 1, "quantity": 1}, headers=me))
    await client.post(f"{RESERVE}{made['id']}/extend/", json={"ttl_seconds": 900}, headers=me)
    await client.post(f"{RESERVE}{made['id']}/commit/", headers=me)
    await client.delete(f"{RESERVE}{second['id']}/", headers=me)
    gone = await client.delete(f"{RESERVE}{'f' * 32}/", headers=me)

    samples = await scrape(client)

    assert again.headers["idempotent-replayed"] == "true"
    assert (short.status_code, bad.status_code, anonymous.status_code) == (409, 400, 401)
    assert gone.status_code == 404
    counted = {
        (dict(labels)["operation"], dict(labels)["outcome"]): n
        for (name, labels), n in samples.items()
        if name == "inventory_reservation_requests_total"
    }
    assert counted == {
        ("reserve", "created"): 2,
        ("reserve", "replayed"): 1,
        ("reserve", "insufficient_stock"): 1,
        ("reserve", "invalid_input"): 1,
        ("reserve", "not_authenticated"): 1,
        ("extend", "extended"): 1,
        ("commit", "committed"): 1,
        ("release", "released"): 1,
        ("release", "reservation_not_found"): 1,
    }


async def test_outbox_and_expiry_gauges_come_from_redis(
    app: Starlette, client: httpx.AsyncClient, job_env: None
) -> None:
    await product(app, 1, units=5)
    me = bearer(app, "1")
    await client.post(RESERVE, json={"product": 1, "quantity": 2}, headers=me)
    await client.post(RESERVE, json={"product": 1, "quantity": 1, "ttl_seconds": 0.05}, headers=me)
    await asyncio.sleep(0.1)

    before = await scrape(client)
    backlog = await svc(app).engine.redis.xlen(partition_keys(0).outbox)

    assert backlog == 4  # the product's setup and opening stock, two reservations
    assert value(before, "inventory_redis_up") == 1
    assert value(before, "inventory_outbox_backlog", partition="0") == backlog
    assert value(before, "inventory_outbox_oldest_event_age_seconds", partition="0") >= 0.1
    assert value(before, "inventory_reservations_live", partition="0") == 2
    assert value(before, "inventory_reservations_due", partition="0") == 1
    assert ("inventory_outbox_drain_lag_seconds", frozenset()) not in before
    assert value(before, "inventory_reservations_expired_by_sweep_total") == 0

    swept = await asyncio.to_thread(jobs.expire)
    drained = await asyncio.to_thread(jobs.drain, 0)
    after = await scrape(client)

    assert swept == {
        "expired": 1,
        "still_due": 0,
        "carts": 0,
        "timed_out": 0,
        "waitlist_left": 0,
        "redis_behind": [],
    }
    assert drained["applied"] == 5  # and the expiry
    assert value(after, "inventory_reservations_expired_by_sweep_total") == 1
    assert value(after, "inventory_reservations_due", partition="0") == 0
    assert value(after, "inventory_reservations_live", partition="0") == 1
    assert value(after, "inventory_outbox_backlog", partition="0") == 0
    assert value(after, "inventory_outbox_oldest_event_age_seconds", partition="0") == 0
    assert value(after, "inventory_outbox_last_drain_applied", partition="0") == 5
    lag = {
        q: value(after, "inventory_outbox_drain_lag_seconds", partition="0", quantile=q)
        for q in ("0.5", "0.99", "1")
    }
    assert 0 < lag["0.5"] <= lag["0.99"] <= lag["1"] == drained["lag_max_ms"] / 1000
    assert value(after, "inventory_outbox_last_drain_timestamp_seconds", partition="0") > 0

    # an idle drain keeps the last one that applied anything
    await asyncio.to_thread(jobs.drain, 0)
    idle = await scrape(client)
    assert value(idle, "inventory_outbox_last_drain_applied", partition="0") == 5


async def test_a_scrape_without_redis_still_answers(settings: Settings) -> None:
    client = redis.asyncio.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    async with Engine(client, dataclasses.replace(settings, partitions=1)) as engine:
        found = await snapshot(engine)

    assert not found.redis_up
    samples = parse(
        create_app(dataclasses.replace(settings, jwt_keys="t:" + "k" * 40))
        .state.metrics.render(found)
        .decode()
    )
    assert value(samples, "inventory_redis_up") == 0
    assert not any(name.startswith("inventory_outbox") for name, _ in samples)


@pytest.fixture
def closed(app_settings: Settings, clean_redis: None) -> Starlette:
    return create_app(
        dataclasses.replace(app_settings, metrics_public=False, metrics_token=METRICS_TOKEN)
    )


async def test_closed_metrics_need_staff_or_the_scraper_token(closed: Starlette) -> None:
    async with running(closed) as client:
        anonymous = await client.get("/metrics")
        customer = await client.get("/metrics", headers=bearer(closed, "1"))
        wrong = await client.get("/metrics", headers={"Authorization": "Bearer " + "x" * 40})
        staff = await client.get("/metrics", headers=bearer(closed, "2", staff=True))
        scraper = await client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})

    assert (anonymous.status_code, err(anonymous)["code"]) == (401, "not_authenticated")
    assert (customer.status_code, err(customer)["code"]) == (403, "forbidden")
    assert (wrong.status_code, err(wrong)["code"]) == (401, "invalid_token")
    assert staff.status_code == 200
    assert scraper.status_code == 200
    assert "inventory_http_request_duration_seconds" in scraper.text


def test_metrics_are_open_by_default_only_on_the_embedded_stack() -> None:
    assert Settings().metrics_open
    assert not Settings(database_url="postgresql+psycopg://db/inventory").metrics_open
    assert Settings(database_url="postgresql+psycopg://db/x", metrics_public=True).metrics_open
    assert not Settings(metrics_public=False).metrics_open
    assert Settings.from_env({"METRICS_PUBLIC": "off"}).metrics_public is False
    assert Settings.from_env({"METRICS_PUBLIC": "yes"}).metrics_public is True
    assert Settings.from_env({}).metrics_public is None
    assert Settings(metrics_token=METRICS_TOKEN).describe()["metrics_token"] == "***"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"METRICS_PUBLIC": "maybe"}, "METRICS_PUBLIC must be true or false"),
        ({"METRICS_TOKEN": "short"}, "METRICS_TOKEN must be at least 32 bytes"),
    ],
)
def test_bad_metrics_settings_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings.from_env(env)


async def test_coalesced_calls_are_counted_by_the_calls_each_carried(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """inventory_coalesced_calls: one observation per Redis call of reserve, its value the
    calls it carried; concurrent reservations share calls, and every one is counted."""
    await product(app, 1, units=50)
    body = {"product": 1, "quantity": 1}
    await client.post(RESERVE, json=body, headers=bearer(app, "1"))  # alone
    buyers = [bearer(app, str(n)) for n in range(2, 32)]  # (a buyer holds at most 20)
    made = await asyncio.gather(*(client.post(RESERVE, json=body, headers=b) for b in buyers))
    assert all(r.status_code == 201 for r in made)

    samples = await scrape(client)

    reserve = {"operation": "reserve"}
    assert value(samples, "inventory_coalesced_calls_sum", **reserve) == 31  # every call, once
    sent = value(samples, "inventory_coalesced_calls_count", **reserve)
    assert 1 <= sent < 31  # some went together
    assert value(samples, "inventory_coalesced_calls_bucket", le="1.0", **reserve) >= 1


async def test_stock_reads_are_counted_by_the_call_that_answered_them(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """inventory_stock_reads: each product read once, on a Redis call of its own or on one
    shared with the reads of the same product that asked while one was on the wire."""
    staff = bearer(app, "1", staff=True)
    made = await client.post(
        "/api/products/",
        json={"name": "Drop sneaker", "sku": "SNK-1", "price": "129.99", "total_stock": 5},
        headers=staff,
    )
    assert made.status_code == 201, made.text
    page = f"/api/products/{data(made)['id']}/"
    before = await scrape(client)
    reads = await asyncio.gather(*(client.get(page) for _ in range(30)))
    assert all(r.status_code == 200 for r in reads)

    after = await scrape(client)

    def counted(samples: Samples, call: str) -> float:
        return value(samples, "inventory_stock_reads_total", call=call)

    own = counted(after, "own") - counted(before, "own")
    shared = counted(after, "shared") - counted(before, "shared")
    assert own + shared == 30
    assert 1 <= own < 30  # the reads at once shared calls
    assert shared >= 1
