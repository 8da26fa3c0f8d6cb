"""The `inventory` command: one entry point, a subcommand per job, shared options.

`main()` and the parser are here, with `sweep`, `check` and `chaos`; each other family of
subcommands has its module in this package and adds itself with `add_commands`. A Redis or
database that cannot be reached is reported once, here, by `unreachable` (exit 3).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from functools import cache
from typing import TYPE_CHECKING, Any

# Only what building the parser needs is imported here: every `inventory` process (the tests
# start a hundred) pays for these. A command imports the engine, the database, rich, ... itself.
from scripts.cli import (
    background,
    bench,
    dead_letters,
    operators,
    rqdash,
    serve,
    users,
)

if TYPE_CHECKING:
    from rich.console import Console

    from engine import invariants
    from engine.settings import Settings


@cache
def console() -> Console:
    """rich's console on stderr, made on first use."""
    from rich.console import Console

    return Console(stderr=True)


def _settings(args: argparse.Namespace) -> Settings:
    import dataclasses

    from engine.connection import resolve
    from engine.settings import Settings

    settings = Settings.from_env()
    if args.redis_url:
        settings = dataclasses.replace(settings, redis_url=args.redis_url)
    return resolve(settings, warn=False)  # one server or a cluster


# -- sweep --------------------------------------------------------------------------------


async def _sweep(settings: Settings, limit: int | None) -> dict[str, Any]:
    from engine.engine import Engine
    from persistence import behind
    from persistence.db import database_engine

    db = database_engine(settings)
    try:  # a Redis that has started is checked against the database before its first release
        async with Engine.from_settings(settings, checkpoints=behind.checkpoints(db)) as engine:
            await engine.check_layout()  # PARTITIONS as the data's (refused: exit 2)
            result = await engine.expire(limit)
    finally:
        db.dispose()
    return result.as_json()


SWEEP_LIMIT_MAX = 100_000  # as engine/sweep.py checks it


def _sweep_limit(text: str) -> int:
    """--limit: a usage error (exit 2, one line) unless 1 to SWEEP_LIMIT_MAX."""
    try:
        limit = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if not 1 <= limit <= SWEEP_LIMIT_MAX:
        raise argparse.ArgumentTypeError(f"must be 1 to {SWEEP_LIMIT_MAX}, not {limit}")
    return limit


def _not_a_warning(record: logging.LogRecord) -> bool:
    return record.levelno != logging.WARNING


def cmd_sweep(args: argparse.Namespace) -> int:
    import asyncio

    # The engine's warning that a started Redis could not be checked against a database that
    # can't be read goes to the API's log; here the error it raises (RedisUnverified, from the
    # database's error) is the command's one line (main, exit 3), not a second one before it.
    checks = logging.getLogger("inventory.redis")  # engine/scripts.py's
    checks.addFilter(_not_a_warning)
    try:
        result = asyncio.run(_sweep(_settings(args), args.limit))
    finally:
        checks.removeFilter(_not_a_warning)
    _emit(args, result, f"expired {result['expired']}, still due {result['still_due']}")
    if result["redis_behind"]:
        listed = ", ".join(f"p{p}" for p in result["redis_behind"])
        print(
            f"inventory: the sweep refused in {listed}: Redis is behind the database there"
            " (nothing released); run `inventory reconcile --fix` (or `inventory rebuild` if"
            " Redis lost all its data: `inventory reconcile` tells which)",
            file=sys.stderr,
        )
        return 1
    return 0


# -- check --------------------------------------------------------------------------------


async def _check(settings: Settings) -> list[invariants.InvariantReport]:
    from engine.engine import Engine

    async with Engine.from_settings(settings) as engine:
        await engine.check_layout()  # PARTITIONS as the data's (refused: exit 2)
        return await engine.check_invariants()


