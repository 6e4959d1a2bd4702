"""SSE adapter (docs/protocol.md 7.2) against real server processes.

Framing is checked as bytes; everything else over real sockets with aiohttp's client, on both
server stacks: the stream, the command endpoint and its statuses, auth, ownership,
keepalive, disconnect, slow consumer, SIGTERM, and cross-replica (and cross-stack)
delivery over Redis. The idle-memory helper at the end is shared with the long-poll
tests.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import signal
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil
import pytest

from loadgen.aio import connect as aio_connect
from servers.core.connection import Connection
from servers.core.cursor import Cursor, decode_cursor, encode_cursor
from servers.core.outbox import Outbox
from servers.core.types import CloseReason, Event, Join, Leave, Limits, Ping
from servers.settings import STACKS
from servers.testing import RedisServer, ServerProcess, free_port
from servers.transports.context import RequestView
from servers.transports.sessions import requested_cursor
from servers.transports.sse import (
    PING,
    RETRY_MS,
    SseSession,
    close_frame,
    encode,
    frame,
    id_line,
    may_block,
)
from tests.cluster import MAX_FRAME_BYTES, MAX_ROOMS, server, start_all, stop_all, token, unique
from tests.httpclient import Http, Reply, lines

pytestmark = pytest.mark.e2e

WAIT = 5.0  # longest wait for one expected event or state change


# ---------------------------------------------------------------- framing (bytes)


def test_frame_is_event_line_data_line_blank_line() -> None:
    ev = Event({"type": "message", "room": "r", "data": {"text": "a\nb"}})
    assert frame(ev) == (
        b'event: message\ndata: {"type":"message","room":"r","data":{"text":"a\\nb"}}\n\n'
    )


def test_frame_is_computed_once_per_event() -> None:
    ev = Event(raw=b'{"type":"pong","ts":1}')
    assert encode(ev) is encode(ev)


def test_close_frame_and_ping() -> None:
    assert close_frame(CloseReason.SLOW_CONSUMER) == (
        b'event: close\ndata: {"type":"close","code":4408,'
        b'"reason":"slow consumer: outbound queue full"}\n\n'
    )
    assert PING == b": ping\n\n"


def _sse_session(cursor: Cursor | None = None) -> SseSession:
    return SseSession(Connection("c-1", "u", "json", Outbox(100, 1 << 20)), cursor)


def test_events_that_move_the_cursor_get_an_id_line_before_the_shared_frame() -> None:
    session = _sse_session()
    welcome = Event({"type": "welcome", "conn": "c-1", "inbox": {"offset": 4, "epoch": "e1"}})
    msg = Event(raw=b'{"type":"message","room":"r","data":1,"offset":7,"epoch":"e2"}')
    presence = Event({"type": "presence", "room": "r", "user": "v", "status": "joined"})
    out = session.chunk([welcome, msg, presence])
    first = id_line(encode_cursor({"inbox": [4, "e1"], "rooms": {}}))
    second = id_line(encode_cursor({"inbox": [4, "e1"], "rooms": {"r": [7, "e2"]}}))
    assert out == first + encode(welcome) + second + encode(msg) + encode(presence)
    assert session.chunk([msg]) == encode(msg)  # seen again: the cursor does not move
    assert session.chunk([msg]) is encode(msg)  # the shared frame, not a copy


def test_joins_and_leaves_reach_the_cursor_in_outbox_order_as_id_only_blocks() -> None:
    cursor = decode_cursor(encode_cursor({"inbox": [1, "i"], "rooms": {"a": [3, "ea", True]}}),
                           Limits())
    session = _sse_session(cursor)
    outbox = session.conn.outbox
    ack = Event({"type": "ack", "offset": 9, "epoch": "eb"})
    assert session.replied(Join("b", presence=False), ack) is False
    assert session.replied(Leave("a"), Event({"type": "ack"})) is False
    assert session.replied(Ping(), Event({"type": "pong", "ts": 1})) is False  # no mark
    joined = encode_cursor({"inbox": [1, "i"], "rooms": {"a": [3, "ea", True], "b": [9, "eb"]}})
    left = encode_cursor({"inbox": [1, "i"], "rooms": {"b": [9, "eb"]}})
    assert session.chunk(outbox.take()) == id_line(joined) + b"\n" + id_line(left) + b"\n"
    full = Outbox(1, 1 << 20)
    session.conn.outbox = full
    full.push(ack)
    assert session.replied(Join("c"), ack) is True  # the mark overflowed the outbox
    assert full.close_reason is CloseReason.SLOW_CONSUMER


def _request(query: str, headers: dict[str, str]) -> RequestView:
    name, _, value = query.partition("=")
    return RequestView({k.lower(): v for k, v in headers.items()}, {name: value} if name else {})


def test_last_event_id_wins_over_the_query_which_wins_over_the_header() -> None:
    both = {"X-Rtbench-Resume": "hdr", "Last-Event-ID": "leid"}
    assert requested_cursor(_request("resume=q", both), last_event_id=True) == "leid"
    assert requested_cursor(_request("resume=q", both)) == "q"  # long-poll: no Last-Event-ID
    assert requested_cursor(_request("resume=q", {"Last-Event-ID": ""}), True) == "q"
    assert requested_cursor(_request("", {"X-Rtbench-Resume": "hdr"}), True) == "hdr"
    assert requested_cursor(_request("resume=", {}), True) is None


async def test_a_send_may_block_only_above_the_transports_low_water_mark() -> None:
    loop = asyncio.get_running_loop()
    ours, peer = socket.socketpair()
    with peer:
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
        try:
            assert isinstance(transport, asyncio.WriteTransport)
            transport.set_write_buffer_limits(high=64 * 1024)
            assert not may_block(transport)
            for _ in range(200):  # the peer does not read: the kernel buffers fill, then ours
                if transport.get_write_buffer_size() > transport.get_write_buffer_limits()[0]:
                    break
                transport.write(b"x" * 65536)
            assert may_block(transport)
            assert may_block(None)  # a server that hides its transport: always
        finally:
            transport.abort()


# ---------------------------------------------------------------- helpers


class Stream:
    """An open `GET /sse` response, read one event (or comment) at a time."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.lines = lines(response)
        self.comments: list[str] = []
        self.last_id = ""  # the last `id:` seen (kept across events, as a browser does)
        self.ids: list[str] = []  # every `id:` seen, id-only blocks included
        self.retry: int | None = None

    async def next(self, within: float = WAIT) -> tuple[str, dict[str, Any]]:
        """The next event as (`event:` name, decoded data); comments are recorded."""
        return await asyncio.wait_for(self._next(), within)

    async def _next(self) -> tuple[str, dict[str, Any]]:
        name, data = "", b""
        async for line in self.lines:
            if not line:
                if data:
                    return name, orjson.loads(data)
            elif line.startswith(":"):
                self.comments.append(line)
            elif line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = line[6:].encode()
            elif line.startswith("id: "):
                self.last_id = line[4:]
                self.ids.append(self.last_id)
            elif line.startswith("retry: "):
                self.retry = int(line[7:])
        raise EOFError("stream ended")

    async def until(self, kind: str) -> dict[str, Any]:
        """Skip events up to the first of type `kind`."""
        while True:
            name, data = await self.next()
            assert name == data["type"]
            if name == kind:
                return data

    async def ended(self) -> bool:
        with contextlib.suppress(EOFError):
            await self.next()
            return False
        return True


