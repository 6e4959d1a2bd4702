"""Long-polling transport (docs/protocol.md 7.3), on every stack.

`POST /lp/connect` opens a session, `GET /lp/{conn}/poll` drains its outbox,
`POST /lp/{conn}` carries a command, `DELETE /lp/{conn}` closes it. A poll body
is the events' cached JSON joined as bytes, never re-encoded per recipient. A
held poll costs no task of its own: it waits inside the request's task. Requests
come in as RequestViews and answers go out as Replies; a stack only routes.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterable, Awaitable, Callable, Sequence

import orjson

from servers.core.connection import Connection
from servers.core.errors import ErrorCode, ProtocolError
from servers.core.types import CloseReason, Event
from servers.transports.context import Context, RequestView
from servers.transports.replies import (
    NO_CONTENT,
    Reply,
    json_reply,
    protocol_failed,
    unknown_session,
)
from servers.transports.sessions import Session, SessionRegistry, close_body, requested_cursor

EMPTY = b'{"events":[]}'
# a HEAD poll would take events nobody receives
NOT_HEAD = Reply(405, content_type=None, headers={"allow": "GET"})


class PollSession(Session):
    """A session plus the poll waiting on it, so that a newer poll can supersede it.

    `poller` is set only while its task waits in `outbox.get`, so cancelling it
    never interrupts a poll that has already taken events. `handoff` is what the
    superseding poll waits on until the old one has left `outbox.get`: two
    concurrent waiters on one outbox would steal each other's wake-up.
    """

    __slots__ = ("handoff", "poller")

    def __init__(self, conn: Connection, idle_since: float | None) -> None:
        super().__init__(conn, idle_since)
        self.poller: asyncio.Task[object] | None = None
        self.handoff: asyncio.Future[None] | None = None


def _join(events: Sequence[Event]) -> bytes:
    return b"[" + b",".join([ev.json() for ev in events]) + b"]"


def events_body(events: Sequence[Event], closed: CloseReason | None = None) -> bytes:
    """`{"events":[...]}`, plus `"closed":{code, reason}` when the server ended the session."""
    body = b'{"events":' + _join(events)
    if closed is not None:
        body += b',"closed":' + orjson.dumps(close_body(closed))
    return body + b"}"


def connect_body(conn_id: str, events: Sequence[Event]) -> bytes:
    return b'{"conn":' + orjson.dumps(conn_id) + b',"events":' + _join(events) + b"}"


def poll_timeout(raw: str | None, limit: float) -> float:
    """The `timeout` query value in seconds: default and maximum `limit`."""
    if raw is None:
        return limit
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if math.isnan(value) or value < 0:
        raise ProtocolError(
            ErrorCode.BAD_FIELD, f"timeout {raw[:40]!r} must be a number of seconds >= 0"
        )
    return min(value, limit)


class LongPoll:
    """The four endpoints of one long-poll server, as plain calls."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.sessions: SessionRegistry[PollSession] = SessionRegistry(
            ctx, lambda conn, now, cursor: PollSession(conn, now))

    async def connect(self, req: RequestView) -> Reply:
        """`POST /lp/connect`: the session's first events (`welcome`, then what a resumed
        one missed)."""
        opened = await self.sessions.open(req, requested_cursor(req))
        if isinstance(opened, Reply):
            return opened
        return json_reply(connect_body(opened.conn.id, opened.conn.outbox.take()))

    def check_poll(self, req: RequestView, conn_id: str, method: str = "GET",
                   ) -> tuple[PollSession, float] | Reply:
        """`GET /lp/{conn}/poll` before it waits: the session and how long to hold."""
        if method != "GET":
            return NOT_HEAD
        found = self.sessions.find(req, conn_id)
        if isinstance(found, Reply):
            return found
        try:
            return found, poll_timeout(req.query.get("timeout"), self.ctx.settings.poll_timeout)
        except ProtocolError as exc:
            return protocol_failed(exc)

    async def poll(self, session: PollSession, wait: float,
                   disconnected: Callable[[], Awaitable[bool]]) -> Reply:
        """Hold the poll until events are queued (or `wait` passes, or a newer poll
        supersedes it); `disconnected` tells afterwards whether anyone is there to read."""
        loop = asyncio.get_running_loop()
        while session.poller is not None:  # supersede the waiting poll
            handoff = session.handoff
            if handoff is None:
                handoff = session.handoff = loop.create_future()
                session.poller.cancel()
            await handoff
        conn = session.conn
        sessions = self.sessions
        if sessions.get(conn.id) is not session:  # closed while we waited for the handoff
            return unknown_session(conn.id)
        outbox = conn.outbox
        me = asyncio.current_task()
        session.poller = me
        session.idle_since = None
        try:
            await outbox.get(limit=0, max_wait=wait)  # wait only: events stay queued
        except asyncio.CancelledError:
            if session.handoff is None:
                raise  # not superseded: the server is cancelling us
            return json_reply(EMPTY)
        finally:
            session.poller = None
            session.idle_since = loop.time()
            handoff = session.handoff
            if handoff is not None:
                session.handoff = None
                if me is not None and me.cancelling():
                    me.uncancel()  # the cancel was ours, not the server's
                handoff.set_result(None)
        if await disconnected():
            return json_reply(EMPTY)  # nobody to read it; keep the events
        events = outbox.take()
        reason = outbox.close_reason
        if reason is None:
            return json_reply(events_body(events))
        await sessions.close(session)
        return json_reply(events_body(events, reason))

    async def command(self, req: RequestView, conn_id: str, body: AsyncIterable[bytes]) -> Reply:
        """`POST /lp/{conn}`: one command, its reply event."""
        return await self.sessions.command(req, conn_id, body)

    async def delete(self, req: RequestView, conn_id: str) -> Reply:
        """`DELETE /lp/{conn}`: close the connection."""
        found = self.sessions.find(req, conn_id)
        if isinstance(found, Reply):
            return found
        await self.sessions.close(found)
        return NO_CONTENT
