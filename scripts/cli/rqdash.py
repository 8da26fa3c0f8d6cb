"""`inventory rq-dashboard`: RQ's own dashboard (the rq-dashboard package) for staff.

Never an open port: it binds to 127.0.0.1 only (reach it from elsewhere through an SSH tunnel,
`ssh -L 9181:127.0.0.1:9181 host`), and it refuses to start without RQ_DASHBOARD_USERNAME and
RQ_DASHBOARD_PASSWORD in the environment, which every request must then present (HTTP basic
auth, compared in constant time; rq-dashboard's own option compares with `!=`). Deleting jobs
and emptying registries is off unless `--allow-delete` (rq-dashboard's RQ_DASHBOARD_DISABLE_DELETE,
which refuses them on the server, not only in the page). Browsers send basic credentials with
cross-site requests too, so a request that changes something (every POST, and GET
/requeue/...) is refused when another site sent it.
"""

from __future__ import annotations

import argparse
import hmac
import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # Flask is imported when the dashboard starts, not with every command
    from flask import Flask, Request, Response

HOST = "127.0.0.1"
DEFAULT_PORT = 9181
MIN_PASSWORD = 12
REALM = 'Basic realm="inventory rq-dashboard", charset="UTF-8"'


def credentials(env: Mapping[str, str]) -> tuple[str, str]:
    """The username and password from the environment; ValueError if they are not set."""
    username = env.get("RQ_DASHBOARD_USERNAME", "")
    password = env.get("RQ_DASHBOARD_PASSWORD", "")
    if not username or not password:
        raise ValueError(
            "rq-dashboard needs RQ_DASHBOARD_USERNAME and RQ_DASHBOARD_PASSWORD in the "
            "environment: it never runs without credentials"
        )
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"RQ_DASHBOARD_PASSWORD must be at least {MIN_PASSWORD} characters")
    return username, password


def _same(given: str | None, expected: str) -> bool:
    return hmac.compare_digest((given or "").encode(), expected.encode())


def _changes_something(req: Request) -> bool:
    return req.method not in ("GET", "HEAD", "OPTIONS") or req.path.startswith("/requeue/")


def _from_another_site(req: Request) -> bool:
    if req.headers.get("Sec-Fetch-Site") in ("cross-site", "same-site"):
        return True
    origin = req.headers.get("Origin")
    return origin is not None and origin.rstrip("/") != req.host_url.rstrip("/")


def make_app(redis_url: str, username: str, password: str, *, allow_delete: bool) -> Flask:
    """rq-dashboard's Flask app for `redis_url`, behind our checks."""
    from flask import Response, request
    from rq_dashboard.cli import make_flask_app  # type: ignore[import-untyped]  # no py.typed
    from rq_dashboard.web import setup_rq_connection  # type: ignore[import-untyped]

    # No username here: its basic auth would compare with `!=`; ours is below.
    app: Flask = make_flask_app(None, None, None, "")
    app.config["RQ_DASHBOARD_REDIS_URL"] = redis_url
    app.config["RQ_DASHBOARD_DISABLE_DELETE"] = not allow_delete
    setup_rq_connection(app)

    @app.before_request
    def staff_only() -> Response | None:
        auth = request.authorization
        good = (
            auth is not None
            and auth.type == "basic"
            # both compared, whatever the first gives: no timing tells which one was wrong
            and _same(auth.username, username) & _same(auth.password, password)
        )
        if not good:
            return Response("sign in\n", 401, {"WWW-Authenticate": REALM})
        if _changes_something(request) and _from_another_site(request):
            return Response("refused: sent by another site\n", 403)
        return None

    return app


def cmd_rq_dashboard(args: argparse.Namespace) -> int:
    from werkzeug.serving import make_server

    from engine.settings import Settings

    username, password = credentials(os.environ)
    settings = Settings.from_env()
    redis_url = args.redis_url or settings.queue_url  # RQ's queue: QUEUE_REDIS_URL if set
    # a dashboard of a Redis that is not there would serve "Connection Error" pages: exit 3
    # and one line instead, as every command does
    from scripts.cli import unreachable

    unreachable.check_redis(redis_url)
    app = make_app(redis_url, username, password, allow_delete=args.allow_delete)
    server = make_server(HOST, args.port, app, threaded=True)
    deleting = "on (--allow-delete)" if args.allow_delete else "off"
    print(
        f"rq-dashboard on http://{HOST}:{server.server_port}/ (user {username!r}; "
        f"deleting jobs {deleting}); Ctrl-C stops it",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "rq-dashboard",
        parents=[common],
        help="RQ's dashboard on 127.0.0.1, behind RQ_DASHBOARD_USERNAME/_PASSWORD",
    )
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="on 127.0.0.1 (0: any free)")
    p.add_argument(
        "--allow-delete",
        action="store_true",
        help="let the dashboard delete jobs and empty registries (off by default)",
    )
    p.set_defaults(func=cmd_rq_dashboard)
