"""`inventory bench`: the command line of the benchmark (scripts/bench/)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import scripts.bench
from scripts.bench.options import ASYNC, BASELINES, SCENARIOS, SYNC, Options, Target

DEFAULT_SCENARIOS = "flash-sale,catalog"


def _bad_option(args: argparse.Namespace) -> str | None:
    at_least = {
        "buyers": 1,
        "rounds": 1,
        "products": 3,  # carts take up to 3 distinct products
        "connections": 1,
        "workers": 1,
        "load_procs": 1,
        "pool_size": 1,
        "events": 2,
        "cost_connections": 1,
        "cost_rounds": 1,
    }
    for name, low in at_least.items():
        if getattr(args, name) < low:
            return f"--{name.replace('_', '-')} must be at least {low}"
    if not 1 <= args.stock <= args.buyers:
        return "--stock must be between 1 and --buyers (a sale sells out)"
    if not (args.seconds > 0 and args.rate > 0 and args.drain_rate > 0):
        return "--seconds, --rate and --drain-rate must be positive"
    return None


def _target(args: argparse.Namespace, scenarios: list[str]) -> tuple[Target | None, str | None]:
    """The running services named by --api-url, or why they can't be used."""
    if not args.api_url:
        return None, None
    redis_url = args.redis_url or os.environ.get("REDIS_URL")
    database_url = args.database_url or os.environ.get("DATABASE_URL")
    jwt_keys = os.environ.get("JWT_KEYS", "")
    if not redis_url:
        return None, "--api-url needs --redis-url (or REDIS_URL): the server's Redis"
    if not database_url or not database_url.startswith("postgresql"):
        return None, "--api-url needs --database-url (or DATABASE_URL): the server's PostgreSQL"
    if not jwt_keys:
        return None, "--api-url needs JWT_KEYS in the environment: the server's, to sign tokens"
    if "drain" in scenarios:
        return None, "the drain scenario runs its own drainer: not against running services"
    return Target(args.api_url.rstrip("/"), redis_url, database_url, jwt_keys), None


def _cpus(text: str | None) -> set[int] | None:
    return {int(c) for c in text.split(",")} if text else None


def _options(args: argparse.Namespace) -> Options | str:
    """The run's options from its command line, or why they can't be run (nothing imported
    beyond the options: a refusal comes at once)."""
    asked = args.scenario
    if asked is None:  # --cluster alone runs only the cluster scenario
        asked = "" if args.cluster else DEFAULT_SCENARIOS
    names = list(SCENARIOS) if asked == "all" else [n for n in asked.split(",") if n]
    if args.cluster and "cluster" not in names:  # --cluster: the same as --scenario cluster
        names.append("cluster")
    if not names:
        return f"name a scenario: {', '.join(SCENARIOS)}, or all"
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        return f"unknown scenario {', '.join(unknown)}: choose from {', '.join(SCENARIOS)}"
    fsync = tuple(args.fsync.split(","))
    if any(f not in ("everysec", "always", "no") for f in fsync):
        return "--fsync takes everysec, always or no (comma-separated)"
    commits = {"sync": SYNC, "async": ASYNC}
    wanted = args.baseline_commit.split(",")
    if not wanted or any(c not in commits for c in wanted):
        return "--baseline-commit takes sync, async or both (comma-separated)"
    baselines = tuple(args.baselines.split(",")) if args.baselines else ()
    if any(b not in BASELINES for b in baselines):
        return f"--baselines takes {', '.join(BASELINES)} (comma-separated), or ''"
    problem = _bad_option(args)
    if not problem and "fair-sale" in names and args.buyers < 2 * args.stock:
        # half the units are walked away from and handed to the waitlist: it needs the rest
        problem = "--buyers must be at least twice --stock for the fair-sale scenario"
    target, trouble = _target(args, names)
    if problem or trouble:
        return problem or trouble or ""
    return Options(
        scenarios=names,
        buyers=args.buyers,
        stock=args.stock,
        rounds=args.rounds,
        seconds=args.seconds,
        rate=args.rate,
        products=args.products,
        connections=args.connections,
        workers=args.workers,
        load_procs=args.load_procs,
        fsync=fsync,
        baseline_commit=tuple(commits[c] for c in wanted),
        pool_size=args.pool_size,
        load_cpus=_cpus(args.load_cpus),
        server_cpus=args.server_cpus,
        target=target,
        drain_events=args.events,
        drain_rate=args.drain_rate,
        baselines=baselines,
        cost_connections=args.cost_connections,
        cost_rounds=args.cost_rounds,
    )


_MAIN_PID = os.getpid()


def _terminated(signum: int, frame: object) -> None:
    if os.getpid() != _MAIN_PID:  # a process the run forked (it inherits the handler): ends
        os._exit(128 + signum)
    raise KeyboardInterrupt(f"signal {signum}")


