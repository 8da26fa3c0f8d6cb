"""`inventory reconcile` and `inventory rebuild`: proving Redis and the database agree,
repairing drift, and restoring Redis from the database after a loss."""

from __future__ import annotations

import argparse
import dataclasses
import json
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the clients and rich are imported by the command that runs, not here
    import redis
    from rich.console import Console
    from sqlalchemy import Engine

    from engine.settings import Settings
    from persistence.reconcile import Pair, Report


@cache
def console() -> Console:
    """rich's console on stderr, made on first use."""
    from rich.console import Console

    return Console(stderr=True)


def _clients(
    args: argparse.Namespace, *, database_first: bool = False
) -> tuple[redis.Redis, Engine, Settings]:
    """Redis (one server or a cluster), the database and the settings, PARTITIONS checked
    against the data's; `database_first`: the database is reached before Redis (reconcile
    reads it first, and so names it first when neither answers)."""
    from engine import layout
    from engine.connection import connect_sync, resolve
    from engine.settings import Settings
    from persistence.db import database_engine

    settings = Settings.from_env()
    if args.redis_url:
        settings = dataclasses.replace(settings, redis_url=args.redis_url)
    if args.database_url:
        settings = dataclasses.replace(settings, database_url=args.database_url)
    settings = resolve(settings, warn=False)  # one server or a cluster
    db = database_engine(settings)
    if database_first:
        with db.connect():
            pass
    client = connect_sync(settings)
    layout.check_sync(client, settings.partitions)
    return client, db, settings


def _ar(pair: Pair | None) -> str:
    return "-" if pair is None else f"{pair[0]} / {pair[1]}"


def _print_report(report: Report) -> None:
    from rich.table import Table

    rows = [r for r in report.rows if r.drift]
    if rows:
        table = Table(
            "p", "product", "warehouse", "redis a / r", "live r", "database a / r",
            "expected a / r", "ledger a / r", "pending", "drift", title="stock drift",
        )  # fmt: skip
        for r in rows:
            table.add_row(
                str(r.partition), r.product, r.warehouse, _ar(r.redis), str(r.live_reserved),
                _ar(r.database), _ar(r.expected), _ar(r.ledger), str(r.pending),
                ", ".join(r.drift),
            )  # fmt: skip
        console().print(table)
    others = [d for d in report.drift if d.product is None]
    if others:
        table = Table("p", "kind", "record", "redis", "database", "right", "fix", title="records")
        for d in others:
            table.add_row(
                str(d.partition), d.kind, d.record or "-", str(d.redis), str(d.database),
                d.right, d.repair,
            )  # fmt: skip
        console().print(table)
    if report.repairs:
        table = Table("side", "p", "kind", "what", title="repairs")
        for fix in report.repairs:
            what = {k: v for k, v in fix.items() if k not in ("side", "partition", "kind")}
            table.add_row(fix["side"], str(fix["partition"]), fix["kind"], json.dumps(what))
        console().print(table)
    if report.conflicts:
        table = Table("p", "product", "warehouse", "redis a / r", "to roll back a / r",
                      title="not rolled back: below zero")  # fmt: skip
        for c in report.conflicts:
            table.add_row(
                str(c["partition"]), c["product"], c["warehouse"],
                f"{c['available']} / {c['reserved']}",
                f"{c['offset_available']} / {c['offset_reserved']}",
            )  # fmt: skip
        console().print(table)
        console().print(
            "[red]these units were promised twice while Redis disagreed with the record: "
            "release or cancel what must give them back, then run reconcile --fix again[/red]"
        )
    table = Table(
        "p", "checkpoint", "backlog", "oldest pending", "live reservations",
        "dead letters (stream / unresolved)", "redis", title="partitions",
    )  # fmt: skip
    for p in report.partitions:
        age = "-" if p.oldest_pending_age_ms is None else f"{p.oldest_pending_age_ms} ms"
        dead = f"{p.dead_letters_redis} / {p.dead_letters_unresolved}"
        where = "behind the database" if p.behind else "ok"
        if p.drain_paused:
            where += ", drain paused"
        table.add_row(
            str(p.partition), p.checkpoint, str(p.backlog), age, str(p.live_reservations), dead,
            where,
        )  # fmt: skip
    console().print(table)
    if report.found is not None:
        console().print(f"found {len(report.found)} drift(s), made {len(report.repairs)} repair(s)")
    if any(d.kind == "redis_lost_data" for d in report.drift):
        console().print("[red]Redis lost its data: restore it with `inventory rebuild`[/red]")
    behind = [d.partition for d in report.drift if d.kind == "redis_behind"]
    if behind:
        console().print(
            f"[red]Redis is behind the database on partition(s) {', '.join(map(str, behind))}: "
            "it came back from an older copy and lacks changes the database holds (its drain "
            "is paused). Run `inventory reconcile --fix` to restore them from the "
            "database.[/red]"
        )
    if any(p.dead_letters_unresolved for p in report.partitions):
        console().print(
            "[yellow]unresolved dead letters: the record is incomplete, so Redis is left "
            "as it is; replay or resolve them (`inventory dead-letters`) first[/yellow]"
        )
    if report.ok:
        console().print("[green]no drift: Redis and the database agree[/green]")
    else:
        unresolved = sum(p.dead_letters_unresolved for p in report.partitions)
        console().print(
            f"[red]{len(report.drift)} drift(s), {unresolved} unresolved dead letter(s)[/red]"
        )


