"""Prometheus metrics: what the API process counts itself, and what it reads from Redis when
it is scraped.

Counted per request, in the process (a pure ASGI middleware):
- `inventory_http_request_duration_seconds{method, route, status}`: a histogram; `route` is
  the matched route's template (`/api/reservations/{reservation_id}/`), never the raw path,
  and an unknown method is `other`, so what a client sends can't multiply the series.
- `inventory_reservation_requests_total{operation, outcome}`: every call of reserve, release,
  extend and commit by how it ended: `created` (`released`, `extended`, `committed`),
  `replayed` (an idempotent retry), or the error code of the envelope (`insufficient_stock`,
  `invalid_input`, `rate_limited`, ...). The outcome comes from the same place as the
  response: the app's exception handlers note the code in the scope state.

Read from Redis at scrape time (two round trips), so every process and every scrape sees the
same numbers, including the work of the worker and the scheduler the API never sees:
- `inventory_outbox_backlog{partition}` (XLEN) and `inventory_outbox_oldest_event_age_seconds`
  (how long the oldest undrained event has waited: the drain lag as it stands now);
- `inventory_outbox_drain_lag_seconds{partition, quantile}` (p50, p99, max from event to
  commit over the last drain that applied anything, written by the worker: persistence.jobs),
  with `inventory_outbox_last_drain_timestamp_seconds` and `..._last_drain_applied`;
- `inventory_reservations_live{partition}` (HLEN) and `inventory_reservations_due{partition}`
  (past `expires_at`, not yet released: near 0 while the sweep runs; it grows when the
  scheduler is down, though the next reserve call still releases them first);
- `inventory_reservations_expired_by_sweep_total` (the periodic sweep's count, kept in Redis).
  Reserve calls release due reservations too; those are not in it (the audit log has each
  `reservation_expired`, with its trigger);
- `inventory_redis_up`: 0 when Redis did not answer the scrape (the rest is then missing).

Several uvicorn workers: each process counts into its own registry, and a scrape reaches one
of them. Set PROMETHEUS_MULTIPROC_DIR (an empty directory, wiped before each start; it must
be in the environment before the workers start) and prometheus-client keeps the counts in
files there that every worker's scrape sums: exact totals whichever worker answers. Without
it, run one worker per port and scrape each. The Redis gauges are the same either way.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import redis.exceptions
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.process_collector import ProcessCollector
from starlette.types import Scope

from engine.reads import EngineReads
from web.middleware import route_template, scope_state

log = logging.getLogger("inventory.metrics")

# Calls one Redis function call carries for a coalesced operation (1: sent alone).
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
# Seconds: the hot path answers in about a millisecond, lists and logins take longer.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# (method, route template) -> the reservation operation, and the outcome its success counts as
RESERVATION_OPERATIONS: dict[tuple[str, str], tuple[str, str]] = {
    ("POST", "/api/reservations/"): ("reserve", "created"),
    ("DELETE", "/api/reservations/{reservation_id}/"): ("release", "released"),
    ("POST", "/api/reservations/{reservation_id}/extend/"): ("extend", "extended"),
    ("POST", "/api/reservations/{reservation_id}/commit/"): ("commit", "committed"),
}


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    """The metrics of one app; `observe` counts a request, `render` answers a scrape."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Histogram(
            "inventory_http_request_duration_seconds",
            "HTTP requests by route template, method and status, and how long they took.",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.reservations = Counter(
            "inventory_reservation_requests",
            "Reservation calls (reserve, release, extend, commit) by outcome.",
            ["operation", "outcome"],
            registry=self.registry,
        )
        self.coalesced = Histogram(
            "inventory_coalesced_calls",
            "Calls carried by each Redis function call of a coalesced operation (reserve, "
            "place_order, commit): 1 when a call went alone (COALESCE).",
            ["operation"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.stock_reads = Counter(
            "inventory_stock_reads",
            "Reads of products' live stock by how Redis answered them: `own`, a Redis call of "
            "its own; `shared`, the next call for the same products, shared with the reads "
            "that asked while one was on the wire (engine/shared_reads.py).",
            ["call"],
            registry=self.registry,
        )
        self._stock_reads = (self.stock_reads.labels("own"), self.stock_reads.labels("shared"))
        if multiprocess_dir() is None:
            ProcessCollector(registry=self.registry)
        # The labelled children met so far, by their labels (few: the labels are bounded).
        self._timings: dict[tuple[str, str, int], Histogram] = {}
        self._outcomes: dict[tuple[str, str], Counter] = {}

    def observe_batch(self, operation: str, calls: int) -> None:
        """One Redis call of a coalesced operation, carrying `calls` calls."""
        self.coalesced.labels(operation).observe(calls)

    def observe_stock_read(self, shared: bool) -> None:
        """One read of products' stock: on a Redis call of its own, or a shared one."""
        self._stock_reads[shared].inc()

    def observe(self, scope: Scope, status: int, seconds: float, *, replayed: bool) -> None:
        method = str(scope["method"])
        method = method if method in METHODS else "other"
        route = route_template(scope)
        timing = self._timings.get((method, route, status))
        if timing is None:
            timing = self.requests.labels(method, route, str(status))
            self._timings[method, route, status] = timing
        timing.observe(seconds)
        operation = RESERVATION_OPERATIONS.get((method, route))
        if operation is None:
            return
        name, success = operation
        if status < 400:
            outcome = "replayed" if replayed else success
        else:
            outcome = str(scope_state(scope).get("error_code") or f"http_{status}")
        counter = self._outcomes.get((name, outcome))
        if counter is None:
            counter = self._outcomes[name, outcome] = self.reservations.labels(name, outcome)
        counter.inc()

    def render(self, snapshot: Snapshot) -> bytes:
        """The text exposition: this process's counts (every worker's, in multiprocess mode)
        and the Redis snapshot."""
        scrape = CollectorRegistry()
        if multiprocess_dir() is None:
            scrape.register(self.registry)
        else:
            MultiProcessCollector(scrape)  # type: ignore[no-untyped-call]
        scrape.register(snapshot)
        return generate_latest(scrape)


# -- the Redis side, read at scrape time ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PartitionState:
    partition: int
    backlog: int
    oldest_event_age_s: float
    live: int
    due: int
    last_drain: dict[str, Any] | None


@dataclass(frozen=True, eq=False)  # registered as a collector: hashed by identity
class Snapshot:
    """What Redis said at one scrape; a collector of the gauges it makes."""

    redis_up: bool
    partitions: list[PartitionState] = field(default_factory=list)
    expired_by_sweep: int = 0

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "inventory_redis_up", "1 if Redis answered this scrape.", int(self.redis_up)
        )
        if not self.redis_up:
            return
        gauges = {
            "backlog": GaugeMetricFamily(
                "inventory_outbox_backlog",
                "Outbox events not yet drained to the database.",
                labels=["partition"],
            ),
            "age": GaugeMetricFamily(
                "inventory_outbox_oldest_event_age_seconds",
                "How long the oldest undrained outbox event has waited (0 when none).",
                labels=["partition"],
            ),
            "lag": GaugeMetricFamily(
                "inventory_outbox_drain_lag_seconds",
                "From an event to its database commit, over the last drain that applied any.",
                labels=["partition", "quantile"],
            ),
            "drained_at": GaugeMetricFamily(
                "inventory_outbox_last_drain_timestamp_seconds",
                "When the last drain that applied any events committed.",
                labels=["partition"],
            ),
            "applied": GaugeMetricFamily(
                "inventory_outbox_last_drain_applied",
                "Events the last drain that applied any applied.",
                labels=["partition"],
            ),
            "live": GaugeMetricFamily(
                "inventory_reservations_live",
                "Live reservations (holding units).",
                labels=["partition"],
            ),
            "due": GaugeMetricFamily(
                "inventory_reservations_due",
                "Reservations past expires_at whose units are not yet released.",
                labels=["partition"],
            ),
        }
        for p in self.partitions:
            label = str(p.partition)
            gauges["backlog"].add_metric([label], p.backlog)
            gauges["age"].add_metric([label], p.oldest_event_age_s)
            gauges["live"].add_metric([label], p.live)
            gauges["due"].add_metric([label], p.due)
            if p.last_drain:
                for quantile, key in (("0.5", "lag_p50_ms"), ("0.99", "lag_p99_ms")):
                    gauges["lag"].add_metric([label, quantile], p.last_drain[key] / 1000)
                gauges["lag"].add_metric([label, "1"], p.last_drain["lag_max_ms"] / 1000)
                gauges["drained_at"].add_metric([label], p.last_drain["at_ms"] / 1000)
                gauges["applied"].add_metric([label], p.last_drain["applied"])
        yield from gauges.values()
        yield CounterMetricFamily(
            "inventory_reservations_expired_by_sweep",
            "Reservations the periodic sweep has released at expires_at.",
            self.expired_by_sweep,
        )


def _last_drains(raw: dict[str, str]) -> dict[int, dict[str, Any]]:
    found: dict[int, dict[str, Any]] = {}
    for partition, text in raw.items():
        try:
            found[int(partition)] = json.loads(text)
        except ValueError:
            log.warning("unreadable last-drain record for partition %s", partition)
    return found


async def snapshot(engine: EngineReads) -> Snapshot:
    """Read the gauges from Redis; a Redis that does not answer gives `redis_up` 0."""
    try:
        gauges = await engine.gauges()
    except redis.exceptions.RedisError as exc:
        log.warning("metrics: redis unavailable: %s", exc)
        return Snapshot(redis_up=False)
    drains = _last_drains(gauges.last_drains)
    states: list[PartitionState] = []
    for g in gauges.partitions:
        age_ms = gauges.now_ms - g.oldest_ms if g.oldest_ms is not None else 0
        age_s, last = max(0, age_ms) / 1000, drains.get(g.partition)
        states.append(PartitionState(g.partition, g.backlog, age_s, g.live, g.due, last))
    return Snapshot(True, states, gauges.expired_by_sweep)
