"""The background commands end to end: migrate, scheduler, worker --burst, drain."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from rq.job import Job
from rq_scheduler import Scheduler
from sqlalchemy import select

from engine.engine import Engine
from engine.keys import partition_keys, partition_of
from engine.models import SYSTEM, CallContext, LineRequest
from engine.settings import PROJECT_ROOT, Settings
from persistence import jobs, migrate, periodic, schema
from persistence.db import database_engine
from persistence.trigger import DrainTrigger
from scripts.redis_server import RedisServer, free_port
from tests.durable import BUYER
from tests.support import last_json, run_cli


def inventory(
    settings: Settings, database_url: str, *args: str
) -> subprocess.CompletedProcess[str]:
    env = {"REDIS_URL": settings.redis_url, "DATABASE_URL": database_url}
    return run_cli(*args, env=env, timeout=120)


def test_migrate_brings_an_empty_database_to_head_and_is_idempotent(
    settings: Settings, tmp_path: Any
) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    first = inventory(settings, url, "migrate")
    second = inventory(settings, url, "migrate")

    assert first.returncode == 0, first.stderr
    assert last_json(first) == {"from": None, "to": migrate.head(), "head": migrate.head()}
    assert last_json(second)["from"] == migrate.head()
    assert migrate.diff(url) == []


async def test_scheduler_and_burst_worker_expire_and_drain(
    engine: Engine, settings: Settings, db_url: str
) -> None:
    await engine.setup_product("sku-1", SYSTEM, price=100, stock={"main": 5})
    held = await engine.reserve([LineRequest("sku-1", 2)], BUYER, ttl_ms=50)
    await asyncio.sleep(0.1)

    scheduled = inventory(settings, db_url, "scheduler", "--burst", "--log-level", "WARNING")
    assert scheduled.returncode == 0, scheduled.stderr
    worked = inventory(settings, db_url, "worker", "--burst", "--log-level", "WARNING")
    assert worked.returncode == 0, worked.stderr

    # the periodic expire job released the due reservation; the drain made it durable
    stock = await engine.get_stock("sku-1")
    assert (stock.available, stock.reserved) == (5, 0)
    db = database_engine(dataclasses.replace(settings, database_url=db_url))
    with db.connect() as conn:
        status = conn.scalar(
            select(schema.reservations.c.status).where(schema.reservations.c.id == held.id)
        )
        actions = list(conn.scalars(select(schema.audit_log.c.action)))
    db.dispose()
    assert status == "expired"
    assert actions.count("reservation_expired") == 1
    assert last_json(worked)["drained"][0]["applied"] >= 0


def test_periodic_jobs_are_registered_once_with_a_result_ttl(
    settings: Settings, clean_redis: None
) -> None:
    connection = redis.Redis.from_url(settings.redis_url)
    scheduler = Scheduler(queue_name=jobs.QUEUE, connection=connection, interval=1)
    periodic.register(scheduler)
    periodic.register(scheduler)  # again: replaces, never duplicates

    registered = {job.id: job for job in scheduler.get_jobs()}
    assert set(registered) == {p.id for p in periodic.PERIODIC}
    for p in periodic.PERIODIC:
        job = registered[p.id]
        assert job.meta["interval"] == p.every_s
        assert job.result_ttl == jobs.JOB_RESULT_TTL  # results don't pile up forever
    connection.close()


def test_request_drain_enqueues_one_job_while_one_waits(
    settings: Settings, clean_redis: None
) -> None:
    raw = redis.Redis.from_url(settings.redis_url)
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    q = jobs.queue(raw)

    outcomes = [jobs.request_drain(q, client, 0) for _ in range(50)]

    assert outcomes.count(True) == 1
    assert q.count == 1
    raw.close()
    client.close()


async def test_a_burst_of_writes_asks_for_one_drain(
    engine: Engine, settings: Settings, clean_redis: None, db_url: str
) -> None:
    raw = redis.Redis.from_url(settings.redis_url)
    trigger = DrainTrigger(engine, settings.redis_url)
    await engine.setup_product("sku-1", SYSTEM, price=100, stock={"main": 500})

    async def write(n: int) -> bool:  # a buyer each (MAX_LIVE_RESERVATIONS_PER_CUSTOMER)
        await engine.reserve([LineRequest("sku-1", 1)], CallContext(f"buyer-{n}"))
        return await trigger.request(0)

    asked = await asyncio.gather(*(write(n) for n in range(200)))

    assert asked.count(True) == 1
    assert jobs.queue(raw).count == 1
    # the one job drains everything the burst wrote
    worked = inventory(settings, db_url, "worker", "--burst", "--log-level", "WARNING")
    assert worked.returncode == 0, worked.stderr
    assert await engine.redis.xlen(partition_keys(0).outbox) == 0
    # and once it ran, the next write may ask again
    assert await trigger.request(0) is True
    trigger.close()
    raw.close()


def _worker_children(pid: int) -> list[int]:
    """The RQ workers `inventory worker --processes N` (pid) runs: its spawned children, not
    multiprocessing's resource tracker."""
    found = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        if b"spawn_main" in cmdline:
            found.append(int(child))
    return found


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


