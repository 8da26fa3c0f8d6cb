"""The benchmark's load generator: an asyncio HTTP/1.1 client over a pool of raw keep-alive
connections (uvloop, httptools' C parser, requests encoded to bytes before the clock starts),
run in a process of its own so that it can outrun the server and be pinned to its own core.

Three ways to offer load, each answering one `Outcome` per request:
- `burst`: one connection per call, all connected first, then every call sent at once (the
  flash sale: a thousand buyers press "buy" in the same instant);
- `saturate`: N connections in a closed loop for a while (the most the server can do at that
  concurrency; latency here includes the server's queueing);
- `fixed_rate`: an open loop at R requests/s on a pool of connections; each latency is counted
  from the moment the request was *due*, so a server that falls behind cannot hide its queue
  (no coordinated omission).

A call is `Call(data, tag)`: the request's bytes and a label the caller counts by. A `Calls`
source hands out the i-th call; a follow-up (`then`) lets a flow chain requests on the
answer of the previous one (the lifecycle scenario). A call encoded with `idempotent=True`
carries an `Idempotency-Key` that is new for every request sent (a call is sent many times
at saturation; the same key again would be a retry, answered from the idempotency record).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import multiprocessing
import os
import resource
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httptools


@dataclass(frozen=True)
class Call:
    data: bytes
    tag: str = ""
    keyed: bool = False  # holds KEY_SLOT: a fresh Idempotency-Key is put there per request


KEY_SLOT = b"\x00idempotency-key\x00"
_keys = itertools.count()
_key_prefix = b""


def _fresh_key() -> bytes:
    """A key no other request of this run (any process, any run) sends."""
    global _key_prefix
    if not _key_prefix:  # chosen in the process that sends (after the fork)
        _key_prefix = f"bench-{os.getpid():x}-{secrets.token_hex(6)}-".encode()
    return _key_prefix + b"%x" % next(_keys)


@dataclass(frozen=True)
class Outcome:
    tag: str
    status: int  # 0: the connection failed
    due: float  # monotonic seconds when it was due (sent, or scheduled at a fixed rate)
    latency: float  # seconds from `due` to the last byte of the answer
    body: bytes = b""


def encode(
    method: str,
    path: str,
    *,
    host: str,
    headers: dict[str, str] | None = None,
    body: Any = None,
    tag: str = "",
    idempotent: bool = False,
) -> Call:
    """A request's bytes; `body` is sent as JSON; `idempotent`: with an Idempotency-Key of its
    own each time it is sent."""
    payload = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body is not None:
        lines.append("Content-Type: application/json")
    lines.append(f"Content-Length: {len(payload)}")
    if idempotent:
        lines.append("Idempotency-Key: " + KEY_SLOT.decode())
    return Call(("\r\n".join(lines) + "\r\n\r\n").encode() + payload, tag, idempotent)


class _Connection(asyncio.Protocol):
    """One keep-alive connection; `request()` sends bytes and waits for the whole answer."""

    def __init__(self) -> None:
        self.transport: Any = None  # uvloop's transports aren't asyncio.Transport subclasses
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.chunks: list[bytes] = []
        self.closed = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(exc or ConnectionResetError("closed by the server"))

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((self.parser.get_status_code(), b"".join(self.chunks)))
        self.chunks = []
        self.parser = httptools.HttpResponseParser(self)

    def _fail(self, exc: BaseException) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    async def request(self, data: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        if self.closed:
            raise ConnectionResetError("connection closed")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def _connect(host: str, port: int) -> _Connection:
    loop = asyncio.get_running_loop()
    for attempt in range(20):
        try:
            _, protocol = await loop.create_connection(_Connection, host, port)
            return protocol
        except OSError:  # the listen backlog is full for a moment: try again
            if attempt == 19:
                raise
            await asyncio.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


async def _send(conn: _Connection, call: Call, due: float, keep: bool) -> Outcome:
    data = call.data.replace(KEY_SLOT, _fresh_key()) if call.keyed else call.data
    try:
        status, body = await conn.request(data)
    except (OSError, httptools.HttpParserError):
        status, body = 0, b""
    return Outcome(call.tag, status, due, time.monotonic() - due, body if keep else b"")


Then = Callable[[Call, int, bytes], Call | None]
"""A flow's next request from the previous request and its answer (status, body), or None."""


@dataclass
class Plan:
    """What one load process does. `calls[i]` is the i-th request (cycled)."""

    host: str
    port: int
    mode: str  # burst | saturate | fixed_rate
    calls: Sequence[Call]
    connections: int = 64
    seconds: float = 5.0
    rate: float = 0.0
    limit: int | None = None  # saturate: stop after this many calls (or `seconds`)
    keep_bodies: bool = False
    then: Then | None = None
    start_at: float | None = None  # time.time() to start at: several processes in step
    cpus: set[int] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