@contextlib.asynccontextmanager
async def opened(http: Http, user: str, url: str = "/sse",
                 headers: dict[str, str] | None = None) -> AsyncIterator[tuple[Stream, str]]:
    """A stream of `user` and its connection id (from `welcome`); `headers` are added."""
    headers = {"Authorization": f"Bearer {token(user)}", **(headers or {})}
    async with http.stream("GET", url, headers=headers) as resp:
        assert resp.status == 200, await resp.read()
        stream = Stream(resp)
        name, welcome = await stream.next()
        assert name == "welcome" and welcome["user"] == user
        yield stream, welcome["conn"]


async def command(http: Http, user: str, conn: str, body: Any,
                  prefix: str = "/sse") -> Reply:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return await http.post(f"{prefix}/{conn}", data=content,
                           headers={"Authorization": f"Bearer {token(user)}"})


async def eventually(check: Callable[[], Awaitable[bool]], what: str,
                     within: float = WAIT) -> None:
    """Wait (bounded) for a server-side state change that has no event of its own."""
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def connections(http: Http) -> int:
    return int((await http.get("/healthz")).json()["connections"])


@pytest.fixture(scope="module", params=STACKS)
def sse(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    proc = server("sse", ["--broker", "memory", "--heartbeat", "0.3"], request.param)
    start_all([proc])
    yield proc
    stop_all([proc])


@pytest.fixture
async def http(sse: ServerProcess) -> AsyncIterator[Http]:
    async with Http(sse.url, timeout=WAIT) as client:
        yield client


# ---------------------------------------------------------------- stream and commands


async def test_stream_headers_welcome_and_query_token(http: Http) -> None:
    user = unique("sse")
    async with http.stream("GET", f"/sse?token={token(user)}") as resp:
        assert resp.status == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["cache-control"] == "no-cache"
        assert resp.headers["x-accel-buffering"] == "no"
        name, welcome = await Stream(resp).next()
    assert name == "welcome"
    assert welcome["user"] == user and welcome["conn"]
    assert welcome["limits"]["max_frame_bytes"] == MAX_FRAME_BYTES


async def test_head_opens_no_connection(http: Http) -> None:
    before = await connections(http)
    resp = await http.head("/sse", headers={"Authorization": f"Bearer {token(unique('h'))}"})
    assert resp.status == 200 and resp.headers["content-type"].startswith("text/event-stream")
    assert (await http.head("/sse")).status == 401
    assert await connections(http) == before


async def test_join_publish_reach_every_member_stream(http: Http) -> None:
    alice, bob, room = unique("alice"), unique("bob"), unique("room")
    async with opened(http, alice) as (a, a_conn), opened(http, bob) as (b, b_conn):
        for user, conn in ((alice, a_conn), (bob, b_conn)):
            resp = await command(http, user, conn, {"type": "join", "room": room, "id": 1})
            ack = resp.json()
            # acks carry the stream position (docs/protocol.md 4.1)
            assert resp.status == 200 and ack.pop("epoch") and ack.pop("offset") >= 0
            assert ack == {"type": "ack", "ref": 1}
        for i in range(3):
            resp = await command(http, alice, a_conn,
                                 {"type": "publish", "room": room, "data": {"i": i}})
            ack = resp.json()
            assert resp.status == 200 and ack.pop("epoch") and ack.pop("offset") == i + 1
            assert ack == {"type": "ack"}
        for stream in (a, b):
            got = [(await stream.until("message"))["data"]["i"] for _ in range(3)]
            assert got == [0, 1, 2]
        resp = await command(http, bob, b_conn, {"type": "ping", "id": "p"})
        assert resp.json()["type"] == "pong" and resp.json()["ref"] == "p"
        resp = await command(http, bob, b_conn, {"type": "presence", "users": [alice, "nobody"]})
        assert resp.json()["users"] == {alice: True, "nobody": False}


BAD_COMMANDS: list[tuple[Any, int, str]] = [
    (b"garbage", 400, "bad_json"),
    (b"[1, 2]", 400, "bad_frame"),
    ({"type": "shout", "id": 7}, 400, "unknown_command"),
    ({"type": "join", "id": 7}, 400, "missing_field"),
    ({"type": "join", "room": 5, "id": 7}, 400, "bad_field"),
    ({"type": "join", "room": "no spaces", "id": 7}, 400, "bad_room"),
    ({"type": "direct", "to": "bad user", "data": 1, "id": 7}, 400, "bad_user"),
    ({"type": "publish", "room": "elsewhere", "data": 1, "id": 7}, 403, "not_member"),
    (b'{"type":"ping","pad":"' + b"x" * MAX_FRAME_BYTES + b'"}', 413, "too_large"),
]


@pytest.mark.parametrize(("body", "status", "code"), BAD_COMMANDS)
async def test_bad_command_gets_its_status_and_stream_lives_on(
    http: Http, body: Any, status: int, code: str
) -> None:
    user = unique("bad")
    async with opened(http, user) as (_, conn):
        resp = await command(http, user, conn, body)
        assert resp.status == status
        err = resp.json()
        assert err["type"] == "error" and err["code"] == code and err["message"]
        if isinstance(body, dict):
            assert err["ref"] == 7
        assert (await command(http, user, conn, {"type": "ping"})).status == 200
        assert await connections(http) >= 1


async def test_too_many_rooms_is_429(http: Http) -> None:
    user = unique("rooms")
    async with opened(http, user) as (_, conn):
        for i in range(MAX_ROOMS):
            resp = await command(http, user, conn, {"type": "join", "room": f"r{i}"})
            assert resp.status == 200
        resp = await command(http, user, conn, {"type": "join", "room": "one-more"})
        assert resp.status == 429 and resp.json()["code"] == "too_many_rooms"


# ---------------------------------------------------------------- auth and ownership


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        ({}, "missing token"),
        ({"Authorization": "Bearer nodot"}, "malformed token"),
        ({"Authorization": "Bearer e30.AAAA"}, "invalid token signature"),
        ("expired", "token expired"),
    ],
)
async def test_stream_and_commands_refuse_bad_tokens(
    http: Http, auth: Any, message: str
) -> None:
    user = unique("auth")
    headers = auth if auth != "expired" else {
        "Authorization": f"Bearer {token(user, ttl=-60)}"}
    resp = await http.get("/sse", headers=headers)
    assert resp.status == 401
    assert resp.headers["www-authenticate"].startswith("Bearer")
    assert resp.json()["code"] == "unauthorized" and resp.json()["message"].startswith(message)
    async with opened(http, user) as (_, conn):
        resp = await http.post(f"/sse/{conn}", data=b'{"type":"ping"}', headers=headers)
        assert resp.status == 401 and resp.json()["message"].startswith(message)