def cmd_bench(args: argparse.Namespace) -> int:
    opts = _options(args)
    if isinstance(opts, str):
        print(opts, file=sys.stderr)
        return 2
    from scripts.bench.harness import run
    from scripts.bench.measure import console
    from scripts.bench.report import markdown, plot, print_tables

    # TERM as Ctrl-C: the services the run started (PostgreSQL, Redis, the API, the load
    # processes) are stopped on the way out; by default TERM ended the process at once and
    # left them running
    global _MAIN_PID
    _MAIN_PID = os.getpid()
    signal.signal(signal.SIGTERM, _terminated)
    try:
        report = run(opts)
    except KeyboardInterrupt as exc:
        print(f"inventory bench: stopped ({exc or 'Ctrl-C'}); what it started is stopped",
              file=sys.stderr)  # fmt: skip
        return 130
    if not args.json:
        print_tables(report["scenarios"], report["targets"])
        console.print(f"exact_counts = {str(report['exact_counts']).lower()}")
    if args.plot:
        plot(report["scenarios"], args.plot)
        console.print(f"plot: {args.plot}")
    if args.markdown:
        Path(args.markdown).write_text(markdown(report))
        console.print(f"markdown: {args.markdown}")
    print(json.dumps(report, sort_keys=True))
    oversold = report["targets"].get("flash_sale_oversold")
    if not report["exact_counts"]:
        console.print(
            "exact_counts = false: a sale sold a wrong count, an invariant broke or "
            "the database copy differs from Redis"
        )
    return 0 if report["exact_counts"] and (oversold is None or oversold["met"]) else 1


def add_commands(sub: Any, common: Any) -> None:
    p = sub.add_parser(
        "bench",
        parents=[common],
        help="the high-concurrency benchmark against the PostgreSQL baselines",
        description=(scripts.bench.__doc__ or "").split("\n\n")[0],
    )
    p.add_argument(
        "--scenario",
        help=f"comma-separated, of {', '.join(SCENARIOS)}; or all (default {DEFAULT_SCENARIOS})",
    )
    p.add_argument(
        "--cluster",
        action="store_true",
        help="the engine on local Redis Clusters it starts itself (1 shard, 3 shards, 3 with "
        "replicas without and with REDIS_WAIT_REPLICAS=1): the same as --scenario cluster "
        "(added to --scenario when both are given)",
    )
    p.add_argument(
        "--api-url",
        help="measure running services instead: `inventory serve --bench` at this URL, with "
        "--redis-url, --database-url (PostgreSQL) and JWT_KEYS as the server has them",
    )
    p.add_argument("--database-url", help="with --api-url: the server's database")
    p.add_argument("--buyers", type=int, default=1000, help="flash-sale: buyers (connections)")
    p.add_argument("--stock", type=int, default=100, help="flash-sale: units on sale")
    p.add_argument("--rounds", type=int, default=3, help="flash-sale: sales per system")
    p.add_argument("--seconds", type=float, default=5.0, help="length of each timed load")
    p.add_argument("--rate", type=float, default=500.0, help="fixed offered rate (catalog: 2x)")
    p.add_argument("--products", type=int, default=10_000, help="catalog: products")
    p.add_argument("--connections", type=int, default=256, help="catalog/lifecycle connections")
    p.add_argument("--workers", type=int, default=2, help="uvicorn workers")
    p.add_argument("--load-procs", type=int, default=1, help="load generator processes")
    p.add_argument("--load-cpus", help="pin the load generator to these CPUs, e.g. 1")
    p.add_argument("--server-cpus", help="pin the API server to these CPUs (taskset), e.g. 0")
    p.add_argument(
        "--fsync", default="everysec,always", help="Redis appendfsync settings to measure ours with"
    )
    p.add_argument(
        "--baseline-commit",
        default="sync,async",
        help="the baselines' synchronous_commit settings to measure: sync (on), async (off)",
    )
    p.add_argument(
        "--baselines",
        default=",".join(BASELINES),
        help="the PostgreSQL designs to compare against, comma-separated: row-lock (the "
        "original's SELECT … FOR UPDATE transaction), single-statement (one autocommit "
        "statement: a CTE, or a PL/pgSQL function for carts); default both",
    )
    p.add_argument(
        "--cost-connections",
        type=int,
        default=64,
        help="cost: the concurrency at which CPU per reservation is measured (default 64)",
    )
    p.add_argument(
        "--cost-rounds",
        type=int,
        default=3,
        help="cost: interleaved rounds of the compared rows (full, bare, product read, "
        "reference); each ratio is the median of its rounds' (default 3)",
    )
    p.add_argument(
        "--pool-size", type=int, default=10, help="baselines: connections per worker and pool"
    )
    p.add_argument("--events", type=int, default=20_000, help="drain: backlog to drain")
    p.add_argument("--drain-rate", type=float, default=5000.0, help="drain: reservations/s")
    p.add_argument("--plot", metavar="FILE.png", help="draw the figures")
    p.add_argument("--markdown", metavar="FILE.md", help="write the tables as Markdown")
    p.set_defaults(func=cmd_bench)
