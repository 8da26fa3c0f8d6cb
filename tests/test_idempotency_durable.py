"""Idempotency records are durable: every keyed write's first answer reaches the database with
its event, and a Redis that lost them (wiped and rebuilt) answers a retry with that first
answer again, with no second effect."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
import redis
from sqlalchemy import Engine as DatabaseEngine
from sqlalchemy import select

from engine import errors
from engine.engine import Engine
from engine.keys import idempotency_hash, partition_keys
from engine.models import SYSTEM, CallContext, LineRequest, Order, Reservation
from engine.records import idempotency_parts
from engine.settings import Settings
from persistence import schema
from persistence.drain import drain_partition
from persistence.rebuild import rebuild
from persistence.reconcile import check
from persistence.records import purge_idempotency
from tests.helpers import snapshot

K = partition_keys(0)
BUYER = CallContext(actor="buyer-9", request_id="req-9")
STAFF = dataclasses.replace(SYSTEM, request_id="req-staff")


def keyed(ctx: CallContext, key: str) -> CallContext:
    return dataclasses.replace(ctx, idempotency_key=key)


async def keyed_writes(engine: Engine) -> dict[str, Any]:
    """One keyed call of every write; returns what each answered."""
    out: dict[str, Any] = {}
    out["setup"] = await engine.setup_product(
        "sku", keyed(STAFF, "setup"), price=250, stock={"main": 20}
    )
    out["adjust"] = await engine.adjust_stock("sku", {"main": 5}, "received", keyed(STAFF, "adj"))
    out["reserve"] = await engine.reserve([LineRequest("sku", 2)], keyed(BUYER, "r1"))
    out["extend"] = await engine.extend(out["reserve"].id, keyed(BUYER, "x1"), ttl_ms=900_000)
    other = await engine.reserve([LineRequest("sku", 1)], BUYER)
    out["release"] = await engine.release(other.id, keyed(BUYER, "rel"))
    out["commit"] = await engine.commit(out["reserve"].id, keyed(BUYER, "c1"))
    out["place"] = await engine.place_order([LineRequest("sku", 3)], keyed(BUYER, "o1"))
    out["transition"] = await engine.transition(out["place"].id, "confirmed", keyed(STAFF, "t1"))
    return out


async def test_every_keyed_answer_is_written_with_its_event(
    engine: Engine, db: DatabaseEngine, sync_redis: redis.Redis, settings: Settings
) -> None:
    await keyed_writes(engine)
    drain_partition(sync_redis, db, settings, 0)

    in_redis = {
        idempotency_hash(key): idempotency_parts(cast(str, sync_redis.get(key)))
        for key in sync_redis.scan_iter(match=K.idempotency_by_hash("*"))
    }
    with db.connect() as conn:
        rows = {r.key_hash: r for r in conn.execute(select(schema.idempotency_records))}
    assert len(in_redis) == 8
    assert set(rows) == set(in_redis)
    for digest, row in rows.items():
        assert row.partition == 0
        fingerprint, reply = in_redis[digest]
        assert row.fingerprint == fingerprint
        assert json.loads(row.reply) == json.loads(reply)
        ttl_ms = sync_redis.pttl(K.idempotency_by_hash(digest))
        expires_at = row.expires_at.replace(tzinfo=row.expires_at.tzinfo or UTC)
        left_ms = (expires_at - datetime.now(UTC)) / timedelta(milliseconds=1)
        assert abs(left_ms - int(ttl_ms)) < 60_000
        assert row.event_id.startswith("p0-")


async def test_a_retry_after_a_redis_loss_gets_the_first_answer(
    engine: Engine, db: DatabaseEngine, sync_redis: redis.Redis, settings: Settings
) -> None:
    first = await keyed_writes(engine)
    drain_partition(sync_redis, db, settings, 0)
    sync_redis.flushall()  # Redis lost everything; the database has it all
    rebuild(sync_redis, db, settings)
    drain_partition(sync_redis, db, settings, 0)
    before = await snapshot(engine.redis)

    again = {
        "setup": await engine.setup_product(
            "sku", keyed(STAFF, "setup"), price=250, stock={"main": 20}
        ),
        "adjust": await engine.adjust_stock("sku", {"main": 5}, "received", keyed(STAFF, "adj")),
        "reserve": await engine.reserve([LineRequest("sku", 2)], keyed(BUYER, "r1")),
        "extend": await engine.extend(first["reserve"].id, keyed(BUYER, "x1"), ttl_ms=900_000),
        "release": await engine.release(first["release"].id, keyed(BUYER, "rel")),
        "commit": await engine.commit(first["reserve"].id, keyed(BUYER, "c1")),
        "place": await engine.place_order([LineRequest("sku", 3)], keyed(BUYER, "o1")),
        "transition": await engine.transition(first["place"].id, "confirmed", keyed(STAFF, "t1")),
    }

    assert await snapshot(engine.redis) == before  # no second effect anywhere
    for name, answer in again.items():
        if isinstance(answer, Reservation | Order):
            assert answer.replayed, name
            answer = dataclasses.replace(answer, replayed=False)
        assert answer == first[name], name
    assert check(sync_redis, db, settings).ok


def test_expired_records_are_purged(db: DatabaseEngine) -> None:
    now = datetime.now(UTC)
    t = schema.idempotency_records
    with db.begin() as conn:
        for i, at in enumerate([now - timedelta(seconds=1), now + timedelta(hours=1)]):
            conn.execute(
                t.insert().values(
                    partition=0,
                    key_hash=f"{i:040x}",
                    fingerprint="f",
                    reply='{"ok":true}',
                    expires_at=at,
                    event_id=f"p0-{i}-0",
                )
            )
    assert purge_idempotency(db, now) == 1
    with db.connect() as conn:
        assert list(conn.scalars(select(t.c.key_hash))) == [f"{1:040x}"]


async def test_a_record_kept_as_a_hash_before_still_answers(
    engine: Engine, sync_redis: redis.Redis
) -> None:
    """A record written by the version before (a hash {fp, reply}) replays as the string does,
    and a request of another shape under its key is refused."""
    await engine.setup_product("sku", STAFF, price=250, stock={"main": 20})
    made = await engine.reserve([LineRequest("sku", 2)], keyed(BUYER, "old"))
    (key,) = sync_redis.scan_iter(match=K.idempotency_by_hash("*"))
    fingerprint, reply = idempotency_parts(cast(str, sync_redis.get(key)))
    ttl = sync_redis.pttl(key)
    sync_redis.delete(key)
    sync_redis.hset(key, mapping={"fp": fingerprint, "reply": reply})
    sync_redis.pexpire(key, ttl)

    again = await engine.reserve([LineRequest("sku", 2)], keyed(BUYER, "old"))
    assert again.replayed
    assert dataclasses.replace(again, replayed=False) == made
    with pytest.raises(errors.IdempotencyMismatch):
        await engine.reserve([LineRequest("sku", 3)], keyed(BUYER, "old"))
