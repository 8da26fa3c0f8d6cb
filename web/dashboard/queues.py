"""The workers-and-queues panel of the operations page, through RQ's own API.

Blocking (RQ speaks synchronous redis-py, without decoding): the page's endpoint runs it in a
thread, on a connection of its own that it closes. Reading has no side effects: registry
sizes are taken without RQ's clean-up (which would move jobs), and the periodic jobs' next
runs come straight from rq-scheduler's sorted set (its get_jobs cancels missing jobs).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import redis
from rq import Queue, Worker
from rq.job import Job
from rq.registry import FailedJobRegistry
from rq.worker import BaseWorker
from rq_scheduler import Scheduler

from persistence import jobs, periodic
from web.responses import iso
from web.schemas.dashboard import FailedJobOut, PeriodicOut, QueueOut, QueuesOut, WorkerOut

log = logging.getLogger("inventory.dashboard")

LATEST = 10


def _state(worker: BaseWorker) -> str:
    state = worker.get_state()
    return str(getattr(state, "value", state))


def read_queues(redis_url: str, now: datetime) -> QueuesOut:
    """Workers, queues, periodic jobs and failures, through RQ's API (blocking: a thread)."""
    with redis.Redis.from_url(redis_url) as conn:
        workers = [
            WorkerOut(
                name=w.name,
                state=_state(w),
                queues=w.queue_names(),
                current_job=w.get_current_job_id(),
                last_heartbeat=iso(w.last_heartbeat) if w.last_heartbeat else None,
                successful_jobs=w.successful_job_count,
                failed_jobs=w.failed_job_count,
            )
            for w in sorted(Worker.all(connection=conn), key=lambda w: w.name)
        ]
        names = sorted({q.name for q in Queue.all(connection=conn)} | {jobs.QUEUE})
        queues, failed_ids = [], []
        for name in names:
            q = Queue(name, connection=conn)
            # cleanup=False: reading must not move jobs between registries
            counts = {
                "started": q.started_job_registry,
                "scheduled": q.scheduled_job_registry,
                "deferred": q.deferred_job_registry,
                "failed": q.failed_job_registry,
                "finished": q.finished_job_registry,
            }
            queues.append(
                QueueOut(
                    name=name,
                    queued=q.count,
                    **{k: r.get_job_count(cleanup=False) for k, r in counts.items()},
                )
            )
            registry = FailedJobRegistry(name, connection=conn)
            failed_ids += registry.get_job_ids(0, LATEST - 1, desc=True, cleanup=False)
        failed = [j for j in Job.fetch_many(failed_ids, connection=conn) if j is not None]
        failed.sort(key=lambda j: iso(j.ended_at) if j.ended_at else "", reverse=True)
        # The periodic jobs' next runs, straight from rq-scheduler's sorted set (its
        # get_jobs would fetch every job and cancel the missing ones).
        ours = sorted(p.id for p in periodic.PERIODIC)
        scores = [conn.zscore(Scheduler.scheduled_jobs_key, job_id) for job_id in ours]
        scheduled = [
            PeriodicOut(id=job_id, next_run_at=None, overdue_s=0.0)
            if score is None
            else PeriodicOut(
                id=job_id,
                next_run_at=iso(datetime.fromtimestamp(score, UTC)),
                overdue_s=round(max(0.0, now.timestamp() - score), 1),
            )
            for job_id, score in zip(ours, scores, strict=True)
        ]
        return QueuesOut(
            workers=workers,
            queues=queues,
            periodic=scheduled,
            failed_jobs=[_failed(j) for j in failed[:LATEST]],
        )


def _failed(job: Job) -> FailedJobOut:
    # The newest run that failed: a periodic job keeps its id from run to run, so its latest
    # result may be a later run's success (RQ keeps each run's result, newest first).
    text = next((r.exc_string for r in job.results() if r.exc_string), "")
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return FailedJobOut(
        id=job.id,
        function=job.func_name,
        ended_at=iso(job.ended_at) if job.ended_at else None,
        error=(lines[-1] if lines else "(no exception recorded)")[:500],
    )


async def queues_panel(redis_url: str, now: datetime) -> QueuesOut | str:
    """The panel, or why it could not be read."""
    try:
        return await asyncio.to_thread(read_queues, redis_url, now)
    except Exception as exc:  # the panel says what failed; the rest of the page stands
        log.warning("dashboard: RQ registries unreadable: %s", exc)
        return f"{type(exc).__name__}: {exc}"[:300]
