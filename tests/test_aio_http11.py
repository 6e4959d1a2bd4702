"""The asyncio HTTP/1.1 client of the SSE and long-poll clients (loadgen/aio/http11.py).

Against scripted servers on real loopback sockets (keep-alive, chunked streams,
timeouts, broken and malformed responses, stale pooled connections). The SSE and
long-poll clients on it, the `http=` pool option included, are tested against real
`rtbench serve` processes in tests/test_aio_clients.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from loadgen.aio import ServerClosed
from loadgen.aio.http11 import Connection, Pool, Response, origin
from servers.testing import free_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
WAIT = 5.0


class Peer:
    """A scripted HTTP server: `handler` runs once per accepted connection."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.finished = 0
        self.ended = asyncio.Event()  # set each time a connection's handler has returned
        self.port = 0

    async def wait_finished(self, n: int) -> None:
        """Until the handlers of `n` connections have returned (the clients closed them)."""
        async with asyncio.timeout(WAIT):
            while self.finished < n:
                self.ended.clear()
                await self.ended.wait()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            self.finished += 1
            self.ended.set()


@contextlib.asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[Peer]:
    peer = Peer(handler)
    server = await asyncio.start_server(peer._serve, "127.0.0.1", 0)
    peer.port = server.sockets[0].getsockname()[1]
    try:
        yield peer
    finally:
        server.close()
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    """(head, body) of the next request, None at the end of the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    return head, await reader.readexactly(length)


def response(body: bytes, status: str = "200 OK", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 %s\r\ncontent-length: %d\r\n%s\r\n%s" % (
        status.encode(), len(body), extra, body)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Keep-alive: answers each request with its own head and body."""
    while (req := await read_request(reader)) is not None:
        writer.write(response(req[0] + req[1], extra=b"x-a: 1\r\nX-A: 2\r\n"))


# ------------------------------------------------------------ Connection


async def test_requests_share_one_keep_alive_connection() -> None:
    async with serving(echo) as peer:
        conn = await Connection.open("127.0.0.1", peer.port, WAIT)
        try:
            r1 = await conn.request("POST", "/a?x=1", {"authorization": "Bearer t"}, b"hi", WAIT)
            r2 = await conn.request("GET", "/b", timeout=WAIT)
        finally:
            await conn.aclose()
    assert r1.status == 200 and r1.headers["x-a"] == "1, 2"
    assert r1.body.startswith(b"POST /a?x=1 HTTP/1.1\r\n") and r1.body.endswith(b"\r\n\r\nhi")
    assert b"\r\nhost: 127.0.0.1:%d\r\n" % peer.port in r1.body
    assert b"\r\nauthorization: Bearer t\r\n" in r1.body and b"content-length: 2" in r1.body
    assert r2.body.startswith(b"GET /b HTTP/1.1\r\n") and b"content-length" not in r2.body
    assert peer.connections == 1


async def test_stream_hands_over_each_chunk_as_it_arrives() -> None:
    first_seen = asyncio.Event()
    ended: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
    got: list[tuple[bytes, int]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + chunk(b"one"))
        await first_seen.wait()  # the second chunk only after the client saw the first
        writer.write(chunk(b"two") + b"0\r\n\r\n")
        await read_request(reader)

    def on_body(data: bytes, recv_us: int) -> None:
        got.append((data, recv_us))
        first_seen.set()

    async with serving(handler) as peer:
        conn = await Connection.open("127.0.0.1", peer.port, WAIT)
        try:
            head = await conn.stream("GET", "/s", {}, on_body, ended.set_result, WAIT)
            assert (head.status, head.body) == (200, b"")
            assert await asyncio.wait_for(ended, WAIT) is None
            assert conn.usable  # the response is over: the connection can serve another
        finally:
            await conn.aclose()
    assert [d for d, _ in got] == [b"one", b"two"]
    assert 0 < got[0][1] <= got[1][1]


