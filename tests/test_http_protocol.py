"""web/http_protocol.py: a round's writes leave in one send at its end, and HTTP is what it was —
keep-alive, pipelining, HEAD, a WebSocket upgrade, a streamed response chunk by chunk, a
malformed request's 400, `Connection: close` — over a real socket to uvicorn serving with the
corked protocol."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.api import Server
from web.http_protocol import CorkedTransport


class Wire(asyncio.Transport):
    """The socket's side of a transport (the outside): what was written, one entry per send."""

    def __init__(self) -> None:
        super().__init__()
        self.sends: list[bytes] = []
        self.closed = self.aborted = False

    def write(self, data: Any) -> None:
        self.sends.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0


HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


async def test_a_rounds_writes_leave_in_one_send_at_its_end() -> None:
    wire = Wire()
    corked = CorkedTransport(wire, asyncio.get_running_loop())
    corked.write(HEAD)
    corked.write(b"{}")
    assert wire.sends == []  # held until the round ends
    assert corked.get_write_buffer_size() == len(HEAD) + 2
    await asyncio.sleep(0)
    assert wire.sends == [HEAD + b"{}"]
    corked.write(b"chunk")  # a later round: a send of its own
    await asyncio.sleep(0)
    assert wire.sends[1:] == [b"chunk"]
    corked.write(b"")  # nothing to send: nothing scheduled
    await asyncio.sleep(0)
    assert len(wire.sends) == 2


async def test_close_sends_what_is_held_and_abort_drops_it() -> None:
    loop = asyncio.get_running_loop()
    wire = Wire()
    corked = CorkedTransport(wire, loop)
    corked.writelines([HEAD])
    corked.close()
    assert (wire.sends, wire.closed) == ([HEAD], True)
    await asyncio.sleep(0)  # the scheduled send finds nothing held
    assert wire.sends == [HEAD]

    wire = Wire()
    corked = CorkedTransport(wire, loop)
    corked.write(HEAD)
    corked.abort()
    await asyncio.sleep(0)
    assert (wire.sends, wire.aborted) == ([], True)

    wire = Wire()  # the connection closed by the peer meanwhile: nothing written to it
    corked = CorkedTransport(wire, loop)
    corked.write(HEAD)
    wire.closed = True
    await asyncio.sleep(0)
    assert wire.sends == []


GO_ON = threading.Event()  # the test's word that it has read the stream's first chunk


async def _stream() -> AsyncIterator[bytes]:
    yield b"chunk 0\n"
    await asyncio.to_thread(GO_ON.wait, 20)  # the rest waits until the first has arrived
    for i in (1, 2):
        yield f"chunk {i}\n".encode()


async def _echo(request: Request) -> Response:
    return JSONResponse({"path": request.url.path, "body": (await request.body()).decode()})


def _app() -> Starlette:
    return Starlette(
        routes=[
            Route("/echo", _echo, methods=["GET", "POST", "HEAD"]),
            Route("/stream", lambda _r: StreamingResponse(_stream(), media_type="text/plain")),
        ]
    )


@pytest.fixture(scope="module")
def served() -> Iterator[int]:
    server = Server(app=_app())
    with server:
        yield server.port


def _read_responses(sock: socket.socket, count: int) -> list[tuple[str, bytes]]:
    """`count` responses with a content-length, read off the socket: (status line, body)."""
    data, found = b"", list[tuple[str, bytes]]()
    while len(found) < count:
        head_end = data.find(b"\r\n\r\n")
        if head_end >= 0:
            head = data[:head_end].decode()
            length = next(
                (int(line.split(":")[1]) for line in head.split("\r\n")
                 if line.lower().startswith("content-length:")),
                0,
            )  # fmt: skip
            end = head_end + 4 + length
            if len(data) >= end:
                found.append((head.split("\r\n")[0], data[head_end + 4 : end]))
                data = data[end:]
                continue
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return found


def test_keep_alive_and_pipelined_requests_each_get_their_whole_answer(served: int) -> None:
    with socket.create_connection(("127.0.0.1", served), timeout=10) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        ((status, body),) = _read_responses(sock, 1)
        assert (status, body) == ("HTTP/1.1 200 OK", b'{"path":"/echo","body":""}')
        pipelined = b"".join(
            b"POST /echo HTTP/1.1\r\nHost: x\r\ncontent-length: %d\r\n\r\n%s" % (len(b), b)
            for b in (b"one", b"two", b"three")
        )
        sock.sendall(pipelined)
        answers = _read_responses(sock, 3)
        assert [b for _, b in answers] == [
            b'{"path":"/echo","body":"%s"}' % b for b in (b"one", b"two", b"three")
        ]


def test_head_close_an_upgrade_and_a_malformed_request(served: int) -> None:
    with socket.create_connection(("127.0.0.1", served), timeout=10) as sock:
        sock.sendall(b"HEAD /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):  # the server closes after the answer
            data += chunk
        assert data.startswith(b"HTTP/1.1 200 OK\r\n")
        assert data.endswith(b"\r\n\r\n")  # the head alone
    with socket.create_connection(("127.0.0.1", served), timeout=10) as sock:
        # a WebSocket upgrade: uvicorn's WebSocket protocol takes the corked transport over
        # and refuses it (no WebSocket route), and the answer arrives
        sock.sendall(
            b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        assert sock.recv(65536).startswith(b"HTTP/1.1 403 Forbidden\r\n")
    with socket.create_connection(("127.0.0.1", served), timeout=10) as sock:
        sock.sendall(b"GARBAGE\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n")


def test_a_streamed_response_arrives_chunk_by_chunk(served: int) -> None:
    with socket.create_connection(("127.0.0.1", served), timeout=10) as sock:
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while b"chunk 0" not in data:  # held until the stream ends, it would never come
            data += sock.recv(65536)
        assert b"chunk 1" not in data
        GO_ON.set()
        while chunk := sock.recv(65536):
            data += chunk
        assert all(b"chunk %d\n" % i in data for i in range(3))
        assert data.endswith(b"0\r\n\r\n")  # the chunked encoding's end
