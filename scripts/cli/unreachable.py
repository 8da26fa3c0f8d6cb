"""A command that cannot reach Redis or the database says so in one line, not a traceback.

`main()` catches the connection errors of every subcommand here, once: one line on stderr that
names what could not be reached, where, and what to do; exit `EXIT_UNREACHABLE` (3, beside 1 =
drift or failure and 2 = refused or a usage error); with `--json`, an error object on stdout
as the last line, so the output stays parseable.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import psycopg
import redis.exceptions
import sqlalchemy.exc
from sqlalchemy.engine import make_url

from engine.settings import Settings

EXIT_UNREACHABLE = 3

# What the CLI catches; `diagnose` then tells a failure to connect from other errors.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    sqlalchemy.exc.OperationalError,
    psycopg.OperationalError,
)

# psycopg's (libpq's) words for a connection that was never made
_NOT_CONNECTED = ("connection failed", "connection to server", "could not connect")
# where the client says it tried, which beats the settings (the benchmark has stores of its own)
_REDIS_AT = re.compile(r"connecting to (\S+:\d+)")
_DATABASE_AT = re.compile(r'server at "([^"]+)"(?: \([^)]*\))?, port (\d+)')


@dataclass(frozen=True)
class Unreachable:
    code: str  # redis_unreachable | database_unreachable
    what: str  # Redis | the database
    where: str  # host:port, a socket or a file
    reason: str  # e.g. connection refused
    advice: str

    @property
    def message(self) -> str:
        return f"cannot reach {self.what} at {self.where} ({self.reason}): {self.advice}"

    def report(self, as_json: bool) -> int:
        print(f"inventory: {self.message}", file=sys.stderr, flush=True)
        if as_json:
            print(json.dumps({"error": {"code": self.code, "message": self.message}}))
        return EXIT_UNREACHABLE


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    found: BaseException | None = exc
    while found is not None and id(found) not in seen:
        seen.add(id(found))
        yield found
        found = found.__cause__ or found.__context__


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ValueError:  # a bad setting elsewhere: the defaults still name the stores
        return Settings()


def _reason(text: str) -> str:
    """`Connection refused` from 'Error 111 connecting to h:p. Connection refused.' or from
    libpq's 'connection to server at "h", port p failed: Connection refused'."""
    line = text.strip().splitlines()[0] if text.strip() else "no answer"
    if "failed: " in line:
        line = line.rsplit("failed: ", 1)[1]
    elif line.startswith("Error ") and ". " in line:
        line = line.split(". ", 1)[1]
    line = line.strip().rstrip(".")
    return line[:1].lower() + line[1:]


def _redis(exc: BaseException, args: argparse.Namespace) -> Unreachable:
    url = getattr(args, "redis_url", None) or _settings().redis_url
    parts = urlsplit(url)
    said = _REDIS_AT.search(str(exc))
    if said:
        where = said.group(1)
    elif parts.scheme == "unix":
        where = parts.path
    else:
        where = f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}"
    errno = next((e.errno for e in _chain(exc) if isinstance(e, OSError) and e.errno), None)
    if isinstance(exc, redis.exceptions.TimeoutError):
        reason = "timed out"
    elif errno is not None and errno > 0:  # the socket's own words: "connection refused"
        reason = _reason(os.strerror(errno))
    else:
        reason = _reason(str(exc))
    advice = "start it with scripts/serve.sh or set REDIS_URL"
    return Unreachable("redis_unreachable", "Redis", where, reason, advice)


def _database(exc: BaseException, args: argparse.Namespace) -> Unreachable | None:
    text = str(getattr(exc, "orig", None) or exc)
    sqlite = "unable to open database file" in text
    if not sqlite and not any(words in text for words in _NOT_CONNECTED):
        return None  # connected, then failed: not a question of reaching it
    url = make_url(getattr(args, "database_url", None) or _settings().database_url_or_default)
    if url.get_backend_name() == "sqlite":
        where = os.fspath(url.database or ":memory:")
        advice = "check that its folder exists and is writable, or set DATABASE_URL"
        return Unreachable("database_unreachable", "the database", where, "cannot open", advice)
    said = _DATABASE_AT.search(text)
    where = f"{said[1]}:{said[2]}" if said else f"{url.host or 'localhost'}:{url.port or 5432}"
    advice = "start PostgreSQL or set DATABASE_URL"
    return Unreachable("database_unreachable", "the database", where, _reason(text), advice)


def diagnose(exc: BaseException, args: argparse.Namespace) -> Unreachable | None:
    """What `exc` (or an error it came from) could not reach, if it is a failure to connect."""
    for found in _chain(exc):
        if isinstance(found, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
            return _redis(found, args)
        if isinstance(found, sqlalchemy.exc.OperationalError | psycopg.OperationalError):
            return _database(found, args)
    return None


def check_redis(url: str) -> None:
    """Raise redis' ConnectionError now if Redis is not there (for a command that would
    otherwise fail later, inside a server that logs a traceback)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=5)
    try:
        client.ping()
    finally:
        client.close()
