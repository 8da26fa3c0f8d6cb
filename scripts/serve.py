"""`inventory serve`: the HTTP API on uvicorn."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

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


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    if args.redis_url:
        os.environ["REDIS_URL"] = args.redis_url
    if args.database_url:
        os.environ["DATABASE_URL"] = args.database_url
    if not args.access_log:
        LOG_CONFIG["loggers"]["inventory.access"]["level"] = "WARNING"
    print(
        f"inventory: serving the API on http://{args.host}:{args.port}/api/ "
        f"({args.workers} worker{'s' if args.workers > 1 else ''})",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(
        "web.bench:create_bench_app" if args.bench else "web.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        access_log=False,
        log_config=LOG_CONFIG,
        loop="uvloop",
        http="httptools",
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
