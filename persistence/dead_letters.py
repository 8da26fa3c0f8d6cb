"""Dead letters: the events the drain could not apply, and how an operator closes them.

A dead letter is an event that failed in a way it would meet again (persistence.failures): its
row in `dead_letters` keeps the payload and the error, and the partition's `…:outbox:dead`
stream mirrors the unresolved ones. Once the cause is fixed, a replay takes the payload back
through the drain's own translate and write path, in one transaction per dead letter; or an
operator closes one by hand with a note. Every action writes an audit row.

Exactly once: a replay claims its row first (a concurrent replay of the same one waits, then
finds it resolved), and an event whose id is already in the audit log is only marked resolved.
A replayed event is older than what the database may have applied since, so a projection row
(stock level, product settings, a reservation's or order's current state) that a later event of
the same record already wrote keeps its newer state; the ledger, history and audit rows are
written as the event says.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import redis
from sqlalchemy import Connection, Engine, Row, select, update

from engine import outbox
from engine.outbox import OutboxEvent, sid
from persistence import schema
from persistence.apply import DATABASE_ERRORS, write_rows
from persistence.failures import describe, is_transient
from persistence.records import audit
from persistence.translate import BadEvent, Rows, translate

REPLAYED = "replayed"
ALREADY_APPLIED = "already applied"
_EVENT_ID = re.compile(r"p(\d+)-(\d+)-(\d+)")


class UnknownDeadLetter(ValueError):
    def __init__(self, ref: str) -> None:
        super().__init__(f"no dead letter has the id or event id {ref!r}")


@dataclass
class DeadLetter:
    id: int
    event_id: str
    partition: int
    type: str
    payload: dict[str, Any]
    error: str
    at: datetime
    resolved_at: datetime | None
    resolved_by: str | None
    resolution: str | None

    @classmethod
    def of(cls, row: Row[Any]) -> DeadLetter:
        return cls(**{c.name: getattr(row, c.name) for c in schema.dead_letters.columns})

    @property
    def event(self) -> OutboxEvent:
        return OutboxEvent(self.partition, self.event_id.split("-", 1)[1], self.type, self.payload)

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for name in ("at", "resolved_at"):
            value = out[name]
            if value is not None:  # SQLite hands back naive datetimes; all are UTC
                out[name] = (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
        return out


@dataclass
class Outcome:
    """What one replay or resolve did. `outcome`: replayed, already_applied, already_resolved,
    resolved or failed (`error` says why; the dead letter stays unresolved)."""

    id: int
    event_id: str
    outcome: str
    resolved: bool
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def listing(db: Engine, *, include_resolved: bool = False) -> list[DeadLetter]:
    """The dead letters (unresolved only, unless asked), oldest first."""
    dl = schema.dead_letters
    query = select(dl).order_by(dl.c.id)
    if not include_resolved:
        query = query.where(dl.c.resolved_at.is_(None))
    with db.connect() as conn:
        return [DeadLetter.of(row) for row in conn.execute(query)]


def find(db: Engine, ref: str) -> DeadLetter:
    """A dead letter by its id (digits) or its event id (`p<N>-<stream id>`)."""
    dl = schema.dead_letters
    # an id is a BIGINT; longer digit strings can only be unknown
    by_id = ref.isdigit() and len(ref) <= 18
    where = dl.c.id == int(ref) if by_id else dl.c.event_id == ref
    with db.connect() as conn:
        row = conn.execute(select(dl).where(where)).one_or_none()
    if row is None:
        raise UnknownDeadLetter(ref)
    return DeadLetter.of(row)


def replay(client: redis.Redis, db: Engine, letters: list[DeadLetter], actor: str) -> list[Outcome]:
    """Apply each dead letter's event again, in stream order, each in its own transaction."""
    run = f"dead-letters-{uuid.uuid4().hex[:16]}"
    outcomes = []
    for letter in sorted(letters, key=lambda d: (d.partition, sid(d.event.id))):
        try:
            with db.begin() as conn:
                outcome = _replay_one(conn, letter, actor, run)
        except DATABASE_ERRORS as exc:  # outside the replay's savepoint: nothing changed
            outcome = Outcome(letter.id, letter.event_id, "failed", False, describe(exc))
        if outcome.resolved:
            _forget(client, letter)
        outcomes.append(outcome)
    return outcomes


def resolve(client: redis.Redis, db: Engine, letter: DeadLetter, actor: str, note: str) -> Outcome:
    """Close a dead letter by hand, without applying it."""
    run = f"dead-letters-{uuid.uuid4().hex[:16]}"
    with db.begin() as conn:
        if _claim(conn, letter):
            _close(conn, letter, actor, note)
            obj = ("dead_letter", str(letter.id))
            new = {"event_id": letter.event_id, "resolution": note}
            old = {"error": letter.error}
            audit(conn, actor, "dead_letter_resolved", obj, old, new, run, _audit_id())
            outcome = Outcome(letter.id, letter.event_id, "resolved", True)
        else:
            outcome = Outcome(letter.id, letter.event_id, "already_resolved", True)
    _forget(client, letter)
    return outcome


