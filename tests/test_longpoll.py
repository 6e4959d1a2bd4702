"""Long-poll adapter (docs/protocol.md 7.3) against real server processes.

Envelopes are checked as bytes; the rest over real sockets with aiohttp's client, on both
server stacks: connect, polls (held, timed out, superseded), commands and their
statuses, auth and ownership, DELETE, idle reaping, slow consumer, SIGTERM, a broker
outage at connect, and idle memory per held poll.
"""

from __future__ import annotations

import asyncio
import signal
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from servers.core.cursor import encode_cursor
from servers.core.types import CloseReason, Event
from servers.settings import STACKS
from servers.testing import RedisServer, ServerProcess, free_port
from servers.transports.longpoll import connect_body, events_body, poll_timeout
from tests.cluster import MAX_FRAME_BYTES, server, start_all, stop_all, token, unique
from tests.httpclient import Http, Reply
from tests.test_sse import (
    BAD_COMMANDS,
    RSS_CONNS,
    RSS_TARGET_KIB,
    WAIT,
    command,
    eventually,
    idle_rss_per_connection,
)

pytestmark = pytest.mark.e2e


# ---------------------------------------------------------------- envelopes (bytes)


def test_envelopes_join_cached_json() -> None:
    a, b = Event(raw=b'{"type":"pong","ts":1}'), Event({"type": "ack", "ref": 2})
    assert events_body([]) == b'{"events":[]}'
    assert orjson.loads(events_body([a, b])) == {"events": [{"type": "pong", "ts": 1},
                                                            {"type": "ack", "ref": 2}]}
    closed = orjson.loads(events_body([a], CloseReason.GOING_AWAY))
    assert closed["closed"] == {"code": 1001, "reason": "server shutting down"}
    assert orjson.loads(connect_body("c-1", [a])) == {"conn": "c-1", "events": [a.body]}


def test_poll_timeout_default_maximum_and_bad_values() -> None:
    assert poll_timeout(None, 25.0) == 25.0
    assert poll_timeout("0.5", 25.0) == 0.5
    assert poll_timeout("1e9", 25.0) == 25.0
    for bad in ("-1", "soon", "nan", ""):
        with pytest.raises(Exception, match="timeout"):
            poll_timeout(bad, 25.0)


# ---------------------------------------------------------------- helpers


class Session:
    """One long-poll session of `user` over an `Http`."""

    def __init__(self, http: Http, user: str) -> None:
        self.http = http
        self.user = user
        self.auth = {"Authorization": f"Bearer {token(user)}"}
        self.conn = ""

    async def connect(self, params: dict[str, str] | None = None,
                      headers: dict[str, str] | None = None) -> dict[str, Any]:
        resp = await self.http.post("/lp/connect", params=params,
                                    headers={**self.auth, **(headers or {})})
        assert resp.status == 200, resp.text()
        body: dict[str, Any] = resp.json()
        self.conn = body["conn"]
        return body

    async def poll(self, wait: float = 5.0) -> Reply:
        return await self.http.get(f"/lp/{self.conn}/poll", params={"timeout": wait},
                                   headers=self.auth)

    async def events(self, wait: float = 5.0) -> list[dict[str, Any]]:
        resp = await self.poll(wait)
        assert resp.status == 200, resp.text()
        events: list[dict[str, Any]] = resp.json()["events"]
        return events

    async def send(self, body: Any) -> Reply:
        return await command(self.http, self.user, self.conn, body, "/lp")