async def test_stream_refused_returns_the_whole_response() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(response(b'{"code":"unauthorized"}', "401 Unauthorized"))
        await read_request(reader)

    calls: list[object] = []
    async with serving(handler) as peer:
        conn = await Connection.open("127.0.0.1", peer.port, WAIT)
        try:
            resp = await conn.stream("GET", "/s", {}, lambda *a: calls.append(a), calls.append,
                                     WAIT)
            assert conn.usable
        finally:
            await conn.aclose()
    assert resp == Response(401, {"content-length": "23"}, b'{"code":"unauthorized"}')
    assert calls == []  # neither a body chunk nor an end: nothing streamed


async def test_no_response_in_time_is_a_timeout_and_closes() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()  # until the client gives up

    async with serving(silent) as peer:
        conn = await Connection.open("127.0.0.1", peer.port, WAIT)
        with pytest.raises(TimeoutError):
            await conn.request("GET", "/", timeout=0.1)
        assert not conn.usable
        with pytest.raises(ServerClosed):
            await conn.request("GET", "/", timeout=WAIT)
        await conn.aclose()
        await asyncio.wait_for(peer.ended.wait(), WAIT)  # the server saw the close


@pytest.mark.parametrize("reply", [
    b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc",  # cut short
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n",  # no last chunk
    b"SPDY/9 200 OK\r\n\r\n",  # not HTTP
])
async def test_broken_or_malformed_response_is_server_closed(reply: bytes) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(reply)

    async with serving(handler) as peer:
        conn = await Connection.open("127.0.0.1", peer.port, WAIT)
        try:
            with pytest.raises(ServerClosed) as err:
                await conn.request("GET", "/", timeout=WAIT)
        finally:
            await conn.aclose()
    assert err.value.code == 1006
    assert ("malformed" in err.value.reason) == reply.startswith(b"SPDY")


async def test_broken_stream_ends_with_server_closed() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + chunk(b"a"))

    ended = asyncio.get_running_loop().create_future()
    async with serving(handler) as peer:
        conn = await Connection.open("127.0.0.1", peer.port, WAIT)
        try:
            await conn.stream("GET", "/", {}, lambda *_: None, ended.set_result, WAIT)
            exc = await asyncio.wait_for(ended, WAIT)
        finally:
            await conn.aclose()
    assert isinstance(exc, ServerClosed) and exc.code == 1006


async def test_failing_body_callback_is_reported_and_ends_the_stream() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + chunk(b"a"))
        await reader.read()

    def on_body(data: bytes, recv_us: int) -> None:
        raise KeyError("consumer bug")

    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    saved = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, ctx: reported.append(ctx))
    ended = loop.create_future()
    try:
        async with serving(handler) as peer:
            conn = await Connection.open("127.0.0.1", peer.port, WAIT)
            try:
                await conn.stream("GET", "/", {}, on_body, ended.set_result, WAIT)
                exc = await asyncio.wait_for(ended, WAIT)
            finally:
                await conn.aclose()
    finally:
        loop.set_exception_handler(saved)
    assert isinstance(exc, ServerClosed) and "consumer bug" in exc.reason
    assert [type(ctx["exception"]) for ctx in reported] == [KeyError]


async def test_body_delimited_by_the_end_of_the_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end")

    got: list[bytes] = []
    ended: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
    async with serving(handler) as peer:
        conn = await Connection.open("127.0.0.1", peer.port, WAIT)
        streamed = await Connection.open("127.0.0.1", peer.port, WAIT)
        try:
            resp = await conn.request("GET", "/", timeout=WAIT)
            await streamed.stream("GET", "/", {}, lambda data, _: got.append(data),
                                  ended.set_result, WAIT)
            assert await asyncio.wait_for(ended, WAIT) is None  # ended, not broken
        finally:
            await conn.aclose()
            await streamed.aclose()
    assert (resp.status, resp.body) == (200, b"until the end")
    assert b"".join(got) == b"until the end"
    assert not conn.usable


