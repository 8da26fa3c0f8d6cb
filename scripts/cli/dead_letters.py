"""`inventory dead-letters`: list the events the drain could not apply, replay them once the
cause is fixed, or close one by hand (persistence.dead_letters)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the clients and rich are imported by the command that runs, not here
    import redis
    from rich.console import Console
    from sqlalchemy import Engine

    from engine.settings import Settings
    from persistence import dead_letters


@cache
def console() -> Console:
    """rich's console on stderr, made on first use."""
    from rich.console import Console

    return Console(stderr=True)


REF_HELP = (
    "a dead letter's id (the number `inventory dead-letters` shows) or its event id "
    "(p<partition>-<stream id>)"
)


def _settings(args: argparse.Namespace) -> Settings:
    from engine.settings import Settings

    settings = Settings.from_env()
    if getattr(args, "redis_url", None):
        settings = dataclasses.replace(settings, redis_url=args.redis_url)
    if getattr(args, "database_url", None):
        settings = dataclasses.replace(settings, database_url=args.database_url)
    return settings


def _clients(args: argparse.Namespace) -> tuple[redis.Redis, Engine]:
    from engine.connection import connect_sync, resolve
    from persistence.db import database_engine

    settings = resolve(_settings(args), warn=False)  # one server or a cluster
    return connect_sync(settings), database_engine(settings)


def _actor(args: argparse.Namespace) -> str:
    actor: str = args.actor or os.environ.get("USER") or "operator"
    if not 1 <= len(actor) <= 150 or actor != actor.strip() or not actor.isprintable():
        raise ValueError("--actor is 1 to 150 printable characters, no surrounding spaces")
    return actor


def _print_json(args: argparse.Namespace, result: dict[str, Any]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(result, sort_keys=True, default=str))


def _print_outcomes(outcomes: list[dead_letters.Outcome]) -> None:
    from rich.table import Table

    table = Table("id", "event id", "outcome", "error", title="dead letters")
    for o in outcomes:
        style = "red" if not o.resolved else "green"
        table.add_row(str(o.id), o.event_id, f"[{style}]{o.outcome}[/{style}]", o.error or "")
    console().print(table)


def cmd_list(args: argparse.Namespace) -> int:
    from rich.table import Table

    from persistence import dead_letters
    from persistence.db import database_engine

    db = database_engine(_settings(args))  # the list is the database's alone
    try:
        letters = dead_letters.listing(db, include_resolved=args.include_resolved)
    finally:
        db.dispose()
    unresolved = sum(1 for d in letters if d.resolved_at is None)
    if getattr(args, "json", False):
        listed = [d.to_json() for d in letters]
        _print_json(args, {"dead_letters": listed, "unresolved": unresolved})
    else:
        table = Table(
            "id", "event id", "type", "at (UTC)", "error", "resolved", title="dead letters"
        )
        table.columns[1].no_wrap = True
        for d in letters:
            resolved = "-" if d.resolved_at is None else f"{d.resolved_by}: {d.resolution}"
            error = d.error.strip().splitlines()[0][:160] if d.error.strip() else ""
            at = d.at.strftime("%Y-%m-%d %H:%M:%S")
            table.add_row(str(d.id), d.event_id, d.type, at, error, resolved)
        console().print(table)
        console().print(f"{unresolved} unresolved")
    return 1 if unresolved else 0


def _unknown(args: argparse.Namespace, exc: dead_letters.UnknownDeadLetter) -> int:
    console().print(f"[red]error:[/red] {exc}")
    _print_json(args, {"error": "unknown_dead_letter", "message": str(exc)})
    return 2