@pytest.fixture(scope="module", params=STACKS)
def lp(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    proc = server("longpoll", ["--broker", "memory", "--session-ttl", "30"], request.param)
    start_all([proc])
    yield proc
    stop_all([proc])


@pytest.fixture
async def http(lp: ServerProcess) -> AsyncIterator[Http]:
    async with Http(lp.url, timeout=WAIT * 2) as client:
        yield client


async def session(http: Http, prefix: str) -> Session:
    s = Session(http, unique(prefix))
    await s.connect()
    return s


async def held_poll(s: Session, wait: float = 20.0) -> asyncio.Task[Reply]:
    """A poll known to be waiting at the server.

    Of two concurrent polls, whichever reaches the server later supersedes the
    other, which answers at once with no events; by then the later one waits.
    """
    first, second = (asyncio.create_task(s.poll(wait)) for _ in range(2))
    done, pending = await asyncio.wait({first, second}, timeout=WAIT,
                                       return_when=asyncio.FIRST_COMPLETED)
    assert len(done) == 1, "neither poll was superseded"
    superseded = done.pop().result()
    assert superseded.status == 200 and superseded.json() == {"events": []}
    return pending.pop()


# ---------------------------------------------------------------- connect, poll, commands


async def test_connect_returns_welcome_and_an_empty_poll_times_out(
    http: Http,
) -> None:
    s = Session(http, unique("lp"))
    body = await s.connect()
    [welcome] = body["events"]
    assert welcome["type"] == "welcome" and welcome["conn"] == body["conn"]
    assert welcome["user"] == s.user and welcome["limits"]["max_frame_bytes"] == MAX_FRAME_BYTES
    resp = await s.poll(0.2)
    assert resp.status == 200 and resp.json() == {"events": []}
    assert resp.headers["content-type"] == "application/json"


async def test_events_between_polls_are_kept_in_order(http: Http) -> None:
    a, b, room = await session(http, "a"), await session(http, "b"), unique("room")
    for s in (a, b):
        ack = (await s.send({"type": "join", "room": room, "id": "j"})).json()
        assert ack.pop("epoch") and ack.pop("offset") >= 0  # the room's position (4.1)
        assert ack == {"type": "ack", "ref": "j"}
    for i in range(5):
        assert (await a.send({"type": "publish", "room": room, "data": i})).status == 200
    for s in (a, b):
        got: list[Any] = []
        while len(got) < 5:
            got += [e["data"] for e in await s.events() if e["type"] == "message"]
        assert got == [0, 1, 2, 3, 4]


async def test_newer_poll_supersedes_and_the_held_one_gets_the_event(
    http: Http,
) -> None:
    a, b = await session(http, "a"), await session(http, "b")
    held = await held_poll(b)  # the newer poll superseded the older one, which got []
    assert (await a.send({"type": "direct", "to": b.user, "data": "kept"})).status == 200
    resp = await asyncio.wait_for(held, WAIT)
    assert [(e["type"], e["data"]) for e in resp.json()["events"]] == [("direct", "kept")]


@pytest.mark.parametrize(("body", "status", "code"), BAD_COMMANDS)
async def test_bad_command_gets_its_status_and_session_lives_on(
    http: Http, body: Any, status: int, code: str
) -> None:
    s = await session(http, "bad")
    resp = await s.send(body)
    assert resp.status == status
    err = resp.json()
    assert err["type"] == "error" and err["code"] == code and err["message"]
    if isinstance(body, dict):
        assert err["ref"] == 7
    assert (await s.send({"type": "ping", "id": 1})).json()["ref"] == 1
    assert await s.events(0) == []  # command errors are replies, not queued events


async def test_bad_timeout_is_400(http: Http) -> None:
    s = await session(http, "t")
    resp = await http.get(f"/lp/{s.conn}/poll?timeout=-3", headers=s.auth)
    assert resp.status == 400 and resp.json()["code"] == "bad_field"
    assert (await http.head(f"/lp/{s.conn}/poll", headers=s.auth)).status == 405


async def test_steady_publishing_over_many_short_polls_loses_nothing(
        http: Http) -> None:
    """A publisher at a steady rate across many poll cycles (some of them time out
    empty): the poller sees every offset exactly once, in order."""
    pub, sub, room, n = await session(http, "pub"), await session(http, "sub"), unique("r"), 60
    acks = [(await s.send({"type": "join", "room": room})).json() for s in (pub, sub)]
    start = acks[1]["offset"]

    async def publish() -> None:
        for i in range(n):  # 40 per second: the interval is the rate, not a synchronization
            assert (await pub.send({"type": "publish", "room": room, "data": i})).status == 200
            await asyncio.sleep(0.025)

    publishing = asyncio.create_task(publish())
    got: list[dict[str, Any]] = []
    cycles = empty = 0
    try:
        while len(got) < n:
            assert cycles < 2000, f"{len(got)} of {n} messages after {cycles} polls"
            events = await sub.events(0.05)
            cycles += 1
            empty += not events
            got += [e for e in events if e["type"] == "message"]
    finally:
        await publishing
    assert [m["offset"] for m in got] == list(range(start + 1, start + n + 1))
    assert [m["data"] for m in got] == list(range(n))
    assert cycles >= 3
    assert await sub.events(0) == []  # nothing left over, nothing repeated


# ---------------------------------------------------------------- resume (4.1, 7.3)


@pytest.mark.parametrize("where", ["query", "header"])
async def test_connect_with_a_cursor_gets_the_missed_events_first(
        http: Http, where: str) -> None:
    pub, room = await session(http, "pub"), unique("room")
    sub = await session(http, "sub")
    await pub.send({"type": "join", "room": room})
    ack = (await sub.send({"type": "join", "room": room})).json()
    await pub.send({"type": "direct", "to": sub.user, "data": "seen"})
    [seen] = await sub.events()
    cursor = {"inbox": [seen["offset"], seen["epoch"]],
              "rooms": {room: [ack["offset"], ack["epoch"]]}}
    assert (await http.delete(f"/lp/{sub.conn}", headers=sub.auth)).status == 204
    for i in range(3):
        await pub.send({"type": "publish", "room": room, "data": i})
    await pub.send({"type": "direct", "to": sub.user, "data": "missed"})
    raw = encode_cursor(cursor)
    resumed = Session(http, sub.user)
    body = await resumed.connect(params={"resume": raw} if where == "query" else None,
                                 headers={"X-Rtbench-Resume": raw} if where == "header" else None)
    events = body["events"]
    assert events[0]["type"] == "welcome" and events[0]["conn"] == body["conn"]
    # the inbox catches up first, then the rooms are joined again from their positions
    assert [(e["type"], e["data"], e["offset"]) for e in events[1:]] == [
        ("direct", "missed", seen["offset"] + 1),
        *[("message", i, ack["offset"] + 1 + i) for i in range(3)]]
    await pub.send({"type": "publish", "room": room, "data": "live"})
    assert [(e["type"], e["data"]) for e in await resumed.events()] == [("message", "live")]


@pytest.mark.parametrize("bad", ["%%%", encode_cursor({"inbox": [-1, ""]}),
                                 encode_cursor({"rooms": {"bad room": [0, ""]}})])
async def test_connect_with_a_bad_cursor_is_400_bad_cursor(http: Http,
                                                           bad: str) -> None:
    s = await session(http, "ok")
    before = (await http.get("/healthz")).json()["connections"]
    resp = await http.post("/lp/connect", params={"resume": bad},
                           headers={"Authorization": f"Bearer {token(unique('bad'))}"})
    assert resp.status == 400
    body = resp.json()
    assert body["type"] == "error" and body["code"] == "bad_cursor" and body["message"]
    assert (await http.get("/healthz")).json()["connections"] == before
    assert (await s.send({"type": "ping"})).status == 200


# ---------------------------------------------------------------- auth, ownership, delete


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "missing token"),
        ({"Authorization": "Bearer nodot"}, "malformed token"),
        ({"Authorization": "Bearer e30.AAAA"}, "invalid token signature"),
    ],
)
async def test_every_endpoint_refuses_bad_tokens(
    http: Http, headers: dict[str, str], message: str
) -> None:
    s = await session(http, "auth")
    for method, path in (("POST", "/lp/connect"), ("GET", f"/lp/{s.conn}/poll?timeout=0"),
                         ("POST", f"/lp/{s.conn}"), ("DELETE", f"/lp/{s.conn}")):
        resp = await http.request(method, path, headers=headers, data=b'{"type":"ping"}')
        assert resp.status == 401, (method, path)
        assert resp.headers["www-authenticate"].startswith("Bearer")
        assert resp.json()["code"] == "unauthorized"
        assert resp.json()["message"].startswith(message)
    assert (await s.send({"type": "ping"})).status == 200