async def _flow(conn: _Connection, first: Call, due: float, plan: Plan) -> list[Outcome]:
    """A call and the follow-ups `plan.then` chains on its answers."""
    out = [await _send(conn, first, due, plan.keep_bodies or plan.then is not None)]
    while plan.then is not None:
        last = out[-1]
        nxt = plan.then(first, last.status, last.body)
        if nxt is None:
            break
        first = nxt
        out.append(await _send(conn, nxt, time.monotonic(), True))
    if not plan.keep_bodies:
        out = [Outcome(o.tag, o.status, o.due, o.latency) for o in out]
    return out


async def _wait_start(plan: Plan) -> None:
    if plan.start_at is not None:
        await asyncio.sleep(max(0.0, plan.start_at - time.time()))


async def burst(plan: Plan) -> list[Outcome]:
    conns = await asyncio.gather(*(_connect(plan.host, plan.port) for _ in plan.calls))
    await _wait_start(plan)
    due = time.monotonic()
    results = await asyncio.gather(
        *(_flow(c, call, due, plan) for c, call in zip(conns, plan.calls, strict=True))
    )
    for c in conns:
        c.close()
    return [o for flow in results for o in flow]


async def saturate(plan: Plan) -> list[Outcome]:
    conns = await asyncio.gather(*(_connect(plan.host, plan.port) for _ in range(plan.connections)))
    outcomes: list[Outcome] = []
    counter = iter(range(1 << 62))
    await _wait_start(plan)
    end = time.monotonic() + plan.seconds

    limit = (1 << 62) if plan.limit is None else plan.limit

    async def worker(conn: _Connection) -> None:
        while time.monotonic() < end:
            i = next(counter)
            if i >= limit:
                return
            call = plan.calls[i % len(plan.calls)]
            outcomes.extend(await _flow(conn, call, time.monotonic(), plan))

    await asyncio.gather(*(worker(c) for c in conns))
    for c in conns:
        c.close()
    return outcomes


async def fixed_rate(plan: Plan) -> list[Outcome]:
    idle: asyncio.Queue[_Connection] = asyncio.Queue()
    for conn in await asyncio.gather(
        *(_connect(plan.host, plan.port) for _ in range(plan.connections))
    ):
        idle.put_nowait(conn)
    outcomes: list[Outcome] = []
    pending: set[asyncio.Task[None]] = set()
    total = max(1, round(plan.rate * plan.seconds))
    await _wait_start(plan)
    started = time.monotonic()

    async def one(call: Call, due: float) -> None:
        conn = await idle.get()  # waiting for a free connection counts in the latency
        outcomes.extend(await _flow(conn, call, due, plan))
        idle.put_nowait(conn)

    for i in range(total):
        due = started + i / plan.rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(plan.calls[i % len(plan.calls)], due))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.gather(*pending)
    while not idle.empty():
        idle.get_nowait().close()
    return outcomes


MODES = {"burst": burst, "saturate": saturate, "fixed_rate": fixed_rate}


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run_plan(plan: Plan) -> list[Outcome]:
    """Run a plan in this process (uvloop when available)."""
    _raise_fd_limit()
    if plan.cpus:
        os.sched_setaffinity(0, plan.cpus)
    try:
        import uvloop

        return uvloop.run(MODES[plan.mode](plan))
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        return asyncio.run(MODES[plan.mode](plan))


def _child(plan: Plan, out: Any) -> None:
    try:
        out.send(("ok", run_plan(plan)))
    except BaseException as exc:  # report it to the parent rather than die silently
        out.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        out.close()


def run_in_processes(plans: Sequence[Plan]) -> list[Outcome]:
    """Each plan in a process of its own (forked), started together; every outcome."""
    ctx = multiprocessing.get_context("fork")
    start_at = time.time() + 0.5 + 0.002 * sum(len(p.calls) for p in plans if p.mode == "burst")
    children = []
    for plan in plans:
        plan.start_at = plan.start_at or start_at
        receive, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child, args=(plan, send), daemon=True)
        proc.start()
        send.close()
        children.append((proc, receive))
    outcomes: list[Outcome] = []
    errors: list[str] = []
    for proc, receive in children:
        try:
            kind, payload = receive.recv()
        except EOFError:
            kind, payload = "error", f"load process {proc.pid} died (exit {proc.exitcode})"
        proc.join(timeout=30)
        if kind == "ok":
            outcomes.extend(payload)
        else:
            errors.append(payload)
    if errors:
        raise RuntimeError("load generator failed: " + "; ".join(errors))
    return outcomes


def split(calls: Sequence[Call], parts: int) -> list[list[Call]]:
    """Deal calls round-robin into `parts` lists (one per load process)."""
    return [list(calls[i::parts]) for i in range(parts) if calls[i::parts]]
