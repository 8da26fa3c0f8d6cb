"""`inventory dead-letters`: listing the events the database refused, replaying them exactly
once when it takes them, closing one by hand — each with its audit row."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import redis
from sqlalchemy import Engine as DatabaseEngine
from sqlalchemy import func, select, text

from engine.engine import Engine
from engine.keys import partition_keys
from engine.models import SYSTEM, LineRequest
from engine.settings import PROJECT_ROOT, Settings
from persistence import schema
from persistence.drain import drain_partition
from tests.durable import BUYER, duplicates, projection, redis_counters
from tests.support import last_json, run_cli

dl = schema.dead_letters


def refuse(db: DatabaseEngine, reason: str) -> None:
    """From now on the database refuses ledger rows with this reason (as an operator's
    constraint would): the drain dead-letters those events."""
    with db.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(
                text(
                    "ALTER TABLE stock_ledger ADD CONSTRAINT refused "
                    f"CHECK (reason <> '{reason}') NOT VALID"
                )
            )
        else:
            conn.execute(
                text(
                    "CREATE TRIGGER refused BEFORE INSERT ON stock_ledger "
                    f"WHEN NEW.reason = '{reason}' BEGIN SELECT RAISE(ABORT, 'refused'); END"
                )
            )


def accept(db: DatabaseEngine) -> None:
    """The cause is fixed: the database takes those rows again."""
    with db.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("ALTER TABLE stock_ledger DROP CONSTRAINT refused"))
        else:
            conn.execute(text("DROP TRIGGER refused"))


async def refused_receipts(
    engine: Engine, db: DatabaseEngine, client: redis.Redis, settings: Settings, receipts: int
) -> list[int]:
    """sku-1 with stock, then `receipts` deliveries the database refuses, each followed by a
    reservation it takes; drained. The dead letters' ids, oldest first."""
    await engine.setup_product("sku-1", SYSTEM, price=100, stock={"main": 10})
    refuse(db, "received")
    for _ in range(receipts):
        await engine.adjust_stock("sku-1", {"main": 5}, "received", SYSTEM)
        await engine.reserve([LineRequest("sku-1", 1)], BUYER)
    assert drain_partition(client, db, settings, 0).dead == receipts
    with db.connect() as conn:
        return list(conn.scalars(select(dl.c.id).order_by(dl.c.id)))


