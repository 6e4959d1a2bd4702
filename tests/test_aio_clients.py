"""The asyncio clients (loadgen/aio: WebSocket on aiohttp, SSE and long-poll on
loadgen/aio/http11.py) against real `rtbench serve` processes on real sockets: the client
API and its failure semantics (refusals, timeouts, a server that dies or shuts down, a
failing `on_event`), token placement, `first`, `resume`, the `http=` shared pool option
and the connections it holds. http11.py itself is tested in tests/test_aio_http11.py.

The wire rules the clients share with the gevent family are tested without sockets in
tests/test_client_wire.py; the protocol itself in tests/test_conformance.py.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Protocol

import aiohttp
import orjson
import psutil
import pytest

from loadgen.aio import Client, CommandError, Received, ServerClosed, connect, http_session
from loadgen.aio.http11 import Pool
from servers.core.auth import DEV_SECRET, make_token
from servers.testing import ServerProcess, free_port

pytestmark = pytest.mark.e2e

TRANSPORTS = ("ws", "sse", "longpoll")
HTTP_TRANSPORTS = ("sse", "longpoll")
WAIT = 5.0
_names = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}{next(_names)}-{os.getpid()}"


def token(user: str) -> str:
    return make_token(user, DEV_SECRET)


def memory_server(transport: str, *args: str) -> ServerProcess:
    return ServerProcess(transport, free_port(), args=["--broker", "memory", *args])


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, ServerProcess]]:
    procs = {t: memory_server(t) for t in TRANSPORTS}
    try:
        for p in procs.values():
            p.start()
        yield procs
    finally:
        for p in procs.values():
            p.stop()


class Open(Protocol):
    async def __call__(self, transport: str, user: str, **opts: Any) -> Client: ...


@pytest.fixture
async def open_client(servers: dict[str, ServerProcess]) -> AsyncIterator[Open]:
    """`await open_client(transport, user, **opts)` connects to the module's server of
    `transport`; every client it opened is closed at the end of the test."""
    clients: list[Client] = []

    async def factory(transport: str, user: str, **opts: Any) -> Client:
        client = await connect(transport, servers[transport].url, token(user), **opts)
        clients.append(client)
        return client

    try:
        yield factory
    finally:
        await asyncio.gather(*(c.close() for c in clients))


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait (bounded) for a server-side state that no event announces."""
    deadline = time.monotonic() + WAIT
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def server_connections(proc: ServerProcess) -> int:
    async with aiohttp.ClientSession() as http, http.get(f"{proc.url}/healthz") as resp:
        return int((await resp.json())["connections"])


def connections_to(port: int) -> int:
    """This process's established TCP connections to `port`."""
    return sum(1 for c in psutil.Process().net_connections("tcp")
               if c.raddr and c.raddr[1] == port and c.status == psutil.CONN_ESTABLISHED)


def cursor_of(last_id: str) -> Any:
    return orjson.loads(base64.urlsafe_b64decode(last_id + "=" * (-len(last_id) % 4)))


# ------------------------------------------------------------------ the API


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_commands_and_events(open_client: Open, transport: str) -> None:
    alice, bob = unique("alice"), unique("bob")
    a = await open_client(transport, alice)
    b = await open_client(transport, bob)
    assert (a.welcome["type"], a.welcome["user"], a.transport) == ("welcome", alice, transport)
    room = unique("room")
    ack = await a.join(room)
    assert ack["type"] == "ack" and ack["offset"] == 0
    await b.join(room, presence=True)
    before = time.time_ns() // 1000
    await a.publish(room, {"text": "hi"})
    ev = await b.next_event("message", WAIT)
    assert isinstance(ev, Received) and ev.type == "message"
    assert (ev["from"], ev["data"], ev["offset"]) == (alice, {"text": "hi"}, 1)
    assert before <= ev.recv_us <= time.time_ns() // 1000
    assert (await a.next_event("message", WAIT))["data"] == {"text": "hi"}  # its own too
    await a.publish(room, "quiet", ack=False)
    assert (await b.next_event("message", WAIT))["data"] == "quiet"
    await a.direct(bob, [1, 2])
    assert (await b.next_event("direct", WAIT))["data"] == [1, 2]
    assert await a.ping() >= before
    assert await a.presence([alice, bob, "nobody"]) == {alice: True, bob: True, "nobody": False}
    assert b.cursor["rooms"] == {room: [2, ev["epoch"], True]}
    await a.leave(room)
    with pytest.raises(CommandError) as err:
        await a.publish(room, "gone")
    assert err.value.code == "not_member"
    assert err.value.status == (403 if transport in HTTP_TRANSPORTS else None)
    assert a.take_events("error") == []  # the error was the command's, not an event
    assert [e["data"] for e in a.take_events("message")] == ["quiet"]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_send_raw_and_bad_input(servers: dict[str, ServerProcess], open_client: Open,
                                      transport: str) -> None:
    c = await open_client(transport, unique("raw"))
    status = await c.send_raw("not json")
    assert status == (400 if transport in HTTP_TRANSPORTS else None)
    assert (await c.next_event("error", WAIT))["code"] == "bad_json"
    await c.send_raw(b'{"type":"ping","id":"r"}')  # a binary frame on WebSocket
    assert (await c.next_event("pong", WAIT))["ref"] == "r"
    with pytest.raises(ValueError):  # no header injection through the token
        await connect(transport, servers[transport].url, "t\r\nx-evil: 1")