async def test_expired_token_is_401(http: Http) -> None:
    expired = {"Authorization": f"Bearer {token(unique('old'), ttl=-60)}"}
    resp = await http.post("/lp/connect", headers=expired)
    assert resp.status == 401 and resp.json()["message"] == "token expired"


async def test_foreign_session_is_403_and_unknown_is_404(http: Http) -> None:
    owner = await session(http, "owner")
    thief = {"Authorization": f"Bearer {token(unique('thief'))}"}
    for method, path in (("GET", f"/lp/{owner.conn}/poll?timeout=0"),
                         ("POST", f"/lp/{owner.conn}"), ("DELETE", f"/lp/{owner.conn}")):
        resp = await http.request(method, path, headers=thief, data=b'{"type":"ping"}')
        assert resp.status == 403 and resp.json()["code"] == "forbidden", (method, path)
        resp = await http.request(method, path.replace(owner.conn, "nope-1"),
                                  headers=owner.auth, data=b'{"type":"ping"}')
        assert resp.status == 404 and resp.json()["code"] == "unknown_session"
    assert (await owner.send({"type": "ping"})).status == 200


async def test_delete_ends_a_waiting_poll_then_404(http: Http) -> None:
    s = await session(http, "del")
    held = await held_poll(s)
    resp = await http.delete(f"/lp/{s.conn}", headers=s.auth)
    assert resp.status == 204
    polled = await asyncio.wait_for(held, WAIT)
    assert polled.json() == {"events": [], "closed": {"code": 1000, "reason": ""}}
    assert (await s.poll(0)).status == 404
    assert (await s.send({"type": "ping"})).status == 404


# ---------------------------------------------------------------- server-side closes


async def _server(stack: str, *args: str) -> ServerProcess:
    proc = ServerProcess("longpoll", free_port(), args=["--broker", "memory", *args], stack=stack)
    await asyncio.to_thread(start_all, [proc])
    return proc