def dead_letters(
    settings: Settings, db_url: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    urls = ("--redis-url", settings.redis_url, "--database-url", db_url)
    return run_cli("dead-letters", *args, *urls, env=env)


def letter(db: DatabaseEngine, ident: int) -> Any:
    with db.connect() as conn:
        return conn.execute(select(dl).where(dl.c.id == ident)).one()


def audits(db: DatabaseEngine) -> list[tuple[str, str, str, Any]]:
    """The audit rows of dead-letter actions: action, actor, dead letter id, new value."""
    log = schema.audit_log
    with db.connect() as conn:
        rows = conn.execute(
            select(log.c.action, log.c.actor, log.c.object_id, log.c.new_value)
            .where(log.c.object_type == "dead_letter")
            .order_by(log.c.id)
        ).all()
    return [(a, b, c, d) for a, b, c, d in rows]


def applied(db: DatabaseEngine, event_id: str) -> int:
    """Audit rows of the event itself: 1 once applied, never 2."""
    log = schema.audit_log
    with db.connect() as conn:
        return int(conn.scalar(select(func.count()).where(log.c.event_id == event_id)) or 0)


def ledger_sums(db: DatabaseEngine) -> dict[tuple[str, str], tuple[int, int]]:
    """What the ledger's history adds up to, per product x warehouse."""
    lg = schema.stock_ledger
    with db.connect() as conn:
        rows = conn.execute(
            select(
                lg.c.product,
                lg.c.warehouse,
                func.sum(lg.c.delta_available),
                func.sum(lg.c.delta_reserved),
            ).group_by(lg.c.product, lg.c.warehouse)
        ).all()
    return {(p, w): (int(a), int(r)) for p, w, a, r in rows}


async def test_replay_applies_a_dead_letter_once_the_database_takes_it(
    engine: Engine, db: DatabaseEngine, db_url: str, sync_redis: redis.Redis, settings: Settings
) -> None:
    [ident] = await refused_receipts(engine, db, sync_redis, settings, receipts=1)
    event_id = letter(db, ident).event_id
    stream = partition_keys(0).dead_letters

    listed = dead_letters(settings, db_url, "--json")
    assert listed.returncode == 1, listed.stderr  # an unresolved one remains
    [shown] = last_json(listed)["dead_letters"]
    assert last_json(listed)["unresolved"] == 1
    assert (shown["id"], shown["event_id"], shown["type"]) == (ident, event_id, "stock_adjusted")
    assert shown["payload"]["reason"] == "received"
    assert shown["resolved_at"] is None
    assert "refused" in shown["error"]
    assert ledger_sums(db) != await redis_counters(engine)  # the receipt is missing
    assert projection(db) == ledger_sums(db)  # from both: the projection is the ledger's sums

    # the database still refuses it: it stays open, with the error shown
    again = dead_letters(settings, db_url, "replay", str(ident), "--actor", "ops-1", "--json")
    assert again.returncode == 1, again.stderr
    [failed] = last_json(again)["results"]
    assert (failed["outcome"], failed["resolved"]) == ("failed", False)
    assert "refused" in failed["error"]
    assert letter(db, ident).resolved_at is None
    assert applied(db, event_id) == 0
    assert [(a, b) for a, b, _, _ in audits(db)] == [("dead_letter_replay_failed", "ops-1")]

    accept(db)
    done = dead_letters(settings, db_url, "replay", event_id, "--json", env={"USER": "carol"})
    assert done.returncode == 0, done.stderr
    assert last_json(done) == {
        "failed": 0,
        "results": [
            {
                "id": ident,
                "event_id": event_id,
                "outcome": "replayed",
                "resolved": True,
                "error": None,
            }
        ],
    }
    row = letter(db, ident)
    assert (row.resolved_by, row.resolution) == ("carol", "replayed")
    assert row.resolved_at is not None
    assert applied(db, event_id) == 1
    assert audits(db)[-1][:3] == ("dead_letter_replayed", "carol", str(ident))
    assert await engine.redis.xlen(stream) == 0
    # the ledger's history is whole again, and the projection, which the receipt is added to
    assert ledger_sums(db) == await redis_counters(engine)
    assert projection(db) == await redis_counters(engine)

    # replaying twice applies once
    twice = dead_letters(settings, db_url, "replay", str(ident), "--json")
    assert twice.returncode == 0, twice.stderr
    assert last_json(twice)["results"][0]["outcome"] == "already_resolved"
    assert applied(db, event_id) == 1
    assert len(audits(db)) == 2

    # the resolution lost (a restore, a hand edit): the event id still guards it
    with db.begin() as conn:
        conn.execute(dl.update().values(resolved_at=None, resolved_by=None, resolution=None))
    guarded = dead_letters(settings, db_url, "replay", "--all", "--json")
    assert guarded.returncode == 0, guarded.stderr
    assert last_json(guarded)["results"][0]["outcome"] == "already_applied"
    assert applied(db, event_id) == 1
    assert duplicates(db) == {"audit": 0, "ledger": 0}
    assert letter(db, ident).resolution == "already applied"
    assert audits(db)[-1][0] == "dead_letter_resolved"

    empty = dead_letters(settings, db_url, "--json")
    assert empty.returncode == 0, empty.stderr
    assert last_json(empty) == {"dead_letters": [], "unresolved": 0}
    everything = dead_letters(settings, db_url, "--include-resolved", "--json")
    assert [d["id"] for d in last_json(everything)["dead_letters"]] == [ident]


def replay_all_at_once(pg: DatabaseEngine, settings: Settings, url: str) -> list[Any]:
    """Two `replay --all` processes, let go at the same moment: the dead letters' table is
    locked until both have listed them and wait to claim the first."""
    argv = [sys.executable, "-m", "scripts.cli", "dead-letters", "replay", "--all", "--json"]
    argv += ["--redis-url", settings.redis_url, "--database-url", url]
    waiting = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock' AND query ILIKE 'UPDATE dead_letters%'"
    )
    with pg.connect() as gate, pg.connect() as watcher:
        gate.execute(text("LOCK TABLE dead_letters IN EXCLUSIVE MODE"))
        procs = [
            subprocess.Popen(argv, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        deadline = time.monotonic() + 60
        while watcher.scalar(waiting) != 2:
            assert all(p.poll() is None for p in procs), "a replay exited early"
            assert time.monotonic() < deadline, "the replays never both waited"
            watcher.rollback()
            time.sleep(0.02)
        gate.rollback()  # go
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    return [json.loads(out.strip().splitlines()[-1]) for out in outputs]


async def test_concurrent_replays_apply_each_dead_letter_exactly_once(
    engine: Engine, pg: DatabaseEngine, pg_url: str, sync_redis: redis.Redis, settings: Settings
) -> None:
    ids = await refused_receipts(engine, pg, sync_redis, settings, receipts=6)
    with pg.connect() as conn:
        event_ids = list(conn.scalars(select(dl.c.event_id)))
    accept(pg)

    results = replay_all_at_once(pg, settings, pg_url)

    outcomes = [(o["id"], o["outcome"]) for r in results for o in r["results"]]
    assert sorted(i for i, o in outcomes if o == "replayed") == ids
    assert sorted(i for i, o in outcomes if o == "already_resolved") == ids
    assert [applied(pg, e) for e in event_ids] == [1] * len(ids)
    assert duplicates(pg) == {"audit": 0, "ledger": 0}
    assert [a for a, _, _, _ in audits(pg)] == ["dead_letter_replayed"] * len(ids)
    assert ledger_sums(pg) == await redis_counters(engine)
    assert projection(pg) == await redis_counters(engine)


async def test_resolve_closes_one_by_hand_and_bad_input_changes_nothing(
    engine: Engine, pg: DatabaseEngine, pg_url: str, sync_redis: redis.Redis, settings: Settings
) -> None:
    db, db_url = pg, pg_url
    [ident] = await refused_receipts(engine, db, sync_redis, settings, receipts=1)
    event_id = letter(db, ident).event_id
    stream = partition_keys(0).dead_letters
    note = "counted by hand: the delivery was booked twice"

    unknown = dead_letters(settings, db_url, "resolve", "999", "--note", note, "--json")
    assert unknown.returncode == 2
    assert "no dead letter has the id or event id '999'" in unknown.stderr
    assert last_json(unknown)["error"] == "unknown_dead_letter"
    neither = dead_letters(settings, db_url, "replay")
    assert neither.returncode == 2
    assert "replay takes the dead letters' ids or --all, one of the two" in neither.stderr
    both = dead_letters(settings, db_url, "replay", str(ident), "--all")
    assert both.returncode == 2
    blank = dead_letters(settings, db_url, "resolve", str(ident), "--note", "  ")
    assert blank.returncode == 2
    assert "--note must say why the dead letter is closed" in blank.stderr
    missing = dead_letters(settings, db_url, "replay", "p0-1-0")
    assert missing.returncode == 2
    assert "no dead letter has the id or event id 'p0-1-0'" in missing.stderr
    # nothing changed
    assert letter(db, ident).resolved_at is None
    assert audits(db) == []
    assert await engine.redis.xlen(stream) == 1

    actor = "night-shift-" * 12 + "ops"  # 147 characters: as long as a username may be
    closed = dead_letters(
        settings, db_url, "resolve", str(ident), "--note", note, "--actor", actor, "--json"
    )
    assert closed.returncode == 0, closed.stderr
    assert last_json(closed)["results"][0]["outcome"] == "resolved"
    row = letter(db, ident)
    assert (row.resolved_by, row.resolution) == (actor, note)
    assert audits(db) == [
        ("dead_letter_resolved", actor, str(ident), {"event_id": event_id, "resolution": note})
    ]
    assert applied(db, event_id) == 0  # closed, not applied
    assert await engine.redis.xlen(stream) == 0

    nothing = dead_letters(settings, db_url, "replay", "--all")
    assert nothing.returncode == 0, nothing.stderr
    assert "nothing to replay" in nothing.stderr


async def test_an_event_that_fails_again_stays_unresolved(
    engine: Engine, db: DatabaseEngine, db_url: str, sync_redis: redis.Redis, settings: Settings
) -> None:
    # a bug wrote an event nobody can apply: a reservation_created without its lines
    poison: dict[Any, Any] = {
        "type": "reservation_created",
        "data": json.dumps({"type": "reservation_created"}),
    }
    await engine.redis.xadd(partition_keys(0).outbox, poison)
    assert drain_partition(sync_redis, db, settings, 0).dead == 1

    replayed = dead_letters(settings, db_url, "replay", "--all")

    assert replayed.returncode == 1
    assert "failed" in replayed.stderr
    assert "BadEvent" in replayed.stderr
    with db.connect() as conn:
        row = conn.execute(select(dl)).one()
    assert row.resolved_at is None
    assert "BadEvent" in row.error
    assert [a for a, _, _, _ in audits(db)] == ["dead_letter_replay_failed"]
    assert await engine.redis.xlen(partition_keys(0).dead_letters) == 1