@pytest.mark.parametrize(("transport", "placement"), [
    ("ws", "header"), ("ws", "query"), ("ws", "subprotocol"),
    ("sse", "header"), ("sse", "query"), ("longpoll", "header"), ("longpoll", "query")])
async def test_token_placement(open_client: Open, transport: str, placement: str) -> None:
    user = unique("t")
    c = await open_client(transport, user, token_in=placement)
    assert c.welcome["user"] == user
    assert await c.ping() > 0  # commands carry the token the same way


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_refused_token(servers: dict[str, ServerProcess], transport: str) -> None:
    for bad in (None, "not.a-token"):
        with pytest.raises(ServerClosed) as err:
            await connect(transport, servers[transport].url, bad)
        assert err.value.code == 4401
        assert (err.value.reason == "missing token") == (bad is None) and err.value.reason
        assert err.value.status == (401 if transport in HTTP_TRANSPORTS else None)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_first_commands(open_client: Open, transport: str) -> None:
    room = unique("early")
    first = [{"type": "join", "room": room, "id": "j"}, {"type": "ping", "id": "p"}]
    c = await open_client(transport, unique("f"), first=first)
    assert {(await c.next_event(("ack", "pong"), WAIT))["ref"] for _ in first} == {"j", "p"}
    await c.publish(room, "in")  # the early join took effect
    assert (await c.next_event("message", WAIT))["data"] == "in"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_resume(servers: dict[str, ServerProcess], open_client: Open,
                      transport: str) -> None:
    url = servers[transport].url
    sub_name, room = unique("sub"), unique("room")
    sub = await open_client(transport, sub_name)
    pub = await open_client(transport, unique("pub"))
    await sub.join(room)
    await pub.join(room)
    await pub.publish(room, 0)
    assert (await sub.next_event("message", WAIT))["data"] == 0
    if transport == "sse":
        assert cursor_of(sub.last_id) == sub.cursor  # type: ignore[attr-defined]
    cursor = sub.cursor
    await sub.close()
    for i in (1, 2):
        await pub.publish(room, i)
    resumed = await open_client(transport, sub_name, resume=cursor)
    got = [(await resumed.next_event("message", WAIT))["data"] for _ in range(2)]
    assert got == [1, 2]
    await pub.publish(room, 3)  # a member again without joining
    assert (await resumed.next_event("message", WAIT))["data"] == 3
    assert resumed.cursor["rooms"][room][0] == 4
    with pytest.raises(ServerClosed) as err:
        await connect(transport, url, token(sub_name), resume={"rooms": {"bad room!": [0, ""]}})
    assert err.value.code == 4400 and err.value.reason.startswith("bad_cursor: ")
    assert err.value.status == (400 if transport in HTTP_TRANSPORTS else None)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_close_is_final_and_releases_the_server_side(
        servers: dict[str, ServerProcess], transport: str) -> None:
    proc = servers[transport]
    c = await connect(transport, proc.url, token(unique("c")))
    await c.join(unique("room"))
    assert await server_connections(proc) >= 1
    await c.close()
    await c.close()  # idempotent
    assert c.closed and c.closed_reason is None  # the client's doing, not the server's
    with pytest.raises(ServerClosed) as err:
        await c.next_event(timeout=WAIT)
    assert (err.value.code, err.value.reason) == (1000, "closed by the client")
    with pytest.raises(ServerClosed):
        await c.ping()
    await eventually(lambda: _is(server_connections(proc), 0), "the server to drop it")


async def _is(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_failing_on_event_is_reported_and_ends_the_connection(
        open_client: Open, transport: str) -> None:
    c = await open_client(transport, unique("cb"))
    other = await open_client(transport, unique("o"))
    room = unique("room")
    await c.join(room)
    await other.join(room)

    def on_event(ev: Received) -> None:
        raise KeyError("consumer bug")

    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    saved = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, ctx: reported.append(ctx))
    try:
        c.on_event = on_event
        await other.publish(room, "boom")
        info = await c.wait_closed(WAIT)
    finally:
        loop.set_exception_handler(saved)
    assert info is not None and info.code == 1006 and "consumer bug" in info.reason
    assert [type(ctx["exception"]) for ctx in reported] == [KeyError]


# ------------------------------------------------- servers that fail or go away


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_unreachable_server(transport: str) -> None:
    with pytest.raises(ServerClosed) as err:
        await connect(transport, f"http://127.0.0.1:{free_port()}", token("u"), timeout=WAIT)
    assert err.value.code == 1006


