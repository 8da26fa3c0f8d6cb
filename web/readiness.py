"""Readiness: whether this process is fit to take traffic, asked of a small registry of
components (`COMPONENTS`), each with one check. `GET /readyz` (web/routes/ops.py) shows it.

Load balancers, orchestrators and monitors poll /readyz, many at once and hardest during a
sale; so each component's finding is kept for `FRESH_S` and shared: while a check runs, every
other caller awaits that same check rather than starting one. However many callers, a
component is checked at most once per `FRESH_S` (one Redis PING, one `SELECT 1`, one backlog
read per partition). A check that raises or hangs past `CHECK_TIMEOUT_S` is a failing finding
whose text (an exception's: hosts, ports, users) is for staff only.

A component is a name and an async check taking the app's services; add one by appending to
`COMPONENTS`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Engine as DatabaseEngine
from sqlalchemy import text

from web.services.container import Services

log = logging.getLogger("inventory.web")

FRESH_S = 1.0
CHECK_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class Finding:
    """One component's state: `problem` is None when it is fine; `facts` are figures for
    staff (`{"outbox_backlog": 12}`), None where they could not be read."""

    problem: str | None = None
    facts: dict[str, int | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Component:
    name: str
    check: Callable[[Services], Awaitable[Finding]]


async def _redis(svc: Services) -> Finding:
    await svc.engine.ping()
    return Finding()


def _select_one(db: DatabaseEngine) -> None:
    with db.connect() as conn:
        conn.execute(text("SELECT 1"))


async def _database(svc: Services) -> Finding:
    await asyncio.to_thread(_select_one, svc.db)
    return Finding()


async def _outbox(svc: Services) -> Finding:
    limit = svc.settings.outbox_backlog_limit
    try:
        backlog = 0
        for p in range(svc.settings.partitions):
            backlog += await svc.engine.outbox_backlog(p)
    except Exception as exc:
        # unknown is not fine: "redis" fails too, this says what could not be judged
        problem = f"could not read the backlog: {type(exc).__name__}: {exc}"
        return Finding(problem, {"outbox_backlog": None})
    if backlog > limit:
        problem = f"backlog {backlog} over the limit {limit}: is the worker running?"
        return Finding(problem, {"outbox_backlog": backlog})
    return Finding(None, {"outbox_backlog": backlog})


async def _drain(svc: Services) -> Finding:
    """Not ready while a partition's drain is paused: its Redis came back behind the database
    (persistence/behind.py), and what it answers may contradict the durable record."""
    try:
        stopped = await svc.engine.drains_paused()
    except Exception:
        return Finding()  # Redis doesn't answer: "redis" says so; nothing to tell here
    if stopped:
        problem = (
            f"partition(s) {', '.join(map(str, stopped))}: Redis is behind the database and "
            "the drain is paused; run `inventory reconcile --fix` (or `inventory rebuild` if "
            "Redis lost all its data: `inventory reconcile` tells which)"
        )
        return Finding(problem, {"drains_paused": len(stopped)})
    return Finding(None, {})


COMPONENTS: list[Component] = [
    Component("redis", _redis),
    Component("database", _database),
    Component("outbox", _outbox),
    Component("drain", _drain),
]


class Readiness:
    """The components' findings, each checked at most once per `fresh_s` and shared by every
    caller in the meantime (one per app: `app.state.readiness`)."""

    def __init__(
        self,
        components: Sequence[Component] = COMPONENTS,
        *,
        fresh_s: float = FRESH_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.components = list(components)
        self._fresh_s = fresh_s
        self._clock = clock
        self._known: dict[str, tuple[float, Finding]] = {}
        self._running: dict[str, asyncio.Future[Finding]] = {}

    async def findings(self, svc: Services) -> dict[str, Finding]:
        """Every component's finding, in registry order."""
        found = await asyncio.gather(*(self._finding(c, svc) for c in self.components))
        return {c.name: f for c, f in zip(self.components, found, strict=True)}

    async def _finding(self, component: Component, svc: Services) -> Finding:
        known = self._known.get(component.name)
        if known is not None and self._clock() - known[0] < self._fresh_s:
            return known[1]
        running = self._running.get(component.name)
        if running is None:
            running = asyncio.ensure_future(self._check(component, svc))
            self._running[component.name] = running
        # a caller that gives up (a client gone) must not cancel the others' check
        return await asyncio.shield(running)

    async def _check(self, component: Component, svc: Services) -> Finding:
        try:
            finding = await asyncio.wait_for(component.check(svc), CHECK_TIMEOUT_S)
        except TimeoutError:
            finding = Finding(f"no answer within {CHECK_TIMEOUT_S:g} s")
        except Exception as exc:
            finding = Finding(f"{type(exc).__name__}: {exc}")
        finally:
            del self._running[component.name]
        finding = Finding(finding.problem and finding.problem[:300], finding.facts)
        if finding.problem is not None:
            # anonymous callers no longer see why: the log does (at most once per FRESH_S)
            log.warning("not ready: %s: %s", component.name, finding.problem)
        # fresh from when the answer came, so checks are FRESH_S apart however long one takes
        self._known[component.name] = (self._clock(), finding)
        return finding
