"""Operations: whether this process is ready for traffic (web/readiness.py checks each
component)."""

from __future__ import annotations

from dataclasses import dataclass

from web.readiness import Readiness
from web.services.container import Services


@dataclass(frozen=True)
class ReadinessReport:
    """The failing components (none: ready), each failing one's problem, and the figures
    (the outbox backlog) for staff."""

    failing: list[str]
    problems: dict[str, str]
    facts: dict[str, int | None]


async def readiness_report(svc: Services, readiness: Readiness) -> ReadinessReport:
    findings = await readiness.findings(svc)
    failing = [name for name, found in findings.items() if found.problem is not None]
    problems = {name: found.problem for name, found in findings.items() if found.problem}
    facts = {k: v for found in findings.values() for k, v in found.facts.items()}
    return ReadinessReport(failing, problems, facts)
