"""The periodic jobs, registered with rq-scheduler under fixed ids (re-registering replaces)."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rq_scheduler import Scheduler

from persistence import jobs

log = logging.getLogger("inventory")


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


class KeptScheduler(Scheduler):  # type: ignore[misc]
    """rq-scheduler whose periodic jobs come back when Redis has lost them (restarted empty,
    flushed, a copy from before they were registered): each round first asks whether they
    are all scheduled (one ZMSCORE) and registers them again if not. Else a scheduler that
    outlived such a Redis ran on with nothing to schedule: no expiry, no drain, for good."""

    stopping = False  # TERM or Ctrl-C came

    def _install_signal_handlers(self) -> None:
        """rq-scheduler's, noting the signal first: its handler tells Redis it stops, and a
        Redis already gone (its stack stopping it too) raises there, which must end the
        scheduler, not be waited out (scripts/cli/background.py)."""
        super()._install_signal_handlers()
        theirs = signal.getsignal(signal.SIGTERM)

        def stop(signum: int, frame: Any) -> None:
            self.stopping = True
            if callable(theirs):
                theirs(signum, frame)

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)

    def enqueue_jobs(self) -> Any:
        ids = [p.id for p in PERIODIC]
        if None in self.connection.zmscore(self.scheduled_jobs_key, ids):
            log.warning("the periodic jobs were gone from Redis: registering them again")
            register(self)
        return super().enqueue_jobs()