async def test_foreign_and_unknown_connections(http: Http) -> None:
    alice, mallory = unique("alice"), unique("mallory")
    async with opened(http, alice) as (_, conn):
        resp = await command(http, mallory, conn, {"type": "ping"})
        assert resp.status == 403 and resp.json()["code"] == "forbidden"
    resp = await command(http, alice, "no-such-conn", {"type": "ping"})
    assert resp.status == 404 and resp.json()["code"] == "unknown_session"


# ---------------------------------------------------------------- lifecycle


async def test_keepalive_comment(http: Http) -> None:
    async with opened(http, unique("idle")) as (stream, _):
        with pytest.raises(TimeoutError):
            await stream.next(within=1.0)  # no events, only comments (heartbeat 0.3 s)
        assert ": ping" in stream.comments


async def test_client_disconnect_closes_the_connection(http: Http) -> None:
    user = unique("gone")
    async with opened(http, user) as (_, conn):
        assert (await command(http, user, conn, {"type": "ping"})).status == 200

    async def forgotten() -> bool:
        resp = await command(http, user, conn, {"type": "ping"})
        return resp.status == 404

    await eventually(forgotten, "the server to close the connection of a closed stream")


# ---------------------------------------------------------------- resume (4.1, 7.2)


def cursor_of(event_id: str) -> dict[str, Any]:
    """The cursor an `id:` line carries (and check the server's own decoder accepts it)."""
    decode_cursor(event_id, Limits())
    padded = event_id + "=" * (-len(event_id) % 4)
    obj: dict[str, Any] = orjson.loads(base64.urlsafe_b64decode(padded))
    return obj


