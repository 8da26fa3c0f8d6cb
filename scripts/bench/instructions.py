"""Redis's instructions per reservation, counted by valgrind's callgrind: the same count for the
same code and the same calls whether the machine is busy or quiet, so a change of a few percent
in the Lua shows (a reading of CPU time moves more than that from one run to the next on a
shared machine).

    python -m scripts.bench.instructions [--batch 16] [--reservations 1600] [--warm 640]
                                         [--idempotency] [--redis-arg=--name --redis-arg=value]
                                         [--reference --batch 1] [--settle [--settle-age MS]]
                                         [--sold-out]
                                         [--commit] [--orders] [--keep FILE]

A redis-server (scripts/redis.conf, the append-only file on, `everysec`) runs under callgrind
with counting off. One product gets a billion units; `--warm` reservations are made first (by
then a partition's hashes of what its customers hold are tables, as they are under load), then
counting is turned on (`callgrind_control`) for `--reservations` more, made as the engine makes
them: each alone (`--batch 1`: FCALL reserve) or `--batch` at a time (FCALL reserve_many), 50
calls to a pipeline, every reservation a buyer's of its own, with an idempotency key each with
`--idempotency`; or, with `--reference`, the cost bench's reference script (a reservation's
minimum work, each call alone: scripts/bench/reference.lua), the same number of times; or, with
`--settle`, the rate limiter's settles (lua/rate_limit_settle.lua, `--batch` buckets a call,
one request admitted each, `--settle-age` ms before: per reservation read per bucket settled,
as one a request). With
`--sold-out` the product (or the reference's counter) has no units: every call is refused for
stock, as most are in a sale once it has sold out, and each refusal is counted. With `--commit`
the `--reservations` are made before counting and their commits into pending orders are
counted, each alone (`--batch 1`) or coalesced as the engine sends concurrent ones (per
commit); with `--orders`
direct orders (place_order) are made and counted instead of reservations, alone or coalesced
as reservations are (per order). Prints one JSON
line: what redis-server executed while counting (reading the
calls, the functions, their commands, the append-only file), per reservation, leaving out
what Redis's timer does (`serverCron`, ~150k instructions a tick, ten ticks a second): it comes
with the clock, not the calls (reported apart as `timer_instructions`).

`--keep FILE` keeps callgrind's output for `callgrind_annotate` (a redis-server built from source,
first on PATH, names its Lua VM's functions; Debian's is stripped).

Needs valgrind (scripts/setup.sh installs it). Takes a few seconds: under callgrind Redis runs
some 50 times slower.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import redis

from engine import specs
from engine.coalesce import many
from engine.engine import Engine
from engine.keys import rate_limit_bucket
from engine.models import SYSTEM
from engine.scripts import Call, parse, prepare
from engine.settings import Settings
from scripts.bench import reference
from scripts.bench.inprocess import commit_call, order_call, reserve_call
from scripts.redis_server import RedisServer

PRODUCT = "1"
PIPELINE = 50  # calls to a pipeline
SETTLE_BUYERS = 1000  # the clients whose buckets `--settle` settles, in turn


def _totals(path: Path) -> int:
    """The instructions a callgrind output file counted (its 'totals:' line)."""
    found = re.search(r"^totals: (\d+)", path.read_text(), re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no totals in {path}")
    return int(found.group(1))


def _timer(path: Path) -> int:
    """The instructions counted inside Redis's timer (`serverCron`, with what it calls): work
    that comes with the clock (~150k a tick, ten ticks a second), not with the calls; a busy
    machine stretches the count over more ticks, so it is left out of the count."""
    annotated = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(path)],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    found = re.search(r"^\s*([\d,]+) .*:serverCron ", annotated, re.MULTILINE)
    return int(found.group(1).replace(",", "")) if found else 0


class Reservations:
    """The reservations, made through one client in pipelines."""

    def __init__(
        self,
        client: redis.Redis,
        settings: Settings,
        batch: int,
        key: bool,
        ref: bool = False,
        settles: bool = False,
        sold_out: bool = False,
        orders: bool = False,
        settle_age: int = 0,
    ) -> None:
        self.client, self.settings, self.batch, self.key = client, settings, batch, key
        self.settle_age = settle_age  # ms since each settled request was admitted
        self.made = 0
        self.sold_out = sold_out  # every call refused for stock (`--sold-out`)
        self.held: list[tuple[str, str]] = []  # (reservation id, owner) made, for `commit`
        self.orders = orders  # direct orders instead of reservations (`--orders`)
        self.settles = settles  # the rate limiter's settles instead (`settle`)
        # the reference script instead (each call alone): its SHA, and its stock's units
        self.ref = str(client.script_load(reference.SCRIPT.read_text())) if ref else ""
        if ref:
            client.hset(
                reference.keys("")[0],
                mapping=dict.fromkeys(reference.fields(PRODUCT), 0 if sold_out else 10**9),
            )

    def calls(self, n: int) -> list[Call]:
        one = []
        for _ in range(n):
            self.made += 1
            owner = f"buyer-{self.made}"
            call = order_call if self.orders else reserve_call
            one.append(call(self.settings, PRODUCT, owner, key=owner if self.key else ""))
        if self.batch == 1:
            return one
        spec = specs.PLACE_ORDER if self.orders else specs.RESERVE
        return [many(spec, one[i : i + self.batch]) for i in range(0, n, self.batch)]

    def reserve(self, n: int) -> None:
        if self.ref:
            self.reference(n)
            return
        if self.settles:
            self.settle(n)
            return
        calls = self.calls(n)
        for start in range(0, len(calls), PIPELINE):
            pipe = self.client.pipeline(transaction=False)
            for call in calls[start : start + PIPELINE]:
                pipe.fcall(call.function, len(call.keys), *call.keys, *call.args)
            for reply in pipe.execute():
                for one in reply if self.batch > 1 else [reply]:
                    answer = parse(one)
                    if self.sold_out and answer.get("err") != "insufficient_stock":
                        raise RuntimeError(f"a call was not refused for stock: {one!r}")
                    if not self.sold_out and "ok" not in answer:
                        raise RuntimeError(f"a reservation was refused: {one!r}")
                    if "ok" in answer and not self.orders:
                        made = answer["reservation"]
                        self.held.append((str(made["id"]), str(made["owner"])))

    def commit(self, n: int) -> None:
        """Commit the last `n` reservations made into pending orders, each call alone or
        `batch` at a time (FCALL commit_many, as the engine coalesces concurrent commits), with
        an idempotency key each with `key`."""
        held, self.held = self.held[-n:], self.held[:-n]
        one = [
            commit_call(self.settings, rid, owner, key=rid if self.key else "")
            for rid, owner in held
        ]
        calls = (
            one
            if self.batch == 1
            else [many(specs.COMMIT, one[i : i + self.batch]) for i in range(0, n, self.batch)]
        )
        for start in range(0, len(calls), PIPELINE):
            pipe = self.client.pipeline(transaction=False)
            for call in calls[start : start + PIPELINE]:
                pipe.fcall(call.function, len(call.keys), *call.keys, *call.args)
            for reply in pipe.execute():
                for answer in reply if self.batch > 1 else [reply]:
                    if "ok" not in parse(answer):
                        raise RuntimeError(f"a commit was refused: {answer!r}")

    def settle(self, n: int) -> None:
        """`n` buckets settled (lua/rate_limit_settle.lua), as the API's processes settle them
        (web/ratelimit.py): `--batch` buckets a call, each with one request admitted since its
        last settle — one a request, as in the cost scenario — over SETTLE_BUYERS clients'
        buckets in turn (each settled again and again, as each buyer comes back)."""
        for start in range(0, n, PIPELINE * self.batch):
            pipe = self.client.pipeline(transaction=False)
            for first in range(start, min(n, start + PIPELINE * self.batch), self.batch):
                buckets = [
                    rate_limit_bucket("user", str((self.made + i) % SETTLE_BUYERS))
                    for i in range(min(self.batch, n - first))
                ]
                self.made += len(buckets)
                call = prepare(
                    specs.RATE_LIMIT_SETTLE,
                    *buckets,
                    rate=repr(float(self.settings.rate_limit_per_second)),
                    burst=self.settings.rate_limit_burst,
                    settles=json.dumps([1, self.settle_age] * len(buckets)),
                )
                pipe.fcall(call.function, len(call.keys), *call.keys, *call.args)
            for reply in pipe.execute():
                if "ok" not in parse(reply):
                    raise RuntimeError(f"a settle failed: {reply!r}")

    def reference(self, n: int) -> None:
        """`n` calls of the reference script (scripts/bench/reference.py), as the bench's row
        makes them: a record of the reservation made by the caller, each call alone."""
        for start in range(0, n, PIPELINE):
            pipe = self.client.pipeline(transaction=False)
            for _ in range(min(PIPELINE, n - start)):
                self.made += 1
                rid = f"{self.made:032x}"
                record = json.dumps({"id": rid, "owner": "bench", "lines": [["ref", "main", 1]]})
                args: list[str | int] = [*reference.fields(PRODUCT), 1, rid, 600_000, record]
                pipe.evalsha(self.ref, 4, *reference.keys(rid), *args)
            for reply in pipe.execute():
                if (int(reply) <= 0) != self.sold_out:
                    raise RuntimeError(f"the reference answered {reply!r}")


def measure(
    *,
    batch: int,
    reservations: int,
    warm: int,
    idempotency: bool,
    redis_args: list[str],
    ref: bool = False,
    keep: Path | None = None,
    settles: bool = False,
    sold_out: bool = False,
    commits: bool = False,
    orders: bool = False,
    settle_age: int = 0,
) -> dict[str, Any]:
    """One count (the options above; `reservations` a multiple of `batch`, as main checks)."""
    with tempfile.TemporaryDirectory(prefix="instructions-") as folder:
        out = keep or Path(folder) / "callgrind.out"
        under = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                 f"--callgrind-out-file={out}"]  # fmt: skip
        server = RedisServer(Path(folder) / "redis", under=under, more=redis_args)
        server.start()
        assert server.process is not None
        pid = str(server.process.pid)  # valgrind runs Redis in its own process
        try:
            settings = Settings(redis_url=server.url)

            async def product() -> None:
                async with Engine.from_settings(settings) as engine:  # the library, loaded
                    await engine.setup_product(
                        PRODUCT, SYSTEM, price=1999, stock={"main": 0 if sold_out else 10**9}
                    )

            asyncio.run(product())
            client = redis.Redis.from_url(server.url)
            buyers = Reservations(
                client,
                settings,
                batch,
                idempotency,
                ref,
                settles,
                sold_out,
                orders=orders,
                settle_age=settle_age,
            )
            buyers.reserve(warm - warm % batch)
            if commits:
                buyers.reserve(reservations)  # made before counting: their commits count
            subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True)
            if commits:
                buyers.commit(reservations)
            else:
                buyers.reserve(reservations)
            subprocess.run(["callgrind_control", "-i", "off", pid], check=True, capture_output=True)
            client.close()
        finally:
            server.process.send_signal(signal.SIGTERM)  # callgrind writes its file on exit
            server.process.wait(timeout=120)
        timer = _timer(out)
        total = _totals(out) - timer
    return {
        "reference": ref,
        "settle": settles,
        "settle_age_ms": settle_age if settles else None,
        "sold_out": sold_out,
        "commit": commits,
        "orders": orders,
        "batch": batch,
        "reservations": reservations,
        "warm": warm,
        "idempotency": idempotency,
        "redis_args": redis_args,
        "instructions": total,
        "timer_instructions": timer,
        "instructions_per_reservation": round(total / reservations),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.bench.instructions", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--batch", type=int, default=16, help="calls per FCALL (1: each alone)")
    parser.add_argument(
        "--reservations", type=int, default=1600, help="counted (a multiple of --batch)"
    )
    parser.add_argument("--warm", type=int, default=640, help="made before counting")
    parser.add_argument("--idempotency", action="store_true", help="an idempotency key each")
    parser.add_argument(
        "--reference",
        action="store_true",
        help="the cost bench's reference script instead, each call alone (no --batch)",
    )
    parser.add_argument(
        "--settle",
        action="store_true",
        help="the rate limiter's settles instead: --batch buckets a call, one request each "
        "(per reservation: per bucket settled)",
    )
    parser.add_argument(
        "--settle-age",
        type=int,
        default=0,
        metavar="MS",
        help="with --settle: ms since each request was admitted (0: at the settle, the bucket "
        "short of it and written; 25, the settle period's half, as on average: at the default "
        "rate refilled since, nothing written)",
    )
    parser.add_argument(
        "--sold-out",
        action="store_true",
        help="the product has no units: every call is refused for stock (per refusal)",
    )
    parser.add_argument(
        "--commit",
        action="store_true",
        help="the commits of reservations made before counting, alone or --batch at a time "
        "(per commit)",
    )
    parser.add_argument(
        "--orders",
        action="store_true",
        help="direct orders (place_order) instead of reservations (per order)",
    )
    parser.add_argument(
        "--keep", type=Path, help="keep callgrind's output in this file (callgrind_annotate)"
    )
    parser.add_argument(
        "--redis-arg",
        action="append",
        default=[],
        help="a redis-server option after the project's (repeat)",
    )
    args = parser.parse_args(argv)
    if args.batch < 1 or args.reservations < args.batch or args.reservations % args.batch:
        parser.error("--reservations must be a positive multiple of --batch")
    if args.reference and args.settle:
        parser.error("--reference and --settle: one or the other")
    if args.settle and args.sold_out:
        parser.error("--settle and --sold-out: one or the other")
    if args.orders and (args.reference or args.settle or args.commit):
        parser.error("--orders: not with --reference, --settle or --commit")
    if args.commit and (args.reference or args.settle or args.sold_out):
        parser.error(
            "--commit counts the commits of reservations: not with --reference, "
            "--settle or --sold-out"
        )
    if args.reference and args.batch != 1:
        parser.error("--reference makes each call alone: give --batch 1")
    if args.warm < 0:
        parser.error("--warm must be 0 or more")
    if args.settle_age < 0 or (args.settle_age and not args.settle):
        parser.error("--settle-age: 0 or more ms, with --settle")
    result = measure(
        batch=args.batch,
        reservations=args.reservations,
        warm=args.warm,
        idempotency=args.idempotency,
        redis_args=args.redis_arg,
        ref=args.reference,
        keep=args.keep,
        settles=args.settle,
        sold_out=args.sold_out,
        commits=args.commit,
        orders=args.orders,
        settle_age=args.settle_age,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