async def test_worker_processes_run_jobs_in_parallel_drain_every_partition_and_restart(
    engine: Engine, settings: Settings, pg_url: str
) -> None:
    """`inventory worker --processes 2` with PARTITIONS=2: two RQ workers in processes of their
    own run jobs at the same time (two 1.5 s jobs overlap), the drains of both partitions make
    every event durable, a worker killed with SIGKILL is replaced, and TERM stops them all."""
    two = dataclasses.replace(settings, partitions=2)
    sharded = Engine(engine.redis, two)
    products = {partition_of(f"sku-{i}", 2): f"sku-{i}" for i in range(20)}
    assert set(products) == {0, 1}
    for product in products.values():
        await sharded.setup_product(product, SYSTEM, price=100, stock={"main": 10})
        await sharded.reserve([LineRequest(product, 2)], BUYER)

    await asyncio.to_thread(_two_workers, settings, pg_url)

    db = database_engine(dataclasses.replace(settings, database_url=pg_url))
    with db.connect() as conn:
        held = list(conn.scalars(select(schema.reservations.c.id)))
    db.dispose()
    assert len(held) == 2  # one reservation per partition, both durable


def _two_workers(settings: Settings, pg_url: str) -> None:
    raw = redis.Redis.from_url(settings.redis_url)
    q = jobs.queue(raw)
    napping = [q.enqueue(time.sleep, 1.5) for _ in range(2)]
    env = {**os.environ, "REDIS_URL": settings.redis_url, "DATABASE_URL": pg_url}
    env["PARTITIONS"] = "2"
    command = [sys.executable, "-m", "scripts.cli", "worker", "--processes", "2"]
    worker = subprocess.Popen([*command, "--log-level", "WARNING"], env=env)
    try:
        _until(lambda: len(_worker_children(worker.pid)) == 2)
        for partition in (0, 1):
            jobs.enqueue_drain(q, partition)
        _until(lambda: all(j.get_status(refresh=True) == "finished" for j in napping))
        _until(lambda: all(raw.xlen(partition_keys(p).outbox) == 0 for p in (0, 1)))

        first, second = (Job.fetch(j.id, connection=raw) for j in napping)
        assert first.started_at is not None
        assert second.started_at is not None
        assert first.ended_at is not None
        assert second.ended_at is not None
        assert first.started_at < second.ended_at  # the two jobs ran at the same time
        assert second.started_at < first.ended_at

        groups = set(_worker_children(worker.pid))  # each worker leads a process group
        killed = _worker_children(worker.pid)[0]
        os.kill(killed, signal.SIGKILL)
        _until(lambda: len(w := _worker_children(worker.pid)) == 2 and killed not in w)
        groups |= set(_worker_children(worker.pid))

        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
        # nothing of any worker is left, not even RQ's scheduler process beside it
        _until(lambda: not any(_group_alive(g) for g in groups), timeout=10)
    finally:
        if worker.poll() is None:
            worker.kill()
        raw.close()


async def test_drain_empties_every_partition_in_parallel(
    engine: Engine, settings: Settings, db_url: str
) -> None:
    """`inventory drain` with PARTITIONS=3: a thread per partition, each under its lease; the
    report lists every partition in order."""
    sharded = Engine(engine.redis, dataclasses.replace(settings, partitions=3))
    products = {partition_of(f"sku-{i}", 3): f"sku-{i}" for i in range(30)}
    assert set(products) == {0, 1, 2}
    for product in products.values():
        await sharded.setup_product(product, SYSTEM, price=100, stock={"main": 10})
        await sharded.reserve([LineRequest(product, 1)], BUYER)

    env = {"REDIS_URL": settings.redis_url, "DATABASE_URL": db_url, "PARTITIONS": "3"}
    drained = await asyncio.to_thread(run_cli, "drain", env=env, timeout=120)

    assert drained.returncode == 0, drained.stderr
    report = last_json(drained)["drained"]
    assert [r["partition"] for r in report] == [0, 1, 2]
    assert all(r["applied"] >= 2 for r in report)  # the product's creation and its hold
    for p in range(3):
        assert await engine.redis.xlen(partition_keys(p).outbox) == 0


