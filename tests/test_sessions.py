"""servers/transports/sessions.py and the long-poll endpoints of servers/transports/
longpoll.py as plain calls: a hub on the in-process memory broker, RequestViews in,
Replies out; no framework and no sockets (the stacks are tested end to end in
tests/test_longpoll.py and tests/test_sse.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest

from servers.core.auth import DEV_SECRET, make_token
from servers.core.cursor import encode_cursor
from servers.core.hub import Hub
from servers.core.types import CloseReason, Event, Limits
from servers.fanout.memory import MemoryBroker
from servers.settings import Settings
from servers.transports.context import Context, RequestView
from servers.transports.longpoll import LongPoll, PollSession
from servers.transports.replies import Reply
from servers.transports.sse import CursorMark, make_sessions


def as_user(user: str, query: dict[str, str] | None = None) -> RequestView:
    return RequestView({"authorization": f"Bearer {make_token(user, DEV_SECRET)}"}, query or {})


def body(reply: Reply) -> dict[str, object]:
    decoded: dict[str, object] = orjson.loads(reply.body)
    return decoded


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


@pytest.fixture
async def ctx() -> AsyncIterator[Context]:
    hub = Hub(MemoryBroker(), Limits(max_frame_bytes=256), server_id="r1")
    await hub.start()
    try:
        yield Context.create(Settings(transport="longpoll", broker="memory", poll_timeout=5),
                             hub)
    finally:
        await hub.shutdown()


async def never_gone() -> bool:
    return False


async def test_open_refuses_a_missing_token_and_a_bad_cursor_and_opens_nothing(
        ctx: Context) -> None:
    lp = LongPoll(ctx)
    refused = await lp.sessions.open(RequestView({}, {}))
    assert isinstance(refused, Reply) and refused.status == 401
    bad = encode_cursor({"rooms": {"no spaces": [0, ""]}})
    refused = await lp.sessions.open(as_user("ann"), bad)
    assert isinstance(refused, Reply) and (refused.status, body(refused)["code"]) == (
        400, "bad_cursor")
    assert ctx.hub.connection_count == 0 and ctx.hub.stats.errors == 1


async def test_connect_gives_the_welcome_and_only_the_owner_finds_the_session(
        ctx: Context) -> None:
    lp = LongPoll(ctx)
    reply = await lp.connect(as_user("ann"))
    conn = str(body(reply)["conn"])
    assert [e["type"] for e in body(reply)["events"]] == ["welcome"]  # type: ignore[attr-defined]
    assert isinstance(lp.sessions.find(as_user("ann"), conn), PollSession)
    for user, conn_id, status in (("bob", conn, 403), ("ann", "nope", 404)):
        found = lp.sessions.find(as_user(user), conn_id)
        assert isinstance(found, Reply) and found.status == status
    assert (await lp.delete(as_user("ann"), conn)).status == 204
    assert (await lp.delete(as_user("ann"), conn)).status == 404
    assert ctx.hub.connection_count == 0


async def test_commands_reply_with_their_event_or_their_error_status(ctx: Context) -> None:
    lp = LongPoll(ctx)
    conn = str(body(await lp.connect(as_user("ann")))["conn"])
    ping = await lp.command(as_user("ann"), conn, chunks(b'{"type":"ping","id":1}'))
    assert ping.status == 200 and body(ping)["type"] == "pong" and body(ping)["ref"] == 1
    cases = [(chunks(b'{"type":'), 400, "bad_json"),
             (chunks(b"[1]"), 400, "bad_frame"),
             (chunks(b'{"type":"ping","pad":"' + b"x" * 300 + b'"}'), 413, "too_large"),
             (chunks(b'{"type":"publish","room":"r","data":1}'), 403, "not_member")]
    for chunked, status, code in cases:
        reply = await lp.command(as_user("ann"), conn, chunked)
        assert (reply.status, body(reply)["code"]) == (status, code)
    refused = await lp.command(RequestView({"content-length": "9999"}, {}), conn, chunks())
    assert refused.status == 401  # the token is checked before the body is read


async def test_a_newer_poll_supersedes_the_waiting_one_which_keeps_no_events(
        ctx: Context) -> None:
    lp = LongPoll(ctx)
    conn = str(body(await lp.connect(as_user("ann")))["conn"])
    checked = lp.check_poll(as_user("ann"), conn)
    assert not isinstance(checked, Reply)
    session, wait = checked
    assert wait == 5.0  # the default and the maximum: poll_timeout
    # tasks take their first step in creation order: the first is waiting when the
    # second starts
    first = asyncio.create_task(lp.poll(session, wait, never_gone))
    second = asyncio.create_task(lp.poll(session, wait, never_gone))
    assert body(await first) == {"events": []}
    session.conn.outbox.push(Event({"type": "pong", "ts": 1}))
    assert body(await second) == {"events": [{"type": "pong", "ts": 1}]}


async def test_a_poll_nobody_reads_leaves_the_events_queued(ctx: Context) -> None:
    lp = LongPoll(ctx)
    conn = str(body(await lp.connect(as_user("ann")))["conn"])
    session = lp.sessions.get(conn)
    assert session is not None
    session.conn.outbox.push(Event({"type": "pong", "ts": 2}))

    async def gone() -> bool:
        return True

    assert body(await lp.poll(session, 1.0, gone)) == {"events": []}
    assert len(session.conn.outbox) == 1  # kept for the next poll


async def test_poll_checks_method_token_and_timeout(ctx: Context) -> None:
    lp = LongPoll(ctx)
    conn = str(body(await lp.connect(as_user("ann")))["conn"])
    head = lp.check_poll(as_user("ann"), conn, "HEAD")
    assert isinstance(head, Reply) and (head.status, head.headers) == (405, {"allow": "GET"})
    bad = lp.check_poll(as_user("ann", {"timeout": "soon"}), conn)
    assert isinstance(bad, Reply) and (bad.status, body(bad)["code"]) == (400, "bad_field")
    short = lp.check_poll(as_user("ann", {"timeout": "0.5"}), conn)
    assert not isinstance(short, Reply) and short[1] == 0.5


async def test_drain_closes_every_session_and_any_opened_after_it(ctx: Context) -> None:
    lp = LongPoll(ctx)
    first = lp.sessions.get(str(body(await lp.connect(as_user("ann")))["conn"]))
    ctx.exit_signal()
    late = await lp.sessions.open(as_user("bob"))
    assert first is not None and isinstance(late, PollSession)
    for session in (first, late):
        assert session.conn.outbox.close_reason is CloseReason.GOING_AWAY
    closed = body(await lp.poll(first, 1.0, never_gone))
    assert closed["closed"] == {"code": 1001, "reason": "server shutting down"}
    assert lp.sessions.get(first.conn.id) is None  # answered with its close, then forgotten


async def test_sse_joins_and_leaves_reach_the_stream_as_cursor_marks(ctx: Context) -> None:
    sessions = make_sessions(ctx)
    opened = await sessions.open(as_user("ann"))
    assert not isinstance(opened, Reply)
    opened.conn.outbox.take()  # the welcome
    conn = opened.conn.id
    for command in (b'{"type":"join","room":"r"}', b'{"type":"leave","room":"r"}',
                    b'{"type":"ping"}'):
        assert (await sessions.command(as_user("ann"), conn, chunks(command))).status == 200
    marks = opened.conn.outbox.take()
    assert [type(m) for m in marks] == [CursorMark, CursorMark]  # a ping moves no cursor
    assert [m.body["type"] for m in marks] == ["joined", "left"]
