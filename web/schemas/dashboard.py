"""What `GET /api/ops/dashboard/` answers: the operations page's numbers, one model per panel.

Each number says where it comes from in its description (they become the OpenAPI schema and
the page's captions): Redis numbers are the truth at the moment of the call; database numbers
trail the writes by the drain lag; queue numbers are RQ's own registries.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LastDrain(Out):
    at: str = Field(description="when the last drain that applied any events committed (UTC)")
    applied: int = Field(description="events that drain applied")
    lag_p50_ms: int = Field(description="event to database commit, median, in that drain")
    lag_p99_ms: int
    lag_max_ms: int


class RedisBehind(Out):
    since: str = Field(description="when the drain found it (UTC)")
    checkpoint: str = Field(description="the last event the database applied")
    last_id: str | None = Field(description="the outbox's last id in this Redis")
    applied: str | None = Field(description="the last applied event this Redis knows of")


class PartitionOut(Out):
    partition: int
    backlog: int = Field(description="outbox events not yet in the database (XLEN)")
    oldest_event_age_ms: int = Field(description="how long the oldest undrained event has waited")
    dead_letter_stream: int = Field(description="entries in the partition's dead-letter stream")
    live_reservations: int
    due_reservations: int
    events_applied: int | None = Field(
        description="events the database has applied from this partition, ever (its checkpoint)"
    )
    last_drain: LastDrain | None
    redis_behind: RedisBehind | None = Field(
        description="set while the drain of this partition is paused because its Redis came "
        "back behind the database (an older copy); `inventory reconcile --fix` restores it"
    )


class ReservationsOut(Out):
    live: int = Field(description="reservations holding units now (Redis)")
    due: int = Field(
        description="past expires_at, units not yet released: near 0 while the sweep runs"
    )
    expired_last_minute: int | None = Field(
        description="reservations whose expires_at fell in the last 60 s and that the database "
        "records as expired (trails by the drain lag); null while the database is down"
    )
    committed_last_minute: int | None = Field(
        description="reservations committed into orders in the last 60 s, as the database "
        "records them (trails by the drain lag); null while the database is down"
    )
    expired_by_sweep_total: int = Field(
        description="reservations the periodic sweep has released since Redis began counting"
    )


class DeadLetterOut(Out):
    event_id: str
    partition: int
    type: str
    error: str
    at: str


class DeadLettersOut(Out):
    unresolved: int = Field(description="dead_letters rows not resolved: events not applied")
    latest: list[DeadLetterOut] = Field(description="the newest unresolved, at most 10")


class WorkerOut(Out):
    name: str
    state: str
    queues: list[str]
    current_job: str | None
    last_heartbeat: str | None
    successful_jobs: int
    failed_jobs: int


class QueueOut(Out):
    name: str
    queued: int = Field(description="jobs waiting for a worker")
    started: int
    scheduled: int
    deferred: int
    failed: int
    finished: int


class PeriodicOut(Out):
    id: str
    next_run_at: str | None = Field(description="null: not registered (run inventory scheduler)")
    overdue_s: float = Field(
        description="how far the next run is behind now: more than a few seconds means "
        "rq-scheduler is not running"
    )


class FailedJobOut(Out):
    id: str
    function: str | None
    ended_at: str | None
    error: str = Field(description="the last line of the exception")


class QueuesOut(Out):
    workers: list[WorkerOut]
    queues: list[QueueOut]
    periodic: list[PeriodicOut]
    failed_jobs: list[FailedJobOut] = Field(description="the newest failed jobs, at most 10")


class LowStockOut(Out):
    product: int = Field(description="catalog product id")
    name: str
    sku: str
    available: int
    reserved: int
    total: int
    waiting: int = Field(description="customers on its waitlist now (Redis)")
    handed_off_last_minute: int | None = Field(
        description="reservations its waitlist handed over in the last minute (database); "
        "null while the database is down"
    )
    limits_refused_last_minute: int = Field(
        description="requests its purchase limits refused in about the last minute"
    )


class TrendPoint(Out):
    at: str = Field(description="the start of the 10 s the point covers (UTC)")
    events_per_second: float = Field(description="changes the drains applied, per second")
    drain_lag_p99_ms: int | None = Field(
        description="the highest drain lag p99 of any partition; null: no drain then"
    )


class TrendsOut(Out):
    bucket_seconds: int = Field(description="what each point covers")
    points: list[TrendPoint] = Field(description="the last 15 minutes, oldest first")


class ReconcileOut(Out):
    ok: bool = Field(description="no drift and no unresolved dead letter")
    checked_at: str | None = Field(description="when the check ran (UTC), about")
    drift: int = Field(description="differences found between Redis and the database")
    kinds: dict[str, int] = Field(description="the drift by kind")
    stock_rows: int = Field(description="product x warehouse rows compared")
    backlog: int = Field(description="outbox events pending at the check")


class Problems(Out):
    database: str | None = None
    queues: str | None = None


class DashboardOut(Out):
    at: str = Field(description="when these numbers were read (UTC)")
    partitions: list[PartitionOut]
    reservations: ReservationsOut
    dead_letters: DeadLettersOut | None = Field(description="null while the database is down")
    queues: QueuesOut | None = Field(description="null if RQ's registries could not be read")
    low_stock: list[LowStockOut] = Field(
        description="catalog products with the fewest available units (sold out first), "
        "at most 10; empty while the database is down"
    )
    trends: TrendsOut = Field(description="throughput and drain lag, the last 15 minutes")
    reconcile: ReconcileOut | None = Field(
        description="the last periodic reconcile check (kept a day); null before the first"
    )
    problems: Problems = Field(description="what could not be read, and why")