@contextmanager
def background(
    tmp_path: Path, *args: str
) -> Iterator[tuple[RedisServer, redis.Redis, subprocess.Popen[bytes], Path]]:
    """A Redis of its own, and `inventory <args>` running on it (its output in its log);
    TERMed after (and killed, should that not stop it)."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    client = redis.Redis.from_url(server.url)
    env = {"REDIS_URL": server.url, "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}"}
    path = tmp_path / f"{args[0]}.log"
    log = path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "scripts.cli", *args],
        cwd=PROJECT_ROOT,
        env={**os.environ, **env},
        stdout=log,
        stderr=log,
    )
    try:
        yield server, client, proc, path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
            client.close()
            server.stop()


def test_the_scheduler_waits_out_a_redis_restart_and_goes_on(tmp_path: Path) -> None:
    # It exited on the first error (exit 3), and with it every expiry and hand-off stopped
    # until someone started it again; now it waits Redis out and schedules on.
    queue = f"rq:queue:{jobs.QUEUE}"
    with background(tmp_path, "scheduler", "--interval", "0.2") as (server, client, proc, log):

        def enqueued() -> bool:
            return bool(client.llen(queue))

        until(enqueued, 30)  # the periodic jobs come due and are enqueued
        server.stop()  # Redis goes away (its data kept: append-only file)
        time.sleep(1.5)
        assert proc.poll() is None, log.read_text()
        server.start()
        client.delete(queue)
        until(enqueued, 30)  # and it schedules on
        assert proc.poll() is None
        # a replica for a while (a failover under way): its writes are refused (READONLY)
        client.replicaof("127.0.0.1", str(free_port()))
        time.sleep(1.5)
        assert proc.poll() is None, log.read_text()
        client.replicaof("NO", "ONE")
        client.delete(queue)
        until(enqueued, 30)
        # Redis loses everything (restarted empty): the periodic jobs are registered again
        client.flushall()
        until(lambda: client.zcard(Scheduler.scheduled_jobs_key) == len(periodic.PERIODIC), 30)
        until(enqueued, 30)
        assert proc.poll() is None
    assert "the scheduler lost Redis" in log.read_text()


def test_the_worker_waits_out_a_redis_restart_and_a_replica_and_goes_on(tmp_path: Path) -> None:
    # It quit ("found an unhandled exception") on a Redis that was a replica for a moment
    # (READONLY) or went away mid-command, and the outbox drained no more.
    with background(tmp_path, "worker") as (server, client, proc, log):
        queue = jobs.queue(client)

        def runs_a_job() -> None:
            job = queue.enqueue("json.loads", "[1]", result_ttl=60)
            until(lambda: job.get_status(refresh=True) == "finished", 30)

        runs_a_job()
        client.replicaof("127.0.0.1", str(free_port()))  # a failover under way: READONLY
        time.sleep(2)
        client.replicaof("NO", "ONE")
        server.stop()  # and a restart (its data kept: append-only file)
        time.sleep(1)
        server.start()
        assert proc.poll() is None, log.read_text()
        runs_a_job()  # and it works on
        assert proc.poll() is None
    assert "the worker lost Redis" in log.read_text()


@pytest.mark.parametrize("command", ["worker", "scheduler"])
def test_told_to_stop_it_stops_though_redis_is_gone(tmp_path: Path, command: str) -> None:
    # serve.sh stops its worker and scheduler, then its Redis: one that lost Redis while it
    # shut down waited Redis out for good, an orphan (found from outside)
    started = {"worker": "rq:workers", "scheduler": Scheduler.scheduled_jobs_key}[command]
    with background(tmp_path, command) as (server, client, proc, log):
        until(lambda: bool(client.exists(started)), 30)
        time.sleep(0.5)  # (running: its signal handlers in place)
        server.stop()
        proc.terminate()
        assert proc.wait(timeout=20) is not None, log.read_text()


def until(condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.1)