def cmd_replay(args: argparse.Namespace) -> int:
    from persistence import dead_letters

    if bool(args.refs) == args.all:
        raise ValueError("replay takes the dead letters' ids or --all, one of the two")
    actor = _actor(args)
    client, db = _clients(args)
    try:
        if args.all:
            letters = dead_letters.listing(db)
        else:
            letters = [dead_letters.find(db, ref) for ref in args.refs]
        outcomes = dead_letters.replay(client, db, letters, actor)
    except dead_letters.UnknownDeadLetter as exc:
        return _unknown(args, exc)
    finally:
        client.close()
        db.dispose()
    failed = sum(1 for o in outcomes if not o.resolved)
    if getattr(args, "json", False):
        _print_json(args, {"results": [o.to_json() for o in outcomes], "failed": failed})
    elif outcomes:
        _print_outcomes(outcomes)
    else:
        console().print("no unresolved dead letters: nothing to replay")
    return 1 if failed else 0


def cmd_resolve(args: argparse.Namespace) -> int:
    from persistence import dead_letters

    note: str = args.note.strip()
    if not note:
        raise ValueError("--note must say why the dead letter is closed")
    actor = _actor(args)
    client, db = _clients(args)
    try:
        letter = dead_letters.find(db, args.ref)
        outcome = dead_letters.resolve(client, db, letter, actor, note)
    except dead_letters.UnknownDeadLetter as exc:
        return _unknown(args, exc)
    finally:
        client.close()
        db.dispose()
    if getattr(args, "json", False):
        _print_json(args, {"results": [outcome.to_json()], "failed": 0})
    else:
        _print_outcomes([outcome])
    return 0


def _options(*, inherited: bool) -> argparse.ArgumentParser:
    """The shared options. An action's copy leaves an option unset unless given there, so that
    `inventory dead-letters --json replay 5` keeps the --json given before the action."""
    unset: dict[str, Any] = {"default": argparse.SUPPRESS} if inherited else {}
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--redis-url", help="Redis to use (default: $REDIS_URL, else the embedded one)", **unset
    )
    p.add_argument("--database-url", help="default: $DATABASE_URL, else SQLite in data/", **unset)
    p.add_argument(
        "--json", action="store_true", help="print the result as JSON (last line)", **unset
    )
    return p


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "dead-letters",
        parents=[_options(inherited=False)],
        help="list, replay or resolve the events the drain could not apply",
        description="List the unresolved dead letters: events the drain could not apply "
        "because the database refused them (a transient error is retried, never "
        "dead-lettered). Exit 1 while any is unresolved.",
    )
    p.add_argument("--include-resolved", action="store_true", help="list resolved ones too")
    p.set_defaults(func=cmd_list)
    actions = p.add_subparsers(dest="action", metavar="{replay,resolve}")
    shared = _options(inherited=True)

    r = actions.add_parser(
        "replay",
        parents=[shared],
        help="apply dead letters again, exactly once",
        description="Apply each dead letter's event again through the drain's own path, one "
        "transaction each, in stream order. Already applied (its event id is in the audit "
        "log): marked resolved. Applied now: resolved as 'replayed'. Refused again: stays "
        "unresolved with the new error. An audit row for each. Exit 0: all resolved; 1: some "
        "failed; 2: an unknown id.",
    )
    r.add_argument("refs", nargs="*", metavar="ID", help=REF_HELP)
    r.add_argument("--all", action="store_true", help="every unresolved dead letter")
    r.add_argument("--actor", help="who replays, for the audit (default: $USER, else operator)")
    r.set_defaults(func=cmd_replay)

    r = actions.add_parser(
        "resolve",
        parents=[shared],
        help="close a dead letter by hand, without applying it",
        description="Mark a dead letter resolved without applying its event, with a note "
        "saying why; an audit row records it. Exit 0: resolved; 2: an unknown id.",
    )
    r.add_argument("ref", metavar="ID", help=REF_HELP)
    r.add_argument("--note", required=True, help="why it is closed (kept as its resolution)")
    r.add_argument("--actor", help="who resolves, for the audit (default: $USER, else operator)")
    r.set_defaults(func=cmd_resolve)
