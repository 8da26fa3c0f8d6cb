"""Measuring: the load offered through the load generator, its outcomes summarised, the
outbox lag while it runs, and the progress shown."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console

from engine import outbox
from persistence.jobs import percentile
from scripts.bench import drain as bench_drain
from scripts.bench import loadgen
from scripts.bench.loadgen import Call, Outcome, Plan
from scripts.bench.options import BASELINES, DURABLE_PATHS, OURS, PATHS, SYNC
from scripts.bench.stack import Stack

console = Console(stderr=True)


@contextmanager
def drainer(stack: Stack) -> Iterator[dict[str, Any]]:
    """A drainer process while the block runs; afterwards the dict holds the outbox lag
    (p50/p99 ms, event's script time → PostgreSQL commit) and the backlog at the end, and
    (keys starting with `_`, not shown) the events it applied and the CPU seconds it used."""
    found: dict[str, Any] = {}
    if stack.target is not None:  # the service's own worker drains
        yield found
        return
    ctx = multiprocessing.get_context("fork")
    stop, out = ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=bench_drain._drainer, args=(stack.settings, stop, out))
    proc.start()
    try:
        yield found
    finally:
        client = stack.redis_client()
        found["outbox_backlog"] = sum(
            outbox.length(client, p) for p in range(stack.settings.partitions)
        )
        client.close()
        stop.set()
        applied, lags, cpu = out.get(timeout=600)
        proc.join(timeout=30)
        found["lag_p50_ms"] = percentile(lags, 0.50)
        found["lag_p99_ms"] = percentile(lags, 0.99)
        found["_drained"], found["_drain_cpu_s"] = applied, cpu


def _ms(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 2)


def span(outcomes: Sequence[Outcome]) -> float:
    """Seconds from the first request due to the last answer."""
    if not outcomes:
        return 0.0
    return max(o.due + o.latency for o in outcomes) - min(o.due for o in outcomes)


def summarise(outcomes: Sequence[Outcome], **labels: Any) -> dict[str, Any]:
    latencies = [o.latency for o in outcomes]
    seconds = span(outcomes)
    statuses = [o.status for o in outcomes]
    return {
        **labels,
        "requests": len(outcomes),
        "ops_per_s": round(len(outcomes) / seconds, 1) if seconds > 0 else None,
        "p50_ms": _ms(latencies, 0.50),
        "p95_ms": _ms(latencies, 0.95),
        "p99_ms": _ms(latencies, 0.99),
        "max_ms": round(max(latencies) * 1000, 2) if latencies else None,
        "ok": sum(1 for s in statuses if s in (200, 201)),
        "refused": sum(1 for s in statuses if s == 409),
        "errors": sum(1 for s in statuses if s not in (200, 201, 409)),
    }


def offer(stack: Stack, mode: str, calls: Sequence[Call], **kw: Any) -> list[Outcome]:
    """Run the load in its own processes and bring back every outcome."""
    host, port = stack.connect
    opts = stack.opts
    if mode == "burst":
        parts = loadgen.split(calls, opts.load_procs)
        plans = [Plan(host, port, mode, part, cpus=opts.load_cpus, **kw) for part in parts]
    else:
        procs = opts.load_procs
        connections = kw.pop("connections")
        rate = kw.pop("rate", 0.0)
        if kw.get("limit") is not None:
            kw["limit"] = max(1, kw["limit"] // procs)
        plans = [
            Plan(
                host,
                port,
                mode,
                list(calls),
                connections=max(1, connections // procs),
                rate=rate / procs,
                cpus=opts.load_cpus,
                **kw,
            )
            for _ in range(procs)
        ]
    return loadgen.run_in_processes(plans)


# The bench endpoints (the baseline, bare) serve staff only: their buyers are staff accounts
# of their own, this far from the customers' ids (an account's staff flag is cached by the
# API for a few seconds, so one account can't be a customer here and staff there).
STAFF_BUYERS = 500_000


def buyer_tokens(stack: Stack, system: str, first: int, n: int) -> list[str]:
    """Tokens of `n` buyers from `first`: customers on our API, staff on the bench endpoints."""
    if system == OURS:
        return stack.tokens(range(first, first + n))
    return stack.tokens(range(STAFF_BUYERS + first, STAFF_BUYERS + first + n), staff=True)


def reserve_call(
    stack: Stack,
    system: str,
    token: str,
    body: dict[str, Any],
    tag: str,
    durability: str | None = None,
) -> Call:
    """A reservation's request; ours with an Idempotency-Key of its own each time it is sent
    (the key is part of the stack we claim)."""
    headers = {"Authorization": f"Bearer {token}"}
    baseline = system in BASELINES
    path = DURABLE_PATHS[system][durability or SYNC] if baseline else PATHS[system]
    return loadgen.encode(
        "POST",
        path,
        host=stack.host,
        headers=headers,
        body=body,
        tag=tag,
        idempotent=system == OURS,
    )


class Progress:
    def __init__(self) -> None:
        self.status = console.status("starting")
        self.started = time.monotonic()

    def __enter__(self) -> Progress:
        self.status.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.status.__exit__(None, None, None)

    def step(self, text: str) -> None:
        elapsed = time.monotonic() - self.started
        console.log(f"[dim]{elapsed:6.1f}s[/dim] {text}")
        self.status.update(text)


@contextmanager
def nothing() -> Iterator[dict[str, Any]]:
    yield {}


def measure(
    stack: Stack,
    system: str,
    fsync: str | None,
    calls: Sequence[Call],
    *,
    connections: int,
    rate: float | None = None,
) -> dict[str, Any]:
    """One timed row: a closed loop at saturation, or an open loop at `rate`. Our events (the
    bare endpoint's too) are drained while we are measured; a baseline writes its own rows."""
    mode, kw = ("fixed_rate", {"rate": rate}) if rate else ("saturate", {})
    with drainer(stack) if system not in BASELINES else nothing() as lag:
        got = offer(stack, mode, calls, connections=connections, seconds=stack.opts.seconds, **kw)
    labels: dict[str, Any] = {"offered_per_s": rate} if rate else {}
    return summarise(
        got,
        system=system,
        fsync=fsync,
        mode="fixed-rate" if rate else "saturation",
        connections=connections,
        **labels,
        **shown(lag),
    )


def shown(lag: dict[str, Any]) -> dict[str, Any]:
    """The drainer's figures a row shows (its private counts left out)."""
    return {k: v for k, v in lag.items() if not k.startswith("_")}