async def test_refused_connect_and_bad_input() -> None:
    with pytest.raises(ServerClosed) as err:
        await Connection.open("127.0.0.1", free_port(), WAIT)
    assert err.value.code == 1006 and "connect" in err.value.reason
    async with serving(echo) as peer:
        conn = await Connection.open("127.0.0.1", peer.port, WAIT)
        try:
            with pytest.raises(ValueError):
                await conn.request("GET", "/", {"x": "1\r\nevil: 1"}, timeout=WAIT)
            assert (await conn.request("GET", "/", timeout=WAIT)).status == 200  # unharmed
        finally:
            await conn.aclose()


def test_origin() -> None:
    assert origin("http://127.0.0.1:8000/") == ("127.0.0.1", 8000, "127.0.0.1:8000")
    assert origin("ws://[::1]:81") == ("::1", 81, "[::1]:81")
    assert origin("localhost") == ("localhost", 80, "localhost")
    with pytest.raises(ValueError):
        origin("https://example.org")


# ------------------------------------------------------------------ Pool


async def test_pool_reuses_sequentially_and_parallelizes_concurrent_requests() -> None:
    arrived = 0
    all_in = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal arrived
        while (req := await read_request(reader)) is not None:
            if req[0].startswith(b"POST /together"):
                arrived += 1
                if arrived == 3:
                    all_in.set()
                await all_in.wait()  # answers only once all three are in: no queueing
            writer.write(response(b"ok"))

    pool = Pool()
    async with serving(handler) as peer:
        try:
            for _ in range(3):
                await pool.request("127.0.0.1", peer.port, "GET", "/one", timeout=WAIT)
            assert peer.connections == 1
            replies = await asyncio.gather(*(
                pool.request("127.0.0.1", peer.port, "POST", "/together", timeout=WAIT)
                for _ in range(3)))
            assert [r.body for r in replies] == [b"ok"] * 3
            assert peer.connections == 3
        finally:
            await pool.aclose()
        await peer.wait_finished(3)  # the pool's idle connections were closed


async def test_pool_retries_a_request_the_server_dropped_unanswered() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first_connection = peer.connections == 1
        await read_request(reader)
        writer.write(response(b"first" if first_connection else b"retried"))
        if first_connection:
            await read_request(reader)  # the keep-alive ends as the reuse arrives: no answer

    pool = Pool()
    async with serving(handler) as peer:
        try:
            assert (await pool.request("127.0.0.1", peer.port, "GET", "/", timeout=WAIT)).body \
                == b"first"
            second = await pool.request("127.0.0.1", peer.port, "POST", "/", body=b"x",
                                        timeout=WAIT)
        finally:
            await pool.aclose()
    assert second.body == b"retried" and peer.connections == 2


async def test_pool_does_not_retry_a_partly_answered_request() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(response(b"first"))
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\npart")

    pool = Pool()
    async with serving(handler) as peer:
        try:
            await pool.request("127.0.0.1", peer.port, "GET", "/", timeout=WAIT)
            with pytest.raises(ServerClosed):
                await pool.request("127.0.0.1", peer.port, "POST", "/", body=b"x", timeout=WAIT)
        finally:
            await pool.aclose()
    assert peer.connections == 1


async def test_pool_drops_connections_the_server_wants_closed() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(response(b"bye", extra=b"connection: close\r\n"))

    pool = Pool()
    async with serving(handler) as peer:
        try:
            for _ in range(2):
                resp = await pool.request("127.0.0.1", peer.port, "GET", "/", timeout=WAIT)
                assert resp.body == b"bye"
        finally:
            await pool.aclose()
    assert peer.connections == 2


def test_runs_on_uvloop() -> None:
    """uvloop's transports do not subclass asyncio.Transport; the client must not care."""
    import uvloop

    async def go() -> bytes:
        async with serving(echo) as peer:
            conn = await Connection.open("127.0.0.1", peer.port, WAIT)
            try:
                return (await conn.request("GET", "/uv", timeout=WAIT)).body
            finally:
                await conn.aclose()

    body = uvloop.run(go())
    assert body.startswith(b"GET /uv HTTP/1.1\r\n")
