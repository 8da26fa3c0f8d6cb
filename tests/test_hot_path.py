"""What the hot path skips, and that skipping it keeps the rules: a verified token is
remembered but still expires; a drain already seen waiting isn't asked for again at once."""

from __future__ import annotations

import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from engine.engine import Engine
from engine.keys import partition_keys, uuid4_hex, uuid4_str
from engine.settings import Settings
from persistence import jobs
from persistence.trigger import PENDING_FRESH_S, DrainTrigger
from web.auth import Keys, Principal
from web.errors import ApiError

KEYS = "k1:" + "s" * 40


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_remembered_token_still_expires() -> None:
    clock = Clock(0.0)
    keys = Keys(Settings(jwt_keys=KEYS, database_url="postgresql://x/y"), clock=clock)
    token = keys.issue(Principal("7", "bob", False), "access")
    clock.now = time.time()  # the token was issued with the real clock
    first = keys.verify(token, "access")
    assert keys.verify(token, "access") is first  # remembered, not decoded again
    with pytest.raises(ApiError) as refused:  # the same token as a refresh token: still no
        keys.verify(token, "refresh")
    assert refused.value.code == "invalid_token"
    clock.now = first["exp"] + 1  # past its exp: refused though remembered
    with pytest.raises(ApiError) as expired:
        keys.verify(token, "access")
    assert expired.value.code == "token_expired"


def test_a_forged_token_is_never_remembered() -> None:
    keys = Keys(Settings(jwt_keys=KEYS, database_url="postgresql://x/y"))
    token = keys.issue(Principal("7", "bob", False), "access")
    head, payload, signature = token.split(".")
    forged = f"{head}.{payload}.{signature[:-2]}AA"
    for _ in range(2):
        with pytest.raises(ApiError) as refused:
            keys.verify(forged, "access")
        assert refused.value.code == "invalid_token"


async def test_a_drain_seen_waiting_is_not_asked_again_at_once(
    engine: Engine, settings: Settings, clean_redis: None
) -> None:
    clock = Clock(100.0)
    raw = redis.Redis.from_url(settings.redis_url)
    trigger = DrainTrigger(engine, settings.redis_url, clock=clock)
    flag = partition_keys(0).drain_requested
    try:
        assert await trigger.request(0) is True  # nothing waited: a job is enqueued
        assert await trigger.request(0) is False  # the flag says one waits (seen now)
        raw.delete(flag)  # the job starts and clears the flag...
        assert await trigger.request(0) is False  # ...but it was seen waiting a moment ago
        assert jobs.queue(raw).count == 1
        clock.now += PENDING_FRESH_S  # that sighting is stale now: ask Redis again
        assert await trigger.request(0) is True
        assert jobs.queue(raw).count == 2
    finally:
        trigger.close()
        raw.close()


def test_fast_uuids_are_version_4_uuids() -> None:
    seen = set()
    for _ in range(2000):
        h, s = uuid4_hex(), uuid4_str()
        assert uuid.UUID(hex=h).version == 4
        assert uuid.UUID(hex=h).variant == uuid.RFC_4122
        assert str(uuid.UUID(s)) == s
        assert uuid.UUID(s).version == 4
        seen.add(h)
    assert len(seen) == 2000


def test_fast_uuids_differ_across_threads_and_in_a_forked_child() -> None:
    """Drawn in batches: many threads at once never get the same id, nor does a child forked
    while the parent holds a batch (it draws its own)."""
    with ThreadPoolExecutor(8) as pool:
        drawn = list(pool.map(lambda _: uuid4_hex(), range(4000)))
    assert len(set(drawn)) == 4000
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        os.write(write, "".join(uuid4_hex() for _ in range(300)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        text = pipe.read()
    os.waitpid(child, 0)
    theirs = {text[i : i + 32] for i in range(0, len(text), 32)}
    mine = {uuid4_hex() for _ in range(300)}
    assert len(theirs) == 300
    assert not theirs & mine
