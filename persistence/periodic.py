"""The periodic jobs, registered with rq-scheduler under fixed ids (re-registering replaces)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rq_scheduler import Scheduler

from persistence import jobs


@dataclass(frozen=True, slots=True)
class Periodic:
    id: str
    func: Callable[[], Any]
    every_s: int
    timeout_s: int


PERIODIC = (
    # expiry within about a second of expires_at, for reads; reserve itself is exact
    Periodic("periodic-expire", jobs.expire, every_s=1, timeout_s=30),
    # the safety net behind the drains that writes request
    Periodic("periodic-drain", jobs.drain_all, every_s=2, timeout_s=300),
    # proves Redis and the database agree; reports, never repairs
    Periodic("periodic-reconcile", jobs.reconcile_check, every_s=60, timeout_s=300),
    # the durable idempotency records past their expiry (IDEMPOTENCY_TTL)
    Periodic("periodic-purge-idempotency", jobs.purge_idempotency, every_s=600, timeout_s=300),
)


def register(scheduler: Scheduler) -> list[str]:
    """(Re)register every periodic job; returns their ids."""
    ours = {p.id for p in PERIODIC}
    for job in scheduler.get_jobs():
        if job.id in ours:
            scheduler.cancel(job)
    now = datetime.now(UTC).replace(tzinfo=None)  # rq-scheduler counts in naive UTC
    for p in PERIODIC:
        scheduler.schedule(
            now,
            p.func,
            interval=p.every_s,
            repeat=None,
            id=p.id,
            timeout=p.timeout_s,
            result_ttl=jobs.JOB_RESULT_TTL,
            ttl=max(10, p.every_s * 5),
        )
    return sorted(ours)