@contextlib.contextmanager
def frozen(proc: ServerProcess) -> Iterator[None]:
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        proc.proc.send_signal(signal.SIGCONT)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_timeouts_then_shutdown(transport: str) -> None:
    """A frozen server: the handshake and a command time out (TimeoutError), the client
    stays usable once it thaws; then a shutdown ends the connection with 1001."""
    proc = memory_server(transport).start()
    try:
        c = await connect(transport, proc.url, token(unique("t")), timeout=0.5)
        try:
            with frozen(proc):
                with pytest.raises(TimeoutError):
                    await c.ping()
                with pytest.raises(TimeoutError):
                    await connect(transport, proc.url, token(unique("late")), timeout=0.5)
            assert await c.ping() > 0
            await asyncio.to_thread(proc.stop)
            info = await c.wait_closed(WAIT)
        finally:
            await c.close()
    finally:
        proc.stop()
    assert info is not None and info.code == 1001, info
    assert c.closed_reason == info


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_killed_server(transport: str) -> None:
    """A server that dies without a word: the connection ends with 1006, and a command
    then raises ServerClosed with that code."""
    proc = memory_server(transport).start()
    try:
        c = await connect(transport, proc.url, token(unique("k")))
        try:
            assert proc.proc is not None
            proc.proc.kill()
            await asyncio.to_thread(proc.proc.wait)
            info = await c.wait_closed(WAIT)
            assert info is not None and info.code == 1006, info
            with pytest.raises(ServerClosed) as err:
                await c.ping()
            assert err.value.code == 1006
        finally:
            await c.close()
    finally:
        proc.stop()


# ------------------------------------------------------------ the http= option


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_shared_pool_holds_one_connection_per_client(
        servers: dict[str, ServerProcess], transport: str) -> None:
    proc = servers[transport]
    http: Pool | aiohttp.ClientSession = Pool() if transport in HTTP_TRANSPORTS \
        else http_session()
    clients: list[Client] = []
    try:
        for i in range(3):
            clients.append(await connect(transport, proc.url, token(unique(f"p{i}")),
                                         http=http, timeout=WAIT))
        assert connections_to(proc.port) == 3  # a stream, a held poll, a WebSocket each
        room = unique("shared")
        for c in clients:
            await c.join(room)
        await clients[0].publish(room, "hi")
        for c in clients:
            assert (await c.next_event("message", WAIT))["data"] == "hi"
        # sequential HTTP commands take turns on one pooled connection
        assert connections_to(proc.port) == (4 if transport in HTTP_TRANSPORTS else 3)
        await clients.pop().close()  # a client does not close the pool it was given
        assert await clients[0].ping() > 0
    finally:
        await asyncio.gather(*(c.close() for c in clients))
        await (http.aclose() if isinstance(http, Pool) else http.close())
    await eventually(lambda: _zero(connections_to(proc.port)), "the sockets to close")


async def _zero(n: int) -> bool:
    return n == 0


async def test_shared_session_has_no_connection_limit(servers: dict[str, ServerProcess]) -> None:
    """More WebSockets than aiohttp's default limit (100) on one session."""
    proc = servers["ws"]
    room = unique("crowd")
    async with http_session() as http:
        clients = await asyncio.gather(*(
            connect("ws", proc.url, token(unique("c")), http=http, timeout=30.0)
            for _ in range(150)))
        try:
            await asyncio.gather(*(c.join(room) for c in clients))
            await clients[0].publish(room, "all")
            got = await asyncio.gather(*(c.next_event("message", WAIT) for c in clients))
            assert [ev["data"] for ev in got] == ["all"] * 150
        finally:
            await asyncio.gather(*(c.close() for c in clients))


async def test_other_http_objects_are_ignored_with_a_warning(
        servers: dict[str, ServerProcess]) -> None:
    """Each family's pool given to the other (one `http=` passed to every transport) is
    ignored with a warning naming what the client takes, as anything else would be."""
    session, pool = http_session(), Pool()
    try:
        for transport in TRANSPORTS:
            other: Pool | aiohttp.ClientSession = session if transport in HTTP_TRANSPORTS \
                else pool
            expected = "http11.Pool" if transport in HTTP_TRANSPORTS else "aiohttp.ClientSession"
            with pytest.warns(DeprecationWarning, match=expected) as caught:
                c = await connect(transport, servers[transport].url, token(unique("l")),
                                  http=other)
            try:
                assert caught[0].filename == __file__  # it names the caller
                assert await c.ping() > 0
            finally:
                await c.close()
    finally:
        await session.close()
        await pool.aclose()


def test_runs_on_uvloop(servers: dict[str, ServerProcess]) -> None:
    import uvloop

    async def go() -> list[int]:
        pings = []
        for transport in TRANSPORTS:
            c = await connect(transport, servers[transport].url, token(unique("uv")))
            try:
                pings.append(await c.ping())
            finally:
                await c.close()
        return pings

    assert all(ts > 0 for ts in uvloop.run(go()))
