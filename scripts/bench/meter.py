"""What the cost scenario reads around each timed run: the CPU of the API server's processes
and of PostgreSQL's (utime + stime from `/proc/<pid>/stat`), Redis's CPU (`INFO cpu`) and its
per-command calls and µs (`INFO commandstats`), this process's own CPU, and PostgreSQL's rows
written and transactions (`pg_stat_database`) — as deltas per operation."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psycopg
import redis

from persistence.db import libpq_url
from scripts.bench.stack import Stack

TICK_US = 1_000_000 / os.sysconf("SC_CLK_TCK")


def _children() -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            found.setdefault(ppid, []).append(int(entry.name))
    return found


def family(pid: int | None) -> list[int]:
    """A process and all its descendants."""
    if pid is None:
        return []
    tree, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += tree.get(p, [])
    return out


def cpu_us(pids: Iterable[int]) -> dict[int, float]:
    """CPU (user + system, µs) each process has used so far; gone processes are left out."""
    out = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) * TICK_US  # utime, stime
    return out


def used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU µs used between two readings; a process born meanwhile counts in full."""
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())


def redis_cpu(client: redis.Redis) -> tuple[float, dict[str, tuple[int, int]]]:
    """Redis's CPU so far (µs) and, per command, (calls, µs)."""
    cpu: dict[str, Any] = client.info("cpu")
    stats: dict[str, Any] = client.info("commandstats")
    total = (float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])) * 1e6
    commands = {
        name.removeprefix("cmdstat_"): (int(s["calls"]), int(s["usec"]))
        for name, s in stats.items()
    }
    return total, commands


class Meter:
    """CPU deltas over a block: the API server's processes, Redis, PostgreSQL's processes, this
    process, and PostgreSQL's rows written and transactions."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.client = stack.redis_client()

    def read(self) -> dict[str, Any]:
        redis_us, commands = redis_cpu(self.client)
        me = os.times()
        return {
            "api": cpu_us(family(self.stack.server_pid())),
            "postgres": cpu_us(family(self.stack.postgres_pid())),
            "redis": redis_us,
            "commands": commands,
            "self": (me.user + me.system) * 1e6,
            "pg": self.pg_counts(),
        }

    def pg_counts(self) -> tuple[int, int]:
        with psycopg.connect(libpq_url(self.stack.database_url), autocommit=True) as conn:
            row = conn.execute(
                "SELECT tup_inserted + tup_updated + tup_deleted, xact_commit "
                "FROM pg_stat_database WHERE datname = current_database()"
            ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    def delta(self, a: dict[str, Any], b: dict[str, Any], per: int) -> dict[str, Any]:
        """Per `per` operations: CPU µs by side, commands' calls and µs (the busiest first)."""
        n = max(per, 1)
        commands = {}
        for name, (calls, usec) in b["commands"].items():
            calls0, usec0 = a["commands"].get(name, (0, 0))
            if calls > calls0:
                commands[name] = {
                    "calls": round((calls - calls0) / n, 2),
                    "usec": round((usec - usec0) / n, 2),
                }
        return {
            "api_cpu_us": round(used(a["api"], b["api"]) / n, 1) if b["api"] else None,
            "redis_cpu_us": round((b["redis"] - a["redis"]) / n, 1),
            "postgres_cpu_us": round(used(a["postgres"], b["postgres"]) / n, 1)
            if b["postgres"]
            else None,
            "self_cpu_us": round((b["self"] - a["self"]) / n, 1),
            "pg_rows": round((b["pg"][0] - a["pg"][0]) / n, 2),
            "pg_transactions": round((b["pg"][1] - a["pg"][1]) / n, 3),
            "redis_commands": dict(sorted(commands.items(), key=lambda kv: -kv[1]["usec"])[:16]),
        }

    def close(self) -> None:
        self.client.close()
