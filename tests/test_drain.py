"""The outbox drained into the database: exactly once, in order, trimmed only after commit."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, cast

import psycopg
import pytest
import redis
from rq.job import Job, JobStatus
from sqlalchemy import Engine as DatabaseEngine
from sqlalchemy import event, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, StatementError

from engine import outbox
from engine.engine import Engine
from engine.keys import partition_keys
from engine.models import LineRequest
from engine.settings import PROJECT_ROOT, Settings
from persistence import jobs, schema
from persistence.apply import DATABASE_ERRORS, apply_batch
from persistence.db import database_engine
from persistence.drain import DrainResult, drain_partition
from persistence.failures import describe, is_deterministic, is_transient
from persistence.jobs import DRAIN_RETRY
from persistence.translate import BadEvent
from scripts.cli.background import DrainFailed, drain_everything
from scripts.redis_server import RedisServer
from tests.durable import (
    BUYER,
    assert_applied_once,
    count,
    duplicates,
    events_added,
    projection,
    redis_counters,
    workload,
)
from tests.support import redis_env

pytestmark = pytest.mark.cluster  # on the redis-server and on a Redis Cluster


async def test_drain_applies_every_event_once_and_trims(
    engine: Engine, db: DatabaseEngine, sync_redis: redis.Redis, settings: Settings
) -> None:
    await workload(engine, rounds=12)
    produced = events_added(sync_redis)
    small_batches = dataclasses.replace(settings, drain_batch=7)

    result = drain_partition(sync_redis, db, small_batches, 0)

    assert result.applied == produced
    assert result.dead == 0
    assert result.batches >= produced // 7
    assert await engine.redis.xlen(partition_keys(0).outbox) == 0
    assert count(db, schema.audit_log) == produced
    assert duplicates(db) == {"audit": 0, "ledger": 0}
    assert projection(db) == await redis_counters(engine)
    with db.connect() as conn:
        checkpoint = conn.scalar(select(schema.outbox_checkpoints.c.last_event_id))
        statuses = dict(
            conn.execute(
                select(schema.orders.c.id, schema.orders.c.status).order_by(schema.orders.c.id)
            ).all()
        )
    assert checkpoint == result.checkpoint
    assert sorted(set(statuses.values())) == ["cancelled", "confirmed", "pending"]


async def test_same_batch_applied_twice_changes_nothing(
    engine: Engine, db: DatabaseEngine, sync_redis: redis.Redis
) -> None:
    await workload(engine, rounds=8)
    events = await outbox.read(engine.redis, 0)
    with db.begin() as conn:
        first = apply_batch(conn, events)
    ledger, audit = count(db, schema.stock_ledger), count(db, schema.audit_log)

    with db.begin() as conn:
        second = apply_batch(conn, events)

    assert first.applied == len(events)
    assert second.applied == 0
    assert second.skipped == len(events)
    assert (count(db, schema.stock_ledger), count(db, schema.audit_log)) == (ledger, audit)
    assert audit == len(events)
    assert ledger == sum(len(e.movements) for e in events)


async def test_replay_after_a_lost_checkpoint_applies_nothing_twice(
    engine: Engine, db: DatabaseEngine, sync_redis: redis.Redis, settings: Settings
) -> None:
    # The checkpoint row is lost (say, restored from an old backup) while the stream still
    # holds the events: the event ids guard the replay.
    await workload(engine, rounds=4)
    events = await outbox.read(engine.redis, 0)
    with db.begin() as conn:
        apply_batch(conn, events)

    result = drain_partition(sync_redis, db, settings, 0)

    assert result.applied == 0
    assert result.skipped == len(events)
    assert count(db, schema.audit_log) == len(events)
    assert await engine.redis.xlen(partition_keys(0).outbox) == 0


async def test_a_poison_event_is_dead_lettered_and_the_rest_applied(
    engine: Engine, db: DatabaseEngine, sync_redis: redis.Redis, settings: Settings
) -> None:
    k = partition_keys(0)
    await workload(engine, rounds=3)
    # a bug wrote an event nobody can apply: a reservation_created without its lines
    poison: dict[Any, Any] = {
        "type": "reservation_created",
        "data": json.dumps({"type": "reservation_created"}),
    }
    poison_id = str(await engine.redis.xadd(k.outbox, poison))
    await engine.reserve([LineRequest("sku-1", 1)], BUYER)
    produced = events_added(sync_redis)

    result = drain_partition(sync_redis, db, settings, 0)

    assert result.dead == 1
    assert result.applied == produced - 1
    dead = cast(list[tuple[str, dict[str, str]]], await engine.redis.xrange(k.dead_letters))
    assert [d["event_id"] for _, d in dead] == [f"p0-{poison_id}"]
    assert "reservation" in dead[0][1]["error"]
    with db.connect() as conn:
        row = conn.execute(select(schema.dead_letters)).one()
    assert row.event_id == f"p0-{poison_id}"
    assert projection(db) == await redis_counters(engine)  # the event after it was applied
    assert await engine.redis.xlen(k.outbox) == 0


@pytest.mark.parametrize(
    "entry",
    [
        {"type": "reservation_created", "data": '{"type":"reservation_created","ts":1'},
        {"type": "reservation_created", "data": "[1, 2]"},
        {"type": "reservation_created"},
        {"data": "{}"},
    ],
    ids=["cut-short", "no-object", "no-data", "no-type"],
)
async def test_an_entry_that_is_no_event_is_dead_lettered_and_the_rest_applied(
    engine: Engine,
    db: DatabaseEngine,
    sync_redis: redis.Redis,
    settings: Settings,
    entry: dict[str, str],
) -> None:
    """Its decoding failed in every drain, and the partition drained no more, for good."""
    k = partition_keys(0)
    await workload(engine, rounds=2)
    bad = str(await engine.redis.xadd(k.outbox, cast(Any, entry)))
    await engine.reserve([LineRequest("sku-1", 1)], BUYER)
    produced = events_added(sync_redis)

    result = drain_partition(sync_redis, db, settings, 0)

    assert (result.dead, result.applied) == (1, produced - 1)
    dead = cast(list[tuple[str, dict[str, str]]], await engine.redis.xrange(k.dead_letters))
    assert [d["event_id"] for _, d in dead] == [f"p0-{bad}"]
    assert dead[0][1]["error"].startswith("no event: type and data as written")
    assert projection(db) == await redis_counters(engine)  # the events after it applied
    assert await engine.redis.xlen(k.outbox) == 0


async def test_an_event_the_database_refuses_is_dead_lettered_alone(
    engine: Engine, db: DatabaseEngine, sync_redis: redis.Redis, settings: Settings
) -> None:
    # Well-formed but impossible: a status change of an order the database never saw
    # (its history row can't reference it). The bulk write fails; the slow path isolates it.
    k = partition_keys(0)
    await workload(engine, rounds=2)
    ghost: dict[str, Any] = {
        "type": "order_status_changed",
        "order": "f" * 32,
        "user": "x",
        "from": "pending",
        "to": "confirmed",
        "movements": [],
        "ts": 1,
        "actor": "x",
        "request_id": "",
    }
    await engine.redis.xadd(k.outbox, {"type": str(ghost["type"]), "data": json.dumps(ghost)})
    await engine.reserve([LineRequest("sku-1", 1)], BUYER)
    produced = events_added(sync_redis)

    result = drain_partition(sync_redis, db, settings, 0)

    assert (result.applied, result.dead) == (produced - 1, 1)
    assert count(db, schema.dead_letters) == 1
    assert count(db, schema.audit_log) == produced - 1


async def test_a_second_drainer_is_locked_out(
    engine: Engine, db: DatabaseEngine, sync_redis: redis.Redis, settings: Settings
) -> None:
    await workload(engine, rounds=2)
    lock = sync_redis.lock(partition_keys(0).drain_lock, timeout=10)
    assert lock.acquire(blocking=False)
    try:
        result = drain_partition(sync_redis, db, settings, 0)
    finally:
        lock.release()
    assert result.locked_out
    assert count(db, schema.audit_log) == 0
    assert await engine.redis.xlen(partition_keys(0).outbox) == events_added(sync_redis)


# -- transient database errors: retried, never dead-lettered ---------------------------------


def with_session_settings(pg_url: str, **values: str) -> str:
    """pg_url whose connections start with these settings (`lock_timeout="200ms"`, ...)."""
    options = " ".join(f"-c {name}={value}" for name, value in values.items())
    url = make_url(pg_url).update_query_dict({"options": options})
    return url.render_as_string(hide_password=False)


def checkpoint(db: DatabaseEngine) -> str | None:
    with db.connect() as conn:
        return conn.scalar(select(schema.outbox_checkpoints.c.last_event_id))


def test_failures_are_classified_by_what_the_event_would_meet_again() -> None:
    def wrapped(orig: BaseException) -> DBAPIError:
        return DBAPIError("INSERT ...", {}, orig)  # as SQLAlchemy wraps a driver's error

    transient: list[BaseException] = [
        psycopg.errors.LockNotAvailable("canceling statement due to lock timeout"),
        psycopg.errors.QueryCanceled("canceling statement due to statement timeout"),
        psycopg.errors.DeadlockDetected("deadlock detected"),
        psycopg.errors.SerializationFailure("could not serialize access"),
        psycopg.errors.AdminShutdown("terminating connection due to administrator command"),
        psycopg.OperationalError("connection is lost"),
        psycopg.errors.UndefinedTable("relation does not exist"),  # not migrated: not the event's
        sqlite3.OperationalError("database is locked"),
    ]
    deterministic: list[BaseException] = [
        psycopg.errors.UniqueViolation("duplicate key value"),
        psycopg.errors.ForeignKeyViolation("violates foreign key constraint"),
        psycopg.errors.CheckViolation("violates check constraint"),
        psycopg.errors.StringDataRightTruncation("value too long for type character varying"),
        psycopg.errors.NumericValueOutOfRange("integer out of range"),
        psycopg.errors.TransactionIntegrityConstraintViolation("deferred constraint"),
        sqlite3.IntegrityError("UNIQUE constraint failed: audit_log.event_id"),
        BadEvent("unknown event type 'x'"),
        StatementError("bad value", "INSERT ...", {}, TypeError("not a datetime")),
    ]
    for exc in transient:
        assert is_transient(exc), exc
        assert is_transient(wrapped(exc)), exc
    for exc in deterministic:
        assert is_deterministic(exc), exc
    for exc in deterministic[:7]:
        assert is_deterministic(wrapped(exc)), exc
    assert describe(wrapped(transient[0])) == (
        "LockNotAvailable: canceling statement due to lock timeout"
    )


async def test_a_lock_timeout_rolls_the_whole_batch_back(
    engine: Engine, pg: DatabaseEngine, pg_url: str, sync_redis: redis.Redis, settings: Settings
) -> None:
    await workload(engine, rounds=8)
    produced = events_added(sync_redis)
    k = partition_keys(0)
    db = database_engine(
        dataclasses.replace(
            settings, database_url=with_session_settings(pg_url, lock_timeout="200ms")
        )
    )
    try:
        with pg.connect() as holder:
            holder.execute(text("LOCK TABLE stock_ledger IN ACCESS EXCLUSIVE MODE"))
            with pytest.raises(DATABASE_ERRORS) as failed:
                drain_partition(sync_redis, db, settings, 0)
            holder.rollback()  # the lock goes

        assert describe(failed.value).startswith("LockNotAvailable")
        # nothing moved: no dead letter, no event applied, the checkpoint and the stream as
        # they were
        assert count(pg, schema.dead_letters) == 0
        assert count(pg, schema.audit_log) == 0
        assert checkpoint(pg) in (None, "0-0")
        assert await engine.redis.xlen(k.outbox) == produced
        assert await engine.redis.xlen(k.dead_letters) == 0

        result = drain_partition(sync_redis, db, settings, 0)
    finally:
        db.dispose()
    assert (result.applied, result.dead) == (produced, 0)
    assert count(pg, schema.audit_log) == produced
    assert duplicates(pg) == {"audit": 0, "ledger": 0}
    assert await engine.redis.xlen(k.outbox) == 0


def burst_worker_while_the_ledger_is_locked(
    pg: DatabaseEngine, env: dict[str, str]
) -> tuple[int, str, str]:
    """`inventory worker --burst` while another session holds stock_ledger, until its
    in-process drain has failed once; then the lock goes. Its exit code, stdout and stderr."""
    with pg.connect() as holder:
        holder.execute(text("LOCK TABLE stock_ledger IN ACCESS EXCLUSIVE MODE"))
        worker = subprocess.Popen(
            [sys.executable, "-m", "scripts.cli", "worker", "--burst", "--log-level", "WARNING"],
            cwd=PROJECT_ROOT,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert worker.stderr is not None
        seen = []
        for line in worker.stderr:
            seen.append(line)
            if "retry 1 of" in line:
                break
        holder.rollback()  # the lock goes
    out, err = worker.communicate(timeout=120)
    return worker.returncode, out, "".join(seen) + err


async def test_the_drain_waits_out_a_lock_held_on_the_ledger(
    engine: Engine, pg: DatabaseEngine, pg_url: str, sync_redis: redis.Redis, settings: Settings
) -> None:
    # The worker's sessions give up on a lock after 200 ms. Its queued drain job fails and RQ
    # schedules it again (DRAIN_RETRY); its in-process drain retries until the lock goes. Then
    # every event is applied exactly once and nothing is dead-lettered.
    await workload(engine, rounds=8)
    events = await outbox.read(engine.redis, 0)
    k = partition_keys(0)
    raw = jobs.queue_connection(settings)
    queue = jobs.queue(raw)
    jobs.enqueue_drain(queue, 0)
    [job_id] = queue.job_ids
    url = with_session_settings(pg_url, lock_timeout="200ms")

    code, out, err = burst_worker_while_the_ledger_is_locked(
        pg, {**redis_env(settings), "DATABASE_URL": url}
    )

    assert code == 0, err
    assert "drain of partition 0 failed (LockNotAvailable" in err
    assert json.loads(out.strip().splitlines()[-1])["drained"][0]["applied"] == len(events)
    job = Job.fetch(job_id, connection=raw)
    raw.close()
    assert job.get_status() == JobStatus.SCHEDULED  # RQ runs it again later, harmlessly
    assert job.retries_left == DRAIN_RETRY.max - 1
    assert count(pg, schema.dead_letters) == 0
    assert await engine.redis.xlen(k.dead_letters) == 0
    assert count(pg, schema.audit_log) == len(events)
    assert count(pg, schema.stock_ledger) == sum(len(e.movements) for e in events)
    assert duplicates(pg) == {"audit": 0, "ledger": 0}
    assert await engine.redis.xlen(k.outbox) == 0
    assert checkpoint(pg) == events[-1].id
    assert projection(pg) == await redis_counters(engine)


async def test_an_in_process_drain_gives_up_loudly_and_dead_letters_nothing(
    engine: Engine,
    pg: DatabaseEngine,
    pg_url: str,
    sync_redis: redis.Redis,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await workload(engine, rounds=2)
    produced = events_added(sync_redis)
    for name, value in redis_env(settings).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DATABASE_URL", with_session_settings(pg_url, lock_timeout="100ms"))
    for cached in (jobs.settings, jobs.redis_client, jobs.database):
        cached.cache_clear()
    try:
        with pg.connect() as holder:
            holder.execute(text("LOCK TABLE stock_ledger IN ACCESS EXCLUSIVE MODE"))
            with pytest.raises(DrainFailed) as failed:
                drain_everything(backoff_s=(0.05, 0.05))
            holder.rollback()
    finally:
        jobs.database().dispose()
        for cached in (jobs.settings, jobs.redis_client, jobs.database):
            cached.cache_clear()

    assert failed.value.attempts == 3
    assert str(failed.value) == (
        "partition 0: the database failed 3 time(s), last with LockNotAvailable: canceling "
        "statement due to lock timeout; nothing was dead-lettered, its events wait in the outbox"
    )
    assert count(pg, schema.dead_letters) == 0
    assert count(pg, schema.audit_log) == 0
    assert await engine.redis.xlen(partition_keys(0).outbox) == produced


def deadlock_the_drain(
    pg: DatabaseEngine, db: DatabaseEngine, client: redis.Redis, settings: Settings
) -> BaseException | DrainResult:
    """Drain through `db` while another session holds sku-1's stock row, and once the drain
    waits for it (holding the checkpoint row), ask for the checkpoint row: a deadlock."""
    outcome: list[BaseException | DrainResult] = []

    def drain() -> None:
        try:
            outcome.append(drain_partition(client, db, settings, 0))
        except BaseException as exc:  # handed to the test's thread
            outcome.append(exc)

    sl = schema.stock_levels
    waiting = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock' AND query ILIKE '%stock_levels%'"
    )
    with pg.connect() as other, pg.connect() as watcher:
        other.execute(text("SET deadlock_timeout = '60s'"))
        other.execute(select(sl).where(sl.c.product == "sku-1").with_for_update()).all()
        thread = threading.Thread(target=drain)
        thread.start()
        deadline = time.monotonic() + 60
        while not watcher.scalar(waiting):
            assert thread.is_alive(), outcome
            assert time.monotonic() < deadline, "the drain never waited for the stock row"
            watcher.rollback()
            time.sleep(0.02)
        # returns once Postgres has cancelled the drain's transaction
        other.execute(select(schema.outbox_checkpoints).with_for_update()).all()
        other.rollback()
        thread.join(timeout=60)
    [result] = outcome
    return result


async def test_a_deadlock_rolls_the_batch_back_and_the_next_drain_applies_it(
    engine: Engine, pg: DatabaseEngine, pg_url: str, sync_redis: redis.Redis, settings: Settings
) -> None:
    # The drain checks for deadlocks first (after 2 s, the other session after 60 s), so it
    # is the one Postgres cancels.
    await workload(engine, rounds=2)
    drain_partition(sync_redis, pg, settings, 0)
    await engine.reserve([LineRequest("sku-1", 1)], BUYER)
    before = checkpoint(pg)
    applied = count(pg, schema.audit_log)
    url = with_session_settings(pg_url, deadlock_timeout="2s")
    db = database_engine(dataclasses.replace(settings, database_url=url))
    try:
        failed = deadlock_the_drain(pg, db, sync_redis, settings)

        assert isinstance(failed, DBAPIError), failed
        assert describe(failed).startswith("DeadlockDetected")
        assert is_transient(failed)
        assert (checkpoint(pg), count(pg, schema.audit_log)) == (before, applied)
        assert count(pg, schema.dead_letters) == 0

        result = drain_partition(sync_redis, db, settings, 0)
    finally:
        db.dispose()
    assert (result.applied, result.dead) == (1, 0)
    assert duplicates(pg) == {"audit": 0, "ledger": 0}
    assert projection(pg) == await redis_counters(engine)


# -- commit, then trim: a failure on either side of the commit --------------------------------


def _refuse_commits_past(db: DatabaseEngine, applied: int) -> None:
    """From now on the database refuses to COMMIT a transaction that moves the checkpoint past
    `applied` events ever applied. A trigger writes a row that breaks a foreign key checked only
    at COMMIT (DEFERRABLE INITIALLY DEFERRED): every statement of the batch succeeds, and the
    COMMIT itself is refused — by the database, as a real constraint would be."""
    with db.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE commit_gate (ref INTEGER REFERENCES outbox_checkpoints (partition)"
                " DEFERRABLE INITIALLY DEFERRED)"
            )
        )
        head = (
            "CREATE TRIGGER commit_gate AFTER UPDATE ON outbox_checkpoints FOR EACH ROW"
            f" WHEN (NEW.applied > {int(applied)})"
        )
        if conn.dialect.name == "postgresql":
            conn.execute(
                text(
                    "CREATE FUNCTION commit_gate_close() RETURNS trigger LANGUAGE plpgsql"
                    " AS $$ BEGIN INSERT INTO commit_gate VALUES (-1); RETURN NULL; END $$"
                )
            )
            conn.execute(text(f"{head} EXECUTE FUNCTION commit_gate_close()"))
        else:
            conn.execute(text(f"{head} BEGIN INSERT INTO commit_gate VALUES (-1); END"))


def _accept_commits(db: DatabaseEngine) -> None:
    with db.begin() as conn:
        on = " ON outbox_checkpoints" if conn.dialect.name == "postgresql" else ""
        conn.execute(text(f"DROP TRIGGER commit_gate{on}"))
        conn.execute(text("DROP TABLE commit_gate"))


def _stream_ids(client: redis.Redis) -> list[str]:
    entries = cast(list[tuple[str, Any]], client.xrange(partition_keys(0).outbox))
    return [entry_id for entry_id, _ in entries]


def _checkpoint(db: DatabaseEngine) -> str | None:
    with db.connect() as conn:
        return conn.scalar(select(schema.outbox_checkpoints.c.last_event_id))


@pytest.mark.parametrize("committed_batches", [0, 2])
async def test_a_commit_the_database_refuses_leaves_the_outbox_as_it_was(
    engine: Engine,
    db: DatabaseEngine,
    sync_redis: redis.Redis,
    settings: Settings,
    committed_batches: int,
) -> None:
    # A healthy drain first, so that the checkpoint is somewhere; then more events.
    await workload(engine, rounds=4)
    first = drain_partition(sync_redis, db, settings, 0)
    for _ in range(15):
        r = await engine.reserve([LineRequest("sku-1", 1)], BUYER)
        await engine.release(r.id, BUYER)
    waiting = await outbox.read(engine.redis, 0)
    stream = _stream_ids(sync_redis)
    assert [e.id for e in waiting] == stream
    assert len(stream) == 30
    audit_rows, ledger_rows = count(db, schema.audit_log), count(db, schema.stock_ledger)
    batch = 7
    _refuse_commits_past(db, first.applied + batch * committed_batches)

    with pytest.raises(IntegrityError):
        drain_partition(sync_redis, db, dataclasses.replace(settings, drain_batch=batch), 0)

    # The batches committed before the refusal are in the database and trimmed; the refused
    # one left no row and no trim behind it.
    done = batch * committed_batches
    assert _stream_ids(sync_redis) == stream[done:]
    assert _checkpoint(db) == (stream[done - 1] if done else first.checkpoint)
    assert count(db, schema.audit_log) == audit_rows + done
    assert count(db, schema.stock_ledger) == ledger_rows + sum(
        len(e.movements) for e in waiting[:done]
    )

    _accept_commits(db)
    result = drain_partition(sync_redis, db, settings, 0)

    assert (result.applied, result.dead) == (len(stream) - done, 0)
    assert result.checkpoint == stream[-1]
    assert sync_redis.xlen(partition_keys(0).outbox) == 0
    assert_applied_once(db, waiting)
    assert count(db, schema.audit_log) == events_added(sync_redis)
    assert projection(db) == await redis_counters(engine)


@pytest.mark.single_server  # a server of its own, stopped and started again
@pytest.mark.parametrize("batch", [7, 1000], ids=["events-after-the-lost-trim", "none-after"])
async def test_a_trim_lost_after_the_commit_is_skipped_by_the_next_drain(
    tmp_path: Path, db: DatabaseEngine, settings: Settings, batch: int
) -> None:
    # Redis goes away at the first batch's COMMIT: the database commits, the trim can't
    # happen. Redis comes back from its AOF with every event still in the stream.
    server = RedisServer(tmp_path / "redis")
    server.start()
    own = dataclasses.replace(
        settings, redis_url=server.url, drain_batch=batch, drain_lease_ms=1000
    )
    client = redis.Redis.from_url(server.url, decode_responses=True)
    stopped: list[bool] = []

    def redis_dies(_conn: Any) -> None:
        if not stopped:
            stopped.append(True)
            server.stop()

    try:
        async with Engine.from_settings(own) as engine:
            await workload(engine, rounds=4)
            events = await outbox.read(engine.redis, 0)
        stream = [e.id for e in events]
        event.listen(db, "commit", redis_dies)
        try:
            with pytest.raises(redis.ConnectionError):
                drain_partition(client, db, own, 0)
        finally:
            event.remove(db, "commit", redis_dies)
        assert stopped
        committed = min(batch, len(stream))  # the first batch: all of it with the big batch
        assert _checkpoint(db) == stream[committed - 1]
        assert_applied_once(db, events[:committed])

        server.start()
        assert _stream_ids(client) == stream  # nothing was trimmed
        deadline = time.monotonic() + 30
        while (result := drain_partition(client, db, own, 0)).locked_out:
            # the lease of the drainer that lost Redis lapses
            assert time.monotonic() < deadline, "the dead drainer's lease never lapsed"
            await asyncio.sleep(0.1)

        # the committed events are not applied again, the rest once; all of them trimmed
        assert (result.applied, result.dead) == (len(stream) - committed, 0)
        assert_applied_once(db, events)
        assert count(db, schema.audit_log) == len(stream) == events_added(client)
        assert client.xlen(partition_keys(0).outbox) == 0
        async with Engine.from_settings(own) as engine:
            assert projection(db) == await redis_counters(engine)
    finally:
        client.close()
        server.stop()