# -- one replay ------------------------------------------------------------------------------


def _claim(conn: Connection, letter: DeadLetter) -> bool:
    """Take the dead letter's row for this transaction if it is still unresolved. A write
    first: Postgres locks the row (a concurrent claimer waits, then sees it resolved), SQLite
    takes its write lock before this transaction reads anything."""
    dl = schema.dead_letters
    claim = (
        update(dl)
        .where(dl.c.id == letter.id, dl.c.resolved_at.is_(None))
        .values(resolved_at=dl.c.resolved_at)
    )
    return conn.execute(claim).rowcount == 1


def _audit_id() -> str:
    # records.audit's default id embeds the actor, who may be longer than an event id may be
    return f"dead-letters-{uuid.uuid4().hex}"


def _close(conn: Connection, letter: DeadLetter, actor: str, resolution: str) -> None:
    dl = schema.dead_letters
    conn.execute(
        update(dl)
        .where(dl.c.id == letter.id)
        .values(resolved_at=datetime.now(UTC), resolved_by=actor, resolution=resolution)
    )


def _replay_one(conn: Connection, letter: DeadLetter, actor: str, run: str) -> Outcome:
    if not _claim(conn, letter):
        return Outcome(letter.id, letter.event_id, "already_resolved", True)
    obj = ("dead_letter", str(letter.id))
    old = {"error": letter.error}
    # the audit log, not apply.already_applied: that one counts the dead letter itself
    applied = conn.scalar(
        select(schema.audit_log.c.id).where(schema.audit_log.c.event_id == letter.event_id)
    )
    if applied is not None:
        _close(conn, letter, actor, ALREADY_APPLIED)
        new = {"event_id": letter.event_id, "resolution": ALREADY_APPLIED}
        audit(conn, actor, "dead_letter_resolved", obj, old, new, run, _audit_id())
        return Outcome(letter.id, letter.event_id, "already_applied", True)
    try:
        event = letter.event
        rows = _without_superseded(conn, event, translate(event))
        with conn.begin_nested():
            write_rows(conn, rows)
    except (BadEvent, *DATABASE_ERRORS) as exc:
        if is_transient(exc):
            raise
        error = f"{type(exc).__name__}: {exc}"[:2000]
        dl = schema.dead_letters
        conn.execute(update(dl).where(dl.c.id == letter.id).values(error=error))
        new = {"error": error}
        audit(conn, actor, "dead_letter_replay_failed", obj, old, new, run, _audit_id())
        return Outcome(letter.id, letter.event_id, "failed", False, describe(exc))
    _close(conn, letter, actor, REPLAYED)
    new = {"event_id": letter.event_id}
    audit(conn, actor, "dead_letter_replayed", obj, old, new, run, _audit_id())
    return Outcome(letter.id, letter.event_id, "replayed", True)


def _later(event_id: str | None, event: OutboxEvent) -> bool:
    """Whether `event_id` names an event of the same partition after `event`."""
    m = _EVENT_ID.fullmatch(event_id or "")
    return m is not None and int(m[1]) == event.partition and (int(m[2]), int(m[3])) > sid(event.id)


def _without_superseded(conn: Connection, event: OutboxEvent, rows: Rows) -> Rows:
    """The event's rows, less the projection writes a later event has already made. (Its stock
    rows all stay: they are changes, added to the ledger's sums whatever came later.)"""
    ps, log = schema.product_settings, schema.audit_log

    def settings_are_newer(r: dict[str, Any]) -> bool:
        where = ps.c.product == r["product"]
        return _later(conn.scalar(select(ps.c.last_event_id).where(where)), event)

    def record_is_newer(kind: str, u: dict[str, Any]) -> bool:
        where = (log.c.object_type == kind) & (log.c.object_id == u["id"])
        ids = cast(list[str], conn.scalars(select(log.c.event_id).where(where)).all())
        return any(_later(i, event) for i in ids)

    rows.product_settings = [r for r in rows.product_settings if not settings_are_newer(r)]
    rows.reservation_updates = [
        u for u in rows.reservation_updates if not record_is_newer("reservation", u)
    ]
    rows.order_updates = [u for u in rows.order_updates if not record_is_newer("order", u)]
    return rows


def _forget(client: redis.Redis, letter: DeadLetter) -> None:
    """Drop a resolved dead letter from its partition's stream, which mirrors the open ones."""
    p = letter.partition
    entries = cast(list[tuple[str, dict[str, str]]], outbox.dead_letter_entries(client, p))
    stale = [i for i, fields in entries if fields.get("event_id") == letter.event_id]
    if stale:
        outbox.drop_dead_letters(client, p, stale)
