"""`inventory worker`, `inventory scheduler` and `inventory drain`: the background work."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any

import redis

from persistence import jobs
from persistence.apply import DATABASE_ERRORS
from persistence.failures import describe

# An in-process drain waits out a transient database error (a lock held, a deadlock) as the
# RQ job's DRAIN_RETRY does, only sooner, then gives up loudly: the events stay in the outbox,
# nothing is dead-lettered, and the next drain starts from the same checkpoint.
DRAIN_BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)


class DrainFailed(Exception):
    """A partition's drain kept failing; `drained` holds the partitions done before it."""

    def __init__(self, partition: int, attempts: int, error: str, drained: list[Any]) -> None:
        super().__init__(
            f"partition {partition}: the database failed {attempts} time(s), last with "
            f"{error}; nothing was dead-lettered, its events wait in the outbox"
        )
        self.partition = partition
        self.attempts = attempts
        self.error = error
        self.drained = drained


def _environment(args: argparse.Namespace) -> None:
    # Jobs read their settings from the environment, in this process and in work horses.
    if args.redis_url:
        os.environ["REDIS_URL"] = args.redis_url
    if getattr(args, "database_url", None):
        os.environ["DATABASE_URL"] = args.database_url


def drain_everything(
    deadline_s: float = 120.0, backoff_s: tuple[float, ...] = DRAIN_BACKOFF_S
) -> list[dict[str, Any]]:
    """Drain every partition until its outbox is empty, waiting out another drainer's lease
    and, `backoff_s` apart, a transient database error; DrainFailed after the last pause."""
    results: list[dict[str, Any]] = []
    for partition in range(jobs.settings().partitions):
        started = time.monotonic()
        failures = 0
        while True:
            try:
                result = jobs.drain(partition)
            except DATABASE_ERRORS as exc:
                if failures == len(backoff_s):
                    raise DrainFailed(partition, failures + 1, describe(exc), results) from exc
                pause = backoff_s[failures]
                failures += 1
                print(
                    f"drain of partition {partition} failed ({describe(exc)}); "
                    f"retry {failures} of {len(backoff_s)} in {pause:g} s",
                    file=sys.stderr,
                    flush=True,
                )
                time.sleep(pause)
                continue
            if not result["locked_out"]:
                results.append(result)
                break
            if time.monotonic() - started > deadline_s:
                raise TimeoutError(f"partition {partition} stayed locked by another drainer")
            time.sleep(0.1)
    return results


def _outcome(results: list[dict[str, Any]]) -> int:
    """Print what the drains did; 1 when a partition was not drained because its Redis is
    behind the database (persistence/behind.py): then not everything is durable."""
    print(json.dumps({"drained": results}, sort_keys=True, default=str))
    behind = [r["partition"] for r in results if r.get("behind")]
    if not behind:
        return 0
    print(
        f"partition(s) {', '.join(map(str, behind))}: Redis is behind the database, so their "
        "drain is paused; run `inventory reconcile` to see what Redis lost and `inventory "
        "reconcile --fix` to restore it",
        file=sys.stderr,
    )
    return 1


def cmd_worker(args: argparse.Namespace) -> int:
    from rq import Worker

    _environment(args)
    connection = redis.Redis.from_url(jobs.settings().redis_url)
    worker = Worker([jobs.queue(connection)], connection=connection)
    worker.work(burst=args.burst, with_scheduler=True, logging_level=args.log_level)
    if args.burst:
        return _drain_and_report()
    return 0


def cmd_scheduler(args: argparse.Namespace) -> int:
    from rq_scheduler import Scheduler

    from persistence import periodic

    _environment(args)
    logging.basicConfig(level=args.log_level)
    connection = redis.Redis.from_url(jobs.settings().redis_url)
    scheduler = Scheduler(queue_name=jobs.QUEUE, connection=connection, interval=args.interval)
    registered = periodic.register(scheduler)
    logging.getLogger("inventory").info("periodic jobs: %s", ", ".join(registered))
    scheduler.run(burst=args.burst)
    return 0


def _drain_and_report() -> int:
    try:
        results = drain_everything()
    except DrainFailed as exc:
        print(f"drain failed: {exc}", file=sys.stderr)
        failed = {"partition": exc.partition, "attempts": exc.attempts, "error": exc.error}
        print(json.dumps({"drained": exc.drained, "failed": failed}, sort_keys=True, default=str))
        return 1
    return _outcome(results)


def cmd_drain(args: argparse.Namespace) -> int:
    _environment(args)
    return _drain_and_report()


def cmd_migrate(args: argparse.Namespace) -> int:
    from persistence import migrate

    _environment(args)
    url = jobs.settings().database_url_or_default
    before = migrate.current(url)
    migrate.upgrade(url)
    after = migrate.current(url)
    print(json.dumps({"from": before, "to": after, "head": migrate.head()}, sort_keys=True))
    return 0


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    db = argparse.ArgumentParser(add_help=False)
    db.add_argument("--database-url", help="default: $DATABASE_URL, else SQLite in data/")
    db.add_argument("--log-level", default="INFO")

    p = sub.add_parser("worker", parents=[common, db], help="run the RQ worker")
    p.add_argument(
        "--burst",
        action="store_true",
        help="run the queued jobs, drain every outbox into the database, then exit",
    )
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("scheduler", parents=[common, db], help="run the periodic jobs")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between checks")
    p.add_argument("--burst", action="store_true", help="enqueue what is due once, then exit")
    p.set_defaults(func=cmd_scheduler)

    p = sub.add_parser("migrate", parents=[common, db], help="bring the database schema up to date")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("drain", parents=[common, db], help="drain every outbox now, in-process")
    p.set_defaults(func=cmd_drain)