@pytest.mark.parametrize("stack", STACKS)
async def test_idle_session_is_reaped_but_not_while_a_poll_waits(stack: str) -> None:
    proc = await _server(stack, "--session-ttl", "0.4")
    try:
        async with Http(proc.url, timeout=WAIT) as http:
            kept, idle = await session(http, "kept"), await session(http, "idle")
            assert await kept.events(1.2) == []  # held for 3 x ttl: still alive after
            assert (await kept.send({"type": "ping"})).status == 200

            async def reaped() -> bool:
                return (await idle.send({"type": "ping"})).status == 404

            await eventually(reaped, "the idle session to be reaped")
            resp = await idle.poll(0)
            assert resp.status == 404 and resp.json()["code"] == "unknown_session"
    finally:
        await asyncio.to_thread(stop_all, [proc])


@pytest.mark.parametrize("stack", STACKS)
async def test_slow_consumer_gets_its_backlog_and_closed_4408_then_404(stack: str) -> None:
    proc = await _server(stack, "--outbox-max-events", "3")
    try:
        async with Http(proc.url, timeout=WAIT) as http:
            slow, sender = await session(http, "slow"), await session(http, "sender")
            for i in range(4):
                resp = await sender.send({"type": "direct", "to": slow.user, "data": i})
                assert resp.status == 200
            resp = await slow.poll(5)
            assert resp.status == 200
            body = resp.json()
            assert [e["data"] for e in body["events"]] == [0, 1, 2]
            assert body["closed"] == {"code": 4408, "reason": "slow consumer: outbound queue full"}
            assert (await slow.poll(0)).status == 404
            assert (await sender.send({"type": "ping"})).status == 200
    finally:
        await asyncio.to_thread(stop_all, [proc])


@pytest.mark.parametrize("stack", STACKS)
async def test_sigterm_answers_the_waiting_poll_with_closed_1001(stack: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        proc = ServerProcess("longpoll", free_port(), stack=stack,
                             args=["--broker", "memory", "--log-level", "info"])
        proc.log_path = Path(tmp) / "server.log"
        await asyncio.to_thread(start_all, [proc])
        try:
            assert proc.proc is not None
            async with Http(proc.url, timeout=WAIT) as http:
                held = await held_poll(await session(http, "bye"))
                proc.proc.send_signal(signal.SIGTERM)
                resp = await asyncio.wait_for(held, WAIT)
            assert resp.json() == {"events": [],
                                   "closed": {"code": 1001, "reason": "server shutting down"}}
            rc = await asyncio.to_thread(proc.proc.wait, 10)
            log = proc.log_path.read_text()
        finally:
            await asyncio.to_thread(stop_all, [proc])
    assert rc == 0, log  # see test_sse.test_sigterm_sends_close_1001_and_exits
    assert "timeout graceful shutdown exceeded" not in log, log


@pytest.mark.parametrize("stack", STACKS)
async def test_broker_outage_at_connect_is_503(stack: str) -> None:
    redis = await asyncio.to_thread(RedisServer().start)
    proc = ServerProcess("longpoll", free_port(), stack=stack,
                         args=["--broker", "redis", "--redis-url", redis.url])
    try:
        await asyncio.to_thread(start_all, [proc])
        await asyncio.to_thread(redis.stop)
        async with Http(proc.url, timeout=WAIT * 2) as http:
            resp = await http.post("/lp/connect",
                                   headers={"Authorization": f"Bearer {token(unique('u'))}"})
        assert resp.status == 503 and resp.json()["code"] == "unavailable"
    finally:
        await asyncio.to_thread(stop_all, [proc])
        await asyncio.to_thread(redis.stop)


# ---------------------------------------------------------------- idle memory


async def _hold_poll(port: int, user: str) -> asyncio.StreamWriter:
    auth = f"Authorization: Bearer {token(user)}\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"POST /lp/connect HTTP/1.1\r\nHost: t\r\n{auth}Content-Length: 0\r\n\r\n"
                 .encode())
    buf = b""
    while not buf.endswith(b"]}"):
        chunk = await reader.read(65536)
        assert chunk, buf
        buf += chunk
    conn = buf.split(b'"conn":"', 1)[1].split(b'"', 1)[0].decode()
    writer.write(f"GET /lp/{conn}/poll HTTP/1.1\r\nHost: t\r\n{auth}\r\n".encode())
    await writer.drain()
    return writer


@pytest.mark.parametrize("stack", STACKS)
async def test_idle_poll_memory_per_connection(stack: str) -> None:
    proc = await _server(stack, "--poll-timeout", "120", "--session-ttl", "120")
    try:
        per_conn = await idle_rss_per_connection(proc, _hold_poll, RSS_CONNS, True)
    finally:
        await asyncio.to_thread(stop_all, [proc])
    print(f"\nlong-poll ({stack}): {per_conn:.1f} KiB of server RSS per held poll "
          f"({RSS_CONNS} sessions)")
    assert per_conn < RSS_TARGET_KIB