def cmd_check(args: argparse.Namespace) -> int:
    import asyncio

    reports = asyncio.run(_check(_settings(args)))
    problems = [p for r in reports for p in r.problems]
    result = {
        "invariants_ok": not problems,
        "partitions": len(reports),
        "stock_levels": sum(len(r.counters) for r in reports),
        "live_reservations": sum(r.live_reservations for r in reports),
        "problems": problems,
    }
    text = "invariants hold" if not problems else "\n".join(["INVARIANTS BROKEN:", *problems])
    _emit(args, result, text)
    return 0 if not problems else 1


# -- chaos --------------------------------------------------------------------------------


def cmd_chaos(args: argparse.Namespace) -> int:
    from rich.table import Table

    from scripts.cli import chaos

    result = chaos.run(
        _settings(args),
        processes=args.processes,
        stock=args.stock,
        products=args.products,
        warehouses=args.warehouses,
        max_lines=args.max_lines,
        settle=args.settle,
        seed=args.seed,
        per_process=args.buyers_per_process,
    )
    if not args.json:
        table = Table("measure", "value", title="chaos")
        for key in (
            "processes", "buyers", "stock", "succeeded", "failed", "crashed", "available",
            "reserved", "total", "oversold", "committed", "expired", "invariants_ok",
            "events_ok", "elapsed_s",
        ):  # fmt: skip
            table.add_row(key, str(result[key]))
        console().print(table)
        for problem in result["problems"]:
            console().print(f"[red]{problem}[/red]")
    print(json.dumps(result, sort_keys=True))
    healthy = result["invariants_ok"] and result["events_ok"] and not result["crashed"]
    return 0 if healthy else 1


# -- plumbing -----------------------------------------------------------------------------


def _emit(args: argparse.Namespace, result: dict[str, Any], text: str) -> None:
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        console().print(text)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--redis-url", help="Redis to use (default: $REDIS_URL, else the embedded one)"
    )
    common.add_argument("--json", action="store_true", help="print the result as JSON (last line)")

    parser = argparse.ArgumentParser(prog="inventory", description=(__doc__ or "").split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sweep", parents=[common], help="release due reservations once")
    p.add_argument(
        "--limit",
        type=_sweep_limit,
        default=None,
        help=f"at most this many per partition (1 to {SWEEP_LIMIT_MAX})",
    )
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("check", parents=[common], help="check the invariants in Redis")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "chaos", parents=[common], help="many processes reserve the same stock at once"
    )
    p.add_argument("--processes", type=int, default=50)
    p.add_argument("--stock", type=int, default=5, help="units per product")
    p.add_argument("--products", type=int, default=1)
    p.add_argument("--warehouses", type=int, default=1)
    p.add_argument("--max-lines", type=int, default=1, help="cart lines per buyer (1..N)")
    p.add_argument(
        "--buyers-per-process",
        type=int,
        default=1,
        help="buyers reserving at once in each process, through its one engine (its calls "
        "coalesced as an API process's are)",
    )
    p.add_argument(
        "--settle", action="store_true", help="then commit half and let the other half expire"
    )
    p.add_argument("--seed", type=int, default=None)
    p.set_defaults(func=cmd_chaos)

    serve.add_commands(sub, common)
    background.add_commands(sub, common)
    operators.add_commands(sub, common)
    dead_letters.add_commands(sub)
    bench.add_commands(sub, common)
    rqdash.add_commands(sub, common)
    users.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0: done; 1: drift or a failure the command names; 2: refused (usage, an unknown
    name); 3: Redis or the database could not be reached, or the database is not set up (one
    line says which, where and what to do; with --json an error object on stdout)."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ValueError as exc:
        from rich.markup import escape

        # one line, however long, and the message as it is (a '[' in it is not markup)
        console().print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        return 2
    except Exception as exc:
        from scripts.cli import unreachable

        # the error itself, or one it came from (a Redis that has started could not be
        # checked against a database that can't be read: RedisUnverified from its error)
        found = unreachable.diagnose(exc, args)
        if found is None:
            raise
        return found.report(as_json=getattr(args, "json", False))
    return code


if __name__ == "__main__":
    sys.exit(main())
