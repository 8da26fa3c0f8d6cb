"""A command that cannot reach Redis or the database says so in one line, not a traceback.

`main()` catches the connection errors of every subcommand here, once: one line on stderr that
names what could not be reached, where, and what to do; exit `EXIT_UNREACHABLE` (3, beside 1 =
drift or failure and 2 = refused or a usage error); with `--json`, an error object on stdout
as the last line, so the output stays parseable. A SQLite file that can't be opened or is not
a database counts as a database that can't be reached; a database without the schema (never
migrated: a table missing) is `database_not_set_up`, also exit 3, and says to run
`inventory migrate`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from engine.settings import Settings

EXIT_UNREACHABLE = 3


# What the CLI catches; `diagnose` then tells a failure to connect from other errors. Only the
# errors of the clients this process has imported: an error of a client never imported cannot
# have been raised, and importing SQLAlchemy or psycopg just to ask would cost a command that
# used only Redis a third of a second.
def redis_errors() -> tuple[type[BaseException], ...]:
    if "redis" not in sys.modules:
        return ()
    import redis.exceptions

    return (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


def database_errors() -> tuple[type[BaseException], ...]:
    # DatabaseError, not only OperationalError: SQLite's "file is not a database" is one, and
    # so is PostgreSQL's undefined table (a ProgrammingError)
    found: tuple[type[BaseException], ...] = ()
    if "sqlalchemy" in sys.modules:
        import sqlalchemy.exc

        found += (sqlalchemy.exc.DatabaseError,)
    if "psycopg" in sys.modules:
        import psycopg

        found += (psycopg.DatabaseError,)
    return found


def connection_errors() -> tuple[type[BaseException], ...]:
    """Redis' ConnectionError and TimeoutError, SQLAlchemy's and psycopg's DatabaseError:
    those of them this process has imported."""
    return redis_errors() + database_errors()


# psycopg's (libpq's) words for a connection that was never made
_NOT_CONNECTED = ("connection failed", "connection to server", "could not connect")
# where the client says it tried, which beats the settings (the benchmark has stores of its own)
_REDIS_AT = re.compile(r"connecting to (\S+:\d+)")
_DATABASE_AT = re.compile(r'server at "([^"]+)"(?: \([^)]*\))?, port (\d+)')
# a database without the schema: SQLite's and PostgreSQL's words for a missing table
_NO_TABLE = re.compile(r'no such table: (\w+)|relation "(\w+)" does not exist')
_SQLITE_NOT_A_DATABASE = "file is not a database"


class Failure:
    """What a command reports in one line (and an error object with --json), exit 3."""

    code: str
    # True when waiting would not help (a SQLite file, a schema missing): `inventory drain`
    # then stops at once instead of retrying as for a server that is down for a moment
    lasting: bool

    @property
    def message(self) -> str:
        raise NotImplementedError

    def report(self, as_json: bool) -> int:
        print(f"inventory: {self.message}", file=sys.stderr, flush=True)
        if as_json:
            print(json.dumps({"error": {"code": self.code, "message": self.message}}))
        return EXIT_UNREACHABLE


@dataclass(frozen=True)
class Unreachable(Failure):
    code: str  # redis_unreachable | database_unreachable
    what: str  # Redis | the database
    where: str  # host:port, a socket or a file
    reason: str  # e.g. connection refused
    advice: str
    lasting: bool = False

    @property
    def message(self) -> str:
        return f"cannot reach {self.what} at {self.where} ({self.reason}): {self.advice}"


@dataclass(frozen=True)
class NotSetUp(Failure):
    """The database answers but has not the schema (never migrated, or a wrong database)."""

    where: str
    table: str
    code: str = "database_not_set_up"
    lasting: bool = True

    @property
    def message(self) -> str:
        return (
            f"the database at {self.where} is not set up (no table {self.table}): "
            "run `inventory migrate`, or set DATABASE_URL to the inventory's database"
        )


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    found: BaseException | None = exc
    while found is not None and id(found) not in seen:
        seen.add(id(found))
        yield found
        found = found.__cause__ or found.__context__


def _settings() -> Settings:
    from engine.settings import Settings

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
    import redis.exceptions

    if isinstance(exc, redis.exceptions.TimeoutError):
        reason = "timed out"
    elif errno is not None and errno > 0:  # the socket's own words: "connection refused"
        reason = _reason(os.strerror(errno))
    else:
        reason = _reason(str(exc))
    advice = "start it with scripts/serve.sh or set REDIS_URL"
    return Unreachable("redis_unreachable", "Redis", where, reason, advice)


def _database(exc: BaseException, args: argparse.Namespace) -> Failure | None:
    from sqlalchemy.engine import make_url

    text = str(getattr(exc, "orig", None) or exc)
    url = make_url(getattr(args, "database_url", None) or _settings().database_url_or_default)
    sqlite = url.get_backend_name() == "sqlite"
    file = os.fspath(url.database or ":memory:")
    said = _DATABASE_AT.search(text)
    server = f"{said[1]}:{said[2]}" if said else f"{url.host or 'localhost'}:{url.port or 5432}"
    missing = _NO_TABLE.search(text)
    if missing:
        return NotSetUp(file if sqlite else server, missing[1] or missing[2])
    if sqlite and _SQLITE_NOT_A_DATABASE in text:
        advice = "set DATABASE_URL to the inventory's database"
        return Unreachable(
            "database_unreachable", "the database", file, "not a database", advice, lasting=True
        )
    if "unable to open database file" in text:
        advice = "check that its folder exists and is writable, or set DATABASE_URL"
        return Unreachable(
            "database_unreachable", "the database", file, "cannot open", advice, lasting=True
        )
    if not any(words in text for words in _NOT_CONNECTED):
        return None  # connected, then failed: not a question of reaching it
    where = server
    advice = "start PostgreSQL or set DATABASE_URL"
    return Unreachable("database_unreachable", "the database", where, _reason(text), advice)


def diagnose(exc: BaseException, args: argparse.Namespace) -> Failure | None:
    """What `exc` (or an error it came from) could not reach, if it is a failure to connect,
    or which table a database not set up lacks."""
    redis_found, database_found = redis_errors(), database_errors()
    for found in _chain(exc):
        if isinstance(found, redis_found):
            return _redis(found, args)
        if isinstance(found, database_found):
            return _database(found, args)
    return None


def check_redis(url: str) -> None:
    """Raise redis' ConnectionError now if Redis is not there (for a command that would
    otherwise fail later, inside a server that logs a traceback)."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=5)
    try:
        client.ping()
    finally:
        client.close()
