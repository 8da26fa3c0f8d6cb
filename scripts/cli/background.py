"""`inventory worker`, `inventory scheduler` and `inventory drain`: the background work."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

# An in-process drain waits out a transient database error (a lock held, a deadlock) as the
# RQ job's DRAIN_RETRY does, only sooner, then gives up loudly: the events stay in the outbox,
# nothing is dead-lettered, and the next drain starts from the same checkpoint.
DRAIN_BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)
MAX_PARALLEL_DRAINS = 8  # `inventory drain`: partitions drained at once
SCHEDULER_RETRY_FIRST_S = 0.5  # the scheduler, Redis lost: first wait, doubled up to the next
SCHEDULER_RETRY_MAX_S = 10.0


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
    """Drain every partition until its outbox is empty, the partitions in parallel (a thread
    each, at most MAX_PARALLEL_DRAINS), waiting out another drainer's lease and, `backoff_s`
    apart, a transient database error; DrainFailed (the lowest partition that failed, with
    what the others drained) after the last pause."""
    from concurrent.futures import ThreadPoolExecutor, wait

    from persistence import jobs

    partitions = range(jobs.settings().partitions)
    with ThreadPoolExecutor(min(len(partitions), MAX_PARALLEL_DRAINS)) as pool:
        futures = [pool.submit(_drain_one, p, deadline_s, backoff_s) for p in partitions]
        wait(futures)
    results = [f.result() for f in futures if f.exception() is None]
    for future in futures:
        exc = future.exception()
        if isinstance(exc, DrainFailed):
            exc.drained = results
        if exc is not None:
            raise exc
    return results


def _drain_one(partition: int, deadline_s: float, backoff_s: tuple[float, ...]) -> dict[str, Any]:
    from persistence import jobs
    from persistence.apply import DATABASE_ERRORS
    from persistence.failures import describe

    started = time.monotonic()
    failures = 0
    while True:
        try:
            result = jobs.drain(partition)
        except DATABASE_ERRORS as exc:
            if _lasting(exc):
                raise  # main() reports it in one line, exit 3: waiting would not help
            if failures == len(backoff_s):
                raise DrainFailed(partition, failures + 1, describe(exc), []) from exc
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
            return result
        if time.monotonic() - started > deadline_s:
            raise TimeoutError(f"partition {partition} stayed locked by another drainer")
        time.sleep(0.1)


def _lasting(exc: BaseException) -> bool:
    """A database error that retrying would meet again: a SQLite file that can't be opened or
    is not a database, or a database not set up (a table missing)."""
    from scripts.cli import unreachable

    found = unreachable.diagnose(exc, argparse.Namespace())  # DATABASE_URL: the environment's
    return found is not None and found.lasting


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
        "reconcile --fix` to restore it (`inventory rebuild` if it lost all its data)",
        file=sys.stderr,
    )
    return 1


def cmd_worker(args: argparse.Namespace) -> int:
    _environment(args)
    if args.processes < 1:
        print("--processes must be at least 1", file=sys.stderr)
        return 2
    if args.processes == 1:
        run_worker(args.burst, args.log_level)
    else:
        _worker_pool(args.processes, args.burst, args.log_level)
    if args.burst:
        return _drain_and_report()
    return 0


def run_worker(burst: bool, log_level: str) -> None:
    """One RQ worker on the queue, in this process, until it is told to stop (or, `burst`,
    until the queue is empty)."""
    from rq import Worker

    from engine import layout
    from persistence import jobs

    layout.check_sync(jobs.redis_client(), jobs.settings().partitions)
    connection = jobs.queue_connection()

    current: list[Any] = []

    def work() -> None:  # a new worker each time: the one that lost Redis is gone
        worker = Worker([jobs.queue(connection)], connection=connection)
        current[:] = [worker]
        worker.work(burst=burst, with_scheduler=True, logging_level=log_level)

    def stopping() -> bool:
        """TERM or Ctrl-C came (RQ notes when): the worker ends, whatever Redis does now."""
        return bool(current) and getattr(current[0], "_shutdown_requested_date", None) is not None

    if burst:
        work()
        return
    # a Redis lost once it has started is waited out, as the scheduler waits it out
    _waiting_out_redis("worker", work, logging.getLogger("inventory.worker"), stopping=stopping)


def _pool_worker(burst: bool, log_level: str) -> None:
    """A worker of `_worker_pool`, in a process group of its own: the scheduler process RQ
    forks beside it is in that group too, so nothing of it outlives the worker."""
    os.setpgid(0, 0)
    run_worker(burst, log_level)


def _end_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # nothing left in it
        os.killpg(pgid, sig)


def _worker_pool(count: int, burst: bool, log_level: str) -> None:
    """`count` RQ workers, each a process of its own, so that drains of different partitions
    (and the other jobs) run in parallel; each partition's lease keeps its drain to one at a
    time. A worker that dies (kill -9, out of memory) is started again, and what it leaves
    behind (RQ's scheduler process) is stopped; TERM or INT stops them all (each finishes the
    job it is running, as one worker does), and this returns once every one has exited. With
    `burst`, each ends when the queue is empty."""
    import logging
    import multiprocessing

    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited sockets
    log = logging.getLogger("inventory.worker")
    stopping = False

    def start() -> BaseProcess:
        process = spawn.Process(target=_pool_worker, args=(burst, log_level), daemon=False)
        process.start()
        return process

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for process in workers:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)

    workers = [start() for _ in range(count)]
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while workers:
            time.sleep(0.2)
            for process in list(workers):
                if process.is_alive():
                    continue
                process.join()
                assert process.pid is not None
                # its scheduler, if the worker could not stop it (killed) or was stopping it
                _end_group(process.pid, signal.SIGTERM if process.exitcode == 0 else signal.SIGKILL)
                if stopping or burst or process.exitcode == 0:
                    workers.remove(process)
                    continue
                log.warning(
                    "worker %d exited with %s; starting another", process.pid, process.exitcode
                )
                workers[workers.index(process)] = start()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def cmd_scheduler(args: argparse.Namespace) -> int:
    import logging

    from persistence import jobs, periodic

    _environment(args)
    logging.basicConfig(level=args.log_level)
    connection = jobs.queue_connection()
    scheduler = periodic.KeptScheduler(
        queue_name=jobs.QUEUE, connection=connection, interval=args.interval
    )
    registered = periodic.register(scheduler)
    log = logging.getLogger("inventory")
    log.info("periodic jobs: %s", ", ".join(registered))
    if args.burst:
        scheduler.run(burst=True)
        return 0
    _run_scheduler(scheduler, log)
    return 0


def _run_scheduler(scheduler: Any, log: Any) -> None:
    """Run the scheduler for good (`_waiting_out_redis`): the scheduler is what releases
    reservations whose buyers walked away, and a process that exited on the first timeout
    stopped every expiry and hand-off until someone started it again."""
    import redis.exceptions

    def forget() -> None:
        # its registration, never marked dead, would read as another scheduler's
        with contextlib.suppress(redis.exceptions.RedisError):
            scheduler.connection.delete(scheduler.key)

    _waiting_out_redis(
        "scheduler",
        lambda: scheduler.run(burst=False),
        log,
        forget,
        stopping=lambda: bool(getattr(scheduler, "stopping", False)),
    )


def _waiting_out_redis(
    what: str,
    run: Callable[[], Any],
    log: Any,
    after: Callable[[], None] = lambda: None,
    stopping: Callable[[], bool] = lambda: False,
) -> None:
    """`run()` until it returns. Redis not answering once it has started (a stall, a restart,
    a failover, a replica for a while: READONLY) is waited out — a warning, `after()`, and
    `run()` again after SCHEDULER_RETRY_FIRST_S, doubling up to SCHEDULER_RETRY_MAX_S — and
    never ends it, unless the process was asked to stop (`stopping()`): Redis lost while it
    shuts down (its stack stopping Redis too) ends it."""
    import redis.exceptions

    delay = SCHEDULER_RETRY_FIRST_S
    while True:
        started = time.monotonic()
        try:
            run()
            return
        except (
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
            redis.exceptions.ReadOnlyError,  # a replica for now (a failover under way)
        ) as exc:
            if stopping():
                log.info("the %s lost Redis while it stopped (%s): stopped", what, exc)
                return
            if time.monotonic() - started > SCHEDULER_RETRY_MAX_S:
                delay = SCHEDULER_RETRY_FIRST_S  # it ran a while since the last one
            log.warning("the %s lost Redis (%s): trying again in %g s", what, exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, SCHEDULER_RETRY_MAX_S)
            after()


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
    from engine import layout
    from persistence import jobs

    _environment(args)
    layout.check_sync(jobs.redis_client(), jobs.settings().partitions)
    return _drain_and_report()


def cmd_migrate(args: argparse.Namespace) -> int:
    from engine.settings import Settings
    from persistence import migrate

    _environment(args)
    url = Settings.from_env().database_url_or_default  # the database alone: no Redis
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
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        help="RQ workers to run, each a process of its own: with PARTITIONS > 1 the partitions "
        "drain in parallel (default 1)",
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