async def test_id_lines_carry_the_whole_cursor_and_retry_comes_first(
        http: Http) -> None:
    alice, r1, r2 = unique("alice"), unique("room"), unique("room")
    async with opened(http, alice) as (stream, conn):
        assert stream.retry == RETRY_MS
        welcome_cursor = cursor_of(stream.last_id)  # the welcome's id: the inbox position
        inbox = welcome_cursor["inbox"]
        assert welcome_cursor == {"inbox": [0, inbox[1]], "rooms": {}}
        acks = [(await command(http, alice, conn, {"type": "join", "room": r, "id": 1})).json()
                for r in (r1, r2)]
        await command(http, alice, conn, {"type": "publish", "room": r1, "data": "a"})
        message = await stream.until("message")
        # the whole cursor: r2, which has had no event, is there from its join
        assert cursor_of(stream.last_id) == {"inbox": inbox, "rooms": {
            r1: [message["offset"], message["epoch"]], r2: [acks[1]["offset"], acks[1]["epoch"]]}}
        await command(http, alice, conn, {"type": "leave", "room": r2})
        await command(http, alice, conn, {"type": "direct", "to": alice, "data": "d"})
        direct = await stream.until("direct")
        assert cursor_of(stream.last_id) == {
            "inbox": [direct["offset"], direct["epoch"]],
            "rooms": {r1: [message["offset"], message["epoch"]]}}
        assert direct["offset"] == 1