def cmd_reconcile(args: argparse.Namespace) -> int:
    from persistence.reconcile import reconcile

    client, db, settings = _clients(args, database_first=True)
    try:
        report = reconcile(client, db, settings, fix=args.fix)
    finally:
        client.close()
        db.dispose()
    if args.json:
        print(json.dumps(report.to_json(), sort_keys=True, default=str))
    else:
        _print_report(report)
    return 0 if report.ok else 1


def cmd_rebuild(args: argparse.Namespace) -> int:
    from rich.table import Table

    from persistence.rebuild import RebuildRefused, rebuild

    client, db, settings = _clients(args)
    try:
        result = rebuild(client, db, settings, force=args.force)
    except RebuildRefused as exc:
        console().print(f"[red]refused:[/red] {exc}")
        if args.json:
            print(json.dumps({"ok": False, "refused": str(exc)}, sort_keys=True))
        return 2
    finally:
        client.close()
        db.dispose()
    out: dict[str, Any] = {"ok": not result.problems, **dataclasses.asdict(result)}
    if args.json:
        print(json.dumps(out, sort_keys=True))
    else:
        table = Table(*result.partitions[0].keys(), title="restored from the database")
        for counts in result.partitions:
            table.add_row(*(str(v) for v in counts.values()))
        console().print(table)
        if result.dead_letters:
            console().print(
                f"[yellow]{result.dead_letters} unresolved dead letter(s): events the "
                "database lacks, so the rebuilt Redis lacks them too[/yellow]"
            )
        for problem in result.problems:
            console().print(f"[red]{problem}[/red]")
        console().print("now run `inventory reconcile`")
    return 0 if not result.problems else 1


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    db = argparse.ArgumentParser(add_help=False)
    db.add_argument("--database-url", help="default: $DATABASE_URL, else SQLite in data/")

    p = sub.add_parser(
        "reconcile",
        parents=[common, db],
        help="compare Redis and the database; exit 1 on drift",
        description="Compare, per product x warehouse, the Redis counters, the live "
        "reservations, the database projection and the ledger (exact with a backlog); "
        "tell a Redis that is behind the database (redis_behind); report outbox backlog, "
        "dead letters and orphan records. Exit 0: no drift.",
    )
    p.add_argument(
        "--fix",
        action="store_true",
        help="repair towards the durable record (the ledger and the events still in the "
        "outbox): Redis is restored or rolled back to it, never the other way; an audit row "
        "each; then check again",
    )
    p.set_defaults(func=cmd_reconcile)

    p = sub.add_parser(
        "rebuild",
        parents=[common, db],
        help="restore Redis from the database after Redis lost its data",
        description="Restore products, counters, live reservations, live orders, the ended "
        "records still within their retention and the idempotency records from the database "
        "into an empty Redis, holding the drain locks. Events not drained when Redis lost its "
        "data are gone with it, unless its AOF had them. Exit 2: refused.",
    )
    p.add_argument("--force", action="store_true", help="replace what the partition holds")
    p.set_defaults(func=cmd_rebuild)
