"""`inventory serve`: the HTTP API on uvicorn."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.settings import Settings

LOG_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(message)s"},
        "default": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
    },
    "handlers": {
        "access": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "stream": "ext://sys.stdout",
        },
        "default": {
            "class": "logging.StreamHandler",
            "formatter": "default",
            "stream": "ext://sys.stderr",
        },
    },
    "loggers": {
        # one JSON line per request, with its request id (web/middleware.py)
        "inventory.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
        "inventory": {"handlers": ["default"], "level": "INFO", "propagate": False},
        "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
        "uvicorn.error": {"level": "INFO"},
    },
}


def is_loopback(host: str) -> bool:
    """Whether `host` is a loopback address (127.0.0.0/8, ::1) or the name localhost."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False  # another name may resolve to anything
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def dev_key_refusal(settings: Settings, host: str) -> str | None:
    """Why the API may not listen on `host` with these settings, if it may not.

    The development JWT key is public (it is in the source): anyone who reaches the API could
    sign a staff token with it. So it is used only while the API listens on a loopback
    address; on any other, JWT_KEYS must be set. (web/auth.py's Keys adds the older rule: never
    with PostgreSQL.) Checked before uvicorn binds: with --workers the socket is bound before
    any worker builds the app."""
    if settings.jwt_keys or is_loopback(host):
        return None
    return (
        f"JWT_KEYS is not set, and the development key is only for an API listening on a "
        f"loopback address (127.0.0.1, ::1, localhost), not on {host}. Set JWT_KEYS to "
        'kid:secret (a secret of at least 32 bytes), e.g. JWT_KEYS="main:$(openssl rand -hex 32)"'
    )


def _refusals(settings: Settings) -> None:
    """Raise the ValueError the app's start-up would: JWT_KEYS (web/auth.py Keys), no
    QUEUE_REDIS_URL on a cluster (persistence/jobs.py), PARTITIONS against the count the data
    is laid out in (engine/layout.py)."""
    from engine import layout
    from engine.connection import connect_sync, resolve
    from persistence import jobs
    from web.auth import Keys

    Keys(settings)
    settings = resolve(settings, warn=False)
    jobs.queue_connection(settings).close()
    client = connect_sync(settings)
    try:
        layout.check_sync(client, settings.partitions)
    finally:
        client.close()


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from engine.settings import Settings
    from scripts.cli import unreachable
    from web.http_protocol import CorkedHttpToolsProtocol

    if args.redis_url:
        os.environ["REDIS_URL"] = args.redis_url
    if args.database_url:
        os.environ["DATABASE_URL"] = args.database_url
    settings = Settings.from_env()
    refusal = dev_key_refusal(settings, args.host)
    if refusal is not None:
        print(f"inventory serve: refusing to start: {refusal}", file=sys.stderr, flush=True)
        return 2
    # The API cannot start without Redis (it loads the scripts): say so here, in one line,
    # rather than in the traceback of a failed start-up inside uvicorn.
    unreachable.check_redis(settings.redis_url)
    # What the app's start-up would refuse, refused here the same way as by every other
    # command (exit 2, one line), before saying it serves: a bad JWT_KEYS, a PARTITIONS other
    # than the data's.
    _refusals(settings)
    if not args.access_log:
        LOG_CONFIG["loggers"]["inventory.access"]["level"] = "WARNING"
    print(
        f"inventory: serving the API on http://{args.host}:{args.port}/api/ "
        f"({args.workers} worker{'s' if args.workers > 1 else ''})",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(
        "scripts.bench.app:served_bench_app" if args.bench else "web.app:served_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        access_log=False,
        log_config=LOG_CONFIG,
        loop="uvloop",
        http=CorkedHttpToolsProtocol,  # httptools, a response's writes in one send
        timeout_graceful_shutdown=10,
    )
    logging.getLogger("inventory").info("stopped")
    return 0


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("serve", parents=[common], help="run the HTTP API")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--database-url", help="default: $DATABASE_URL, else SQLite in data/")
    p.add_argument(
        "--no-access-log", dest="access_log", action="store_false", help="no JSON access lines"
    )
    p.add_argument(
        "--bench",
        action="store_true",
        help="add the benchmark's endpoints (row-lock baseline, bare reserve); never in production",
    )
    p.set_defaults(func=cmd_serve)