async def test_the_aio_client_last_id_is_its_own_cursor(sse: ServerProcess) -> None:
    room = unique("room")
    client = await aio_connect("sse", sse.url, token(unique("u")))
    try:
        await client.join(room, presence=True)
        await client.publish(room, 1)
        await client.next_event("message", WAIT)
        assert cursor_of(client.last_id) == client.cursor
        assert client.cursor["rooms"][room][2] is True  # re-joined with presence
    finally:
        await client.close()


async def test_last_event_id_resumes_with_exactly_the_missed_messages(
        http: Http) -> None:
    alice, bob, room = unique("alice"), unique("bob"), unique("room")
    async with opened(http, bob) as (_, b_conn):
        await command(http, bob, b_conn, {"type": "join", "room": room})
        async with opened(http, alice) as (stream, conn):
            await command(http, alice, conn, {"type": "join", "room": room})
            await command(http, bob, b_conn, {"type": "publish", "room": room, "data": "seen"})
            seen = await stream.until("message")
            stale, last = stream.ids[-2], stream.last_id  # before and after "seen"
        for i in range(5):
            await command(http, bob, b_conn, {"type": "publish", "room": room, "data": i})
        # as a browser reconnects: the URL it was made with (a stale ?resume=) and the last
        # id it saw as Last-Event-ID, which wins
        async with opened(http, alice, f"/sse?resume={stale}",
                          {"Last-Event-ID": last}) as (stream, _):
            got = [await stream.until("message") for _ in range(5)]
            await command(http, bob, b_conn, {"type": "publish", "room": room, "data": "live"})
            got.append(await stream.until("message"))
            assert [m["data"] for m in got] == [0, 1, 2, 3, 4, "live"]
            assert [m["offset"] for m in got] == [seen["offset"] + i for i in range(1, 7)]
            assert cursor_of(stream.last_id)["rooms"] == {room: [got[-1]["offset"], seen["epoch"]]}


