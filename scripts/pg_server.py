"""A real PostgreSQL server for the tests and the benchmark: 127.0.0.1, a free port, a
throwaway cluster.

The server binaries are Debian's (/usr/lib/postgresql/<version>/bin, the newest version;
scripts/setup.sh installs them); PG_BINDIR overrides. initdb and postgres refuse to run as
root, so as root every server command runs as the `postgres` OS user (runuser), in a
temporary folder owned by it (in /dev/shm when there is room; PG_TEST_TMPDIR overrides).
For the tests the cluster trades durability for speed (fsync off), which is fine for data
that dies with the test session: start ~0.6 s (initdb included), stop or restart ~0.1 s, a
database copied from a template ~15 ms.

    server = PostgresServer()
    server.start()            # initdb (first time only), start, create the database
    server.url                # postgresql+psycopg://postgres@127.0.0.1:PORT/inventory
    server.stop()             # fast shutdown; start() brings it back on the same port
    server.close()            # stop and remove the cluster

`PostgresServer(durable=True)` (the benchmark) keeps PostgreSQL's production defaults — fsync,
synchronous commit, full page writes — and puts the cluster on disk, not in memory.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from scripts.redis_server import free_port

PG_LIB = Path("/usr/lib/postgresql")
SERVER_TOOLS = ("initdb", "pg_ctl", "postgres")
OS_USER = "postgres"
SUPERUSER = "postgres"
SHM_MIN_FREE = 1 << 30


def _version_key(name: str) -> tuple[int, ...] | None:
    if not re.fullmatch(r"\d+(\.\d+)*", name):
        return None
    return tuple(int(part) for part in name.split("."))


def _has_tools(bindir: Path) -> bool:
    return all(os.access(bindir / tool, os.X_OK) for tool in SERVER_TOOLS)


def find_bindir() -> Path:
    """The folder of initdb, pg_ctl and postgres: $PG_BINDIR, else the newest
    /usr/lib/postgresql/<version>/bin, else wherever initdb is on PATH."""
    override = os.environ.get("PG_BINDIR")
    if override:
        if not _has_tools(Path(override)):
            raise RuntimeError(f"PG_BINDIR={override} lacks one of {', '.join(SERVER_TOOLS)}")
        return Path(override)
    found: list[tuple[tuple[int, ...], Path]] = []
    if PG_LIB.is_dir():
        for bindir in PG_LIB.glob("*/bin"):
            version = _version_key(bindir.parent.name)
            if version is not None and _has_tools(bindir):
                found.append((version, bindir))
    if found:
        return max(found)[1]
    initdb = shutil.which("initdb")
    if initdb is not None and _has_tools(Path(initdb).resolve().parent):
        return Path(initdb).resolve().parent
    raise RuntimeError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin: "
        "run scripts/setup.sh"
    )


def scratch_dir() -> str:
    """Where the throwaway cluster lives: $PG_TEST_TMPDIR, else /dev/shm (memory: initdb and
    CREATE DATABASE copy hundreds of files, several times faster than on a virtual disk) when
    it has room, else the usual temporary folder."""
    override = os.environ.get("PG_TEST_TMPDIR")
    if override:
        return override
    shm = "/dev/shm"
    try:
        if os.access(shm, os.W_OK | os.X_OK) and shutil.disk_usage(shm).free >= SHM_MIN_FREE:
            return shm
    except OSError:
        pass
    return tempfile.gettempdir()


class PostgresError(RuntimeError):
    pass


class PostgresServer:
    def __init__(
        self, *, database: str = "inventory", bindir: Path | None = None, durable: bool = False
    ) -> None:
        self.durable = durable
        self.bindir = bindir if bindir is not None else find_bindir()
        self.database = database
        self.as_root = os.geteuid() == 0
        if self.as_root:
            try:
                owner = pwd.getpwnam(OS_USER)
            except KeyError:
                raise RuntimeError(
                    f"running as root and there is no {OS_USER!r} OS user to run PostgreSQL: "
                    "run scripts/setup.sh (Debian's postgresql package creates it)"
                ) from None
            if shutil.which("runuser") is None:
                raise RuntimeError("running as root and runuser (util-linux) is missing")
        # Not under pytest's basetemp: its folders are 0700 root, which postgres can't enter.
        self.base = Path(
            tempfile.mkdtemp(
                prefix="ire-pg-", dir=tempfile.gettempdir() if durable else scratch_dir()
            )
        )
        if self.as_root:
            os.chown(self.base, owner.pw_uid, owner.pw_gid)
        self.data_dir = self.base / "data"  # the cluster; also the folder of the Unix socket
        self.log_file = self.base / "postgres.log"
        self.port = free_port()
        self._initialised = False
        self._created = False
        # Libpq's PG* variables (PGDATA, PGPORT, PGHOST, PGOPTIONS, ...) must not steer these
        # commands; everything is given on the command line.
        self._env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        self._env["LC_ALL"] = "C"

    # --- addresses -----------------------------------------------------------------------

    def url_for(self, database: str) -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    @property
    def url(self) -> str:
        return self.url_for(self.database)

    @contextmanager
    def admin(self) -> Iterator[psycopg.Connection[TupleRow]]:
        """An autocommit connection to the `postgres` maintenance database."""
        with psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=SUPERUSER,
            dbname="postgres",
            autocommit=True,
            connect_timeout=10,
        ) as conn:
            yield conn

    def create_database(self, name: str, *, template: str | None = None) -> None:
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            query = sql.SQL("{} TEMPLATE {}").format(query, sql.Identifier(template))
        with self.admin() as conn:
            conn.execute(query)

    def drop_database(self, name: str) -> None:
        """Drops it even while clients are still connected (they are disconnected)."""
        with self.admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def make_template(self, name: str) -> None:
        """Freeze a database as a template: CREATE DATABASE ... TEMPLATE fails while anyone is
        connected to the template, so from now on nobody may connect."""
        with self.admin() as conn:
            conn.execute(
                sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false").format(
                    sql.Identifier(name)
                )
            )

    # --- life cycle ----------------------------------------------------------------------

    def _postmaster_pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (FileNotFoundError, ValueError):
            return None

    @staticmethod
    def _process_state(pid: int) -> str | None:
        """None: no such process; "Z": a zombie; else the state letter ("?" without /proc)."""
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:  # alive, owned by someone else
            pass
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return None
        except OSError:
            return "?"
        fields = stat.rpartition(")")[2].split()
        return fields[0] if fields else "?"

    @property
    def running(self) -> bool:
        """Whether the postmaster of this cluster is alive (from its postmaster.pid)."""
        pid = self._postmaster_pid()
        return pid is not None and self._process_state(pid) not in (None, "Z")

    def start(self) -> None:
        """Start the server (initdb and database on the first call); a no-op if it runs."""
        if not self._initialised:
            self._initdb()
        if not self.running:
            self._wait_until_reaped()
            self._pg_ctl_start(first=not self._created)
        if not self._created:
            self.create_database(self.database)
            self._created = True

    def _wait_until_reaped(self, timeout: float = 30) -> None:
        """pg_ctl leaves the postmaster to init. One that was killed stays a zombie until init
        reaps it (about a second on some VMs), and while its PID exists a new postmaster
        refuses the data folder ("lock file postmaster.pid already exists")."""
        pid = self._postmaster_pid()
        deadline = time.monotonic() + timeout
        while pid is not None and self._process_state(pid) == "Z":
            if time.monotonic() > deadline:
                raise PostgresError(f"the killed postmaster {pid} was never reaped")
            time.sleep(0.05)

    def stop(self) -> None:
        """Fast shutdown (open sessions are disconnected); a no-op if it is not running."""
        if self._initialised and self.running:
            self._run(self._tool("pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "fast", "-w")

    def close(self) -> None:
        """Stop the server and remove the cluster."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- internals -----------------------------------------------------------------------

    def _tool(self, name: str) -> str:
        return str(self.bindir / name)

    def _run(self, *argv: str, timeout: float = 60) -> str:
        command = ["runuser", "-u", OS_USER, "--", *argv] if self.as_root else list(argv)
        result = subprocess.run(
            command,
            cwd=self.base,  # a folder the postgres user can enter
            env=self._env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise PostgresError(
                f"{' '.join(argv)} failed (exit {result.returncode}):\n"
                f"{result.stdout}{result.stderr}{self._log_tail()}"
            )
        return result.stdout

    def _log_tail(self) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return ""
        return f"\n--- {self.log_file} ---\n{text[-3000:]}"

    def _initdb(self) -> None:
        self._run(
            self._tool("initdb"),
            "-D", str(self.data_dir),
            "-U", SUPERUSER,
            "--auth=trust",
            "-E", "UTF8",
            "--no-locale",  # C collation: no dependency on the machine's locales
            *([] if self.durable else ["--no-sync"]),  # a throwaway cluster needs no fsync
            "--no-instructions",
        )  # fmt: skip
        self._initialised = True

    def _pg_ctl_start(self, *, first: bool) -> None:
        attempts = 5 if first else 1
        for attempt in range(attempts):
            options = " ".join(
                [
                    "-c listen_addresses=127.0.0.1",
                    f"-p {self.port}",
                    f"-k {self.data_dir}",
                    *(
                        []
                        if self.durable
                        else [
                            "-c fsync=off",
                            "-c synchronous_commit=off",
                            "-c full_page_writes=off",
                        ]
                    ),
                    # room for worker processes and their pools (100 by default)
                    "-c max_connections=200",
                ]
            )
            try:
                self._run(
                    self._tool("pg_ctl"),
                    "-D", str(self.data_dir),
                    "-o", options,
                    "-l", str(self.log_file),
                    "-w", "-t", "60",
                    "start",
                )  # fmt: skip
                return
            except PostgresError as error:
                # The free port was taken between free_port() and the bind: try another (only
                # before anyone has been given a URL with this port).
                if attempt + 1 < attempts and "could not bind" in str(error):
                    self.port = free_port()
                    time.sleep(0.05)
                    continue
                raise