@pytest.mark.parametrize("bad", [
    "not a cursor!",
    encode_cursor({"rooms": {"no spaces": [0, ""]}}),
    encode_cursor({"rooms": {f"r{i}": [0, ""] for i in range(MAX_ROOMS + 1)}}),
])
async def test_a_bad_last_event_id_is_400_bad_cursor_and_nothing_else_changes(
        http: Http, bad: str) -> None:
    before = await connections(http)
    user = unique("u")
    good = encode_cursor({"rooms": {}})
    resp = await http.get(f"/sse?resume={good}", headers={
        "Authorization": f"Bearer {token(user)}", "Last-Event-ID": bad})
    assert resp.status == 400
    body = resp.json()
    assert body["type"] == "error" and body["code"] == "bad_cursor" and body["message"]
    assert await connections(http) == before
    async with opened(http, user):  # the same user connects fine right after
        assert await connections(http) == before + 1


def _tcp_wmem_max() -> int:
    """The most the kernel may buffer for sending on one TCP socket (autotuning's cap)."""
    return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])


@pytest.mark.parametrize("stack", STACKS)
async def test_a_stalled_stream_is_dropped_as_a_slow_consumer_and_others_keep_up(
        stack: str) -> None:
    """A client that stops reading: its send stays blocked and the stream is cut after
    `heartbeat` s (the outbox is made big enough never to overflow first)."""
    log = Path(tempfile.mkdtemp()) / "server.log"
    proc = ServerProcess("sse", free_port(), stack=stack, args=[
        "--broker", "memory", "--heartbeat", "1", "--max-frame-bytes", "65536",
        "--outbox-max-events", "100000", "--outbox-max-bytes", str(512 << 20)], log_path=log)
    start_all([proc])
    loop = asyncio.get_running_loop()
    stalled, room, size = unique("stalled"), unique("room"), 60_000
    # enough to fill the most the kernel may buffer for the server's socket, and more
    n = (_tcp_wmem_max() + (2 << 20)) // size + 1
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills after a few KiB
    sock.setblocking(False)
    try:
        async with Http(proc.url, timeout=WAIT) as http:
            await loop.sock_connect(sock, ("127.0.0.1", proc.port))
            await loop.sock_sendall(sock, f"GET /sse HTTP/1.1\r\nHost: t\r\nAuthorization: "
                                          f"Bearer {token(stalled)}\r\n\r\n".encode())
            head = b""
            while not (found := re.search(rb'"conn":"([^"]+)"', head)):
                assert len(head) < 65536, head
                head += await asyncio.wait_for(loop.sock_recv(sock, 4096), WAIT)
            conn = found.group(1).decode()
            assert (await command(http, stalled, conn, {"type": "join", "room": room})
                    ).status == 200
            reader = await aio_connect("sse", proc.url, token(unique("reader")))
            publisher = await aio_connect("sse", proc.url, token(unique("pub")))
            try:
                for client in (reader, publisher):
                    await client.join(room)
                for i in range(n):
                    await publisher.publish(room, {"i": i, "pad": "x" * size})
                # generous: the server first writes megabytes, then waits `heartbeat` (1 s)
                await eventually(lambda: _is(_slow_consumers(http), 1), "the stall to be noticed",
                                 within=4 * WAIT)
                await eventually(lambda: _is(connections(http), 2), "the stalled stream to close")
                got = [(await reader.next_event("message", WAIT))["data"]["i"] for _ in range(n)]
                assert got == list(range(n))
                assert (await command(http, stalled, conn, {"type": "ping"})).status == 404
            finally:
                await asyncio.gather(reader.close(), publisher.close())
            # the connection was cut: what the kernel still held arrives, then the end
            ended = False
            for _ in range(10_000):
                try:
                    data = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), WAIT)
                except ConnectionResetError:
                    data = b""
                if not data:
                    ended = True
                    break
            assert ended
    finally:
        sock.close()
        stop_all([proc])
    text = log.read_text()  # the server cut the connection cleanly: nothing logged as an error
    log.unlink()
    log.parent.rmdir()
    assert "ERROR" not in text and "Traceback" not in text, text


@pytest.mark.parametrize("stack", STACKS)
async def test_slow_consumer_gets_close_4408_after_its_backlog(stack: str) -> None:
    # the stream is written as events come, so the outbox only fills once the
    # socket buffers (a few MiB on loopback) are full: big messages get there fast
    big = 256 * 1024
    proc = ServerProcess("sse", free_port(), stack=stack, args=[
        "--broker", "memory", "--outbox-max-events", "2", "--outbox-max-bytes", str(4 * big),
        "--max-frame-bytes", str(big)])
    start_all([proc])
    try:
        async with Http(proc.url, timeout=WAIT) as http:
            slow, sender = unique("slow"), unique("sender")
            async with opened(http, slow) as (stream, _), opened(http, sender) as (_, s_conn):
                sent = 0
                while not await _slow_consumers(http):
                    assert sent < 400, "the outbox never overflowed"
                    resp = await command(http, sender, s_conn,
                                         {"type": "direct", "to": slow, "data": "x" * (big - 200)})
                    assert resp.status == 200
                    sent += 1
                received = 0
                while True:
                    name, data = await stream.next()
                    if name == "close":
                        break
                    assert name == "direct"
                    received += 1
                assert data == {"type": "close", "code": 4408,
                                "reason": "slow consumer: outbound queue full"}
                assert 0 < received < sent
                assert await stream.ended()
    finally:
        stop_all([proc])


async def _slow_consumers(http: Http) -> int:
    for line in (await http.get("/metrics")).text().splitlines():
        if line.startswith("rtbench_slow_consumers_total"):
            return int(float(line.split()[-1]))
    raise AssertionError("rtbench_slow_consumers_total missing from /metrics")


@pytest.mark.parametrize("stack", STACKS)
async def test_sigterm_sends_close_1001_and_exits(stack: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        proc = server("sse", ["--broker", "memory", "--log-level", "info"], stack)
        proc.log_path = Path(tmp) / "server.log"
        start_all([proc])
        try:
            assert proc.proc is not None
            async with Http(proc.url, timeout=WAIT) as http, \
                    opened(http, unique("bye")) as (stream, _):
                proc.proc.send_signal(signal.SIGTERM)
                name, data = await stream.next()
                assert (name, data["code"]) == ("close", int(CloseReason.GOING_AWAY))
                assert data["reason"] == "server shutting down"
                assert await stream.ended()
            rc = await asyncio.to_thread(proc.proc.wait, 10)
            log = proc.log_path.read_text()
        finally:
            stop_all([proc])
    # uvicorn re-raises the SIGTERM it handled once it is done; the Starlette stack
    # ignores it by then (servers/stacks/starlette/app.py): a clean stop exits 0
    assert rc == 0, log
    assert "timeout graceful shutdown exceeded" not in log, log
    assert "Traceback" not in log, log


# ---------------------------------------------------------------- two replicas


@pytest.mark.parametrize(("sse_stack", "lp_stack"), [("starlette", "aiohttp"),
                                                      ("aiohttp", "starlette")])
async def test_sse_and_longpoll_replicas_deliver_to_each_other(
        redis_server: RedisServer, sse_stack: str, lp_stack: str) -> None:
    args = ["--broker", "redis", "--redis-url", redis_server.url, "--namespace", unique("ns")]
    sse_proc, lp_proc = server("sse", args, sse_stack), server("longpoll", args, lp_stack)
    start_all([sse_proc, lp_proc])
    try:
        async with Http(sse_proc.url, timeout=WAIT) as s_http, \
                Http(lp_proc.url, timeout=WAIT) as l_http:
            alice, bob, room = unique("alice"), unique("bob"), unique("room")
            auth = {"Authorization": f"Bearer {token(bob)}"}
            b_conn = (await l_http.post("/lp/connect", headers=auth)).json()["conn"]
            async with opened(s_http, alice) as (stream, a_conn):
                join = {"type": "join", "room": room}
                assert (await command(s_http, alice, a_conn, join)).status == 200
                assert (await command(l_http, bob, b_conn, join, "/lp")).status == 200
                pub = {"type": "publish", "room": room, "data": "from bob"}
                assert (await command(l_http, bob, b_conn, pub, "/lp")).status == 200
                message = await stream.until("message")
                assert (message["from"], message["data"]) == (bob, "from bob")
                pub = {"type": "publish", "room": room, "data": "from alice"}
                assert (await command(s_http, alice, a_conn, pub)).status == 200
                seen: list[Any] = []
                while len(seen) < 2:
                    poll = await l_http.get(f"/lp/{b_conn}/poll?timeout=5", headers=auth)
                    seen += [e["data"] for e in poll.json()["events"] if e["type"] == "message"]
                assert seen == ["from bob", "from alice"]
    finally:
        stop_all([sse_proc, lp_proc])


# ---------------------------------------------------------------- idle memory


RSS_CONNS = int(os.environ.get("RTBENCH_RSS_CONNS", "1000"))
RSS_TARGET_KIB = 20.0  # benchmark target: 5000 idle connections in < 100 MB


async def _hold_sse(port: int, user: str) -> asyncio.StreamWriter:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /sse HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token(user)}\r\n\r\n"
                 .encode())
    buf = b""
    while b"event: welcome" not in buf or not buf.split(b"event: welcome", 1)[1].count(b"\n\n"):
        chunk = await reader.read(65536)
        assert chunk, buf
        buf += chunk
    return writer


async def idle_rss_per_connection(
    proc: ServerProcess, hold: Callable[[int, str], Awaitable[asyncio.StreamWriter]], n: int,
    sessions_outlive_sockets: bool = False,
) -> float:
    """Server RSS growth per idle held connection, in KiB, after a warm-up round.

    Clients are raw asyncio sockets of this process; only the server is measured.
    """
    warm = 50
    assert proc.proc is not None
    server_proc = psutil.Process(proc.proc.pid)

    async def round_of(count: int) -> list[asyncio.StreamWriter]:
        gate = asyncio.Semaphore(100)

        async def one(_: int) -> asyncio.StreamWriter:
            async with gate:
                return await hold(proc.port, unique("idle"))

        return list(await asyncio.wait_for(asyncio.gather(*map(one, range(count))), 120))

    async def close(writers: list[asyncio.StreamWriter]) -> None:
        for w in writers:
            w.close()
        await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)

    async with Http(proc.url, timeout=WAIT) as http:
        await close(await round_of(warm))  # warm-up: first-use allocations are not per conn
        base = warm if sessions_outlive_sockets else 0
        await eventually(lambda: _is(connections(http), base), "the warm-up round to settle")
        before = int(server_proc.memory_info().rss)
        writers = await round_of(n)
        try:
            await eventually(lambda: _is(connections(http), base + n), "every connection")
            await asyncio.sleep(0.3)  # measurement settling (held polls parking), not sync
            after = int(server_proc.memory_info().rss)
        finally:
            await close(writers)
    return (after - before) / n / 1024


async def _is(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


@pytest.mark.parametrize("stack", STACKS)
async def test_idle_stream_memory_per_connection(stack: str) -> None:
    proc = server("sse", ["--broker", "memory"], stack)
    start_all([proc])
    try:
        per_conn = await idle_rss_per_connection(proc, _hold_sse, RSS_CONNS)
    finally:
        stop_all([proc])
    print(f"\nSSE ({stack}): {per_conn:.1f} KiB of server RSS per idle stream "
          f"({RSS_CONNS} streams)")
    assert per_conn < RSS_TARGET_KIB
